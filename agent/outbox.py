"""Durable store-and-forward queue between the pipeline and the MQTT uplink.

Why it exists: a site box loses its uplink (WAN down, broker restart, certificate rotation) far more
often than it loses power, and neither must lose data. Every sample or event is committed to SQLite
*before* it is offered to the uplink and deleted only after the broker's PUBACK, so delivery is
at-least-once; each row carries a per-agent, never-reused sequence number so the receiver can drop the
duplicates that at-least-once implies.

Design decisions
----------------
* **One worker thread owns the connection.** All SQLite calls run on a single-thread
  ``ThreadPoolExecutor``; the connection is created in that thread. The event loop never waits on an
  ``fsync``, and SQLite never sees two threads (so no locking games inside SQLite).
* **WAL mode.** Readers never block the single writer and a commit is one sequential append to the
  WAL. ``sync="full"`` sets ``synchronous=FULL`` (a returned ``append`` survives power loss);
  ``sync="normal"`` sets ``NORMAL`` (survives a crash or ``kill -9`` of the process, may lose the last
  commits on power loss, much faster on slow flash).
* **Leases live in memory only.** ``take`` marks rows as in flight; ``ack`` deletes them; ``release``
  and ``release_all`` (on disconnect) hand them back. A crash forgets every lease, so everything not
  acked is pending again after a restart: at-least-once, never at-most-once.
* **Sequence numbers** are assigned here, explicitly, from a counter kept in the ``meta`` table and
  updated in the same transaction as the insert: never reused, even after the rows are deleted or the
  queue is emptied. After a corrupt database is moved aside, the counter restarts above both whatever
  could be salvaged from the old file and the current wall-clock time in microseconds, so a receiver
  that deduplicates by sequence does not discard the new rows as duplicates.
* **Order of** ``take``: all pending events first (oldest first), then telemetry. With a telemetry
  backlog larger than what fits in one ``take``, half of the telemetry share comes from the oldest
  backlog and half from the newest rows, so live data keeps flowing during a long replay while the
  backlog drains from its old end. The rows of one batch are therefore *not* contiguous in sequence and
  the receiver must order by ``seq`` (and drop duplicates by ``seq``) rather than by arrival.
* **Bounded by bytes.** A row costs ``len(body) + len(topic as UTF-8) + ROW_OVERHEAD`` (see
  :data:`ROW_OVERHEAD`). When an append would push the total above ``max_bytes``, the oldest telemetry
  rows that are not leased are dropped first; events are dropped (oldest first) only when no telemetry
  row remains at all. Leased rows are never dropped: they are in flight and their fate is decided by
  ``ack``/``release``; consequently the store may exceed ``max_bytes`` by at most the bytes currently
  leased. Every drop is counted (total, events, telemetry), and the counters live in the ``meta`` table
  so they survive restarts.
* **Errors** from SQLite or the file system surface as :class:`agent.errors.StoreError` chained to the
  original exception; a failed call rolls its transaction back, so committed rows are never lost and the
  in-memory counters are only updated after a successful commit.
* **Statistics** (:meth:`Outbox.stats`) come from in-memory counters, kept exact by every write and
  recomputed from the database on ``open``, so ``status`` and the watchdog can call it at any rate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent.errors import StoreError

__all__ = ["DEFAULT_MAX_BYTES", "ROW_OVERHEAD", "Kind", "Outbox", "Record", "Stored"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Default bound: a few days of a typical building's telemetry on a small SD card."""

ROW_OVERHEAD = 40
"""Bytes charged per row on top of body and topic.

Approximates what SQLite spends per row besides the payload: the 8-byte ``ts`` REAL, the seq/kind
varints, the record header, the 2-byte cell pointer and the ``(kind, seq)`` index entry. Charging it
keeps ``max_bytes`` an honest bound on the database size for small bodies (a 0-byte body still costs).
"""

SCHEMA_VERSION = 1

