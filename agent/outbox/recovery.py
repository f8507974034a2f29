"""Opening the outbox file: connection settings, schema, detection of damaged files, moving them aside with
what can be salvaged, and the sequence floor of a fresh queue; then the counters recomputed from the file."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Literal

from agent.errors import StoreError

from .counters import Counters
from .records import KINDS, ROW_OVERHEAD, SCHEMA_VERSION, SIZE_SQL, Kind, head_ts

log = logging.getLogger("agent.outbox")

_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class _Corrupt(Exception):
    """Internal: the file exists but is not a usable database (triggers move-aside)."""


class Opener:
    """Turns the path into an open, checked connection (worker thread only)."""

    def __init__(self, path: Path, sync: Literal["full", "normal"]) -> None:
        self.path = path
        self.sync = sync

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"outbox {self.path}: could not enable WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            # Bound the WAL file left behind after checkpoints; the default leaves it at its peak size.
            conn.execute(f"PRAGMA journal_size_limit={8 * 1024 * 1024}")
            conn.execute("PRAGMA temp_store=MEMORY")
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise _Corrupt("; ".join(str(r[0]) for r in check[:5]))
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"outbox {self.path} has schema version {version}, newer than this agent "
                    f"understands ({SCHEMA_VERSION}); refusing to touch it"
                )
            conn.executescript(
                """
                BEGIN IMMEDIATE;
                CREATE TABLE IF NOT EXISTS outbox (
                    seq  INTEGER PRIMARY KEY,
                    kind INTEGER NOT NULL,
                    topic TEXT NOT NULL,
                    body BLOB NOT NULL,
                    ts   REAL NOT NULL
                );
                -- (kind, seq): the rowid is the implicit second key of every index on a rowid table.
                CREATE INDEX IF NOT EXISTS outbox_kind ON outbox(kind);
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                PRAGMA user_version = 1;
                COMMIT;
                """
            )
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            conn.close()
            raise
        return conn

    def open(self, counters: Counters) -> sqlite3.Connection:
        """Connect, moving a corrupt file aside first if needed, and load ``counters`` from the file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"outbox directory {self.path.parent} cannot be created: {exc}") from exc
        seq_floor, lost = 0, [0, 0]
        try:
            try:
                conn = self.connect()
            except sqlite3.DatabaseError as exc:
                if (exc.sqlite_errorcode & 0xFF) not in _CORRUPT_CODES:
                    raise
                raise _Corrupt(str(exc)) from exc
        except _Corrupt as corrupt:
            seq_floor, lost = self._move_aside(str(corrupt))
            try:
                conn = self.connect()
            except (sqlite3.Error, _Corrupt) as exc:
                raise StoreError(f"outbox {self.path}: cannot create a fresh database: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"outbox {self.path} cannot be opened: {exc}") from exc
        try:
            self.recover(conn, counters, seq_floor, lost)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"outbox {self.path}: recovery failed: {exc}") from exc
        return conn

    def _move_aside(self, reason: str) -> tuple[int, list[int]]:
        """Rename the corrupt file (and its WAL/SHM) and return a seq floor for the fresh database.

        The floor is the highest sequence number salvageable from the old file, or the wall-clock time
        in microseconds, whichever is larger: more than any realistic number of messages sent before.
        Rows that can still be counted in the old file are recorded as dropped so the loss is reported.
        """
        stamp = int(time.time())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 0
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        salvage_seq, lost = self._salvage()
        try:
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.rename(aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise StoreError(f"outbox {self.path} is corrupt and cannot be moved aside: {exc}") from exc
        floor = max(salvage_seq, time.time_ns() // 1000)
        log.error(
            "outbox %s is corrupt (%s); moved it to %s and started a fresh queue "
            "(%d events, %d telemetry rows counted as lost; sequence continues above %d)",
            self.path,
            reason,
            aside,
            lost[Kind.EVENT],
            lost[Kind.TELEMETRY],
            floor,
        )
        return floor, lost

    def _salvage(self) -> tuple[int, list[int]]:
        """Best effort: read the seq counter and drop counters/row counts of a corrupt file."""
        last_seq, lost = 0, [0, 0]
        try:
            old = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error:
            return last_seq, lost
        try:
            for sql in ("SELECT value FROM meta WHERE key = 'last_seq'", "SELECT max(seq) FROM outbox"):
                try:
                    row = old.execute(sql).fetchone()
                    if row and row[0] is not None:
                        last_seq = max(last_seq, int(row[0]))
                except sqlite3.Error:
                    pass
            for i, key in ((Kind.EVENT, "dropped_events"), (Kind.TELEMETRY, "dropped_telemetry")):
                try:
                    row = old.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                    if row:
                        lost[i] += int(row[0])
                except sqlite3.Error:
                    pass
            try:
                for kind, count in old.execute("SELECT kind, count(*) FROM outbox GROUP BY kind"):
                    if kind in KINDS:
                        lost[kind] += int(count)
            except sqlite3.Error:
                pass
        finally:
            old.close()
        return last_seq, lost

    def recover(self, conn: sqlite3.Connection, counters: Counters, seq_floor: int, lost: list[int]) -> None:
        """Recompute every in-memory counter from the database: the source of truth after a restart."""
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        count, size = [0, 0], [0, 0]
        for kind, n, b in conn.execute(
            f"SELECT kind, count(*), coalesce(sum({SIZE_SQL}), 0) FROM outbox GROUP BY kind"
        ):
            if kind in KINDS:
                count[kind], size[kind] = int(n), int(b) + ROW_OVERHEAD * int(n)
        max_seq = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        dropped = [
            int(meta.get("dropped_events", 0)) + lost[Kind.EVENT],
            int(meta.get("dropped_telemetry", 0)) + lost[Kind.TELEMETRY],
        ]
        last_seq = max(int(meta.get("last_seq", 0)), max_seq, seq_floor)
        refused = int(meta.get("dropped_refused", 0))
        counters.load(count, size, dropped, refused, last_seq, head_ts(conn))
        if seq_floor:
            # Persist the floor and the salvaged loss counts right away, before any append.
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", counters.meta_rows())
            conn.execute("COMMIT")
