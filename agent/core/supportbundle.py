"""The support bundle for the signed ``bundle`` command (docs/remote.md): a tar.gz made in memory from what the
running agent knows, never from a path named by the message: versions and the configuration version, the status
snapshot, the validator's output for the running site file, the site file and the site-local profiles and
trust file (redacted), the recent log lines (redacted). Bounded; sent as parts in acks."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Site
from agent.errors import ConfigError
from agent.remote.logring import LogRing

MAX_BYTES = 1024 * 1024  # compressed
MAX_FILE = 256 * 1024
MAX_PROFILES = 100


def _validate(site: Site) -> str:
    from agent.core.sitechecks import load_site_checked

    try:
        problems = [str(p) for p in load_site_checked(site.file, strict=False).problems]
    except ConfigError as exc:
        problems = [str(p) for p in exc.problems]
    return "\n".join(problems) + "\n" if problems else "ok\n"


def build(site: Site, ring: LogRing, snapshot: dict[str, Any], config: dict[str, Any]) -> bytes:
    """The archive (blocking: run it in a thread)."""
    parts: list[tuple[str, str]] = [
        ("versions.json", json.dumps({"agent": __version__, "config": config, "ts": time.time()}, indent=2)),
        ("status.json", ring.redact(json.dumps(snapshot, indent=2, default=str))),
        ("validate.txt", _validate(site)),
        ("journal.txt", "\n".join(ring.tail(2000, MAX_FILE)) + "\n"),
    ]
    folder = Path(site.file).parent
    files = [Path(site.file), folder / "operators.json", *sorted(folder.glob("profiles/*.yaml"))[:MAX_PROFILES]]
    for d in site.model.profiles_dirs:
        files += sorted((folder / d).glob("*.yaml"))[:MAX_PROFILES]
    seen: set[Path] = set()
    for f in files:
        r = f.resolve()
        if r in seen or not r.is_file():
            continue
        seen.add(r)
        try:
            text = r.read_text(errors="replace")[:MAX_FILE]
        except OSError as exc:
            text = f"unreadable: {exc}\n"
        name = "site/" + (f.name if f.parent == folder else f"profiles/{f.name}")
        parts.append((name, ring.redact(text)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in parts:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
            if buf.tell() > MAX_BYTES:
                break
    return buf.getvalue()[:MAX_BYTES]


def send(cid: str, archive: bytes, part_bytes: int, queue: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Queue the archive as acks ``{"part": n, "of": N, "data": base64}``; the summary for the final ack."""
    chunks = [archive[i:i + part_bytes] for i in range(0, len(archive), part_bytes)] or [b""]
    for n, c in enumerate(chunks):
        queue({"id": cid, "cmd": "bundle", "ok": True, "ts": round(time.time(), 3),
               "result": {"part": n, "of": len(chunks), "data": base64.b64encode(c).decode()}})
    return {"bytes": len(archive), "parts": len(chunks), "sha256": hashlib.sha256(archive).hexdigest(),
            "format": "tar.gz"}
