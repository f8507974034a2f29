"""The outbox's in-memory figures: row counts, bytes, drops, leases, last seq, head timestamp.

Shared between the worker thread (which changes them after each commit) and the event loop (``stats``,
``release``); every access holds one lock. They are exact because every write updates them after its
commit and :meth:`Counters.load` recomputes them from the database on open.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from agent.outbox.records import KINDS, Kind, Stored


class Counters:
    """Exact queue figures kept in memory so ``stats`` costs no I/O."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leased: dict[int, Kind] = {}
        self.delivered: set[int] = set()  # leased rows the broker acknowledged but the delete failed: kept leased
        self.leased_count = [0, 0]  # by Kind
        self.count = [0, 0]  # rows by Kind (leased included)
        self.bytes = [0, 0]  # charged bytes by Kind
        self.dropped = [0, 0]  # by Kind, persisted in meta
        self.refused = 0  # rows set aside because the client or broker refuses them for good (meta)
        self.oldest_ts: float | None = None
        self.last_seq = 0
        self.epoch = 0  # first seq of this sequence space (0: the space of a file older than epochs)
        self.lost_unknown = 0  # incidents where queued rows were lost in unknown number (meta)
        self.gap: tuple[int, int] | None = None  # seq range of the last such incident (meta)

    def load(self, count: list[int], size: list[int], dropped: list[int], refused: int, last_seq: int,
             oldest_ts: float | None) -> None:
        """Replace every figure with what the database says (open/recovery); leases are forgotten."""
        with self.lock:
            self.count, self.bytes, self.dropped, self.refused = count, size, dropped, refused
            self.leased.clear()
            self.delivered.clear()
            self.leased_count = [0, 0]
            self.last_seq = last_seq
            self.oldest_ts = oldest_ts

    def set_loss(self, unknown: int, gap: tuple[int, int] | None, epoch: int) -> None:
        with self.lock:
            self.lost_unknown, self.gap, self.epoch = unknown, gap, epoch

    # ------------------------------------------------------------------ leases

    def lease(self, rows: Iterable[Stored]) -> None:
        with self.lock:
            for s in rows:
                if s.seq not in self.leased:
                    self.leased[s.seq] = s.kind
                    self.leased_count[s.kind] += 1

    def release(self, seqs: Iterable[int]) -> None:
        with self.lock:
            for seq in seqs:
                if seq in self.delivered:
                    continue
                kind = self.leased.pop(seq, None)
                if kind is not None:
                    self.leased_count[kind] -= 1

    def release_all(self) -> None:
        """Forget every lease except rows already delivered (they wait for their delete, not for a resend)."""
        with self.lock:
            kept = {s: k for s, k in self.leased.items() if s in self.delivered}
            self.leased = kept
            self.leased_count = [sum(1 for k in kept.values() if k == kind) for kind in KINDS]

    def mark_delivered(self, seqs: Iterable[int]) -> None:
        """The broker has these rows but the store could not delete them yet: never offer them again."""
        with self.lock:
            self.delivered.update(s for s in seqs if s in self.leased)

    def delivered_list(self) -> list[int]:
        with self.lock:
            return list(self.delivered)

    def leased_set(self) -> set[int]:
        with self.lock:
            return set(self.leased)

    def take_view(self) -> tuple[set[int], int]:
        """(leased seqs, telemetry rows not leased) for one ``take``."""
        with self.lock:
            return set(self.leased), self.count[Kind.TELEMETRY] - self.leased_count[Kind.TELEMETRY]

    def has_pending(self) -> bool:
        with self.lock:
            return sum(self.count) > len(self.leased)

    # ------------------------------------------------------------------ after a commit

    def with_added(self, added_n: list[int], added_b: list[int]) -> tuple[list[int], list[int]]:
        """Counts and bytes as they would be with these rows added (input of the trim)."""
        with self.lock:
            count = [c + a for c, a in zip(self.count, added_n, strict=True)]
            size = [c + a for c, a in zip(self.bytes, added_b, strict=True)]
        return count, size

    def appended(self, last_seq: int, added_n: list[int], added_b: list[int], dropped_n: list[int],
                 dropped_b: list[int], head: float | None) -> int:
        """Apply a committed append (with its trim); returns the new total of bytes."""
        with self.lock:
            self.last_seq = last_seq
            for k in KINDS:
                self.count[k] += added_n[k] - dropped_n[k]
                self.bytes[k] += added_b[k] - dropped_b[k]
                self.dropped[k] += dropped_n[k]
            self.oldest_ts = head
            return sum(self.bytes)

    def removed(self, seqs: Iterable[int], gone_n: list[int], gone_b: list[int], head: float | None,
                refused: int = 0) -> None:
        """Apply a committed delete of ``seqs`` (ack, or set aside as refused): counts, bytes, leases, head."""
        with self.lock:
            self.refused += refused
            for k in KINDS:
                self.count[k] -= gone_n[k]
                self.bytes[k] -= gone_b[k]
            for seq in seqs:
                self.delivered.discard(seq)
                kind = self.leased.pop(seq, None)
                if kind is not None:
                    self.leased_count[kind] -= 1
            self.oldest_ts = head

    def meta_rows(self) -> list[tuple[str, int]]:
        with self.lock:
            return [
                ("last_seq", self.last_seq),
                ("dropped_events", self.dropped[Kind.EVENT]),
                ("dropped_telemetry", self.dropped[Kind.TELEMETRY]),
                ("dropped_refused", self.refused),
                ("epoch", self.epoch),
                ("lost_unknown", self.lost_unknown),
                *([("gap_from", self.gap[0]), ("gap_to", self.gap[1])] if self.gap else []),
            ]

    def stats(self, max_bytes: int) -> dict[str, Any]:
        with self.lock:
            ev, tel = Kind.EVENT, Kind.TELEMETRY
            return {
                "depth": self.count[ev] + self.count[tel],
                "bytes": self.bytes[ev] + self.bytes[tel],
                "oldest_ts": self.oldest_ts,
                "events": self.count[ev],
                "telemetry": self.count[tel],
                "leased": len(self.leased),
                "delivered_undeleted": len(self.delivered),
                "dropped_total": self.dropped[ev] + self.dropped[tel] + self.refused,
                "dropped_events": self.dropped[ev],
                "dropped_telemetry": self.dropped[tel],
                "dropped_refused": self.refused,
                "lost_unknown": self.lost_unknown,
                "lost_seqs": list(self.gap) if self.gap else None,
                "last_seq": self.last_seq,
                "epoch": self.epoch,
                "max_bytes": max_bytes,
            }
