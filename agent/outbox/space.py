"""Disk space for the outbox on a nearly full disk.

SQLite's WAL checkpoints every 1000 pages (4 MiB), and a WAL that cannot grow or checkpoint stops every
commit. Below ``LOW_DISK`` free bytes the WAL is kept small (checkpoint every ``SMALL_WAL_PAGES`` pages,
file truncated back to ``SMALL_WAL_LIMIT``); above it the default stays, because checkpointing every few
pages costs several times the append and drain throughput (bench/outbox_drain.py).

In WAL mode even a delete needs room: new WAL frames, and a checkpoint that writes pages into the database
file. If appends use the last free bytes, the WAL can neither checkpoint nor grow, deletes fail, and
delivery stops while the queue is full of rows the broker already has. Two guards keep deletes possible:

* a **margin**: below ``MARGIN`` free bytes on the file system an append is rolled back if it grew the
  database file: rows go only into pages the file already has (its freelist, refilled by every delete);
* a **reserve**: a ``<db>.reserve`` file of ``RESERVE`` bytes made while there is room, given back to the file
  system when a delete fails for lack of space (another program filled the disk), so the delete can go on.

A WAL can also get **stuck**, whatever the queue holds: pages an append added to the database are written into
the database file only by the next checkpoint, which then has to grow that file; and a WAL restarts from its
first frame only after a complete checkpoint. If another program takes the last block in between, the
checkpoint fails, the WAL cannot restart nor grow, and every write (append or delete) fails with SQLite's
disk-full, even with an empty queue (so no delete ever releases the reserve). On SQLite's disk-full any write is
therefore retried after :meth:`SpaceGuard.unstick`: a checkpoint that restarts the WAL within the blocks it
already has, and if that checkpoint cannot complete, the reserve given back so that it can.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from agent.errors import StoreFull

log = logging.getLogger("agent.outbox")

MARGIN = 256 * 1024
RESERVE = 256 * 1024
LOW_DISK = 16 * 1024 * 1024
SMALL_WAL_PAGES = 32  # 128 KiB with 4 KiB pages
SMALL_WAL_LIMIT = 256 * 1024
BIG_WAL_PAGES = 1000  # SQLite's default
BIG_WAL_LIMIT = 8 * 1024 * 1024


class SpaceGuard:
    """Checks room before appends; holds and releases the reserve file."""

    def __init__(self, db_path: Path, margin: int = MARGIN, reserve: int = RESERVE) -> None:
        self.db_path = db_path
        self.reserve_path = db_path.with_name(db_path.name + ".reserve")
        self.margin = margin
        self.reserve = reserve
        self.has_reserve = False
        self.small_wal: bool | None = None  # the WAL setting in force on the connection (None: not set yet)
        self._low_free = 0
        self._released = False  # the reserve was given back and not made again yet

    def free_bytes(self) -> int:
        try:
            st = os.statvfs(self.db_path.parent)
        except OSError:
            return 1 << 62  # unknown: do not refuse for it
        return st.f_bavail * st.f_frsize

    def tune(self, conn: sqlite3.Connection, free: int | None = None) -> None:
        """Small WAL below ``LOW_DISK`` free bytes, SQLite's default above; logged when it changes."""
        free = self.free_bytes() if free is None else free
        small = free < LOW_DISK
        if small == self.small_wal:
            return
        pages, limit = (SMALL_WAL_PAGES, SMALL_WAL_LIMIT) if small else (BIG_WAL_PAGES, BIG_WAL_LIMIT)
        conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
        conn.execute(f"PRAGMA journal_size_limit={limit}")
        if small or self.small_wal is not None:
            log.log(logging.WARNING if small else logging.INFO, "outbox: %d KiB free on %s: WAL checkpointed every "
                    "%d pages", free // 1024, self.db_path.parent, pages)
        self.small_wal = small

    def pages_if_low(self, conn: sqlite3.Connection) -> int | None:
        """Before an append: ``None`` when there is room, else the database's page count now, which the append
        must not exceed (it may only fill pages the file already has: its freelist, refilled by deletes)."""
        free = self.free_bytes()
        self.tune(conn, free)
        # once the reserve was given back for deletes, appends must not eat it: the margin holds until the
        # reserve is made again
        if free >= self.margin + (0 if self.has_reserve or not self._released else self.reserve):
            return None
        self._low_free = free
        return int(conn.execute("PRAGMA page_count").fetchone()[0])

    def check_growth(self, conn: sqlite3.Connection, pages: int | None) -> None:
        """Inside the append's transaction: raise :class:`StoreFull` if it grew the file into the margin."""
        if pages is None or int(conn.execute("PRAGMA page_count").fetchone()[0]) <= pages:
            return
        raise StoreFull(
            f"disk full: {self._low_free // 1024} KiB free on {self.db_path.parent}, below the "
            f"{self.margin // 1024} KiB the outbox keeps so that delivered rows can still be deleted"
        )

    def make_reserve(self) -> None:
        """Create the reserve file if it is missing and there is clearly room for it."""
        if self.reserve_path.exists():
            self.has_reserve = True
            return
        if self.free_bytes() < self.margin + 2 * self.reserve:
            return
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve)
            finally:
                os.close(fd)
            self.has_reserve = True
            self._released = False
        except OSError as exc:
            log.debug("outbox reserve %s not made: %s", self.reserve_path, exc)
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()

    def unstick(self, conn: sqlite3.Connection, *, reserve: bool) -> bool:
        """After SQLite's disk-full on a write: checkpoint the WAL completely and restart it (RESTART keeps the WAL
        file's blocks: a truncated WAL might never get them back on a disk another program fills). Without
        ``reserve``, the reserve is given back only if the checkpoint cannot complete. ``True`` if the write is
        worth retrying."""
        if not reserve and self.checkpoint(conn):
            return True
        released = self.release_reserve()
        return self.checkpoint(conn) or released

    def checkpoint(self, conn: sqlite3.Connection) -> bool:
        """A complete checkpoint that restarts the WAL; ``False`` if it failed or left frames behind."""
        try:
            busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:
            log.debug("outbox checkpoint failed: %s", exc)
            return False
        return bool(busy == 0 and done == log_frames)

    def release_reserve(self) -> bool:
        """Give the reserve back to the file system; ``True`` if there was one."""
        self.has_reserve = False
        try:
            self.reserve_path.unlink()
            self._released = True
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("outbox reserve %s cannot be removed: %s", self.reserve_path, exc)
            return False
        log.warning("outbox: disk full; released the %d KiB reserve (%s) so that the WAL can be checkpointed and "
                    "delivered rows deleted",
                    self.reserve // 1024, self.reserve_path)
        return True
