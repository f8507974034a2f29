"""Outbox contract tests on real SQLite files.

Written against the ``make_outbox`` fixture so that any other outbox implementation can be run through
the same suite by parametrising that fixture. Ground truth is read back with the plain ``sqlite3``
module where it matters, so the outbox's own bookkeeping is not what checks itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import agent
from agent.errors import StoreError
from agent.outbox import ROW_OVERHEAD, Kind, Outbox, Record, Stored, row_size

REPO = Path(agent.__file__).resolve().parents[1]

MakeOutbox = Callable[..., Awaitable[Outbox]]


@pytest.fixture
async def make_outbox(tmp_path: Path) -> AsyncIterator[MakeOutbox]:
    """Open outboxes under tmp_path and close whatever the test left open."""
    opened: list[Outbox] = []

    async def make(name: str = "outbox.db", **kwargs: object) -> Outbox:
        ob = Outbox(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        await ob.open()
        opened.append(ob)
        return ob

    yield make
    for ob in opened:
        await ob.close()


def tel(i: int, size: int = 60, topic: str = "t") -> Record:
    return Record(Kind.TELEMETRY, topic, bytes([i % 256]) * size, 1000.0 + i)


def ev(i: int, size: int = 60, topic: str = "e") -> Record:
    return Record(Kind.EVENT, topic, bytes([i % 256]) * size, 1000.0 + i)


def seqs_of(rows: list[Stored]) -> list[int]:
    return [r.seq for r in rows]


def db_rows(path: Path) -> list[tuple[int, int, str, bytes, float]]:
    """Rows as an independent reader sees them (committed state only)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT seq, kind, topic, body, ts FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()


async def drain(ob: Outbox) -> list[Stored]:
    out: list[Stored] = []
    while got := await ob.take(1000):
        out.extend(got)
    return out


# ---------------------------------------------------------------- sequence numbers


