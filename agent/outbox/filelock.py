"""One process per outbox file: the ``<db>.lock`` file held with ``flock`` while the outbox is open."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from agent.errors import StoreError, StoreFull, StoreInUse

log = logging.getLogger("agent.outbox")


class FileLock:
    """A second agent on the same state directory would hand out the same sequence numbers and publish the
    same rows, so ``<db>.lock`` is held (flock) while open; it holds the owner's pid for the error message."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            kind = StoreFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StoreError
            raise kind(f"cannot create {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise StoreInUse(
                f"outbox {self.db_path} is in use by another process (pid {holder}): is edge-agent already "
                "running with this state directory?"
            ) from exc
        try:  # the pid is only for the message above: a full disk must not stop the start here
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            log.warning("cannot write the pid into %s: %s", self.path, exc.strerror or exc)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock
