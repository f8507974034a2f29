"""The sequence mark: the highest sequence number handed out, kept beside the database (``<db>.seq``).

Why a second file: the database alone cannot prove that its counter is the last one handed out. A WAL
damaged after a ``kill -9`` silently loses its last commits (SQLite stops at the first bad frame), and a
deleted or truncated file looks like a new one; either way the counter would go back and hand out seqs a
receiver has already seen (with other payloads). The mark is rewritten in place after every commit (one
``pwrite`` of a few bytes, no ``fsync``: it survives a crash of the process, which is what it is for), so a
database whose counter is below the mark is known to have lost commits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("agent.outbox")

_WIDTH = 21  # 20 digits and a newline: every value overwrites the previous one completely


class SeqMark:
    """Reads the mark at open, writes it after each commit; a mark that cannot be written is only logged."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".seq")
        self._fd: int | None = None
        self._warned = False

    def open(self) -> int | None:
        """Open (create) the mark file and return the value it holds, or ``None`` if it has none."""
        value: int | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("outbox sequence mark %s cannot be opened (%s): continuity after a crash is not "
                        "checked", self.path, exc.strerror or exc)
            return None
        try:
            raw = os.pread(fd, _WIDTH, 0).decode("ascii", errors="replace").strip()
            value = int(raw) if raw.isdigit() else None
        except OSError:
            value = None
        self._fd = fd
        return value

    def write(self, seq: int) -> None:
        if self._fd is None:
            return
        try:
            os.pwrite(self._fd, f"{seq:>{_WIDTH - 1}}\n".encode(), 0)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("outbox sequence mark %s cannot be written: %s", self.path, exc.strerror or exc)
        else:
            self._warned = False

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
