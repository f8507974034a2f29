"""Keeping the outbox under ``max_bytes``: which rows go, and logging the transitions into and out of it."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from agent.outbox.records import CHUNK, ROW_OVERHEAD, SIZE_SQL, Kind

log = logging.getLogger("agent.outbox")


class Trimmer:
    """Chooses and deletes the rows an append pushes out; remembers whether "full" was logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._full_logged = False

    def reset(self) -> None:
        self._full_logged = False

    def trim(
        self, conn: sqlite3.Connection, max_bytes: int, count: list[int], size: list[int], leased: set[int]
    ) -> tuple[list[int], list[int]]:
        """Delete un-leased rows until the total fits ``max_bytes``: telemetry first, events last.

        Events are only touched once no telemetry row is left at all (leased telemetry still counts as
        "left": it will be acked or released soon, and an event is worth more than the overshoot).
        Runs inside the caller's transaction; returns (rows, bytes) dropped by kind.
        """
        dropped_n, dropped_b = [0, 0], [0, 0]
        need = sum(size) - max_bytes
        for kind in (Kind.TELEMETRY, Kind.EVENT):
            if need <= 0:
                break
            if kind == Kind.EVENT and count[Kind.TELEMETRY] - dropped_n[Kind.TELEMETRY] > 0:
                break
            victims: list[int] = []
            cur = conn.execute(f"SELECT seq, {SIZE_SQL} FROM outbox WHERE kind = ? ORDER BY seq", (kind,))
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
            for i in range(0, len(victims), CHUNK):
                chunk = victims[i : i + CHUNK]
                conn.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
            dropped_n[kind] = len(victims)
        return dropped_n, dropped_b

    def log_pressure(self, max_bytes: int, dropped_n: list[int], total: int, dropped_so_far: list[int]) -> None:
        """Log the transition into and out of dropping, not every drop (counters carry the detail)."""
        if sum(dropped_n) and not self._full_logged:
            self._full_logged = True
            log.warning(
                "outbox %s is full (max_bytes=%d): dropping oldest telemetry (this append: %d telemetry, "
                "%d events dropped)",
                self.path,
                max_bytes,
                dropped_n[Kind.TELEMETRY],
                dropped_n[Kind.EVENT],
            )
        elif self._full_logged and total < max_bytes * 0.9:
            self._full_logged = False
            log.info(
                "outbox %s is below its limit again (dropped so far: %d telemetry, %d events)",
                self.path,
                dropped_so_far[Kind.TELEMETRY],
                dropped_so_far[Kind.EVENT],
            )
