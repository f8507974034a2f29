"""Hot reload of local edits (docs/operations.md): the folders of the running site file and of its site-local
profiles are watched (``watchdog``: inotify on Linux). A saved YAML file, an editor's write-then-rename or a
burst of writes is one reload request after ``DEBOUNCE`` seconds of quiet, and only if the content changed. The
request goes through the same path as SIGHUP (``Reloader``): a broken edit is refused with its located
problems (log and ``config`` event) and the running configuration keeps running."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from agent.config import Site

log = logging.getLogger("edge_agent.config")

DEBOUNCE = 0.5  # s of quiet after the last change
SUFFIXES = (".yaml", ".yml", ".json")


def watched_dirs(site: Site) -> list[Path]:
    """The site file's folder, its profiles_dirs and its profiles/ folder: what a technician edits."""
    base = Path(site.file).parent
    dirs = [base, base / "profiles", *(base / d for d in site.model.profiles_dirs)]
    out: list[Path] = []
    for d in dirs:
        r = d.resolve()
        if r.is_dir() and r not in out:
            out.append(r)
    return out


def fingerprint(dirs: list[Path]) -> str:
    h = hashlib.sha256()
    for d in dirs:
        for p in sorted(d.glob("*")):
            if p.suffix in SUFFIXES and p.is_file() and not p.name.startswith("."):
                with contextlib.suppress(OSError):
                    h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def read_bundle(site_file: Path) -> dict[str, str]:
    """The site file, its trust file and its profiles/ folder as bundle files (docs/remote.md)."""
    out: dict[str, str] = {}
    folder = site_file.parent
    for name, p in [("site.yaml", site_file), ("operators.json", folder / "operators.json"),
                    *((f"profiles/{q.name}", q) for q in sorted(folder.glob("profiles/*.yaml")))]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if p.is_file() and p.stat().st_size <= 1024 * 1024:
                out[name] = p.read_text()
    return out


class _Handler(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, poke: Callable[[], None]) -> None:
        self.loop = loop
        self.poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(str(p).endswith(SUFFIXES) for p in paths if p):
            self.loop.call_soon_threadsafe(self.poke)


class Watcher:
    def __init__(self, site: Site, request: Callable[[], None]) -> None:
        self.site = site
        self.request = request  # the Reloader's request (as SIGHUP)
        self.dirs = watched_dirs(site)
        self.changed = asyncio.Event()
        self.requests = 0
        self.known: str | None = None  # the content last checked (by this watcher or a SIGHUP)
        self._before = read_bundle(Path(site.file))

    def before(self) -> dict[str, str]:
        """What runs, as bundle files (site.yaml, operators.json, profiles/NAME.yaml), read at start."""
        return dict(self._before)

    def changed_since_start(self) -> bool:
        return read_bundle(Path(self.site.file)) != self._before

    def mark_checked(self) -> None:
        """A reload check starts (SIGHUP or this watcher): the files as they are now need no other check."""
        self.known = fingerprint(self.dirs)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.known = await asyncio.to_thread(fingerprint, self.dirs)
        observer = Observer()
        handler = _Handler(loop, self.changed.set)
        try:
            for d in self.dirs:
                # a save ends with a close after writing, or a rename: not every write (a log file in the same
                # folder would wake this thread at each line) nor opens and reads
                observer.schedule(handler, str(d), recursive=False,
                                  event_filter=[FileClosedEvent, FileMovedEvent, FileCreatedEvent, FileDeletedEvent])
            observer.start()
        except OSError as exc:  # inotify limits, a folder gone: SIGHUP still works
            log.warning("config: cannot watch %s for edits (%s); reload with SIGHUP", self.dirs, exc)
            return
        try:
            while True:
                await self.changed.wait()
                while True:  # debounce: wait until the writes stop
                    self.changed.clear()
                    try:
                        async with asyncio.timeout(DEBOUNCE):
                            await self.changed.wait()
                    except TimeoutError:
                        break
                now = await asyncio.to_thread(fingerprint, self.dirs)
                if now == self.known:
                    continue
                self.known = now
                self.requests += 1
                log.info("config: a local edit was saved; checking it (as SIGHUP)")
                self.request()
        finally:
            observer.stop()
            await asyncio.to_thread(observer.join, 2.0)
