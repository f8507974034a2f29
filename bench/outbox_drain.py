"""Outbox throughput: append rate and drain rate after a large backlog, against a naive baseline.

Why: after a long WAN outage the agent must empty a backlog of ≥100k rows much faster than it fills,
or it never catches up. This measures the store alone (no MQTT) with ``take(500)`` → ``ack`` batches,
for ``sync="normal"`` and ``sync="full"``, and compares with the obvious implementation (one row per
transaction for append and for delete) measured in the same run on the same disk.

    .venv/bin/python bench/outbox_drain.py --rows 100000

The helpers (:func:`make_records`, :func:`fill`, :func:`drain`) are reusable by an end-to-end bench that
drains through a real broker.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.outbox import Kind, Outbox, Record, Stored


def make_records(n: int, seed: int = 1, body_min: int = 60, body_max: int = 200) -> list[Record]:
    """Telemetry rows shaped like real ones: a per-device topic and a 60-200 byte encoded batch."""
    rng = random.Random(seed)
    now = time.time()
    return [
        Record(
            Kind.TELEMETRY,
            f"site/bldg-07/dev/meter-{rng.randrange(40):02d}/t",
            rng.randbytes(rng.randint(body_min, body_max)),
            now + i * 0.01,
        )
        for i in range(n)
    ]


async def fill(outbox: Outbox, n: int, batch: int = 500, records: list[Record] | None = None) -> float:
    """Append ``n`` telemetry rows in batches; return the elapsed seconds."""
    recs = records if records is not None else make_records(n)
    start = time.perf_counter()
    for i in range(0, n, batch):
        await outbox.append(recs[i : i + batch])
    return time.perf_counter() - start


PublishFn = Callable[[list[Stored]], Awaitable[None]]


async def drain(outbox: Outbox, batch: int = 500, publish: PublishFn | None = None) -> tuple[int, int, float]:
    """Empty the outbox with ``take(batch)`` → (``publish``) → ``ack``; return rows, body bytes, seconds.

    ``publish`` is the hook for an end-to-end drain (e.g. MQTT publish + PUBACK); without it only the
    store is measured.
    """
    rows = nbytes = 0
    start = time.perf_counter()
    while got := await outbox.take(batch):
        if publish is not None:
            await publish(got)
        await outbox.ack([s.seq for s in got])
        rows += len(got)
        nbytes += sum(len(s.body) for s in got)
    return rows, nbytes, time.perf_counter() - start


def naive_baseline(path: Path, records: list[Record], sync: str) -> tuple[float, float]:
    """One row per transaction, the way a first version usually looks: returns (append/s, delete/s)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync.upper()}")
    conn.execute(
        "CREATE TABLE q (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind INT, topic TEXT, body BLOB, ts REAL)"
    )
    start = time.perf_counter()
    for r in records:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO q (kind, topic, body, ts) VALUES (?, ?, ?, ?)", (r.kind, r.topic, r.body, r.ts))
        conn.execute("COMMIT")
    append_rate = len(records) / (time.perf_counter() - start)
    start = time.perf_counter()
    n = 0
    while True:
        row = conn.execute("SELECT seq, body FROM q ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            break
        conn.execute("BEGIN")
        conn.execute("DELETE FROM q WHERE seq = ?", (row[0],))
        conn.execute("COMMIT")
        n += 1
    delete_rate = n / (time.perf_counter() - start)
    conn.close()
    return append_rate, delete_rate


@dataclass
class Result:
    sync: str
    append_rps: float
    drain_rps: float
    drain_mbps: float
    open_s: float
    file_mb: float
    base_append_rps: float
    base_drain_rps: float


async def run_one(workdir: Path, rows: int, sync: str, baseline_rows: int) -> Result:
    records = make_records(rows)
    path = workdir / f"outbox-{sync}.db"
    ob = Outbox(path, max_bytes=1 << 30, sync=sync)  # type: ignore[arg-type]
    await ob.open()
    fill_s = await fill(ob, rows, records=records)
    depth = ob.stats()["depth"]
    assert depth == rows, depth
    await ob.close()
    file_mb = path.stat().st_size / 1e6

    ob = Outbox(path, max_bytes=1 << 30, sync=sync)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    await ob.open()  # recovery of a full backlog: integrity check + counters
    open_s = time.perf_counter() - t0
    drained, nbytes, drain_s = await drain(ob)
    assert drained == rows and ob.stats()["depth"] == 0, (drained, ob.stats())
    await ob.close()

    base_a, base_d = await asyncio.to_thread(
        naive_baseline, workdir / f"naive-{sync}.db", records[:baseline_rows], sync
    )
    return Result(sync, rows / fill_s, drained / drain_s, nbytes / drain_s / 1e6, open_s, file_mb, base_a, base_d)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="backlog size (default 100000)")
    ap.add_argument(
        "--baseline-rows",
        type=int,
        default=3000,
        help="rows for the naive one-row-per-transaction baseline (it is slow; a sample gives its rate)",
    )
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"outbox drain bench: {args.rows} telemetry rows, bodies 60-200 B, batches of 500; "
              f"baseline = one row per transaction on {min(args.baseline_rows, args.rows)} rows")
        results = [await run_one(Path(tmp), args.rows, sync, min(args.baseline_rows, args.rows))
                   for sync in ("normal", "full")]
    print()
    print(f"{'sync':<7} {'append rows/s':>14} {'drain rows/s':>13} {'drain MB/s':>11} "
          f"{'naive app/s':>12} {'naive del/s':>12} {'append x':>9} {'drain x':>8} {'open s':>7} {'file MB':>8}")
    for r in results:
        print(
            f"{r.sync:<7} {r.append_rps:>14,.0f} {r.drain_rps:>13,.0f} {r.drain_mbps:>11.1f} "
            f"{r.base_append_rps:>12,.0f} {r.base_drain_rps:>12,.0f} "
            f"{r.append_rps / r.base_append_rps:>8.0f}x {r.drain_rps / r.base_drain_rps:>7.0f}x "
            f"{r.open_s:>7.2f} {r.file_mb:>8.1f}"
        )
    print("\ndrain = take(500) -> ack loop over the whole backlog (MB/s counts bodies only); "
          "open s = reopen with the full backlog (quick_check + counters)")


if __name__ == "__main__":
    asyncio.run(main())
