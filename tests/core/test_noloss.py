"""No loss, measured: broker outage and kill -9 of the agent. Duplicates allowed, gaps not."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests.peers.mosquitto import Broker

from .agentkit import Collector, kill9, start_agent_process, write_site

CHATTY = f"profiles_dirs: [{Path(__file__).parent / 'profiles'}]\n"


def chatty(interval: str) -> str:
    return f"  - {{name: box, type: chatty-box, interval: {interval}}}\n"

pytestmark = pytest.mark.slow


class PersistentBroker(Broker):
    """Keeps sessions and queued QoS 1 messages across a restart, so the collector misses nothing."""

    def write_config(self) -> Path:
        conf = super().write_config()
        conf.write_text(conf.read_text() .replace("persistence false", "persistence true")
                        + f"persistence_location {self.workdir}/\nmax_queued_messages 0\nmax_inflight_messages 0\n")
        return conf


def _committed(db: Path) -> set[int]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT seq FROM outbox")}
    finally:
        con.close()


async def test_broker_down_10s_every_sequence_arrives(tmp_path: Path) -> None:
    broker = PersistentBroker(tmp_path).start()
    site = write_site(tmp_path, broker.url, extra=CHATTY, devices=chatty("0.1s"), silence="0.05s")
    proc = start_agent_process(site, tmp_path / "agent.log")
    try:
        async with Collector(broker.port, client_id="noloss-a") as col:
            await col.wait(lambda: len(col.of("t")) >= 5, 15, "first telemetry")
            before = max(col.seqs())
            broker.stop()
            await asyncio.sleep(10)
            broker.start()
            # produce a little more after the outage, then wait for the backlog to drain
            await col.wait(lambda: len(col.seqs()) and max(col.seqs()) > before + 60, 30, "backlog")
            await asyncio.sleep(1.5)
        seqs = col.seqs()
        lo, hi = min(seqs), max(seqs)
        missing = sorted(set(range(lo, hi + 1)) - seqs)
        assert not missing, f"gaps: {missing[:20]} (of {hi - lo + 1})"
        assert hi - before >= 60, "the agent should have produced during the outage"
    finally:
        proc.kill()
        proc.wait(5)
        broker.stop()


async def test_kill9_mid_publish_every_committed_sequence_arrives(tmp_path: Path) -> None:
    broker = PersistentBroker(tmp_path)
    many = "".join(f"  - {{name: box{i}, type: chatty-box, interval: 0.1s}}\n" for i in range(20))
    site = write_site(tmp_path, broker.url, extra=CHATTY, devices=many, silence="0.01s")
    db = tmp_path / "state" / "outbox.sqlite"
    async with contextlib_broker(broker), Collector(broker.port, client_id="noloss-b") as col:
        broker.stop()  # build a backlog first: the agent collects without a broker
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await asyncio.sleep(4)
            broker.start()
            await col.wait(lambda: len(col.of("t")) >= 1, 15, "publishing")
            kill9(proc)  # mid-publish: the backlog is draining and live data flowing
            after_kill = _committed(db)
            committed = after_kill | col.seqs()
            assert after_kill, "the outbox should still hold rows at the kill"
            proc = start_agent_process(site, tmp_path / "agent.log")
            try:
                await col.wait(lambda: committed <= col.seqs(), 30, "every committed seq")
            except AssertionError:
                missing = sorted(committed - col.seqs())
                raise AssertionError(f"missing {len(missing)}: {missing[:10]}..{missing[-3:]}; "
                                     f"db now: {sorted(_committed(db))[:10]}") from None
        finally:
            proc.kill()
            proc.wait(5)
    lo, hi = min(committed), max(committed)
    assert hi - lo > 200
    assert set(range(lo, hi + 1)) <= col.seqs()


class contextlib_broker:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def __aenter__(self) -> Broker:
        return self.broker.start()

    async def __aexit__(self, *exc: object) -> None:
        self.broker.stop()