async def test_seq_monotonic_across_reopen_and_after_deletes(tmp_path: Path, make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    b = ob.stats()["last_seq"]  # a new outbox starts above a clock floor (test_store_faults.py)
    assert await ob.append([tel(1), tel(2), ev(3)]) == [b + 1, b + 2, b + 3]
    await ob.ack([b + 1, b + 2, b + 3])  # queue now empty: max(seq) of the table says nothing any more
    assert await ob.append([tel(4)]) == [b + 4]
    await ob.ack([b + 4])
    await ob.close()

    ob2 = await make_outbox()
    assert ob2.stats()["last_seq"] == b + 4
    assert ob2.stats()["depth"] == 0
    assert await ob2.append([tel(5), tel(6)]) == [b + 5, b + 6]
    await ob2.close()
    ob3 = await make_outbox()
    assert await ob3.append([ev(7)]) == [b + 7]
    assert [r[0] for r in db_rows(tmp_path / "outbox.db")] == [b + 5, b + 6, b + 7]


async def test_append_returns_committed_rows_with_their_content(tmp_path: Path, make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    recs = [Record(Kind.EVENT, "site/a/évt", b"\x00\xffbody", 1712.5), tel(2, size=3)]
    seqs = await ob.append(recs)
    # Visible to a separate connection: committed, not merely buffered.
    assert db_rows(tmp_path / "outbox.db") == [
        (seqs[0], 0, "site/a/évt", b"\x00\xffbody", 1712.5),
        (seqs[1], 1, "t", b"\x02\x02\x02", 1002.0),
    ]
    got = await ob.take(10)
    assert got == [Stored(seqs[0], Kind.EVENT, "site/a/évt", b"\x00\xffbody", 1712.5),
                   Stored(seqs[1], Kind.TELEMETRY, "t", b"\x02\x02\x02", 1002.0)]
    assert isinstance(got[0].kind, Kind)


_CHILD = r"""
import asyncio, random, sys, time
from pathlib import Path
from agent.outbox import Kind, Outbox, Record

async def main() -> None:
    ob = Outbox(Path(sys.argv[1]), sync="normal")
    await ob.open()
    rng = random.Random(int(sys.argv[2]))
    i = 0
    while True:
        n = rng.randint(1, 40)
        recs = [Record(Kind.EVENT if (i + k) % 7 == 0 else Kind.TELEMETRY, "site/t",
                       rng.randbytes(rng.randint(60, 200)), time.time()) for k in range(n)]
        i += n
        seqs = await ob.append(recs)
        sys.stdout.write(" ".join(map(str, seqs)) + "\n")
        sys.stdout.flush()

asyncio.run(main())
"""


async def _run_and_kill(path: Path, seed: int, lines_before_kill: int) -> set[int]:
    """Start an appending child, SIGKILL it mid-loop, return every seq it reported as committed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(path), str(seed),
        stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )
    assert proc.stdout is not None
    printed: set[int] = set()
    try:
        async with asyncio.timeout(15):
            for _ in range(lines_before_kill):
                line = await proc.stdout.readline()
                assert line.endswith(b"\n"), "child died before it was killed"
                printed.update(int(s) for s in line.split())
    finally:
        proc.send_signal(signal.SIGKILL)
    rest = await proc.stdout.read()  # lines already in the pipe were committed too
    for line in rest.split(b"\n")[:-1]:  # a partial last line is ignored (not fully reported)
        printed.update(int(s) for s in line.split())
    assert await proc.wait() == -signal.SIGKILL
    return printed


async def test_kill9_mid_append_loses_no_committed_row(tmp_path: Path, make_outbox: MakeOutbox) -> None:
    path = tmp_path / "outbox.db"
    reported: list[set[int]] = []
    for cycle, lines in enumerate((150, 250, 400)):
        reported.append(await _run_and_kill(path, seed=cycle, lines_before_kill=lines))
    # Each incarnation continues above everything earlier ones reported: seqs are never reused.
    for earlier, later in itertools.pairwise(reported):
        assert min(later) > max(earlier)
    everything = set().union(*reported)
    present = {r[0] for r in db_rows(path)}
    assert everything <= present, f"lost committed seqs: {sorted(everything - present)[:10]}"

    ob = await make_outbox()
    stats = ob.stats()
    assert stats["depth"] == len(present)
    assert stats["last_seq"] == max(present)
    assert set(seqs_of(await drain(ob))) == present
    assert (await ob.append([tel(0)]))[0] == max(present) + 1


# ---------------------------------------------------------------- leases


async def test_leases_release_ack_and_restart(tmp_path: Path, make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    b = ob.stats()["last_seq"]
    await ob.append([tel(i) for i in range(1, 6)])  # seqs b+1..b+5
    first = await ob.take(3)
    assert seqs_of(first) == [b + 1, b + 2, b + 5]  # backlog > limit: oldest and newest share the batch
    assert ob.stats()["leased"] == 3
    assert seqs_of(await ob.take(10)) == [b + 3, b + 4]  # leased rows are not offered twice
    assert await ob.take(10) == []

    ob.release([b + 2, 99])  # unknown seqs are ignored
    assert seqs_of(await ob.take(10)) == [b + 2]
    await ob.ack([b + 1, b + 2])
    assert ob.stats()["depth"] == 3
    assert ob.stats()["leased"] == 3  # 3, 4, 5 still in flight

    ob.release_all()
    assert ob.stats()["leased"] == 0
    assert seqs_of(await ob.take(3)) == [b + 3, b + 4, b + 5]
    await ob.close()  # crash-equivalent for leases: they only live in memory

    ob2 = await make_outbox()
    assert ob2.stats()["leased"] == 0
    assert seqs_of(await drain(ob2)) == [b + 3, b + 4, b + 5]
    await ob2.ack([b + 3, b + 4, b + 5, b + 3])  # double ack is harmless
    assert ob2.stats()["depth"] == 0
    assert db_rows(tmp_path / "outbox.db") == []


async def test_wait_wakes_on_append_and_release(make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    assert await ob.wait(timeout=0.05) is False
    waiter = asyncio.create_task(ob.wait(timeout=5))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    await ob.append([tel(1)])
    assert await asyncio.wait_for(waiter, 1) is True

    got = await ob.take(10)
    assert await ob.wait(timeout=0.05) is False  # only leased rows left
    waiter = asyncio.create_task(ob.wait(timeout=5))
    await asyncio.sleep(0.02)
    ob.release(seqs_of(got))
    assert await asyncio.wait_for(waiter, 1) is True
    await ob.take(10)
    await ob.ack(seqs_of(got))
    assert await ob.wait(timeout=0.01) is False


async def test_cancelled_take_gives_its_leases_back(make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    await ob.append([tel(i) for i in range(2000)])
    task = asyncio.create_task(ob.take(2000))
    await asyncio.sleep(0)  # the worker has the job now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ob.ping()  # the worker is FIFO: the orphaned take has finished once ping returns
    for _ in range(100):  # ... and its lease is undone by a callback on the loop
        if ob.stats()["leased"] == 0:
            break
        await asyncio.sleep(0.01)
    assert ob.stats()["leased"] == 0
    assert len(await ob.take(5000)) == 2000


# ---------------------------------------------------------------- ordering


async def test_events_first_then_telemetry_oldest_first(make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    seqs = await ob.append([tel(1), ev(2), tel(3), ev(4), tel(5), ev(6)])
    t1, e2, t3, e4, t5, e6 = seqs
    assert seqs_of(await ob.take(2)) == [e2, e4]
    assert seqs_of(await ob.take(2)) == [e6, t1]
    late = await ob.append([ev(7)])
    assert seqs_of(await ob.take(10)) == [late[0], t3, t5]  # a new event jumps the telemetry queue


async def test_long_backlog_is_shared_between_oldest_and_newest(make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    b = ob.stats()["last_seq"]
    await ob.append([tel(i) for i in range(1000)])  # seqs b+1..b+1000
    got = [s - b for s in seqs_of(await ob.take(100))]
    assert got == list(range(1, 51)) + list(range(951, 1001))

    live = [s - b for s in await ob.append([tel(i) for i in range(5)])]  # 1001..1005 arrive during the replay
    got = [s - b for s in seqs_of(await ob.take(100))]
    assert got[:50] == list(range(51, 101))
    assert set(live) <= set(got)  # live data is not stuck behind ~850 backlog rows
    assert got[50:] == list(range(906, 951)) + live

    events = [s - b for s in await ob.append([ev(i) for i in range(10)])]
    got = [s - b for s in seqs_of(await ob.take(100))]
    assert got[:10] == events
    assert got[10:] == list(range(101, 146)) + list(range(861, 906))  # 90 telemetry: 45 + 45


async def test_small_backlog_is_plain_oldest_first(make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    b = ob.stats()["last_seq"]
    await ob.append([tel(i) for i in range(100)])
    assert seqs_of(await ob.take(100)) == list(range(b + 1, b + 101))
    await ob.append([tel(i) for i in range(30)])
    assert seqs_of(await ob.take(100)) == list(range(b + 101, b + 131))


async def test_fairness_skips_leased_rows_at_both_ends(make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    b = ob.stats()["last_seq"]
    await ob.append([tel(i) for i in range(100)])  # b+1..b+100
    assert [s - b for s in seqs_of(await ob.take(10))] == [1, 2, 3, 4, 5, 96, 97, 98, 99, 100]
    assert [s - b for s in seqs_of(await ob.take(10))] == [6, 7, 8, 9, 10, 91, 92, 93, 94, 95]
    ob.release([b + 1, b + 100])
    assert [s - b for s in seqs_of(await ob.take(4))] == [1, 11, 90, 100]


# ---------------------------------------------------------------- bound and drops


SIZE = row_size("t", bytes(60))  # every tel()/ev() row with the default size; same for topic "e"


async def test_full_drops_oldest_unleased_telemetry_and_keeps_events(
    tmp_path: Path, make_outbox: MakeOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    assert SIZE == 60 + 1 + ROW_OVERHEAD
    ob = await make_outbox(max_bytes=SIZE * 10)
    seqs = await ob.append([ev(1), tel(2), tel(3), ev(4), tel(5), tel(6), tel(7), tel(8), tel(9), ev(10)])
    assert ob.stats()["bytes"] == SIZE * 10
    assert ob.stats()["dropped_total"] == 0

    leased = await ob.take(4)  # events 1, 4, 10 and telemetry 2 (oldest) are now in flight
    assert seqs_of(leased) == [seqs[0], seqs[3], seqs[9], seqs[1]]
    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        new = await ob.append([tel(11), tel(12)])
    kept = [r[0] for r in db_rows(tmp_path / "outbox.db")]
    # Oldest *un-leased* telemetry (3 and 5) went; leased 2 and every event stayed.
    assert kept == [seqs[0], seqs[1], seqs[3], seqs[5], seqs[6], seqs[7], seqs[8], seqs[9], *new]
    s = ob.stats()
    assert (s["dropped_total"], s["dropped_telemetry"], s["dropped_events"]) == (2, 2, 0)
    assert (s["depth"], s["bytes"], s["events"], s["telemetry"]) == (10, SIZE * 10, 3, 7)
    assert "full" in caplog.text

    # A bigger record makes room by dropping as many telemetry rows as needed.
    await ob.append([tel(13, size=60 + 2 * SIZE)])
    assert ob.stats()["dropped_telemetry"] == 5
    assert ob.stats()["bytes"] <= SIZE * 10


async def test_only_events_left_drops_oldest_events(tmp_path: Path, make_outbox: MakeOutbox) -> None:
    ob = await make_outbox(max_bytes=SIZE * 5)
    seqs = await ob.append([ev(i) for i in range(5)])
    more = await ob.append([ev(5), ev(6)])
    assert [r[0] for r in db_rows(tmp_path / "outbox.db")] == seqs[2:] + more
    s = ob.stats()
    assert (s["dropped_total"], s["dropped_events"], s["dropped_telemetry"]) == (2, 2, 0)
    # Telemetry goes first even when it is the newest row: an older event is worth more.
    t = await ob.append([tel(7)])
    assert t[0] == more[-1] + 1
    assert [r[0] for r in db_rows(tmp_path / "outbox.db")] == seqs[2:] + more
    e = await ob.append([ev(8)])
    assert [r[0] for r in db_rows(tmp_path / "outbox.db")] == seqs[3:] + more + e
    s = ob.stats()
    assert (s["dropped_total"], s["dropped_events"], s["dropped_telemetry"]) == (4, 3, 1)


async def test_events_are_not_dropped_while_telemetry_is_in_flight(
    tmp_path: Path, make_outbox: MakeOutbox
) -> None:
    ob = await make_outbox(max_bytes=SIZE * 4)
    t = await ob.append([tel(1), tel(2)])
    assert seqs_of(await ob.take(2)) == t
    e = await ob.append([ev(3), ev(4), ev(5)])  # 5 rows: one over, but only leased telemetry to drop
    assert [r[0] for r in db_rows(tmp_path / "outbox.db")] == t + e
    assert ob.stats()["dropped_total"] == 0
    assert ob.stats()["bytes"] == SIZE * 5  # overshoot bounded by the leased bytes
    await ob.ack(t)
    assert ob.stats()["bytes"] == SIZE * 3


async def test_drop_counters_survive_reopen(make_outbox: MakeOutbox) -> None:
    ob = await make_outbox(max_bytes=SIZE * 3)
    await ob.append([tel(i) for i in range(5)])
    await ob.append([ev(i) for i in range(4)])
    before = ob.stats()
    assert (before["dropped_telemetry"], before["dropped_events"]) == (5, 1)
    await ob.close()
    ob2 = await make_outbox(max_bytes=SIZE * 3)
    after = ob2.stats()
    assert after == before
    await ob2.append([ev(9)])
    assert (ob2.stats()["dropped_events"], ob2.stats()["dropped_total"]) == (2, 7)


async def test_oversize_record_refused_and_queue_untouched(tmp_path: Path, make_outbox: MakeOutbox) -> None:
    ob = await make_outbox(max_bytes=SIZE * 10)
    seqs = await ob.append([tel(i) for i in range(10)])
    before = ob.stats()
    with pytest.raises(StoreError, match=r"larger than the whole outbox"):
        await ob.append([tel(99, size=SIZE * 10)])
    with pytest.raises(StoreError, match=r"'big/one'"):
        await ob.append([ev(1), tel(99, size=SIZE * 10, topic="big/one")])  # the whole call is refused
    assert ob.stats() == before
    assert [r[0] for r in db_rows(tmp_path / "outbox.db")] == seqs
    # Exactly max_bytes fits (and evicts everything else).
    exact = await ob.append([ev(1, size=SIZE * 10 - 1 - ROW_OVERHEAD)])
    assert [r[0] for r in db_rows(tmp_path / "outbox.db")] == exact
    assert ob.stats()["bytes"] == SIZE * 10
    assert exact[0] == seqs[-1] + 1  # the refused calls consumed no sequence numbers


# ---------------------------------------------------------------- stats


def truth(path: Path) -> dict[str, object]:
    rows = db_rows(path)
    return {
        "depth": len(rows),
        "bytes": sum(len(b) + len(t.encode()) + ROW_OVERHEAD for _, _, t, b, _ in rows),
        "oldest_ts": rows[0][4] if rows else None,
        "events": sum(1 for r in rows if r[1] == Kind.EVENT),
        "telemetry": sum(1 for r in rows if r[1] == Kind.TELEMETRY),
    }


async def test_stats_exact_through_operations_and_restart(tmp_path: Path, make_outbox: MakeOutbox) -> None:
    path = tmp_path / "outbox.db"
    ob = await make_outbox(max_bytes=2500)
    b = ob.stats()["last_seq"]
    assert b > (time.time() - 60) * 1e6  # a new outbox starts above the clock in µs
    assert ob.stats() == {
        "depth": 0, "bytes": 0, "oldest_ts": None, "events": 0, "telemetry": 0, "leased": 0,
        "delivered_undeleted": 0, "dropped_total": 0, "dropped_events": 0, "dropped_telemetry": 0, "dropped_refused": 0,
        "lost_unknown": 0, "lost_seqs": None, "last_seq": b, "epoch": b, "max_bytes": 2500,
    }
    await ob.append([Record(Kind.TELEMETRY, "site/ü", b"x" * (i * 7 % 90), 500.0 + i) for i in range(30)])
    await ob.append([Record(Kind.EVENT, "ev/door", b"open" * i, 400.0 + i) for i in range(5)])
    got = await ob.take(12)
    await ob.ack(seqs_of(got)[:7])
    ob.release(seqs_of(got)[7:9])
    s = ob.stats()
    assert {k: s[k] for k in truth(path)} == truth(path)
    assert s["leased"] == 3
    assert s["dropped_total"] > 0  # 2500 bytes could not hold all 35 rows
    assert s["oldest_ts"] == db_rows(path)[0][4]  # head of the queue, by seq

    await ob.close()
    ob2 = await make_outbox(max_bytes=2500)
    s2 = ob2.stats()
    assert s2 == {**s, "leased": 0}
    await ob2.ack(seqs_of(await drain(ob2)))
    assert ob2.stats()["depth"] == 0 and ob2.stats()["bytes"] == 0 and ob2.stats()["oldest_ts"] is None


# ---------------------------------------------------------------- failures


def moved_aside(directory: Path) -> list[Path]:
    """The ``outbox.db.corrupt-<ts>`` files (their -wal/-shm companions, if any, are moved too)."""
    names = sorted(os.listdir(directory))
    return [directory / n for n in names if n.startswith("outbox.db.corrupt-") and n[-1].isdigit()]


async def test_corrupt_file_is_moved_aside_and_a_fresh_queue_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make_outbox: MakeOutbox
) -> None:
    path = tmp_path / "state" / "outbox.db"
    path.parent.mkdir()
    garbage = b"this is not an sqlite database" * 200
    path.write_bytes(garbage)
    with caplog.at_level(logging.ERROR, logger="agent.outbox"):
        ob = await make_outbox("state/outbox.db")
    aside = moved_aside(path.parent)
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    assert "corrupt" in caplog.text and str(aside[0]) in caplog.text
    assert ob.stats()["depth"] == 0
    seqs = await ob.append([ev(1)])
    # The sequence restarts above the wall clock in µs so a deduplicating receiver keeps the new rows.
    assert seqs[0] > (time.time() - 60) * 1e6
    assert [r[0] for r in db_rows(path)] == seqs


async def test_damaged_pages_are_detected_and_counted_as_lost(
    tmp_path: Path, make_outbox: MakeOutbox
) -> None:
    path = tmp_path / "outbox.db"
    ob = await make_outbox()
    await ob.append([tel(i, size=300) for i in range(3000)])
    await ob.close()
    size = path.stat().st_size
    assert size > 200 * 4096
    with path.open("r+b") as f:  # smash pages in the middle of the table, keep the header
        f.seek(size // 2)
        f.write(b"\xa5" * 4096 * 8)
    damaged = path.read_bytes()
    ob2 = await make_outbox()
    aside = moved_aside(tmp_path)
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept for forensics, byte for byte
    assert ob2.stats()["depth"] == 0
    assert ob2.stats()["last_seq"] > 3000
    assert [r[0] for r in db_rows(path)] == []


async def test_sqlite_failure_is_store_error_and_committed_rows_survive(
    tmp_path: Path, make_outbox: MakeOutbox
) -> None:
    path = tmp_path / "outbox.db"
    ob = await make_outbox()
    committed = await ob.append([tel(i, size=200) for i in range(50)])
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    # Fault injection: cap the file size on the outbox's own connection, as a full disk would.
    await ob._call(lambda: ob._db().execute(f"PRAGMA max_page_count={pages + 2}"))
    with pytest.raises(StoreError) as err:
        for _ in range(100):
            committed += await ob.append([tel(i, size=3000) for i in range(10)])
    assert isinstance(err.value.__cause__, sqlite3.Error)
    assert "append" in str(err.value)
    s = ob.stats()
    assert s["depth"] == len(committed) and s["last_seq"] == committed[-1]
    # The failed transaction was rolled back; the outbox keeps working for what fits.
    got = await ob.take(10)
    await ob.ack(seqs_of(got))
    assert ob.stats()["depth"] == len(committed) - 10
    await ob.close()
    assert [r[0] for r in db_rows(path)] == sorted(set(committed) - set(seqs_of(got)))


async def test_not_open_and_unopenable(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()  # the constructor does no I/O
    with pytest.raises(StoreError, match="not open"):
        await ob.append([tel(1)])
    await ob.close()  # idempotent, even before open
    await ob.open()
    await ob.close()
    await ob.close()
    with pytest.raises(StoreError, match="not open"):
        await ob.take(1)

    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = Outbox(blocker / "sub" / "x.db")
    with pytest.raises(StoreError) as err:
        await bad.open()
    assert isinstance(err.value.__cause__, OSError)
    with pytest.raises(ValueError):
        Outbox(tmp_path / "y.db", sync="fast")  # type: ignore[arg-type]


async def test_database_is_wal_with_requested_sync(tmp_path: Path, make_outbox: MakeOutbox) -> None:
    for sync, level in (("full", 2), ("normal", 1)):
        ob = await make_outbox(f"{sync}.db", sync=sync)
        mode, got = await ob._call(
            lambda ob=ob: (
                ob._db().execute("PRAGMA journal_mode").fetchone()[0],
                ob._db().execute("PRAGMA synchronous").fetchone()[0],
            )
        )
        assert (mode, got) == ("wal", level)


async def test_ping_goes_through_the_worker(make_outbox: MakeOutbox) -> None:
    ob = await make_outbox()
    await ob.ping()
    gate = threading.Event()
    blocked = asyncio.create_task(ob._call(gate.wait, 5))  # wedge the worker thread
    await asyncio.sleep(0.02)  # let the task submit its job first
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await ob.ping()
    gate.set()
    assert await blocked is True
    await ob.ping()
    await ob.close()
    with pytest.raises(StoreError, match="not open"):
        await ob.ping()


async def test_second_process_on_the_same_outbox_is_refused(tmp_path: Path) -> None:
    """Two agents on one state directory would share sequence numbers: the second open is refused."""
    import subprocess

    path = tmp_path / "ob.sqlite"
    ob = Outbox(path)
    await ob.open()
    code = ("import asyncio,sys; from agent.outbox import Outbox\n"
            f"asyncio.run(Outbox(__import__('pathlib').Path({str(path)!r})).open())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert f"in use by another process (pid {os.getpid()})" in r.stderr
    with pytest.raises(StoreError, match="is edge-agent already running"):
        await Outbox(path).open()
    await ob.close()
    again = Outbox(path)
    await again.open()  # free once closed
    await again.close()
