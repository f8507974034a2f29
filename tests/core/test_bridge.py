"""``edge-agent bridge``: a running agent's ea1 telemetry, through a real broker, comes out as plain JSON per
device with the right names, units and values; none lost, none duplicated, across a configuration change
(new generation) and a re-delivered message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt

from agent.model import Quality, Sample
from agent.tools.bridge import Bridge
from agent.uplink.codec import encode_samples, frame
from tests.peers.modbus import ModbusPeer
from tests.peers.mosquitto import Broker

from .agentkit import ROOT, Collector, running_agent, write_site


def _meter_tables() -> dict[int, dict[str, dict[int, int | bool]]]:
    from agent.config import load_profile

    regs: dict[int, int | bool] = {}
    for i, p in enumerate(load_profile(ROOT / "profiles" / "socomec-countis-e34.yaml").points):
        regs.update({a: 3 + i for a in range(p.address, p.address + 2)})  # type: ignore[attr-defined]
    return {1: {"holding": regs}}


def _meter(name: str, port: int) -> str:
    return (f"  - {{name: {name}, type: socomec-countis-e34, interval: 0.3s, timeout: 0.5s, retries: 0, "
            f"connection: {{host: 127.0.0.1, port: {port}, unit: 1}}}}\n")


class JsonOut:
    """Everything the bridge publishes under the output prefix."""

    def __init__(self, port: int, prefix: str) -> None:
        self.port, self.prefix = port, prefix
        self.docs: list[tuple[str, dict[str, Any]]] = []
        self.meta: dict[str, dict[str, Any]] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"json-out-{time.time_ns()}") as c:
            await c.subscribe(f"{self.prefix}/#", qos=1)
            self.ready.set()
            async for msg in c.messages:
                topic = str(msg.topic)
                doc = json.loads(msg.payload)  # type: ignore[arg-type]
                if topic.endswith("/meta"):
                    self.meta[topic.removesuffix("/meta")] = doc
                else:
                    self.docs.append((topic, doc))


def _flat_bridge(out: JsonOut) -> list[tuple[str, float, str, Any, str]]:
    rows = []
    for topic, doc in out.docs:
        device = topic.rsplit("/", 1)[1]
        q = doc.get("quality", {})
        for k, v in doc.items():
            if k not in ("ts", "quality", "error"):
                rows.append((device, doc["ts"], k, v, q.get(k, "good")))
    return rows


def _flat_agent(col: Collector) -> list[tuple[str, float, str, Any, str]]:
    rows, seqs = [], set()
    for m in col.of("t"):
        if m["seq"] in seqs:
            continue
        seqs.add(m["seq"])
        assert m["known_gen"], m
        rows += [(m["device"], s["ts"], s["point"], s["value"], s["quality"]) for s in m["samples"]]
    return rows


async def test_bridge_round_trip_across_a_new_generation(broker: Broker, tmp_path: Path) -> None:
    peer = await ModbusPeer(_meter_tables()).start()
    out = JsonOut(broker.port, "json")
    out_task = asyncio.create_task(out.run())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.tools.cli", "bridge", "--broker", broker.url, "--site", "t1",
        "--out-prefix", "json", "--client-id", "bridge-under-test", cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.wait_for(out.ready.wait(), 10)
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"subscribed" in line, line
        box = "  - {name: box, type: edge-box, interval: 0.2s}\n"
        async with Collector(broker.port) as col:
            site = write_site(tmp_path, broker.url, devices=box + _meter("kitchen", peer.port))
            async with running_agent(site) as agent:
                gen1 = agent.pipeline.gen
                await col.wait(lambda: any(m.get("device") == "kitchen" for m in col.of("t")), 10, "kitchen")
                await asyncio.sleep(1.0)
            # configuration change: one more device, a new alias map generation; same outbox, seq goes on
            write_site(tmp_path, broker.url, devices=box + _meter("kitchen", peer.port) + _meter("hall", peer.port))
            async with running_agent(site) as agent:
                gen2 = agent.pipeline.gen
                await col.wait(lambda: any(m.get("device") == "hall" for m in col.of("t")), 10, "hall")
                await asyncio.sleep(1.0)
            assert gen1 != gen2
            # the broker delivers one message twice (at least once): the bridge must not repeat it
            again = next(m for m in col.of("t") if m["device"] == "kitchen")
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="replayer") as c:
                await c.publish(again["topic"], again["raw"], qos=1)
            expected = _flat_agent(col)
            deadline = time.monotonic() + 10
            while len(_flat_bridge(out)) < len(expected) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a duplicate would arrive now
    finally:
        proc.terminate()
        rc = await asyncio.wait_for(proc.wait(), 10)
        out_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await out_task
        await peer.stop()
    assert rc == 0
    got = _flat_bridge(out)
    assert len(expected) > 60, len(expected)
    assert Counter(got) == Counter(expected), (len(got), len(expected))
    assert len(got) == len(set(got))  # nothing duplicated
    devices = {r[0] for r in got}
    assert devices == {"box", "kitchen", "hall"}
    # values: the meter's registers hold 3 + index (scaled by the profile); the same as the decoder saw
    kitchen = {r[2]: r[3] for r in got if r[0] == "kitchen"}
    assert len(kitchen) == 21 and all(isinstance(v, int | float) for v in kitchen.values())
    # units: from the birth, in the retained meta message of each device
    birth = col.decoder.maps[("t1", gen2)]
    for dev in ("box", "kitchen", "hall"):
        units = out.meta[f"json/t1/{dev}"]["units"]
        assert units == {p["n"]: p.get("u") for p in birth[dev].values()}
        assert out.meta[f"json/t1/{dev}"]["gen"] == gen2


def test_telemetry_before_its_birth_waits_and_quality_is_carried() -> None:
    """Unit test of the translation: a message of an unknown generation waits for its birth; not-good
    points carry quality and error; a second sample of a point at one timestamp gets its own object."""
    b = Bridge("ea/v1", "j")
    aliases = {"t": 0, "h": 1}
    gen = 4242
    samples = [Sample("d", "t", 21.5, ts=100.0), Sample("d", "h", None, Quality.ERROR, 100.0, "timeout"),
               Sample("d", "t", 21.7, Quality.STALE, 101.0)]
    payload = frame(7, encode_samples(samples, aliases, gen))
    assert b.handle("ea/v1/s/t/d", payload) == []  # no birth yet: held
    birth = {"gen": gen, "devices": {"d": {"type": "x", "points": [{"a": 0, "n": "t", "u": "degC"},
                                                                   {"a": 1, "n": "h"}]}}}
    outs = b.handle("ea/v1/s/birth", json.dumps(birth).encode())
    meta = [json.loads(p) for t, p, r in outs if t == "j/s/d/meta"]
    assert meta == [{"gen": gen, "type": "x", "units": {"t": "degC", "h": None}}]
    docs = [json.loads(p) for t, p, r in outs if t == "j/s/d"]
    assert docs == [{"ts": 100.0, "t": 21.5, "h": None, "quality": {"h": "error"}, "error": {"h": "timeout"}},
                    {"ts": 101.0, "t": 21.7, "quality": {"t": "stale"}}]
    assert b.handle("ea/v1/s/t/d", payload) == [] and b.stats.duplicates == 1
    # a newer configuration, then the older birth replayed from the outbox: decodes, but the meta stays new
    newer = {"gen": 7, "ts": 50.0, "devices": {"d": {"type": "y", "points": [{"a": 0, "n": "t", "u": "K"}]}}}
    assert [t for t, _, _ in b.handle("ea/v1/s/birth", json.dumps(newer).encode())] == ["j/s/d/meta"]
    older = {**birth, "ts": 10.0}
    assert b.handle("ea/v1/s/birth", json.dumps(older).encode()) == []
    late = frame(8, encode_samples([Sample("d", "t", 1.5, ts=102.0)], aliases, gen))
    assert [json.loads(p) for _, p, _ in b.handle("ea/v1/s/t/d", late)] == [{"ts": 102.0, "t": 1.5}]


def test_garbage_in_is_counted_never_raised(caplog: Any) -> None:
    """Whatever arrives on the subscribed topics, the bridge logs it and goes on (no traceback, no stop)."""
    import random

    b = Bridge("ea/v1", "j")
    b.handle("ea/v1/s/birth", json.dumps({"gen": 1, "devices": {"d": {"points": [{"a": 0, "n": "t"}]}}}).encode())
    good = frame(5, encode_samples([Sample("d", "t", 1.5, ts=1.0)], {"t": 0}, 1))
    rnd = random.Random(14)
    for _ in range(5000):
        p = bytearray(good)
        for _ in range(rnd.randint(1, 3)):
            p[rnd.randrange(len(p))] = rnd.randrange(256)
        b.handle("ea/v1/s/t/d", bytes(p[:rnd.randint(0, len(p))]))
    for junk in (b"", b"[]", b"{}", b'{"gen":"x"}', b'{"gen":1,"devices":[1]}', b"\xff"):
        assert b.handle("ea/v1/s/birth", junk) == []
    assert b.stats.undecodable > 1000
