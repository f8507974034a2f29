"""The types and sizes shared by every part of the outbox (see the package docstring for the semantics)."""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Default bound: a few days of a typical building's telemetry on a small SD card."""

ROW_OVERHEAD = 40
"""Bytes charged per row on top of body and topic.

Approximates what SQLite spends per row besides the payload: the 8-byte ``ts`` REAL, the seq/kind
varints, the record header, the 2-byte cell pointer and the ``(kind, seq)`` index entry. Charging it
keeps ``max_bytes`` an honest bound on the database size for small bodies (a 0-byte body still costs).
"""

SCHEMA_VERSION = 1

CHUNK = 500  # rows per DELETE ... IN (...) statement; well below SQLITE_MAX_VARIABLE_NUMBER
SIZE_SQL = "length(body) + length(CAST(topic AS BLOB))"


class Kind(enum.IntEnum):
    """What a row carries; decides its priority and its drop order."""

    EVENT = 0
    TELEMETRY = 1


KINDS = (Kind.EVENT, Kind.TELEMETRY)


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


def head_ts(conn: sqlite3.Connection) -> float | None:
    """``ts`` of the earliest-queued row: queue order, not min(ts), so a clock step does not lie."""
    row = conn.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])
