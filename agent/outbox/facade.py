"""The :class:`Outbox` API: lifecycle, queue calls, and the one worker thread that owns the connection."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent.errors import StoreError, StoreFull
from agent.outbox.counters import Counters
from agent.outbox.filelock import FileLock
from agent.outbox.ops import QueueOps, Row
from agent.outbox.records import DEFAULT_MAX_BYTES, ROW_OVERHEAD, Kind, Record, Stored, row_size
from agent.outbox.recovery import Incident, Opener
from agent.outbox.seqmark import SeqMark
from agent.outbox.space import SpaceGuard
from agent.outbox.trim import Trimmer

T = TypeVar("T")

log = logging.getLogger("agent.outbox")


class Outbox:
    """SQLite-backed, byte-bounded, at-least-once queue; see the package docstring for the semantics.

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
        self.sync = sync
        self._filelock = FileLock(self.path)
        self._mark = SeqMark(self.path, durable_bound=sync == "normal")
        self._mark_at_open: int | None = None
        self._unclean = False  # at open: the box restarted since the agent last wrote; only the bound is sure
        self.incident: Incident | None = None  # why the sequence space restarted at the last open, if it did
        self.ack_failing_since: float | None = None  # monotonic time of the first failed delete of a streak
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # created and used only on the worker thread
        self._open = False
        self._counters = Counters()
        self._trimmer = Trimmer(self.path)
        self._space = SpaceGuard(self.path)
        self._ops = QueueOps(self.path, self._counters, self._trimmer, self._mark, self._space)
        self._opener = Opener(self.path, sync)
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
        self._filelock.acquire()
        self._mark_at_open = self._mark.open()
        self._unclean = self._mark.durable_bound and self._mark.after_reboot
        if self._unclean:
            self._mark_at_open = self._mark.bound
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._open = True
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._open = False
            self._executor.shutdown(wait=False)
            self._executor = None
            self._mark.close()
            self._filelock.release()
            raise
        if self._counters.has_pending():
            self._pending.set()

    async def close(self) -> None:
        """Checkpoint the WAL into the database and close; safe to call twice or before ``open``."""
        if not self._open or self._executor is None:
            return
        executor = self._executor
        durable = False
        try:
            durable = await self._call(self._close_sync)
        finally:
            self._open = False
            self._executor = None
            executor.shutdown(wait=False)
            self._mark.close(self._counters.last_seq if durable else None)
            self._filelock.release()

    @property
    def is_open(self) -> bool:
        return self._open

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
        rows: list[Row] = []
        for rec in records:
            size = row_size(rec.topic, rec.body)
            if size > self.max_bytes:
                raise StoreError(
                    f"outbox record for topic {rec.topic!r} is {size} bytes (with {ROW_OVERHEAD} bytes of "
                    f"row overhead), larger than the whole outbox (max_bytes={self.max_bytes}); refused"
                )
            rows.append((int(Kind(rec.kind)), rec.topic, bytes(rec.body), float(rec.ts), size))
        seqs = await self._write(lambda: self._ops.append(self._db(), rows, self.max_bytes), for_delete=False)
        if self._counters.has_pending():
            self._pending.set()
        return seqs

    async def take(self, limit: int) -> list[Stored]:
        """Lease up to ``limit`` rows that are not already leased: events first, then telemetry.

        Telemetry fairness: when more telemetry is pending than fits, about half of the telemetry share
        is the oldest backlog and half the newest rows (see package docstring); the result is sorted by
        seq within each kind. If the caller is cancelled, rows leased for it are released again.
        """
        if limit <= 0:
            return []
        rows = await self._call(lambda: self._ops.take(self._db(), limit),
                                on_orphan=lambda got: self.release(r.seq for r in got))
        if not self._counters.has_pending():
            self._pending.clear()
        return rows

    async def ack(self, seqs: Iterable[int]) -> bool:
        """Delete rows the broker has acknowledged (PUBACK); unknown or already-gone seqs are ignored.

        Returns ``False`` when the delete failed (disk full, I/O error): the rows are then kept as delivered,
        never offered again in this run (not even after a reconnect), and deleted by the next ``ack`` that
        commits (``ack([])`` retries). A failing ack is not a reason to drop the MQTT session; a store whose
        deletes keep failing shows in :attr:`ack_failing_since` (the watchdog looks at it).
        """
        wanted = set(seqs)
        unique = sorted(wanted | set(self._counters.delivered_list()))
        if not unique:
            return True
        try:
            await self._write(lambda: self._ops.ack(self._db(), unique), for_delete=True)
        except StoreError as exc:
            self._counters.mark_delivered(wanted)
            if self.ack_failing_since is None:
                self.ack_failing_since = time.monotonic()
                log.warning("outbox: cannot delete %d delivered rows (%s); they are kept and not sent again, the "
                            "delete is retried", len(unique), exc)
            return False
        if self.ack_failing_since is not None:
            log.info("outbox: deletes work again after %.1f s", time.monotonic() - self.ack_failing_since)
            self.ack_failing_since = None
        return True

    async def set_aside(self, rows: Iterable[Stored], reason: str) -> None:
        """Remove rows that can never be delivered (the client or the broker refuses them for a reason that
        will not change, e.g. a wildcard in the topic): one such row at the head of the queue would otherwise
        block the uplink forever. Each is logged and counted in ``dropped_refused`` (and ``dropped_total``)."""
        gone = sorted({r.seq: r for r in rows}.values(), key=lambda r: r.seq)
        if not gone:
            return
        seqs = [r.seq for r in gone]
        try:
            await self._call(lambda: self._ops.ack(self._db(), seqs, refused=True))
        except StoreError as exc:
            # Not offered again (that would spin on a row the client refuses at once); the next ack that
            # commits deletes them (then without counting them as refused: the log below says what they were).
            self._counters.mark_delivered(seqs)
            if self.ack_failing_since is None:
                self.ack_failing_since = time.monotonic()
            log.warning("outbox: cannot delete %d refused rows now (%s); kept aside in memory", len(seqs), exc)
        for r in gone:
            log.error("outbox: set aside %s seq %d to %r (%d B): refused for good (%s); counted in "
                      "dropped_refused", r.kind.name.lower(), r.seq, r.topic, len(r.body), reason)

    def has_pending(self) -> bool:
        """Some row waits to be taken (not leased); from memory, no I/O."""
        return self._counters.has_pending()

    def delivered(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these leased rows: they are never offered again, and the next ``ack``
        deletes them with its own (one delete transaction for several batches)."""
        self._counters.mark_delivered(seqs)

    def release(self, seqs: Iterable[int]) -> None:
        """Hand leased rows back (publish failed) so the next ``take`` offers them again."""
        self._counters.release(seqs)
        if self._counters.has_pending():
            self._pending.set()

    def release_all(self) -> None:
        """Forget every lease (the session dropped: nothing in flight will be acknowledged)."""
        self._counters.release_all()
        if self._counters.has_pending():
            self._pending.set()

    async def wait(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (API contract)
        """Wait until some un-leased row is pending; ``False`` on timeout.

        The uplink sleeps here instead of polling the database.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._counters.has_pending():
            self._pending.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._pending.wait()
            except TimeoutError:
                return self._counters.has_pending()
        return True

    async def ping(self) -> None:
        """Round-trip a trivial query through the worker thread.

        The watchdog awaits this under a timeout: a worker wedged on a hung ``fsync`` or a stuck
        transaction must stop the watchdog, not only a wedged event loop.
        """
        await self._call(self._ping_sync)

    @property
    def epoch(self) -> int:
        """First seq of the current sequence space (it restarts above a clock floor when continuity with the
        last seq handed out cannot be proven); 0 for a space older than epochs. Published in the birth."""
        return self._counters.epoch

    def stats(self) -> dict[str, Any]:
        """Exact queue figures from memory (no I/O): cheap enough for ``status`` and the watchdog."""
        return self._counters.stats(self.max_bytes)

    # ------------------------------------------------------------------ plumbing

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

    async def _write(self, fn: Callable[[], T], *, for_delete: bool) -> T:
        """Run a write transaction on the worker. On SQLite's own disk-full (not the margin's refusal to grow),
        unstick the WAL (see ``space``) and retry: with a checkpoint, which gives the reserve back only if it
        cannot complete; a delete then also tries with the reserve given back (what it is kept for)."""
        for reserve in (False, True) if for_delete else (False,):
            try:
                return await self._call(fn)
            except StoreFull as exc:
                if not isinstance(exc.__cause__, sqlite3.Error):
                    raise
                if not await self._call(lambda r=reserve: self._space.unstick(self._db(), reserve=r)):
                    raise
        return await self._call(fn)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"outbox {self.path} is not open")
        return self._conn

    # --- worker-thread functions (never call from the event loop) ---

    def _open_sync(self) -> None:
        self._trimmer.reset()
        self._conn, self.incident = self._opener.open(self._counters, self._mark_at_open, unclean=self._unclean)
        self._mark.write(self._counters.last_seq)
        self._space.small_wal = None
        self._space.tune(self._conn)
        self._space.make_reserve()

    def _ping_sync(self) -> None:
        try:
            self._db().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise self._ops.fail(None, "ping", exc) from exc

    def _close_sync(self) -> bool:
        """``True`` when every commit is in the database file, synced (a complete checkpoint syncs it)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return False
        try:
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return bool(busy == 0 and frames == done)
        except sqlite3.Error as exc:
            log.warning("outbox %s: checkpoint on close failed: %s", self.path, exc)
            return False
        finally:
            conn.close()