_CHUNK = 500  # rows per DELETE ... IN (...) statement; well below SQLITE_MAX_VARIABLE_NUMBER
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_SIZE_SQL = "length(body) + length(CAST(topic AS BLOB))"
_ROW_SQL = "SELECT seq, kind, topic, body, ts FROM outbox WHERE kind = ? ORDER BY seq"


class Kind(enum.IntEnum):
    """What a row carries; decides its priority and its drop order."""

    EVENT = 0
    TELEMETRY = 1


@dataclass(frozen=True, slots=True)
class Record:
    """A message to store; ``ts`` is its creation time (epoch seconds), not the time it was queued."""

    kind: Kind
    topic: str
    body: bytes
    ts: float


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored message as handed to the uplink; ``seq`` is what the receiver deduplicates on."""

    seq: int
    kind: Kind
    topic: str
    body: bytes
    ts: float


def row_size(topic: str, body: bytes) -> int:
    """Bytes a row is charged against ``max_bytes`` (documented in :data:`ROW_OVERHEAD`)."""
    return len(body) + len(topic.encode()) + ROW_OVERHEAD


class _Corrupt(Exception):
    """Internal: the file exists but is not a usable database (triggers move-aside)."""


class Outbox:
    """SQLite-backed, byte-bounded, at-least-once queue; see the module docstring for the semantics.

    Use from one event loop. ``release``/``release_all``/``stats`` are synchronous and must be called
    from the event loop thread. Only one ``Outbox`` may use a given file at a time (the agent is a
    single process; a second writer would hand out duplicate sequence numbers).
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        sync: Literal["full", "normal"] = "full",
    ) -> None:
        """Remember the settings; no I/O happens here so building the agent from config stays pure."""
        if max_bytes <= ROW_OVERHEAD:
            raise ValueError(f"max_bytes must be larger than the per-row overhead ({ROW_OVERHEAD})")
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be 'full' or 'normal', not {sync!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock_fd: int | None = None
        self.sync = sync
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # created and used only on the worker thread
        self._open = False
        # In-memory state shared between the worker thread and the loop thread; guarded by _lock.
        self._lock = threading.Lock()
        self._leased: dict[int, Kind] = {}
        self._leased_count = [0, 0]  # by Kind
        self._count = [0, 0]  # rows by Kind (leased included)
        self._bytes = [0, 0]  # charged bytes by Kind
        self._dropped = [0, 0]  # by Kind, persisted in meta
        self._oldest_ts: float | None = None
        self._last_seq = 0
        self._full_logged = False
        self._pending = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create or recover the database on the worker thread.

        A corrupt file is moved aside to ``<name>.corrupt-<unix ts>`` (with its WAL) and a fresh one is
        started, logging an error: a box that refuses to start forever is worse than one that lost its
        backlog. Other failures (permissions, disk full, a newer schema) raise :class:`StoreError`.
        """
        if self._open:
            return
        self._lock_file()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._open = True
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._open = False
            self._executor.shutdown(wait=False)
            self._executor = None
            self._unlock_file()
            raise
        if self._has_pending():
            self._pending.set()

    async def close(self) -> None:
        """Checkpoint the WAL into the database and close; safe to call twice or before ``open``."""
        if not self._open or self._executor is None:
            return
        executor = self._executor
        try:
            await self._call(self._close_sync)
        finally:
            self._open = False
            self._executor = None
            executor.shutdown(wait=False)
            self._unlock_file()

    def _lock_file(self) -> None:
        """One process per outbox: a second agent on the same state directory would hand out the same
        sequence numbers and publish the same rows. ``<db>.lock`` is held (flock) while open."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise StoreError(
                f"outbox {self.path} is in use by another process (pid {holder}): is edge-agent already "
                "running with this state directory?"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock_file(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    # ------------------------------------------------------------------ queue API

    async def append(self, records: Sequence[Record]) -> list[int]:
        """Store ``records`` in one transaction and return their sequence numbers.

        When this returns, the rows are committed (to the durability ``sync`` promises). If it raises,
        nothing of this call was stored. A single record larger than ``max_bytes`` is refused with
        :class:`StoreError` (the whole call is refused, the queue is left alone) because dropping the
        entire backlog for it would still not make room.
        """
        if not records:
            return []
        rows: list[tuple[int, str, bytes, float, int]] = []
        for rec in records:
            size = row_size(rec.topic, rec.body)
            if size > self.max_bytes:
                raise StoreError(
                    f"outbox record for topic {rec.topic!r} is {size} bytes (with {ROW_OVERHEAD} bytes of "
                    f"row overhead), larger than the whole outbox (max_bytes={self.max_bytes}); refused"
                )
            rows.append((int(Kind(rec.kind)), rec.topic, bytes(rec.body), float(rec.ts), size))
        seqs = await self._call(self._append_sync, rows)
        if self._has_pending():
            self._pending.set()
        return seqs

    async def take(self, limit: int) -> list[Stored]:
        """Lease up to ``limit`` rows that are not already leased: events first, then telemetry.

        Telemetry fairness: when more telemetry is pending than fits, about half of the telemetry share
        is the oldest backlog and half the newest rows (see module docstring); the result is sorted by
        seq within each kind. If the caller is cancelled, rows leased for it are released again.
        """
        if limit <= 0:
            return []
        rows = await self._call(self._take_sync, limit, on_orphan=lambda got: self.release(r.seq for r in got))
        if not self._has_pending():
            self._pending.clear()
        return rows

    async def ack(self, seqs: Iterable[int]) -> None:
        """Delete rows the broker has acknowledged (PUBACK); unknown or already-gone seqs are ignored."""
        unique = sorted(set(seqs))
        if unique:
            await self._call(self._ack_sync, unique)

    def release(self, seqs: Iterable[int]) -> None:
        """Hand leased rows back (publish failed) so the next ``take`` offers them again."""
        with self._lock:
            for seq in seqs:
                kind = self._leased.pop(seq, None)
                if kind is not None:
                    self._leased_count[kind] -= 1
        if self._has_pending():
            self._pending.set()

    def release_all(self) -> None:
        """Forget every lease (the session dropped: nothing in flight will be acknowledged)."""
        with self._lock:
            self._leased.clear()
            self._leased_count = [0, 0]
        if self._has_pending():
            self._pending.set()

    async def wait(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (API contract)
        """Wait until some un-leased row is pending; ``False`` on timeout.

        The uplink sleeps here instead of polling the database.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._has_pending():
            self._pending.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._pending.wait()
            except TimeoutError:
                return self._has_pending()
        return True

    async def ping(self) -> None:
        """Round-trip a trivial query through the worker thread.

        The watchdog awaits this under a timeout: a worker wedged on a hung ``fsync`` or a stuck
        transaction must stop the watchdog, not only a wedged event loop.
        """
        await self._call(self._ping_sync)

    def stats(self) -> dict[str, Any]:
        """Exact queue figures from memory (no I/O): cheap enough for ``status`` and the watchdog."""
        with self._lock:
            ev, tel = Kind.EVENT, Kind.TELEMETRY
            return {
                "depth": self._count[ev] + self._count[tel],
                "bytes": self._bytes[ev] + self._bytes[tel],
                "oldest_ts": self._oldest_ts,
                "events": self._count[ev],
                "telemetry": self._count[tel],
                "leased": len(self._leased),
                "dropped_total": self._dropped[ev] + self._dropped[tel],
                "dropped_events": self._dropped[ev],
                "dropped_telemetry": self._dropped[tel],
                "last_seq": self._last_seq,
                "max_bytes": self.max_bytes,
            }

    # ------------------------------------------------------------------ plumbing

    def _has_pending(self) -> bool:
        with self._lock:
            return sum(self._count) > len(self._leased)

    async def _call(
        self, fn: Callable[..., T], *args: Any, on_orphan: Callable[[T], None] | None = None
    ) -> T:
        """Run ``fn`` on the worker thread.

        The worker keeps running if the caller is cancelled (a commit in progress completes and stays
        committed); ``on_orphan`` then receives the result nobody will read (``take`` uses it to give
        the leased rows back).
        """
        if not self._open or self._executor is None:
            raise StoreError(f"outbox {self.path} is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:

            def _orphaned(done: asyncio.Future[T]) -> None:
                if done.cancelled() or done.exception() is not None:
                    return  # retrieving the exception keeps asyncio from logging it as never retrieved
                if on_orphan is not None:
                    on_orphan(done.result())

            fut.add_done_callback(_orphaned)
            raise

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"outbox {self.path} is not open")
        return self._conn

    def _fail(self, conn: sqlite3.Connection | None, what: str, exc: BaseException) -> StoreError:
        """Roll back whatever the failed call started and build the chained error to raise."""
        if conn is not None and conn.in_transaction:
            try:
                conn.rollback()
            except sqlite3.Error:
                log.debug("rollback after failed %s also failed", what, exc_info=True)
        return StoreError(f"outbox {what} failed ({self.path}): {exc}")

    # --- worker-thread functions (never call from the event loop) ---

    def _connect(self) -> sqlite3.Connection:
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

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"outbox directory {self.path.parent} cannot be created: {exc}") from exc
        seq_floor, lost = 0, [0, 0]
        try:
            try:
                conn = self._connect()
            except sqlite3.DatabaseError as exc:
                if (exc.sqlite_errorcode & 0xFF) not in _CORRUPT_CODES:
                    raise
                raise _Corrupt(str(exc)) from exc
        except _Corrupt as corrupt:
            seq_floor, lost = self._move_aside(str(corrupt))
            try:
                conn = self._connect()
            except (sqlite3.Error, _Corrupt) as exc:
                raise StoreError(f"outbox {self.path}: cannot create a fresh database: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"outbox {self.path} cannot be opened: {exc}") from exc
        self._conn = conn
        try:
            self._recover(conn, seq_floor, lost)
        except sqlite3.Error as exc:
            self._conn = None
            conn.close()
            raise StoreError(f"outbox {self.path}: recovery failed: {exc}") from exc

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
                    if kind in (Kind.EVENT, Kind.TELEMETRY):
                        lost[kind] += int(count)
            except sqlite3.Error:
                pass
        finally:
            old.close()
        return last_seq, lost

    def _recover(self, conn: sqlite3.Connection, seq_floor: int, lost: list[int]) -> None:
        """Recompute every in-memory counter from the database: the source of truth after a restart."""
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        count, size = [0, 0], [0, 0]
        for kind, n, b in conn.execute(
            f"SELECT kind, count(*), coalesce(sum({_SIZE_SQL}), 0) FROM outbox GROUP BY kind"
        ):
            if kind in (Kind.EVENT, Kind.TELEMETRY):
                count[kind], size[kind] = int(n), int(b) + ROW_OVERHEAD * int(n)
        max_seq = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        with self._lock:
            self._count, self._bytes = count, size
            self._leased.clear()
            self._leased_count = [0, 0]
            self._dropped = [
                int(meta.get("dropped_events", 0)) + lost[Kind.EVENT],
                int(meta.get("dropped_telemetry", 0)) + lost[Kind.TELEMETRY],
            ]
            self._full_logged = False
            self._last_seq = max(int(meta.get("last_seq", 0)), max_seq, seq_floor)
            self._oldest_ts = self._head_ts(conn)
        if seq_floor:
            # Persist the floor and the salvaged loss counts right away, before any append.
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", self._meta_rows())
            conn.execute("COMMIT")

    def _meta_rows(self) -> list[tuple[str, int]]:
        return [
            ("last_seq", self._last_seq),
            ("dropped_events", self._dropped[Kind.EVENT]),
            ("dropped_telemetry", self._dropped[Kind.TELEMETRY]),
        ]

    @staticmethod
    def _head_ts(conn: sqlite3.Connection) -> float | None:
        """``ts`` of the earliest-queued row: queue order, not min(ts), so a clock step does not lie."""
        row = conn.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def _ping_sync(self) -> None:
        try:
            self._db().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise self._fail(None, "ping", exc) from exc

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("outbox %s: checkpoint on close failed: %s", self.path, exc)
        finally:
            conn.close()

    def _append_sync(self, rows: list[tuple[int, str, bytes, float, int]]) -> list[int]:
        conn = self._db()
        first = self._last_seq + 1  # only this thread changes _last_seq
        seqs = list(range(first, first + len(rows)))
        added_n, added_b = [0, 0], [0, 0]
        for kind, _topic, _body, _ts, row_bytes in rows:
            added_n[kind] += 1
            added_b[kind] += row_bytes
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO outbox(seq, kind, topic, body, ts) VALUES (?, ?, ?, ?, ?)",
                [(seq, k, t, b, ts) for seq, (k, t, b, ts, _s) in zip(seqs, rows, strict=True)],
            )
            with self._lock:
                count = [c + a for c, a in zip(self._count, added_n, strict=True)]
                size = [c + a for c, a in zip(self._bytes, added_b, strict=True)]
                leased = set(self._leased)
            dropped_n, dropped_b = self._trim(conn, count, size, leased)
            dropped = [d + n for d, n in zip(self._dropped, dropped_n, strict=True)]
            conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [
                    ("last_seq", seqs[-1]),
                    ("dropped_events", dropped[Kind.EVENT]),
                    ("dropped_telemetry", dropped[Kind.TELEMETRY]),
                ],
            )
            head = self._head_ts(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(conn, f"append of {len(rows)} records", exc) from exc
        with self._lock:
            self._last_seq = seqs[-1]
            for k in (Kind.EVENT, Kind.TELEMETRY):
                self._count[k] += added_n[k] - dropped_n[k]
                self._bytes[k] += added_b[k] - dropped_b[k]
                self._dropped[k] += dropped_n[k]
            self._oldest_ts = head
            total = sum(self._bytes)
        self._log_pressure(dropped_n, total)
        return seqs

    def _trim(
        self, conn: sqlite3.Connection, count: list[int], size: list[int], leased: set[int]
    ) -> tuple[list[int], list[int]]:
        """Delete un-leased rows until the total fits ``max_bytes``: telemetry first, events last.

        Events are only touched once no telemetry row is left at all (leased telemetry still counts as
        "left": it will be acked or released soon, and an event is worth more than the overshoot).
        """
        dropped_n, dropped_b = [0, 0], [0, 0]
        need = sum(size) - self.max_bytes
        for kind in (Kind.TELEMETRY, Kind.EVENT):
            if need <= 0:
                break
            if kind == Kind.EVENT and count[Kind.TELEMETRY] - dropped_n[Kind.TELEMETRY] > 0:
                break
            victims: list[int] = []
            cur = conn.execute(f"SELECT seq, {_SIZE_SQL} FROM outbox WHERE kind = ? ORDER BY seq", (kind,))
            try:
                for seq, raw in cur:
                    if seq in leased:
                        continue
                    victims.append(seq)
                    need -= raw + ROW_OVERHEAD
                    dropped_b[kind] += raw + ROW_OVERHEAD
                    if need <= 0:
                        break
            finally:
                cur.close()
            for i in range(0, len(victims), _CHUNK):
                chunk = victims[i : i + _CHUNK]
                conn.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
            dropped_n[kind] = len(victims)
        return dropped_n, dropped_b

    def _log_pressure(self, dropped_n: list[int], total: int) -> None:
        """Log the transition into and out of dropping, not every drop (counters carry the detail)."""
        if sum(dropped_n) and not self._full_logged:
            self._full_logged = True
            log.warning(
                "outbox %s is full (max_bytes=%d): dropping oldest telemetry (this append: %d telemetry, "
                "%d events dropped)",
                self.path,
                self.max_bytes,
                dropped_n[Kind.TELEMETRY],
                dropped_n[Kind.EVENT],
            )
        elif self._full_logged and total < self.max_bytes * 0.9:
            self._full_logged = False
            with self._lock:
                d_tel, d_ev = self._dropped[Kind.TELEMETRY], self._dropped[Kind.EVENT]
            log.info(
                "outbox %s is below its limit again (dropped so far: %d telemetry, %d events)",
                self.path,
                d_tel,
                d_ev,
            )

    def _take_sync(self, limit: int) -> list[Stored]:
        conn = self._db()
        with self._lock:
            leased = set(self._leased)
            tel_free = self._count[Kind.TELEMETRY] - self._leased_count[Kind.TELEMETRY]
        try:
            events = self._scan(conn, Kind.EVENT, limit, leased, newest=False)
            room = limit - len(events)
            telemetry: list[tuple[Any, ...]] = []
            if room > 0 and tel_free > 0:
                if tel_free <= room:
                    telemetry = self._scan(conn, Kind.TELEMETRY, room, leased, newest=False)
                else:
                    old_n = (room + 1) // 2
                    telemetry = self._scan(conn, Kind.TELEMETRY, old_n, leased, newest=False)
                    leased.update(r[0] for r in telemetry)
                    newest = self._scan(conn, Kind.TELEMETRY, room - old_n, leased, newest=True)
                    telemetry.extend(reversed(newest))
        except sqlite3.Error as exc:
            raise self._fail(conn, f"take of {limit} rows", exc) from exc
        out = [Stored(seq, Kind(kind), topic, body, ts) for seq, kind, topic, body, ts in events + telemetry]
        with self._lock:
            for s in out:
                if s.seq not in self._leased:
                    self._leased[s.seq] = s.kind
                    self._leased_count[s.kind] += 1
        return out

    @staticmethod
    def _scan(
        conn: sqlite3.Connection, kind: Kind, n: int, leased: set[int], *, newest: bool
    ) -> list[tuple[Any, ...]]:
        """First ``n`` un-leased rows of ``kind`` from the old (or new) end, walking the kind index."""
        out: list[tuple[Any, ...]] = []
        if n <= 0:
            return out
        cur = conn.execute(_ROW_SQL + (" DESC" if newest else ""), (int(kind),))
        try:
            for row in cur:
                if row[0] in leased:
                    continue
                out.append(row)
                if len(out) >= n:
                    break
        finally:
            cur.close()  # an unfinished statement would pin a read snapshot and block checkpoints
        return out

    def _ack_sync(self, seqs: list[int]) -> None:
        conn = self._db()
        gone_n, gone_b = [0, 0], [0, 0]
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i in range(0, len(seqs), _CHUNK):
                chunk = seqs[i : i + _CHUNK]
                for kind, raw in conn.execute(
                    f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))}) "
                    f"RETURNING kind, {_SIZE_SQL}",
                    chunk,
                ):
                    if kind in (Kind.EVENT, Kind.TELEMETRY):
                        gone_n[kind] += 1
                        gone_b[kind] += raw + ROW_OVERHEAD
            head = self._head_ts(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(conn, f"ack of {len(seqs)} rows", exc) from exc
        with self._lock:
            for k in (Kind.EVENT, Kind.TELEMETRY):
                self._count[k] -= gone_n[k]
                self._bytes[k] -= gone_b[k]
            for seq in seqs:
                kind = self._leased.pop(seq, None)
                if kind is not None:
                    self._leased_count[kind] -= 1
            self._oldest_ts = head
