"""Fault injection on the outbox's storage: deleted, emptied and damaged files, a WAL that lost commits
after kill -9, foreign schemas, a full disk (a real small tmpfs). Real files, real processes, real signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import StoreFull
from agent.outbox import Kind, Outbox, Record
from agent.outbox.space import MARGIN, RESERVE

from .agentkit import running_agent, write_site
from .test_outbox import _run_and_kill, db_rows, drain

BROKER = "mqtt://127.0.0.1:9"


def damage_wal(db: Path) -> None:
    """Overwrite a frame of the WAL's current generation that a killed writer left: SQLite then silently
    ignores every frame from there on, so the last commits are gone without any error."""
    wal = Path(f"{db}-wal")
    data = wal.read_bytes()
    page = struct.unpack(">I", data[8:12])[0]
    ckpt_seq, salts = struct.unpack(">I", data[12:16])[0], data[16:24]
    current = 0  # frames of the current generation: they carry the header's salts (older ones are stale)
    while 32 + (current + 1) * (24 + page) <= len(data):
        if data[32 + current * (24 + page) + 8: 32 + current * (24 + page) + 16] != salts:
            break
        current += 1
    assert current >= 2, "the killed writer left commits in the WAL"
    victim = 0 if ckpt_seq >= 1 else current // 2  # frame 0 only once the schema is in the main file
    with wal.open("r+b") as f:
        f.seek(32 + victim * (24 + page) + 24)
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
        assert ob.epoch == new[0] - 1  # the first seq of a space is epoch + 1
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
        # the mark may be ahead of the last line the child printed before SIGKILL (committed, not yet reported)
        assert hi >= max(reported) and lo <= min(set(reported) - kept)
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


async def test_power_loss_with_sync_normal_never_repeats_seqs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A power loss with ``sync: normal``, emulated: the WAL loses its last commits and the mark, never synced,
    loses its last writes with them (the worst case: the two agree on a counter that is too low). The box
    boots again (another boot id). The sequence must continue above every seq handed out before the loss."""
    from agent.outbox import seqmark

    path = tmp_path / "outbox.db"
    reported = await _run_and_kill(path, seed=11, lines_before_kill=120)
    damage_wal(path)
    kept = {r[0] for r in db_rows(path)}
    assert max(kept, default=0) < max(reported), "the damage made commits disappear (precondition)"
    mark = Path(f"{path}.seq")
    raw = mark.read_bytes()
    mark.write_bytes(f"{max(kept):>20}\n".encode() + raw[21:])  # the mark's unsynced writes are lost too
    boot = tmp_path / "boot_id"
    boot.write_text("00000000-0000-4000-8000-000000000001\n")  # not this boot's id: the box restarted
    monkeypatch.setattr(seqmark, "BOOT_ID", str(boot), raising=False)
    ob = Outbox(path, sync="normal")
    with caplog.at_level(logging.ERROR, logger="agent.outbox"):
        await ob.open()
    try:
        new = await ob.append([tel(1)])
        assert new[0] > max(reported), "a seq handed out before the power loss was handed out again"
        assert ob.incident is not None and ob.incident.result == "gap" and "power loss" in ob.incident.reason
        assert "power loss" in caplog.text
    finally:
        await ob.close()
    again = Outbox(path, sync="normal")  # closed cleanly: the next boot (another id again) is continuous
    boot.write_text("00000000-0000-4000-8000-000000000002\n")
    await again.open()
    try:
        assert again.incident is None
        assert (await again.append([tel(2)]))[0] == new[0] + 1
    finally:
        await again.close()


