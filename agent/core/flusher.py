"""From the pipeline and the event queue into the outbox: batching, the commit, and what happens when the
store fails (records held in memory, bounded; the outbox opened again later).

A record taken from the event queue or the pipeline is never only in a local variable: it goes at once (no
``await`` in between) into :attr:`Flusher.unstored`, and leaves it only when the outbox has committed it. The
store itself runs as a task of its own that nobody cancels (:meth:`Flusher.store`): cancelling the flusher
(shutdown on SIGTERM, a reload) while a commit is in flight lets the commit end, stored or held, and
:meth:`Flusher.flush_now` waits for it before it stores what is left. So an event taken is stored or still
held on every cancellation path; what is held at exit is counted in the journal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.config import Site
from agent.core.pipeline import Pipeline
from agent.errors import EdgeAgentError, StoreError, StoreFull, StoreInUse
from agent.outbox import Kind, Outbox, Record, row_size
from agent.uplink.topics import Topics

log = logging.getLogger("edge_agent")

UNSTORED_MAX = 5000  # records held in memory while the outbox cannot be written
EVENT_QUEUE = 1000
STORE_RETRY = 5.0  # seconds between attempts to open an outbox that could not be opened (full disk...)
PIECE = 16  # records per append when a held batch is stored piecemeal on a full disk


class Flusher:
    """Events are committed at once, telemetry every ``batch_interval``. A record that can never be stored or
    sent is dropped alone and counted; a failing store never stops polling."""

    def __init__(self, site: Site, outbox: Outbox, pipeline: Pipeline, topics: Topics,
                 on_open: Callable[[], None]) -> None:
        self.site = site
        self.outbox = outbox
        self.pipeline = pipeline
        self.topics = topics
        self.on_open = on_open  # called after every successful open (the store's incident report)
        self.events: asyncio.Queue[tuple[str, bytes, float]] = asyncio.Queue(EVENT_QUEUE)
        self.events_dropped = 0
        self.progress = time.monotonic()  # watchdog: last time the loop was seen alive
        self.store_error: str | None = None
        self.unstored: list[Record] = []  # records taken and not yet committed (held on a store error)
        self.unstored_dropped = 0
        self.oversize_dropped = 0
        self._next_open = 0.0  # monotonic time of the next attempt to open the outbox while it is closed
        self._storing: asyncio.Task[None] | None = None  # the store in flight (it is never cancelled)

    def queue(self, topic: str, body: bytes, ts: float) -> None:
        """An event-class record (events, acks, births): committed at the next turn of the loop."""
        try:
            self.events.put_nowait((topic, body, ts))
        except asyncio.QueueFull:
            self.events_dropped += 1

    async def run(self) -> None:
        interval = max(self.site.model.uplink.batch_interval, 0.05)
        next_flush = time.monotonic() + interval
        while True:
            self.progress = time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, next_flush - time.monotonic())):
                    topic, body, ts = await self.events.get()
                    # held before the next await: a cancellation from here on finds it in ``unstored``
                    self.unstored.append(Record(Kind.EVENT, topic, body, ts))
            except TimeoutError:
                pass
            telemetry = time.monotonic() >= next_flush
            if telemetry:
                next_flush = time.monotonic() + interval
            self.take(telemetry)
            if self.unstored:
                await self.store()

    def take(self, telemetry: bool) -> None:
        """Move every queued event, and (when ``telemetry``) the pipeline's batches, into ``unstored``, without
        an ``await``: from the queue to the held list in one step."""
        while not self.events.empty():
            topic, body, ts = self.events.get_nowait()
            self.unstored.append(Record(Kind.EVENT, topic, body, ts))
        if telemetry:
            for device, body, ts in self.pipeline.drain():
                self.unstored.append(Record(Kind.TELEMETRY, self.topics.telemetry(device), body, ts))

    async def store(self) -> None:
        """Store what is held, in a task nobody cancels: a cancelled caller leaves, the commit ends anyway
        (its records stored or still held), and the next ``store`` or ``settle`` waits for it."""
        await self.settle()
        # no await between the check in ``settle`` and this: one store at a time
        task = asyncio.get_running_loop().create_task(self._store_held(), name="flusher:store")
        self._storing = task
        await asyncio.shield(task)

    async def settle(self) -> None:
        """Wait until no store is in flight (one left running by a cancelled flusher, or another caller's). If
        cancelled meanwhile, still wait for it (bounded by the disk: the outbox's worker ends every commit),
        then go."""
        while self._storing is not None and not self._storing.done():
            task = self._storing
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(task)
                raise
            except Exception:  # its caller saw it; this one only waits
                continue

    async def append(self, records: list[Record]) -> None:
        """Hold ``records`` (after what is already held) and store everything held."""
        self.unstored.extend(records)
        await self.store()

    async def _store_held(self) -> None:
        """Commit what is held to the outbox; records leave ``unstored`` only once committed. If the store fails
        (disk full, I/O error), keep them in memory, bounded (oldest telemetry dropped first, counted), and
        retry at the next flush."""
        # A record that can never fit would make the outbox refuse the whole batch at every flush, and one
        # the broker refuses would be retried forever: both are dropped here, alone, and counted.
        limit = min(self.outbox.max_bytes // 4, self.site.model.uplink.max_message_bytes)
        fits = []
        for r in self.unstored:
            if row_size(r.topic, r.body) <= limit:
                fits.append(r)
                continue
            self.oversize_dropped += 1
            log.error("dropping a %d-byte %s message to %s: larger than uplink.max_message_bytes or a "
                      "quarter of outbox.max_bytes", len(r.body), r.kind.name.lower(), r.topic)
        self.unstored[:] = fits
        batch = list(fits)  # records taken while this store runs go after it, in ``unstored``
        if not batch:
            return
        if not self.outbox.is_open and time.monotonic() >= self._next_open:
            await self.open_outbox()
        try:
            try:
                await self.outbox.append(batch)
                del self.unstored[:len(batch)]
            except StoreFull:
                # On a full disk rows go only into pages the file already has (freed as delivered rows are
                # deleted): a held batch that grew past them would be refused whole at every flush while
                # delivery frees a few pages at a time. Store what fits, in order, and hold the rest.
                stored = await self._append_in_pieces(batch)
                if stored < len(batch):
                    raise
            if self.store_error:
                log.info("outbox writable again; held records stored")
            self.store_error = None
        except EdgeAgentError as exc:
            # Keep running: devices keep their live state, status shows the problem. Logged once per streak.
            if self.store_error is None:
                hint = " (the disk is full: records are held in memory until there is room)" \
                    if isinstance(exc, StoreFull) else ""
                log.error("outbox: %s%s", exc, hint)
            self.store_error = str(exc)
            while len(self.unstored) > UNSTORED_MAX:
                victim = next((i for i, r in enumerate(self.unstored) if r.kind == Kind.TELEMETRY), 0)
                self.unstored.pop(victim)
                self.unstored_dropped += 1

    async def _append_in_pieces(self, batch: list[Record]) -> int:
        """How many records of ``batch``, from its start, could be stored in pieces of ``PIECE`` (the rest does
        not fit now); each stored piece leaves ``unstored`` as soon as it is committed."""
        stored = 0
        while stored < len(batch):
            piece = batch[stored:stored + PIECE]
            try:
                await self.outbox.append(piece)
            except StoreFull:
                if len(piece) == 1:
                    break
                try:  # a smaller piece may still fit the pages that are free
                    await self.outbox.append(piece[:1])
                except StoreFull:
                    break
                piece = piece[:1]
            del self.unstored[:len(piece)]
            stored += len(piece)
        return stored

    async def flush_now(self) -> None:
        """Move everything pending into the outbox (shutdown, tests), after a store left in flight by a
        cancelled flusher has ended."""
        await self.settle()
        self.take(telemetry=True)
        if self.unstored:
            await self.store()

    async def open_outbox(self) -> bool:
        """Open the outbox. If it cannot be opened (full disk, I/O error, permissions), keep running: polling
        goes on into memory within ``UNSTORED_MAX`` records, the status socket answers, and the open is retried
        every ``STORE_RETRY`` seconds. Only another agent holding the outbox stops the start."""
        try:
            await self.outbox.open()
        except StoreInUse:
            raise
        except StoreError as exc:
            self._next_open = time.monotonic() + STORE_RETRY
            if self.store_error is None:
                cause = "the disk is full" if isinstance(exc, StoreFull) else "the outbox cannot be opened"
                log.error("%s: %s; polling goes on into memory (at most %d records) and the outbox is tried again "
                          "every %g s", cause, exc, UNSTORED_MAX, STORE_RETRY)
            self.store_error = str(exc)
            return False
        if self.store_error is not None:
            log.info("outbox open now (%s)", self.outbox.path)
        self.on_open()
        return True

    def dropped(self) -> int:
        """Records this side of the outbox dropped (queue full, held past the bound, too large)."""
        return self.unstored_dropped + self.oversize_dropped + self.events_dropped

    def stats(self) -> dict[str, Any]:
        return {"store_error": self.store_error, "events_dropped_queue": self.events_dropped,
                "held_in_memory": len(self.unstored), "dropped_unstored": self.unstored_dropped,
                "dropped_oversize": self.oversize_dropped}
