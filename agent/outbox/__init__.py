"""Durable store-and-forward queue between the pipeline and the MQTT uplink.

Why it exists: a site box loses its uplink (WAN down, broker restart, certificate rotation) far more
often than it loses power, and neither must lose data. Every sample or event is committed to SQLite
*before* it is offered to the uplink and deleted only after the broker's PUBACK, so delivery is
at-least-once; each row carries a per-agent, never-reused sequence number so the receiver can drop the
duplicates that at-least-once implies.

Parts (one type each): :class:`Outbox` (``facade``: the API and its worker thread), ``FileLock``
(``filelock``), ``Opener`` (``recovery``: open, move damaged files aside, seq floor), ``QueueOps``
(``ops``: the transactions), ``Trimmer`` (``trim``: bound by bytes), ``Counters`` (``counters``: stats).

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
* **Storage faults** (see ``recovery``, ``seqmark``, ``space``): a damaged or unusable file is moved aside,
  every start that cannot prove continuity of the sequence starts a new space above a clock floor, the WAL
  is kept small on a low disk and a margin and a reserve file keep deletes possible on a full disk; a delete that fails
  keeps its rows as delivered (never resent) instead of failing the session.
* **Errors** from SQLite or the file system surface as :class:`agent.errors.StoreError` chained to the
  original exception; a failed call rolls its transaction back, so committed rows are never lost and the
  in-memory counters are only updated after a successful commit.
* **Statistics** (:meth:`Outbox.stats`) come from in-memory counters, kept exact by every write and
  recomputed from the database on ``open``, so ``status`` and the watchdog can call it at any rate.
"""

from agent.outbox.facade import Outbox
from agent.outbox.records import DEFAULT_MAX_BYTES, ROW_OVERHEAD, SCHEMA_VERSION, Kind, Record, Stored, row_size

__all__ = ["DEFAULT_MAX_BYTES", "ROW_OVERHEAD", "SCHEMA_VERSION", "Kind", "Outbox", "Record", "Stored", "row_size"]
