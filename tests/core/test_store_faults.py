"""Fault injection on the outbox's storage: deleted, emptied and damaged files, a WAL that lost commits
after kill -9, foreign schemas, a full disk (a real small tmpfs). Real files, real processes, real signals."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from agent.outbox import Kind, Outbox, Record

from .agentkit import running_agent, write_site
from .test_outbox import _run_and_kill, db_rows, drain

BROKER = "mqtt://127.0.0.1:9"


def damage_wal(db: Path) -> None:
    """Overwrite the middle frame of the WAL a killed writer left: SQLite then silently ignores every frame
    from there on, so the last commits are gone without any error."""
    wal = Path(f"{db}-wal")
    page = 4096
    frames = (wal.stat().st_size - 32) // (24 + page)
    assert frames >= 4, "the killed writer left commits in the WAL"
    with wal.open("r+b") as f:
        f.seek(32 + (frames // 2) * (24 + page))
        f.write(b"\xa5" * 64)


def tel(i: int, size: int = 60) -> Record:
    return Record(Kind.TELEMETRY, "t", bytes([i % 256]) * size, 1000.0 + i)


async def fill_and_deliver(path: Path, n: int) -> list[int]:
    """An outbox that handed out ``n`` seqs and had them all acknowledged (a receiver has seen them all)."""
    ob = Outbox(path)
    await ob.open()
    try:
        seqs = await ob.append([tel(i) for i in range(n)])
        await ob.ack([r.seq for r in await drain(ob)])
        return seqs
    finally:
        await ob.close()


@pytest.mark.parametrize("how", ["deleted", "deleted-with-mark", "emptied"])
async def test_fresh_outbox_never_reuses_seqs(tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.db"
    seen = await fill_and_deliver(path, 20)
    if how == "emptied":
        os.truncate(path, 0)
    else:
        path.unlink()
        if how == "deleted-with-mark":  # purge, reinstall, box swap: nothing of the old state is left
            Path(f"{path}.seq").unlink()
    for side in ("-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)
    ob = Outbox(path)
    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        await ob.open()
    try:
        new = await ob.append([tel(1)])
        assert new[0] > max(seen), f"seq {new[0]} reused (earlier: up to {max(seen)})"
        assert new[0] > (time.time() - 60) * 1e6  # above the clock floor
        assert "is new" in caplog.text and "start above" in caplog.text
        assert ob.incident is not None and ob.incident.result == "fresh"
        assert ob.epoch == new[0] - 1
        if how != "deleted-with-mark":  # the mark proves seqs were handed out before: loss unknown
            assert ob.incident.doc()["lost"] == "unknown" and ob.stats()["lost_unknown"] == 1
            assert ob.stats()["lost_seqs"] == [0, max(seen)]
    finally:
        await ob.close()


async def test_wal_damaged_after_kill9_starts_above_every_seq_handed_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    reported = await _run_and_kill(path, seed=7, lines_before_kill=120)
    damage_wal(path)
    kept = {r[0] for r in db_rows(path)}
    assert max(kept, default=0) < max(reported), "the damage made commits disappear (precondition)"
    ob = Outbox(path, sync="normal")
    with caplog.at_level(logging.ERROR, logger="agent.outbox"):
        await ob.open()
    try:
        new = await ob.append([tel(1)])
        assert new[0] > max(reported)
        st = ob.stats()
        assert st["lost_unknown"] == 1
        lo, hi = st["lost_seqs"]
        assert hi == max(reported) and lo <= min(set(reported) - kept)
        assert f"seqs {lo}-{hi} were handed out but are not in the file" in caplog.text
        assert ob.incident is not None
        assert ob.incident.doc()["lost"] == "unknown" and ob.incident.doc()["lost_seqs"] == [lo, hi]
        await ob.close()
        again = Outbox(path, sync="normal")  # the figures persist; a clean reopen is continuous
        await again.open()
        assert again.incident is None
        assert again.stats()["lost_unknown"] == 1 and again.stats()["lost_seqs"] == [lo, hi]
        assert (await again.append([tel(2)]))[0] == new[0] + 1
        await again.close()
    finally:
        await ob.close()


async def test_damaged_file_reports_unknown_loss_in_status_and_upstream(tmp_path: Path) -> None:
    """The agent sends a `store` event with what is known, and `status` says "unknown", not 0."""
    state = tmp_path / "state"
    state.mkdir()
    path = state / "outbox.sqlite"
    reported = await _run_and_kill(path, seed=3, lines_before_kill=80)
    damage_wal(path)
    site = write_site(tmp_path, BROKER)
    async with running_agent(site) as agent:
        await asyncio.sleep(0.4)
        rows = await agent.outbox.take(1000)
        store = [r for r in rows if r.topic.endswith("/e/agent") and b'"store"' in r.body]
        assert len(store) == 1, [r.topic for r in rows]
        import json

        doc = json.loads(store[0].body)
        assert doc["kind"] == "store" and doc["sev"] == "alarm"
        assert doc["data"]["result"] == "gap" and doc["data"]["lost"] == "unknown"
        assert doc["data"]["lost_seqs"][1] == max(reported)
        births = [r for r in rows if r.topic.endswith("/birth")]
        assert json.loads(births[0].body)["epoch"] == agent.outbox.epoch > max(reported)
        snap = agent.snapshot()["outbox"]
        assert snap["lost_unknown"] == 1 and snap["lost_seqs"][1] == max(reported)
        from agent.commands import render_status

        text = render_status(agent.snapshot())
        assert "unknown number lost" in text and f"-{max(reported)})" in text


async def test_corrupt_file_with_uncountable_rows_is_unknown_not_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    await ob.open()
    seqs = await ob.append([tel(i, size=300) for i in range(3000)])
    await ob.close()
    size = path.stat().st_size
    with path.open("r+b") as f:  # smash the table's pages (the header stays readable)
        f.seek(size // 4)
        f.write(b"\xa5" * (size // 2))
    ob2 = Outbox(path)
    with caplog.at_level(logging.ERROR, logger="agent.outbox"):
        await ob2.open()
    try:
        inc = ob2.incident
        assert inc is not None and inc.result == "corrupt"
        assert inc.lost is None or inc.lost == len(seqs), "a count, when given, must be the true one"
        if inc.lost is None:
            assert "unknown number" in caplog.text and ob2.stats()["lost_unknown"] == 1
        assert ob2.stats()["last_seq"] >= max(seqs)
    finally:
        await ob2.close()