async def test_kill9_without_a_reboot_keeps_the_sequence_continuous(tmp_path: Path) -> None:
    """Only the process died (same boot): the mark is exact, no jump and no incident, as before the bound."""
    path = tmp_path / "outbox.db"
    reported = await _run_and_kill(path, seed=12, lines_before_kill=60)
    ob = Outbox(path, sync="normal")
    await ob.open()
    try:
        assert ob.incident is None
        last = ob.stats()["last_seq"]
        assert last >= max(reported) and (await ob.append([tel(1)]))[0] == last + 1
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
        assert doc["data"]["lost_seqs"][1] >= max(reported)
        births = [r for r in rows if r.topic.endswith("/birth")]
        assert json.loads(births[0].body)["epoch"] == agent.outbox.epoch > max(reported)
        snap = agent.snapshot()["outbox"]
        # the killed child may have committed (and marked) seqs it had not printed yet: the lost range ends at
        # the mark, at or above the last seq it reported
        assert snap["lost_unknown"] == 1 and snap["lost_seqs"][1] == doc["data"]["lost_seqs"][1] >= max(reported)
        from agent.tools.commands import render_status

        text = render_status(agent.snapshot())
        assert "unknown number lost" in text and f"-{snap['lost_seqs'][1]})" in text


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


# ------------------------------------------------------------------ a real full disk (tmpfs)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted for the test and unmounted after it (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(path: Path, leave: int = 0) -> int:
    """Write a filler file until the file system is full (or only ``leave`` bytes are left); returns its size."""
    st = os.statvfs(path.parent)
    target = max(0, st.f_bavail * st.f_frsize - leave)
    written = 0
    with path.open("wb") as f:
        try:
            while written < target:
                n = min(4096, target - written) if leave else 4096
                f.write(b"\0" * n)
                f.flush()
                written += n
        except OSError:
            pass
    return written


CHATTY = f"profiles_dirs: [{Path(__file__).parent / 'profiles'}]\n"


async def test_full_disk_keeps_delivering_with_a_small_wal(tmp_path: Path) -> None:
    """A backlog fills a 1 MiB tmpfs while the broker is away; appends fail. When the broker comes back, what
    is stored is delivered at once, deletes make room, and what was held in memory is stored and delivered:
    no session reset, no republish storm, the WAL stays small."""
    from agent.model import Event
    from tests.peers.mosquitto import Broker

    from .agentkit import Collector

    broker = Broker(tmp_path)  # port reserved, not started yet: the backlog grows
    state = tmp_path / "state"
    devices = "".join(f"  - {{name: box{i}, type: chatty-box, interval: 0.1s}}\n" for i in range(3))
    site = write_site(tmp_path, broker.url, extra=CHATTY + "outbox: {max_bytes: 64MiB, sync: normal}\n",
                      devices=devices, silence="0.01s")
    wal = state / "outbox.sqlite-wal"
    wal_max = 0

    def sample_wal() -> None:
        nonlocal wal_max
        with contextlib.suppress(OSError):
            wal_max = max(wal_max, wal.stat().st_size)

    try:
        with small_tmpfs(state):
            fill_up(state / "filler", leave=640 * 1024)
            async with running_agent(site) as agent:
                t_start = time.monotonic()
                backlog = 0
                with contextlib.suppress(StoreFull):  # a backlog of 1.5 KB events until the disk is full
                    while time.monotonic() - t_start < 30:
                        body = json.dumps({"kind": "backlog", "n": backlog, "pad": "x" * 1500}).encode()
                        await agent.outbox.append([Record(Kind.EVENT, "ea/v1/t1/e/backlog", body, time.time())])
                        backlog += 1
                        sample_wal()
                while not agent.store_error and time.monotonic() - t_start < 30:
                    await asyncio.sleep(0.02)
                assert agent.store_error and "disk full" in agent.store_error, agent.store_error
                t_fail = time.monotonic()
                stored = agent.outbox.stats()["depth"]
                for i in range(5):  # events produced while appends fail: held in memory, none lost
                    agent.event(Event("door-1", "door", {"n": i}))
                await asyncio.sleep(1.0)
                assert agent.store_error, "appends still fail: the disk is full"
                broker.start()
                t_up = time.monotonic()
                async with Collector(broker.port) as col:
                    first = None
                    while time.monotonic() - t_up < 20:
                        sample_wal()
                        if first is None and col.messages:
                            first = time.monotonic()
                        if len([m for m in col.of("e") if m["doc"].get("kind") == "door"]) >= 5:
                            break
                        await asyncio.sleep(0.02)
                    t_doors = time.monotonic()
                    doors = sorted(m["doc"]["data"]["n"] for m in col.of("e") if m["doc"].get("kind") == "door")
                    seqs = [m["seq"] for m in col.of("t")] + [m["doc"]["seq"] for m in col.of("e")]
                    dupes = len(seqs) - len(set(seqs))
                    connects = agent.uplink.state.connects
                    print(f"\nfull disk: backlog of {stored} rows filled the disk {t_fail - t_start:.1f} s after "
                          f"start; broker back: first delivery after "
                          f"{None if first is None else round(first - t_up, 2)} s, held events stored and "
                          f"delivered after {t_doors - t_up:.2f} s; WAL max {wal_max} B; connects {connects}; "
                          f"duplicates {dupes}; delivered {len(set(seqs))}")
                    assert first is not None and first - t_up < 5.0
                    assert doors == list(range(5)), doors
                    assert connects == 1, "a full disk must not reset the MQTT session"
                    assert dupes == 0
                    # "small": checkpoints run every 32 pages (128 KiB) on a nearly full disk, but the WAL restarts
                    # only when no read snapshot is open, and delivery reads while acks delete: it overshoots by some
                    # dozens of pages (seen 298-326 KB). What must hold is that it stays within the room the space
                    # guard keeps back for deletes and checkpoints (margin + reserve), far from SQLite's default
                    # of 4 MiB and more
                    assert wal_max <= MARGIN + RESERVE, f"WAL grew to {wal_max} B"
                    assert agent.snapshot()["outbox"]["dropped_unstored"] == 0
                    agent.stop_event.set()
    finally:
        broker.stop()


