"""Fault injection: the outbox refuses writes (disk full) for a while; nothing produced meanwhile is lost
and the agent keeps running."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.errors import StoreError
from agent.model import Event

from .agentkit import running_agent, write_site

BROKER = "mqtt://127.0.0.1:9"


async def test_store_error_holds_records_and_retries(tmp_path: Path) -> None:
    site = write_site(tmp_path, BROKER)
    async with running_agent(site) as agent:
        await asyncio.sleep(0.5)
        real_append = agent.outbox.append
        before = agent.outbox.stats()["last_seq"]

        async def disk_full(records: object) -> list[int]:
            raise StoreError("database or disk is full")

        agent.outbox.append = disk_full  # type: ignore[method-assign]
        agent.event(Event("door-1", "door", {"state": "forced"}))
        await asyncio.sleep(0.6)
        snap = agent.snapshot()["outbox"]
        assert snap["store_error"] == "database or disk is full"
        assert snap["held_in_memory"] >= 1
        assert agent.stats()["outbox"]["last_seq"] == before
        agent.outbox.append = real_append  # type: ignore[method-assign]
        await asyncio.sleep(0.5)
        assert agent.snapshot()["outbox"]["store_error"] is None
        assert agent.snapshot()["outbox"]["held_in_memory"] == 0
        rows = await agent.outbox.take(1000)
        doors = [r for r in rows if r.topic.endswith("/e/door-1")]
        assert len(doors) == 1 and b'"forced"' in doors[0].body


async def test_oversized_record_is_dropped_alone(tmp_path: Path) -> None:
    """One message too large for the outbox is dropped and counted; everything else is stored."""
    site = write_site(tmp_path, BROKER, extra="outbox: {max_bytes: 256KiB}\n")
    async with running_agent(site) as agent:
        await asyncio.sleep(0.3)
        agent.event(Event("agent", "config", {"problems": ["x" * 100_000]}))
        agent.event(Event("door-1", "door", {"state": "forced"}))
        await asyncio.sleep(0.5)
        snap = agent.snapshot()["outbox"]
        assert snap["dropped_oversize"] == 1 and snap["store_error"] is None and snap["held_in_memory"] == 0
        rows = await agent.outbox.take(1000)
        assert any(r.topic.endswith("/e/door-1") for r in rows)


def test_tiny_outbox_is_a_located_error(tmp_path: Path) -> None:
    import pytest

    from agent.config import load_site
    from agent.errors import ConfigError

    site = write_site(tmp_path, BROKER, extra="outbox: {max_bytes: 30}\n")
    with pytest.raises(ConfigError, match=r"site.yaml:\d+: outbox.max_bytes: Input should be greater than or equal"):
        load_site(site)


async def test_message_over_the_broker_limit_is_dropped_alone(tmp_path: Path) -> None:
    site = write_site(tmp_path, BROKER, extra_uplink="  max_message_bytes: 4KiB\n")
    async with running_agent(site) as agent:
        await asyncio.sleep(0.3)
        agent.event(Event("agent", "config", {"problems": ["x" * 5000]}))
        agent.event(Event("door-1", "door", {"state": "forced"}))
        await asyncio.sleep(0.5)
        assert agent.snapshot()["outbox"]["dropped_oversize"] == 1
        rows = await agent.outbox.take(1000)
        assert any(r.topic.endswith("/e/door-1") for r in rows)
        assert not any(len(r.body) > 4096 for r in rows)


async def test_row_the_client_refuses_is_set_aside_alone(tmp_path: Path) -> None:
    """A birth queued under a wildcard prefix (an earlier run's bad config) is refused by the client at every
    try: it is set aside and counted, and what is queued behind it is delivered on the first session."""
    import time

    from agent.outbox import Kind, Record
    from tests.peers.mosquitto import Broker

    from .agentkit import Collector

    broker = Broker(tmp_path)  # port reserved, not started: both rows wait in the outbox
    site = write_site(tmp_path, broker.url)
    async with running_agent(site) as agent:
        await agent.outbox.append([Record(Kind.EVENT, "ea/+/t1/birth", b'{"v": 1}', time.time())])
        agent.event(Event("door-1", "door", {"state": "forced"}))
        await asyncio.sleep(0.5)
        broker.start()
        try:
            async with Collector(broker.port) as col:
                await col.wait(lambda: any(m["kind"] == "e" and m["doc"].get("kind") == "door" for m in col.of("e")),
                               10, "the door event behind the refused row")
                await asyncio.sleep(1.0)  # long enough for a few reconnects of the old reset loop
                assert agent.uplink.state.connects == 1, "a refused row must not reset the session"
                st = agent.outbox.stats()
                assert st["dropped_refused"] == 1 and st["dropped_total"] >= 1
                assert agent.uplink.state.refused == 1
                snap = agent.snapshot()["outbox"]
                assert snap["dropped_refused"] == 1
                rows = await agent.outbox.take(1000)
                assert not any("+" in r.topic for r in rows)
        finally:
            agent.stop_event.set()
            await asyncio.sleep(0.3)
            broker.stop()
    # the count survives a restart (meta)
    from agent.outbox import Outbox

    ob = Outbox(tmp_path / "state" / "outbox.sqlite")
    await ob.open()
    try:
        assert ob.stats()["dropped_refused"] == 1
    finally:
        await ob.close()


async def test_systemd_status_line_mentions_outbox_drops(tmp_path: Path) -> None:
    """STATUS= (what `systemctl status` shows) says when messages were dropped, read from a real notify socket."""
    import socket

    from agent.core.notify import Notifier

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    notifier = Notifier(str(sock_path))
    notifier.watchdog_interval = 0.2  # the status line is refreshed every watchdog tick
    site = write_site(tmp_path, BROKER, extra_uplink="  max_message_bytes: 4KiB\n")

    def status_lines() -> list[str]:
        out = []
        while True:
            try:
                msg = sock.recv(65536).decode()
            except BlockingIOError:
                return out
            out += [line[len("STATUS="):] for line in msg.split("\n") if line.startswith("STATUS=")]

    try:
        async with running_agent(site, notifier=notifier) as agent:
            await asyncio.sleep(0.5)
            before = status_lines()
            assert before and not any("dropped" in s for s in before), before
            agent.event(Event("agent", "config", {"problems": ["x" * 5000]}))  # over the broker limit: dropped
            await asyncio.sleep(0.6)
            after = status_lines()
            assert any("outbox" in s and "1 dropped" in s for s in after), after
    finally:
        sock.close()


async def test_row_the_broker_refuses_by_disconnecting_is_set_aside(tmp_path: Path) -> None:
    """Mosquitto closes the connection on a packet over its max_packet_size (the site's max_message_bytes is
    set higher by mistake): after a few tries, the last ones alone, the row is set aside and the rest flows."""
    from tests.peers.mosquitto import Broker

    from .agentkit import Collector

    broker = Broker(tmp_path, extra=["max_packet_size 4000"]).start()
    try:
        site = write_site(tmp_path, broker.url)
        async with Collector(broker.port) as col, running_agent(site) as agent:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            agent.event(Event("agent", "config", {"problems": ["x" * 6000]}))  # too big for this broker
            await asyncio.sleep(0.3)
            agent.event(Event("door-1", "door", {"state": "forced"}))
            await col.wait(lambda: any(m["doc"].get("kind") == "door" for m in col.of("e")), 30,
                           "the door event behind the refused row")
            st = agent.outbox.stats()
            assert st["dropped_refused"] == 1, st
            assert 2 <= agent.uplink.state.connects <= 6, agent.uplink.state
            rows = await agent.outbox.take(1000)
            assert not any(len(r.body) > 4000 for r in rows)
    finally:
        broker.stop()


def test_suspect_rules_blame_only_a_row_alone_and_at_once() -> None:
    """A link that drops while rows are in flight makes them suspects (sent alone next), but only failures of
    a row alone in flight, right after its publish, count towards setting it aside."""
    from agent.outbox import Kind, Stored
    from agent.uplink.suspects import LIMIT, Suspects

    rows = [Stored(s, Kind.EVENT, "t", b"", 0.0) for s in (10, 11, 12)]
    sus = Suspects()
    assert sus.split(rows) == (rows, [], None)
    for r in rows:  # the link dropped with all three in flight
        sus.failed(r.seq, blamed=False)
    now, back, poison = sus.split(rows)
    assert now == [rows[0]] and back == rows[1:] and poison is None
    for _ in range(10):  # a flapping link: row 10 alone, but the drops are not right after its publish
        sus.failed(10, blamed=False)
    assert sus.split(rows)[2] is None
    sus.delivered([10])
    assert sus.split(rows)[0] == [rows[1]]
    for _ in range(LIMIT):
        sus.failed(11, blamed=True)
    assert sus.split(rows[1:]) == ([], [rows[2]], rows[1])
