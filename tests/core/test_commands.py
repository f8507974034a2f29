"""The command channel against a real Mosquitto: retained commands, floods, hostile payloads, strict JSON."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.uplink import intake
from tests.peers.mosquitto import Broker

from .agentkit import Collector, running_agent, start_agent_process, write_site


def strict_loads(raw: bytes) -> Any:
    """RFC 8259 JSON only: NaN, Infinity and -Infinity are refused."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(raw, parse_constant=refuse)


def assert_all_strict_json(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        if m["kind"] not in ("t", "cmd"):  # binary telemetry; commands are what the test sent
            strict_loads(m["raw"])


# ------------------------------------------------------------------------------------ parsing (no I/O)


@pytest.mark.parametrize(("payload", "error"), [
    (b"[" * 100_000 + b"]" * 100_000, "command too large"),
    (b"[" * 2000 + b"]" * 2000, "nested deeper than 8"),
    (b'{"id":"a","cmd":"ping","x":' + b"[" * 9 + b"]" * 9 + b"}", "nested deeper than 8"),
    (json.dumps({"id": "x" * 2_000_000, "cmd": "ping"}).encode(), "command too large"),
    (b'{"id": NaN, "cmd": "ping"}', "NaN is not valid JSON"),
    (b'{"id": 1.5, "cmd": "ping"}', "id must be"),
    (b'{"id": true, "cmd": "ping"}', "id must be"),
    (b'{"id": 9007199254740992, "cmd": "ping"}', "id must be"),
    (b'{"id": "a", "cmd": "' + b"p" * 33 + b'"}', "cmd not a command name"),
    (b'{"id": "a"}', "cmd missing"),
    (b'{"id": "a", "cmd": "ping", "args": []}', "args must be"),
    (b"\xff\xfe", "malformed command"),
])
def test_parse_refuses_with_a_short_error(payload: bytes, error: str) -> None:
    with pytest.raises(intake.CommandRefused) as ei:
        intake.parse(payload)
    assert error in ei.value.error
    assert len(ei.value.error) <= intake.MAX_ERROR_CHARS
    assert ei.value.cid is None or len(str(ei.value.cid)) <= intake.MAX_ID_CHARS


def test_parse_depth_ignores_brackets_in_strings() -> None:
    c = intake.parse(json.dumps({"id": 7, "cmd": "ping", "args": {"note": "[[[[[[[[[[[[{{{{{{{{\\\"]"}}).encode())
    assert (c.id, c.cmd, c.src) == (7, "ping", "-")


# ------------------------------------------------------------------------------------ against Mosquitto


async def test_retained_command_is_ignored_at_every_reconnect(tmp_path: Path) -> None:
    """A retained `rebirth` on the command topic is replayed by the broker at every subscription: it must
    never be obeyed (the old agent ran one retained rebirth once per connection)."""
    broker = Broker(tmp_path, persistence=True).start()
    try:
        site = write_site(tmp_path, broker.url)
        async with aiomqtt.Client("127.0.0.1", broker.port) as op:
            await op.publish("ea/v1/t1/cmd", json.dumps({"id": "r1", "cmd": "rebirth"}), qos=1, retain=True)
        async with running_agent(site) as agent:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            for _ in range(3):
                broker.stop()
                broker.start()
                n = agent.uplink.state.connects
                async with asyncio.timeout(15):
                    while agent.uplink.state.connects == n or not agent.uplink.connected.is_set():
                        await asyncio.sleep(0.05)
            async with Collector(broker.port) as col:
                await asyncio.sleep(1.0)  # time for an ack or a live rebirth, if one were coming
                assert agent.uplink.state.connects == 4
                assert not col.of("ack"), col.of("ack")
                assert agent.gate.received == 0
                assert agent.uplink.retained_ignored == 4
    finally:
        broker.stop()


async def test_rebirth_flood_is_coalesced_and_rate_limited(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        await col.wait(lambda: bool(col.of("birth")), 5, "first birth")
        await asyncio.sleep(0.5)
        births0, acks0 = len(col.of("birth")), len(col.of("ack"))
        sent = 0
        async with aiomqtt.Client("127.0.0.1", broker.port) as op:
            for i in range(100):
                body = json.dumps({"id": f"rb-{i:03d}", "cmd": "rebirth"}).encode()
                sent += len(body)
                await op.publish("ea/v1/t1/cmd", body, qos=1)
        # the coalescing window is 5 s: everything the flood causes is out after it
        await asyncio.sleep(6.5)
        births = col.of("birth")[births0:]
        acks = col.of("ack")[acks0:]
        birth_bytes = sum(m["bytes"] for m in births)
        ack_bytes = sum(m["bytes"] for m in acks)
        print(f"100 rebirths ({sent} B) -> {len(births)} births ({birth_bytes} B), {len(acks)} acks ({ack_bytes} B),"
              f" amplification {(birth_bytes + ack_bytes) / sent:.2f}x")
        assert 1 <= len(births) <= 2
        ok = [m["doc"] for m in acks if m["doc"]["ok"]]
        limited = [m["doc"] for m in acks if not m["doc"]["ok"]]
        assert intake.SOURCE_BURST <= len(ok) <= intake.SOURCE_BURST + 2  # + the refill during the flood
        assert limited and all("rate limited" in a["error"] for a in limited)
        assert len(acks) <= intake.ANSWER_BURST + 20  # plus the refill during the flood
        assert agent.gate.unanswered == 100 - len(acks)
        assert agent.snapshot()["commands"]["unanswered"] == agent.gate.unanswered
        assert (birth_bytes + ack_bytes) / sent < 3
        assert_all_strict_json(col.messages)


async def test_hostile_commands_get_short_answers_in_strict_json(broker: Broker, tmp_path: Path) -> None:
    """Deep JSON, 2 MB cmd/id, NaN and float ids: each answered with a short error, the agent (a process)
    logs no traceback, and every message it publishes parses as strict JSON."""
    site = write_site(tmp_path, broker.url)
    log = tmp_path / "agent.log"
    big = "x" * 2_000_000
    hostile = [
        ("deep-100k", b"[" * 100_000 + b"]" * 100_000),
        ("deep-2000", b"[" * 2000 + b"]" * 2000),
        ("deep-obj", b'{"id":"d2","cmd":"ping","a":' + b'{"a":' * 20 + b"1" + b"}" * 21),
        ("big-cmd", json.dumps({"id": "b1", "cmd": big}).encode()),
        ("big-id", json.dumps({"id": big, "cmd": "ping"}).encode()),
        ("nan-id", b'{"id": NaN, "cmd": "ping"}'),
        ("inf-id", b'{"id": -Infinity, "cmd": "ping"}'),
        ("float-id", b'{"id": 1e400, "cmd": "ping"}'),
        ("ok", b'{"id": "fine", "cmd": "ping"}'),
    ]
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, log)
        try:
            await col.wait(lambda: any(m["doc"]["state"] == "online" for m in col.of("status")), 15, "online")
            async with aiomqtt.Client("127.0.0.1", broker.port) as op:
                for _, body in hostile:
                    await op.publish("ea/v1/t1/cmd", body, qos=1)
            await col.wait(lambda: len(col.of("ack")) >= len(hostile), 10, "one answer per command")
            acks = [m for m in col.of("ack")]
            assert max(m["bytes"] for m in acks) < 400, [m["bytes"] for m in acks]
            docs = [strict_loads(m["raw"]) for m in acks]
            errors = [d["error"] for d in docs if not d["ok"]]
            assert len(errors) == len(hostile) - 1
            assert sum("nested deeper" in e for e in errors) == 2
            assert sum("too large" in e for e in errors) == 3
            assert sum("not valid JSON" in e for e in errors) == 2
            assert sum("id must be" in e for e in errors) == 1
            assert [d["id"] for d in docs if d["ok"]] == ["fine"]
            assert proc.poll() is None
            assert_all_strict_json(col.messages)
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
    text = log.read_text()
    assert "Traceback" not in text and "RecursionError" not in text, text[-3000:]


async def test_published_json_is_strict_even_with_nan_in_event_data(broker: Broker, tmp_path: Path) -> None:
    from agent.model import Event, Severity

    site = write_site(tmp_path, broker.url)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        agent.event(Event("box", "probe", {"v": float("nan"), "w": [float("inf"), 1.5]}, Severity.INFO))
        await col.wait(lambda: any(m["doc"].get("kind") == "probe" for m in col.of("e")), 5, "event")
        ev = next(m for m in col.of("e") if m["doc"].get("kind") == "probe")
        assert strict_loads(ev["raw"])["data"] == {"v": None, "w": [None, 1.5]}
        t0 = time.monotonic()
        assert_all_strict_json(col.messages)
        assert time.monotonic() - t0 < 1


def test_gate_limits_per_source_and_all_sources() -> None:
    gate = intake.Gate()
    one = [intake.Command(i, "ping", "ops-a", {}) for i in range(intake.SOURCE_BURST + 1)]
    for c in one[:-1]:
        gate.admit(c)
    with pytest.raises(intake.CommandRefused, match="per source"):
        gate.admit(one[-1])
    gate.admit(intake.Command(1, "ping", "ops-b", {}))  # another source has its own budget
    admitted = intake.SOURCE_BURST + 1
    with pytest.raises(intake.CommandRefused, match="from all sources"):
        for i in range(100):  # a flood that rotates its declared source
            gate.admit(intake.Command(i, "ping", f"spoof-{i}", {}))
            admitted += 1
    assert admitted <= intake.ALL_BURST + 1