async def test_wal_stuck_by_a_full_disk_with_an_empty_queue_is_unstuck(tmp_path: Path) -> None:
    """The cause of the stall seen in about 1 run in 8 of the delivery test below, made certain: pages an append
    added are in the WAL only, so the next checkpoint must grow the database file; another program takes the
    last block first. The checkpoint fails, the WAL can neither restart nor grow, and with every row delivered
    no delete is there to release the reserve: every append failed from then on, for good. Now any write that
    meets SQLite's disk-full checkpoints the WAL (giving the reserve back if the checkpoint needs room) and goes
    on."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        path = disk / "outbox.db"
        ob = Outbox(path, sync="normal")
        await ob.open()
        try:
            assert path.with_name("outbox.db.reserve").exists()

            def growth_in_wal_only() -> bool:
                pages = ob._db().execute("PRAGMA page_count").fetchone()[0]
                return bool(pages * 4096 > path.stat().st_size)

            n = 0
            while True:  # each batch one record larger than the last: the database grows a little each time
                n += 1
                assert n < 100, "the database never grew inside its WAL"
                await ob.append([tel(i, size=800) for i in range(n)])
                assert await ob.ack(r.seq for r in await ob.take(1000))  # delivered: the queue is empty
                if await ob._call(growth_in_wal_only):
                    break
            assert ob.stats()["depth"] == 0
            fill_up(disk / "filler")
            assert os.statvfs(disk).f_bavail == 0
            stored = 0
            for i in range(150):  # one record in, delivered, deleted: what an agent on a full disk does
                with contextlib.suppress(StoreFull):
                    await ob.append([tel(i, size=300)])
                    stored += 1
                assert await ob.ack(r.seq for r in await ob.take(10)), f"a delete failed after {stored} appends"
            print(f"\nstuck WAL after {n} appends: {stored} of 150 appends stored on a full disk")
            assert stored == 150
        finally:
            await ob.close()


async def test_reserve_lets_deletes_through_when_another_program_fills_the_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        path = disk / "outbox.db"
        ob = Outbox(path, sync="normal")
        await ob.open()
        await ob.close()  # the WAL is checkpointed and truncated to 0 bytes
        ob = Outbox(path, sync="normal")
        await ob.open()
        try:
            assert Path(f"{path}.reserve").exists()
            await ob.append([tel(i, size=1000) for i in range(20)])  # new pages, in the WAL only
            fill_up(disk / "filler")  # another program takes every last byte
            rows = await ob.take(1000)
            with caplog.at_level(logging.WARNING, logger="agent.outbox"):
                assert await ob.ack([r.seq for r in rows]) is True
            assert "released the 256 KiB reserve" in caplog.text
            assert ob.stats()["depth"] == 0 and ob.ack_failing_since is None
            assert not Path(f"{path}.reserve").exists()
        finally:
            await ob.close()


async def test_failed_delete_keeps_rows_delivered_and_retries(tmp_path: Path) -> None:
    """No reserve left and no room: the ack fails, the rows are not offered again (not even after the
    session drops), and the next ack deletes them once there is room."""
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        path = disk / "outbox.db"
        ob = Outbox(path, sync="normal")
        await ob.open()
        await ob.close()
        Path(f"{path}.reserve").unlink()
        fill_up(disk / "blocker", leave=600 * 1024)  # no room for a new reserve
        ob = Outbox(path, sync="normal")
        await ob.open()
        try:
            assert not Path(f"{path}.reserve").exists()
            seqs = await ob.append([tel(i, size=1000) for i in range(20)])
            fill_up(disk / "filler")
            rows = await ob.take(1000)
            assert await ob.ack([r.seq for r in rows]) is False
            assert ob.ack_failing_since is not None
            assert ob.stats()["delivered_undeleted"] == 20
            ob.release_all()  # the session dropped
            assert await ob.take(1000) == [], "delivered rows must not be sent again"
            (disk / "filler").unlink()
            assert await ob.ack([]) is True
            assert ob.stats()["depth"] == 0 and ob.stats()["delivered_undeleted"] == 0
            assert ob.ack_failing_since is None
            assert len(seqs) == 20
        finally:
            await ob.close()


async def test_failing_deletes_keep_the_session_and_stop_the_watchdog(tmp_path: Path) -> None:
    """Fault injection: every delete fails. The session stays up, nothing is republished, the rows behind keep
    going out, and after the publish budget the watchdog is withheld (systemd restarts a store that is stuck)."""
    from agent.model import Event
    from tests.peers.mosquitto import Broker

    from .agentkit import Collector

    broker = Broker(tmp_path).start()
    try:
        site = write_site(tmp_path, broker.url)
        async with Collector(broker.port) as col, running_agent(site) as agent:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            real = agent.outbox._ops.ack

            def broken(conn: object, seqs: list[int], **kw: object) -> None:
                raise StoreFull("outbox ack failed: database or disk is full (injected)")

            agent.outbox._ops.ack = broken  # type: ignore[method-assign, assignment]
            for i in range(10):
                agent.event(Event("door-1", "door", {"n": i}))
                await asyncio.sleep(0.1)
            await col.wait(lambda: len([m for m in col.of("e") if m["doc"].get("kind") == "door"]) >= 10, 10,
                           "door events while deletes fail")
            await asyncio.sleep(1.0)
            assert agent.outbox.ack_failing_since is not None
            assert agent.uplink.state.connects == 1
            doors = [m["doc"]["seq"] for m in col.of("e") if m["doc"].get("kind") == "door"]
            assert len(doors) == len(set(doors)) == 10, "delivered rows were sent again"
            assert agent.alive()[0], "within the budget the store may recover"
            agent.outbox.ack_failing_since -= 1000  # as if the deletes had failed for 1000 s
            ok, why = agent.alive()
            assert not ok and "delivered rows cannot be deleted" in why
            agent.outbox._ops.ack = real  # type: ignore[method-assign]
            agent.event(Event("door-1", "door", {"n": 10}))
            for _ in range(100):
                if agent.outbox.ack_failing_since is None:
                    break
                await asyncio.sleep(0.05)
            assert agent.outbox.ack_failing_since is None and agent.alive()[0]
            assert agent.outbox.stats()["delivered_undeleted"] == 0
    finally:
        broker.stop()


async def test_start_on_a_full_disk_says_so_polls_into_memory_and_serves_status(tmp_path: Path) -> None:
    """A real process on a full tmpfs: no traceback, a clear journal line, the status socket answers, records
    are held in memory; when room comes back the outbox opens and what was held is stored."""
    import sys

    from tests.peers.common import stop_process, wait_for

    from .agentkit import ROOT, start_agent_process

    state = tmp_path / "state"
    site = write_site(tmp_path, BROKER)
    log = tmp_path / "agent.log"
    with small_tmpfs(state):
        fill_up(state / "filler")
        proc = start_agent_process(site, log)
        try:
            def status() -> dict[str, object] | None:
                r = subprocess.run([sys.executable, "-m", "agent.tools.cli", "status", "--json", "--config", str(site)],
                                   capture_output=True, text=True, cwd=ROOT, timeout=20)
                # exit 1 is an answer too: the agent is unhealthy (no broker, store failing)
                return json.loads(r.stdout)["outbox"] if r.returncode in (0, 1) and r.stdout else None

            wait_for(lambda: proc.poll() is not None or status() is not None, 20, 0.2, "status socket")
            assert proc.poll() is None, log.read_text()
            wait_for(lambda: (status() or {}).get("held_in_memory", 0) > 0, 10, 0.2, "records held in memory")
            snap = status()
            assert snap is not None and "full" in str(snap["store_error"])
            text = log.read_text()
            assert "Traceback" not in text, text
            assert "the disk is full" in text and "polling goes on into memory" in text
            (state / "filler").unlink()  # room again: the open is retried and the held records are stored
            wait_for(lambda: (status() or {}).get("depth", 0) > 0 and (status() or {}).get("store_error") is None,
                     20, 0.2, "outbox opened and records stored")
            assert (status() or {}).get("held_in_memory") == 0
            proc.send_signal(15)
            assert proc.wait(20) == 0
        finally:
            stop_process(proc)
    assert "outbox open now" in log.read_text()


@pytest.mark.parametrize("kind", ["newer", "foreign"])
async def test_newer_or_foreign_schema_is_moved_aside_and_the_agent_goes_on(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    await ob.open()
    old = await ob.append([tel(i) for i in range(5)])
    await ob.close()
    c = sqlite3.connect(path, isolation_level=None)
    if kind == "newer":
        c.execute("PRAGMA user_version = 7")
    else:
        c.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, v REAL)")  # somebody else's database
    c.close()
    before = path.read_bytes()
    ob2 = Outbox(path)
    with caplog.at_level(logging.ERROR, logger="agent.outbox"):
        await ob2.open()
    try:
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.db.schema-") and p.name[-1].isdigit()]
        assert len(aside) == 1 and aside[0].read_bytes() == before, "the old file is kept, byte for byte"
        assert "not an outbox this agent can use" in caplog.text and str(aside[0]) in caplog.text
        assert ob2.incident is not None and ob2.incident.result == "schema"
        assert ob2.incident.lost == 5  # its rows were countable
        new = await ob2.append([tel(9)])
        assert new[0] > max(old)
    finally:
        await ob2.close()
    ob3 = Outbox(path)  # and the next start is a plain one: no restart loop
    await ob3.open()
    assert ob3.incident is None
    await ob3.close()


async def test_wal_is_small_only_when_the_disk_is_low(tmp_path: Path) -> None:
    """Checkpointing every 32 pages costs throughput: only below 16 MiB free (a 1 MiB tmpfs here)."""
    async def pages(directory: Path) -> int:
        ob = Outbox(directory / "outbox.db")
        await ob.open()
        try:
            await ob.append([tel(1)])
            return int(await ob._call(lambda: ob._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
        finally:
            await ob.close()

    assert await pages(tmp_path) == 1000
    with small_tmpfs(tmp_path / "small") as small:
        assert await pages(small) == 32


async def test_disk_filled_by_another_program_while_delivering(tmp_path: Path) -> None:
    """Broker up, another program takes every last byte: rows go into pages the file already has, so storing
    and delivering go on with 0 bytes free, in one session, and the WAL stays small."""
    from tests.peers.mosquitto import Broker

    from .agentkit import Collector

    broker = Broker(tmp_path).start()
    state = tmp_path / "state"
    devices = "".join(f"  - {{name: box{i}, type: chatty-box, interval: 0.1s}}\n" for i in range(3))
    site = write_site(tmp_path, broker.url, extra=CHATTY + "outbox: {max_bytes: 64MiB, sync: normal}\n",
                      devices=devices, silence="0.01s")
    wal = state / "outbox.sqlite-wal"
    try:
        with small_tmpfs(state):
            async with Collector(broker.port) as col, running_agent(site) as agent:
                await col.wait(lambda: len(col.of("t")) > 20, 10, "telemetry before the disk fills")
                fill_up(state / "filler")
                assert os.statvfs(state).f_bavail == 0
                before, wal_max, t0 = len(col.of("t")), 0, time.monotonic()
                # 5 s on an idle machine (about 150 messages); up to 20 s for the first 20 on a loaded one
                while time.monotonic() - t0 < 5 or (len(col.of("t")) - before < 20 and time.monotonic() - t0 < 20):
                    await asyncio.sleep(0.1)
                    with contextlib.suppress(OSError):
                        wal_max = max(wal_max, wal.stat().st_size)
                delivered = len(col.of("t")) - before
                print(f"\n0 bytes free: {delivered} telemetry messages delivered in {time.monotonic() - t0:.1f} s; "
                      f"WAL max {wal_max} B")
                assert agent.uplink.state.connects == 1
                assert wal_max <= 300 * 1024
                # it stalled here in about 1 run in 8 (2 of 16 measured) before a write that meets SQLite's
                # disk-full checkpointed the WAL (test_wal_stuck_by_a_full_disk_with_an_empty_queue_is_unstuck)
                assert delivered >= 20, f"delivery stopped on a full disk: {delivered} messages delivered"
                # with 0 bytes free, rows are stored as fast as delivered rows free pages: what is held in memory
                # meanwhile depends on this machine's delivery rate (about 120 records on a loaded 2-core box,
                # a handful on an idle one); it stays within the bound and nothing is dropped
                assert agent.snapshot()["outbox"]["held_in_memory"] < 1000
                assert agent.snapshot()["outbox"]["dropped_unstored"] == 0
                assert wal_max <= 300 * 1024
                agent.stop_event.set()
    finally:
        broker.stop()


async def test_outbox_without_a_mark_is_kept_but_its_sequence_jumps(tmp_path: Path) -> None:
    """An outbox written by an agent older than the mark (or whose mark was deleted): its rows stay queued,
    but continuity cannot be proven, so the sequence continues above the clock floor (once)."""
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    await ob.open()
    base = ob.stats()["last_seq"]
    await ob.append([tel(i) for i in range(3)])
    await ob.close()
    c = sqlite3.connect(path, isolation_level=None)  # as an older agent left it: seqs 1..3, no epoch
    c.execute("UPDATE outbox SET seq = seq - ?", (base,))
    c.execute("UPDATE meta SET value = 3 WHERE key = 'last_seq'")
    c.execute("DELETE FROM meta WHERE key = 'epoch'")
    c.close()
    seqs = [1, 2, 3]
    Path(f"{path}.seq").unlink()
    ob = Outbox(path)
    await ob.open()
    try:
        assert ob.incident is not None and ob.incident.result == "unproven" and ob.incident.lost == 0
        assert [r.seq for r in await drain(ob)] == seqs, "the queued rows are kept"
        new = await ob.append([tel(9)])
        assert new[0] > max(seqs) and new[0] > (time.time() - 60) * 1e6
    finally:
        await ob.close()
    ob = Outbox(path)
    await ob.open()
    assert ob.incident is None  # the mark exists again: continuous from now on
    await ob.close()
