"""Opening the outbox file: connection settings, schema, detection of damaged or unusable files, moving them
aside with what can be salvaged, the sequence floor of every queue whose continuity cannot be proven, and
the counters recomputed from the file.

Continuity: the counter in the file goes on only if the file is the one that handed out the last sequence
number (:mod:`.seqmark`). Otherwise (no file, an empty one, a damaged one moved aside, a WAL that lost
commits, no mark to compare with) the counter restarts above the wall-clock time in microseconds and the
mark, the new start is stored as the ``epoch`` of the sequence space, and an :class:`Incident` says why.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.errors import StoreError, StoreFull
from agent.outbox.counters import Counters
from agent.outbox.records import KINDS, ROW_OVERHEAD, SCHEMA_VERSION, SIZE_SQL, Kind, head_ts

log = logging.getLogger("agent.outbox")

_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class _Corrupt(Exception):
    """Internal: the file exists but is not a usable database (triggers move-aside)."""


class _Unusable(_Corrupt):
    """Internal: a sound database this agent must not use (newer or foreign schema): moved aside too."""


_COLUMNS = {"outbox": ["seq", "kind", "topic", "body", "ts"], "meta": ["key", "value"]}


@dataclass
class Incident:
    """Why the sequence space restarted at this open, and what is known about the loss (for logs, status and
    the ``store`` event upstream). ``lost`` is ``None`` when the number of lost rows cannot be known."""

    result: str  # fresh | unproven | gap | corrupt | schema
    reason: str
    seq_floor: int
    lost: int | None = 0
    lost_seqs: tuple[int | None, int] | None = None  # seq range whose fate is unknown
    moved_to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"result": self.result, "reason": self.reason, "seq_floor": self.seq_floor,
                             "lost": "unknown" if self.lost is None else self.lost}
        if self.lost_seqs is not None:
            d["lost_seqs"] = list(self.lost_seqs)
        if self.moved_to is not None:
            d["moved_to"] = self.moved_to
        return d


@dataclass
class _Salvage:
    last_seq: int = 0
    dropped: list[int] = field(default_factory=lambda: [0, 0])  # drop counters carried over
    rows: list[int] | None = field(default_factory=lambda: [0, 0])  # queued rows by kind (None: uncountable)
    first_seq: int | None = None


def clock_floor() -> int:
    """Microseconds since the epoch: above any count of messages a box can have sent before."""
    return time.time_ns() // 1000


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
            # The WAL's checkpoint threshold and size limit follow the free disk space: see ``space``.
            conn.execute(f"PRAGMA journal_size_limit={8 * 1024 * 1024}")
            conn.execute("PRAGMA temp_store=MEMORY")
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise _Corrupt("; ".join(str(r[0]) for r in check[:5]))
            self._check_schema(conn)
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
                COMMIT;
                """
            )
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # only when new: no write on a full disk
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise _Unusable(f"schema version {version}, newer than this agent understands ({SCHEMA_VERSION})")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in tables:
            if name not in _COLUMNS and not name.startswith("sqlite_"):
                raise _Unusable(f"foreign schema (table {name!r} is not an outbox table)")
        for name, want in _COLUMNS.items():
            if name in tables:
                got = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
                if got != want:
                    raise _Unusable(f"foreign schema (table {name!r} has columns {got}, expected {want})")

    def open(self, counters: Counters, mark: int | None,
             unclean: bool = False) -> tuple[sqlite3.Connection, Incident | None]:
        """Connect, moving a damaged or unusable file aside first if needed, and load ``counters``. ``unclean``:
        ``mark`` is only the durable bound (the box restarted without a clean stop, see ``seqmark``).

        Returns the connection and, when the sequence space restarts, the incident that says why.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"outbox directory {self.path.parent} cannot be created: {exc}") from exc
        incident: Incident | None = None
        salvage = _Salvage()
        try:
            try:
                conn = self.connect()
            except sqlite3.DatabaseError as exc:
                if (exc.sqlite_errorcode & 0xFF) not in _CORRUPT_CODES:
                    raise
                raise _Corrupt(str(exc)) from exc
        except _Corrupt as bad:
            incident, salvage = self._move_aside(bad, mark)
            try:
                conn = self.connect()
            except (sqlite3.Error, _Corrupt) as exc:
                raise StoreError(f"outbox {self.path}: cannot create a fresh database: {exc}") from exc
        except sqlite3.Error as exc:
            full = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
            raise (StoreFull if full else StoreError)(f"outbox {self.path} cannot be opened: {exc}") from exc
        try:
            incident = self.recover(conn, counters, incident, salvage, mark, unclean)
        except sqlite3.Error as exc:
            conn.close()
            full = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
            raise (StoreFull if full else StoreError)(f"outbox {self.path}: recovery failed: {exc}") from exc
        return conn, incident

    def _move_aside(self, bad: _Corrupt, mark: int | None) -> tuple[Incident, _Salvage]:
        """Rename the file (and its WAL/SHM), keeping it byte for byte; the fresh queue's seq floor is above
        what can be salvaged from it, the mark and the clock. Rows still countable in it are reported lost;
        when they cannot be counted the loss is reported as unknown."""
        kind = "schema" if isinstance(bad, _Unusable) else "corrupt"
        stamp = int(time.time())
        aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}")
        n = 0
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}-{n}")
        salvage = self._salvage()
        try:
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.rename(aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise StoreError(f"outbox {self.path} is {kind} and cannot be moved aside: {exc}") from exc
        top = max(salvage.last_seq, mark or 0)
        floor = max(top, clock_floor())
        unknown = salvage.rows is None or (mark is not None and mark > salvage.last_seq)
        incident = Incident(
            kind, str(bad), floor, lost=None if unknown or salvage.rows is None else sum(salvage.rows),
            moved_to=str(aside),
            lost_seqs=(salvage.first_seq, top) if unknown and top else None,
        )
        what = ("damaged" if kind == "corrupt" else "not an outbox this agent can use")
        log.error(
            "outbox %s is %s (%s); moved it to %s and started a fresh queue (%s; sequence continues above %d)",
            self.path, what, bad, aside, _lost_text(incident), floor,
        )
        return incident, salvage

    def _salvage(self) -> _Salvage:
        """Best effort: the seq counter, drop counters and row count of a file being moved aside."""
        out = _Salvage()
        try:
            old = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error:
            out.rows = None
            return out
        try:
            for sql in ("SELECT value FROM meta WHERE key = 'last_seq'", "SELECT max(seq) FROM outbox"):
                try:
                    row = old.execute(sql).fetchone()
                    if row and row[0] is not None:
                        out.last_seq = max(out.last_seq, int(row[0]))
                except (sqlite3.Error, ValueError, TypeError):
                    pass
            for i, key in ((Kind.EVENT, "dropped_events"), (Kind.TELEMETRY, "dropped_telemetry")):
                try:
                    row = old.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                    if row:
                        out.dropped[i] += int(row[0])
                except (sqlite3.Error, ValueError, TypeError):
                    pass
            try:
                rows = [0, 0]
                for kind, n in old.execute("SELECT kind, count(*) FROM outbox GROUP BY kind"):
                    rows[Kind.EVENT if kind == Kind.EVENT else Kind.TELEMETRY] += int(n)
                first = old.execute("SELECT min(seq) FROM outbox").fetchone()[0]
                out.rows, out.first_seq = rows, (None if first is None else int(first))
            except (sqlite3.Error, ValueError, TypeError):
                out.rows = None
        finally:
            old.close()
        return out

    def recover(self, conn: sqlite3.Connection, counters: Counters, incident: Incident | None,
                salvage: _Salvage, mark: int | None, unclean: bool = False) -> Incident | None:
        """Recompute every in-memory counter from the database (the source of truth after a restart) and
        restart the sequence space above a floor when continuity with the last seq handed out is not proven."""
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        count, size = [0, 0], [0, 0]
        for kind, n, b in conn.execute(
            f"SELECT kind, count(*), coalesce(sum({SIZE_SQL}), 0) FROM outbox GROUP BY kind"
        ):
            if kind in KINDS:
                count[kind], size[kind] = int(n), int(b) + ROW_OVERHEAD * int(n)
        max_seq = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        db_last = max(int(meta.get("last_seq", 0)), max_seq)
        if incident is None:
            incident = self._continuity(meta, db_last, mark, unclean)
        lost_known = salvage.rows if incident is not None and incident.lost and salvage.rows else [0, 0]
        dropped = [
            int(meta.get("dropped_events", 0)) + salvage.dropped[Kind.EVENT] + lost_known[Kind.EVENT],
            int(meta.get("dropped_telemetry", 0)) + salvage.dropped[Kind.TELEMETRY] + lost_known[Kind.TELEMETRY],
        ]
        refused = int(meta.get("dropped_refused", 0))
        unknown = int(meta.get("lost_unknown", 0))
        gap = (int(meta["gap_from"]), int(meta["gap_to"])) if "gap_from" in meta and "gap_to" in meta else None
        epoch = int(meta.get("epoch", 0))
        last_seq = db_last
        if incident is not None:
            last_seq = max(db_last, incident.seq_floor)
            epoch = last_seq
            if incident.lost is None:
                unknown += 1
                if incident.lost_seqs is not None:
                    gap = (incident.lost_seqs[0] or 0, incident.lost_seqs[1])
        counters.load(count, size, dropped, refused, last_seq, head_ts(conn))
        counters.set_loss(unknown, gap, epoch)
        if incident is not None:
            # Persist the floor, the epoch and the loss figures right away, before any append.
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", counters.meta_rows())
            conn.execute("COMMIT")
        return incident

    def _continuity(self, meta: dict[str, int], db_last: int, mark: int | None,
                    unclean: bool = False) -> Incident | None:
        """``None`` when this file provably holds the last seq handed out; else why not, with the floor."""
        if "last_seq" not in meta and db_last == 0:
            floor = max(clock_floor(), mark or 0)
            why = "no previous outbox" if mark is None else "the outbox file was deleted or emptied"
            log.warning("outbox %s is new (%s): sequence numbers start above %d so that a receiver "
                        "deduplicating by (site, seq) keeps the new messages", self.path, why, floor)
            return Incident("fresh", why, floor, lost=None if mark is not None else 0,
                            lost_seqs=None if mark is None else (None, mark))
        if mark is None:
            floor = max(clock_floor(), db_last)
            log.warning("outbox %s: no sequence mark to prove the file is the latest; sequence continues "
                        "above %d", self.path, floor)
            return Incident("unproven", "no sequence mark beside the outbox", floor)
        if mark > db_last and unclean:
            floor = max(clock_floor(), mark)
            inc = Incident("gap", "the box restarted without a clean stop of the agent (power loss?); with sync: "
                           "normal its last commits may be lost", floor, lost=None, lost_seqs=(db_last + 1, mark))
            log.error("outbox %s: %s: seqs %d-%d may have been handed out; an unknown number of queued rows may be "
                      "lost; sequence continues above %d", self.path, inc.reason, db_last + 1, mark, floor)
            return inc
        if mark > db_last:
            floor = max(clock_floor(), mark)
            inc = Incident("gap", "the outbox lost its last commits (damaged WAL?)", floor, lost=None,
                           lost_seqs=(db_last + 1, mark))
            log.error("outbox %s: seqs %d-%d were handed out but are not in the file (%s); an unknown number "
                      "of them was still queued and is lost; sequence continues above %d",
                      self.path, db_last + 1, mark, inc.reason, floor)
            return inc
        return None


def _lost_text(inc: Incident) -> str:
    if inc.lost is None:
        rng = f" (seqs {inc.lost_seqs[0] or '?'}-{inc.lost_seqs[1]})" if inc.lost_seqs else ""
        return f"an unknown number of queued rows lost{rng}"
    return f"{inc.lost} queued rows counted as lost"
