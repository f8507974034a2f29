"""The flusher cancelled at its racing points (shutdown on SIGTERM, a reload): an event it took from its queue is
stored or still held, never lost, and never stored twice. A real outbox, real cancellation; the disk-full
commit is injected in the outbox's worker thread, at the moment the flusher is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.config import load_site
from agent.core.flusher import Flusher
from agent.core.pipeline import Pipeline
from agent.errors import StoreFull
from agent.model import Event
from agent.outbox import Outbox, Record
from agent.uplink.codec import dumps
from agent.uplink.topics import Topics

from .agentkit import Collector, running_agent, start_agent_process, write_site

BROKER = "mqtt://127.0.0.1:9"  # nothing listens: the records stay in the outbox, where the test reads them
CHATTY = f"profiles_dirs: [{Path(__file__).parent / 'profiles'}]\n"


def stored_bodies(db: Path) -> list[bytes]:
    con = sqlite3.connect(db)
    try:
        return [bytes(r[0]) for r in con.execute("SELECT body FROM outbox ORDER BY seq")]
    finally:
        con.close()


@contextlib.asynccontextmanager
async def flusher_on_a_real_outbox(tmp_path: Path) -> AsyncIterator[tuple[Flusher, asyncio.Task[None]]]:
    site = load_site(write_site(tmp_path, BROKER), strict=False)
    outbox = Outbox(site.state_dir / "outbox.sqlite", sync="normal")
    site.state_dir.mkdir(parents=True, exist_ok=True)
    await outbox.open()
    flusher = Flusher(site, outbox, Pipeline(site.devices, 900.0), Topics("ea/v1", site.id), lambda: None)
    task = asyncio.create_task(flusher.run(), name="flusher")
    try:
        yield flusher, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await flusher.flush_now()  # waits for a store left in flight
        await outbox.close()


def cancel_when_committing(flusher: Flusher, task: asyncio.Task[None], marker: bytes,
                           fail: bool) -> Callable[[], int]:
    """At the commit that carries ``marker``: cancel the flusher's task (the racing point: the event was taken
    and its commit is in flight); with ``fail`` that commit then fails like a full disk, in the worker."""
    ops = flusher.outbox._ops
    real_ops_append = ops.append
    real_append = flusher.outbox.append
    fired = [0]

    def failing_commit(*args: Any, **kw: Any) -> list[int]:
        if fired[0] != 1:
            return real_ops_append(*args, **kw)
        fired[0] += 1
        time.sleep(0.05)  # the commit takes a moment (a slow card): the cancellation lands while it runs
        raise StoreFull("database or disk is full (injected)")

    async def racing_append(records: list[Record]) -> list[int]:
        if not fired[0] and any(marker in r.body for r in records):
            fired[0] += 1
            task.cancel()
        return await real_append(records)

    if fail:
        ops.append = failing_commit  # type: ignore[method-assign]
    flusher.outbox.append = racing_append  # type: ignore[method-assign]
    return lambda: fired[0]


@pytest.mark.parametrize("commit", ["fails", "succeeds"])
async def test_event_taken_when_the_flusher_is_cancelled_is_stored_once(tmp_path: Path, commit: str) -> None:
    async with flusher_on_a_real_outbox(tmp_path) as (flusher, task):
        fired = cancel_when_committing(flusher, task, b"door-forced", fail=commit == "fails")
        flusher.queue("ea/v1/t1/e/door-1", b'{"state":"door-forced"}', time.time())
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
        assert task.cancelled()
        flusher.queue("ea/v1/t1/e/door-2", b'{"state":"after"}', time.time())
        await flusher.flush_now()  # what the agent does at shutdown, right after cancelling the flusher
        assert fired() == (2 if commit == "fails" else 1), "the commit in flight failed (injected)"
        assert flusher.unstored == [] and flusher.dropped() == 0
        bodies = stored_bodies(flusher.outbox.path)
    assert bodies.count(b'{"state":"door-forced"}') == 1, bodies
    assert bodies.index(b'{"state":"door-forced"}') < bodies.index(b'{"state":"after"}')


async def test_held_records_survive_a_cancelled_open(tmp_path: Path) -> None:
    """The outbox could not be opened (full disk at start): the flusher holds records in memory. Cancelled while
    it opens the outbox again, it keeps every held record and stores them at the next flush."""
    async with flusher_on_a_real_outbox(tmp_path) as (flusher, task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await flusher.outbox.close()
        flusher.unstored = [Record(1, "ea/v1/t1/e/x", f'{{"n":{i}}}'.encode(), time.time()) for i in range(40)]
        real_open = flusher.outbox.open
        gate = asyncio.Event()

        async def slow_open() -> None:
            await gate.wait()
            await real_open()

        flusher.outbox.open = slow_open  # type: ignore[method-assign]
        again = asyncio.create_task(flusher.append([Record(1, "ea/v1/t1/e/x", b'{"n":40}', time.time())]))
        await asyncio.sleep(0.05)
        again.cancel()  # cancelled while it opens the outbox
        await asyncio.sleep(0)
        gate.set()
        with contextlib.suppress(asyncio.CancelledError):
            await again
        await flusher.flush_now()
        assert flusher.unstored == []
        bodies = stored_bodies(flusher.outbox.path)
    assert bodies == [f'{{"n":{i}}}'.encode() for i in range(41)]


async def test_cancelled_between_pieces_on_a_full_disk_keeps_the_rest(tmp_path: Path) -> None:
    """A held batch stored piecemeal on a full disk: cancelled between two pieces, the pieces not yet stored stay
    held (and a failing piece in flight keeps its records)."""
    async with flusher_on_a_real_outbox(tmp_path) as (flusher, task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        real_append = flusher.outbox.append
        calls = [0]
        runner: list[asyncio.Task[None]] = []

        async def full_then_pieces(records: list[Record]) -> list[int]:
            calls[0] += 1
            if calls[0] == 1:
                raise StoreFull("database or disk is full (injected)")  # the whole batch does not fit
            if calls[0] == 3:
                runner[0].cancel()  # the second piece is in flight
                raise StoreFull("database or disk is full (injected)")
            return await real_append(records)

        flusher.outbox.append = full_then_pieces  # type: ignore[method-assign]
        records = [Record(1, "ea/v1/t1/e/x", f'{{"n":{i}}}'.encode(), time.time()) for i in range(50)]
        runner.append(asyncio.create_task(flusher.append(records)))
        with contextlib.suppress(asyncio.CancelledError):
            await runner[0]
        flusher.outbox.append = real_append  # type: ignore[method-assign]
        await flusher.flush_now()
        assert flusher.unstored == []
        bodies = stored_bodies(flusher.outbox.path)
    assert bodies == [f'{{"n":{i}}}'.encode() for i in range(50)]


async def test_an_event_queued_during_the_shutdown_drain_is_stored(tmp_path: Path) -> None:
    """Events can still come while the agent drains at a stop (a command's ack, a log event): they are stored
    before the outbox closes, not left in the flusher's queue."""
    site = write_site(tmp_path, BROKER)
    async with running_agent(site) as agent:
        real_drain = agent._drain_before_exit

        async def drain_with_an_event() -> None:
            agent.event(Event("door-1", "door", {"state": "late"}))
            await real_drain()

        agent._drain_before_exit = drain_with_an_event  # type: ignore[method-assign]
    assert any(b'"late"' in b for b in stored_bodies(tmp_path / "state" / "outbox.sqlite"))


SITECUSTOMIZE = """
    # Fault injection for test_flusher_race: while the file named by EA_TEST_DISK_FULL exists, every outbox
    # commit takes 0.3 s and then fails like a full disk (SQLITE_FULL), as on a slow card that is full.
    import os, sqlite3, time
    flag = os.environ.get("EA_TEST_DISK_FULL")
    if flag:
        from agent.outbox.ops import QueueOps
        real = QueueOps.append

        def append(self, conn, rows, max_bytes):
            if os.path.exists(flag):
                time.sleep(0.3)
                if os.path.exists(flag):
                    err = sqlite3.OperationalError("database or disk is full")
                    err.sqlite_errorcode = sqlite3.SQLITE_FULL
                    raise self.fail(conn, "append", err)
            return real(self, conn, rows, max_bytes)

        QueueOps.append = append
"""


async def test_events_queued_right_before_sigterm_are_delivered_after_restart(tmp_path: Path) -> None:
    """Real Mosquitto, real agent process, real SIGTERM. The disk is full for a moment (commits fail, the acks
    of 20 commands are held in memory), the SIGTERM comes while a failing commit is in flight, and the disk has
    room again for the stop's flush: every ack is delivered, after the restart at the latest."""
    from tests.peers.mosquitto import Broker

    broker = Broker(tmp_path).start()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    flag = tmp_path / "disk-full"
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "EA_TEST_DISK_FULL": str(flag)}
    site = write_site(tmp_path, broker.url, extra=CHATTY,
                      devices="  - {name: box, type: chatty-box, interval: 0.2s}\n", silence="15m")
    log = tmp_path / "agent.log"
    ids = [f"c{i}" for i in range(20)]
    proc = start_agent_process(site, log, env)
    try:
        async with Collector(broker.port, client_id="race-col") as col:
            await col.wait(lambda: bool(col.of("birth")), 15, "the first birth")
            flag.touch()
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="race-op") as op:
                for i, cid in enumerate(ids):  # two sources: within every rate limit (10 per source, 20 answers)
                    await op.publish("ea/v1/t1/cmd", dumps({"id": cid, "cmd": "ping", "src": f"op{i % 2}"}), qos=1)
            await asyncio.sleep(1.0)  # the acks are taken, their commits fail: held in memory
            assert not [m for m in col.of("ack") if m["doc"].get("id") in ids], "the disk was full"
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)  # the SIGTERM lands while a failing commit is in flight
            flag.unlink()  # room again for the stop's flush
            assert proc.wait(20) == 0
            text = log.read_text()
            assert "could not be stored" not in text, text[-2000:]
            proc = start_agent_process(site, log)
            await col.wait(lambda: {m["doc"].get("id") for m in col.of("ack")} >= set(ids), 20,
                           "every ack after the restart")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
        broker.stop()
