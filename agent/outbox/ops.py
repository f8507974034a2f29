"""The queue's transactions (append with trim, take, ack), run on the outbox's worker thread only."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from agent.errors import StoreError, StoreFull
from agent.outbox.counters import Counters
from agent.outbox.records import CHUNK, KINDS, ROW_OVERHEAD, SIZE_SQL, Kind, Stored, head_ts
from agent.outbox.seqmark import SeqMark
from agent.outbox.space import SpaceGuard
from agent.outbox.trim import Trimmer

log = logging.getLogger("agent.outbox")

_ROW_SQL = "SELECT seq, kind, topic, body, ts FROM outbox WHERE kind = ? ORDER BY seq"

Row = tuple[int, str, bytes, float, int]  # kind, topic, body, ts, charged size


class QueueOps:
    """One transaction per call; the in-memory counters are only updated after the commit."""

    def __init__(self, path: Path, counters: Counters, trimmer: Trimmer, mark: SeqMark, space: SpaceGuard) -> None:
        self.path = path
        self.mark = mark
        self.space = space
        self.counters = counters
        self.trimmer = trimmer

    def fail(self, conn: sqlite3.Connection | None, what: str, exc: BaseException) -> StoreError:
        """Roll back whatever the failed call started and build the chained error to raise."""
        if conn is not None and conn.in_transaction:
            try:
                conn.rollback()
            except sqlite3.Error:
                log.debug("rollback after failed %s also failed", what, exc_info=True)
        full = isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
        return (StoreFull if full else StoreError)(f"outbox {what} failed ({self.path}): {exc}")

    def append(self, conn: sqlite3.Connection, rows: list[Row], max_bytes: int) -> list[int]:
        c = self.counters
        first = c.last_seq + 1  # only the worker thread changes last_seq
        seqs = list(range(first, first + len(rows)))
        added_n, added_b = [0, 0], [0, 0]
        for kind, _topic, _body, _ts, row_bytes in rows:
            added_n[kind] += 1
            added_b[kind] += row_bytes
        try:
            pages = self.space.pages_if_low(conn)
        except sqlite3.Error as exc:
            raise self.fail(conn, f"append of {len(rows)} records", exc) from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO outbox(seq, kind, topic, body, ts) VALUES (?, ?, ?, ?, ?)",
                [(seq, k, t, b, ts) for seq, (k, t, b, ts, _s) in zip(seqs, rows, strict=True)],
            )
            count, size = c.with_added(added_n, added_b)
            dropped_n, dropped_b = self.trimmer.trim(conn, max_bytes, count, size, c.leased_set())
            dropped = [d + n for d, n in zip(c.dropped, dropped_n, strict=True)]
            conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [
                    ("last_seq", seqs[-1]),
                    ("dropped_events", dropped[Kind.EVENT]),
                    ("dropped_telemetry", dropped[Kind.TELEMETRY]),
                ],
            )
            head = head_ts(conn)
            self.space.check_growth(conn, pages)
            conn.execute("COMMIT")
        except StoreFull:
            self.fail(conn, "append", StoreFull())  # roll back
            raise
        except sqlite3.Error as exc:
            raise self.fail(conn, f"append of {len(rows)} records", exc) from exc
        self.mark.write(seqs[-1])  # before any take can hand these seqs out
        if not self.space.has_reserve:
            self.space.make_reserve()  # after a release: again as soon as there is room
        total = c.appended(seqs[-1], added_n, added_b, dropped_n, dropped_b, head)
        self.trimmer.log_pressure(max_bytes, dropped_n, total, list(c.dropped))
        return seqs

    def take(self, conn: sqlite3.Connection, limit: int) -> list[Stored]:
        leased, tel_free = self.counters.take_view()
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
            raise self.fail(conn, f"take of {limit} rows", exc) from exc
        out = [Stored(seq, Kind(kind), topic, body, ts) for seq, kind, topic, body, ts in events + telemetry]
        self.counters.lease(out)
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

    def ack(self, conn: sqlite3.Connection, seqs: list[int], *, refused: bool = False) -> None:
        """Delete ``seqs``: delivered (PUBACK), or set aside because they can never be delivered
        (``refused``: counted as dropped, persisted in ``meta`` with the delete)."""
        gone_n, gone_b = [0, 0], [0, 0]
        what = "setting aside" if refused else "ack"
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i in range(0, len(seqs), CHUNK):
                chunk = seqs[i : i + CHUNK]
                for kind, raw in conn.execute(
                    f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))}) "
                    f"RETURNING kind, {SIZE_SQL}",
                    chunk,
                ):
                    if kind in KINDS:
                        gone_n[kind] += 1
                        gone_b[kind] += raw + ROW_OVERHEAD
            n_refused = sum(gone_n) if refused else 0
            if n_refused:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dropped_refused', ?)",
                             (self.counters.refused + n_refused,))
            head = head_ts(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self.fail(conn, f"{what} of {len(seqs)} rows", exc) from exc
        self.counters.removed(seqs, gone_n, gone_b, head, n_refused)
