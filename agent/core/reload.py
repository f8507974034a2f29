"""Configuration problems at start-up and reloads (SIGHUP): what is announced, what blocks a reload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent.config import Site
from agent.core.notify import Notifier
from agent.errors import ConfigError, EdgeAgentError
from agent.model import Event, Severity
from agent.uplink.codec import dumps

log = logging.getLogger("edge_agent")


class Reloader:
    def __init__(self, site: Site, running: Callable[[], set[str]], event: Callable[[Event], None],
                 notifier: Notifier, apply: Callable[[], None]) -> None:
        self.site = site
        self.running = running  # names of the devices that run now
        self.event = event
        self.notifier = notifier
        self.apply = apply  # a valid new configuration: stop cleanly so the caller re-execs with it
        self.requested = asyncio.Event()
        self.before_check: Callable[[], None] | None = None  # the edit watcher: what is checked now is known

    def announce_problems(self) -> None:
        """Devices skipped at start-up (a broken entry or profile) are announced upstream as a ``config`` event,
        not only in the local log: nobody reads the journal of a box in a school's basement."""
        if not self.site.problems:
            return
        for p in self.site.problems:
            log.error("config: %s", p)
        try:
            entries = self._device_entries()
        except EdgeAgentError:
            entries = []
        configured = [e.get("name") for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
        loaded = {d.name for d in self.site.devices}
        skipped = [n for n in configured if n not in loaded]
        self.event(Event("agent", "config", {"result": "skipped", "devices": skipped[:100],
                                             "problems": [str(p) for p in self.site.problems[:50]]},
                         Severity.WARNING))

    def _device_entries(self) -> list[Any]:
        from agent.config.yamlloc import load_file

        data = load_file(self.site.file).data
        entries = data.get("devices") if isinstance(data, dict) else None
        return entries if isinstance(entries, list) else []

    async def run(self) -> None:
        """SIGHUP: load the site file again. It is applied (clean stop, the caller re-execs) unless it would
        break something that works now: a problem in site/uplink/outbox, or a problem in the entry of a
        device that is running now. Otherwise the running configuration stays and the refusal is published
        with every located problem. Problems in entries of devices that are not running now don't block."""
        while True:
            await self.requested.wait()
            self.requested.clear()
            if self.before_check is not None:
                self.before_check()
            try:
                blocking, other = await asyncio.to_thread(self.check)
            except EdgeAgentError as exc:
                blocking, other = [str(p) for p in getattr(exc, "problems", [])] or [str(exc)], []
            except Exception as exc:  # whatever the file holds, the running agent stays up
                log.exception("reload: checking %s failed", self.site.file)
                blocking, other = [f"{self.site.file}: cannot check the new configuration: "
                                   f"{type(exc).__name__}: {exc}"[:500]], []
            if blocking:
                for p in blocking:
                    log.error("reload refused: %s", p)
                self.event(Event("agent", "config", self._refusal(blocking), Severity.WARNING))
                continue
            for p in other:
                log.warning("reload: %s (that device stays off)", p)
            log.info("reload: configuration valid, restarting with it")
            self.notifier.send("RELOADING=1")
            self.apply()
            return

    def _refusal(self, problems: list[str]) -> dict[str, Any]:
        """The data of a refused-reload event, cut to fit the largest message the uplink sends (else the
        refusal itself would be dropped as oversize): as many problems as fit, and how many more there are."""
        budget = min(self.site.model.uplink.max_message_bytes, self.site.model.outbox.max_bytes // 4) - 1024
        shown: list[str] = []
        used = 0
        for p in problems[:50]:
            cost = len(dumps(p)) + 1
            if used + cost > budget:
                break
            shown.append(p)
            used += cost
        data: dict[str, Any] = {"result": "refused", "problems": shown}
        if len(shown) < len(problems):
            data["more"] = len(problems) - len(shown)
        return data

    def check(self) -> tuple[list[str], list[str]]:
        """(problems that block the reload, problems that only keep a not-running device off)."""
        from agent.core.sitechecks import load_site_checked

        try:
            problems, refused = load_site_checked(self.site.file, strict=False).problems, False
        except ConfigError as exc:  # site-level problems, listed with every other problem of the file
            problems, refused = exc.problems, True
        try:
            entries = self._device_entries()
        except ConfigError:
            entries = []
        running = self.running()
        blocking: list[str] = []
        other: list[str] = []
        for p in problems:
            if p.file != str(self.site.file):  # a broken profile: devices using it show up as entries below
                other.append(str(p))
                continue
            name = None
            if p.key.startswith("devices[") and "]" in p.key:
                idx = int(p.key[len("devices["):p.key.index("]")])
                if 0 <= idx < len(entries) and isinstance(entries[idx], dict):
                    raw = entries[idx].get("name")
                    name = raw if isinstance(raw, str) else None  # a name that is a list or a number: blocking
            (blocking if name is None or name in running else other).append(str(p))
        if refused and not blocking:
            blocking = other
        return blocking, other
