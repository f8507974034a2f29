"""Writes through the running agent (status socket → runner lock → driver → bus queue) against a real
pymodbus server, refusals before any I/O, and the CLI's behaviour when no agent runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from .agentkit import ROOT, running_agent, write_site


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.tools.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


async def _read_register(port: int, unit: int, address: int) -> int:
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    try:
        rr = await client.read_holding_registers(address, count=1, device_id=unit)
        return int(rr.registers[0])
    finally:
        client.close()


async def test_write_through_running_agent_lands_and_refusals_are_clear(modbus_sim: Callable[..., int],
                                                                        tmp_path: Path) -> None:
    port = modbus_sim("remeha-gtw08:4")
    dev = (f"  - {{name: boiler, type: remeha-gtw08, interval: 0.5s, timeout: 1s, "
           f"connection: {{host: 127.0.0.1, port: {port}, unit: 4}}}}\n")
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=dev)
    async with running_agent(site) as agent:
        for _ in range(100):
            if agent.health["boiler"].available:
                break
            await asyncio.sleep(0.05)
        assert agent.health["boiler"].available
        r = await asyncio.to_thread(cli, "write", "boiler", "fallback_period", "42", "-c", str(site))
        assert r.returncode == 0, r.stderr
        assert "through the running agent" in r.stdout
        assert await _read_register(port, 4, 21022) == 42
        r = await asyncio.to_thread(cli, "write", "boiler", "fallback_period", "256", "-c", str(site))
        assert r.returncode == 1 and "above the maximum 255" in r.stderr
        r = await asyncio.to_thread(cli, "write", "boiler", "outside_temperature", "3", "-c", str(site))
        assert r.returncode == 1 and "read-only" in r.stderr
        assert await _read_register(port, 4, 21022) == 42
        # the write is recorded as an event for the operator
        events = [r for r in await agent.outbox.take(500) if r.topic.endswith("/e/boiler")]
        assert any(b'"kind":"write"' in e.body and b'"fallback_period"' in e.body for e in events)


async def test_write_without_agent_goes_direct(modbus_sim: Callable[..., int], tmp_path: Path) -> None:
    port = modbus_sim("remeha-gtw08:4")
    dev = f"  - {{name: boiler, type: remeha-gtw08, connection: {{host: 127.0.0.1, port: {port}, unit: 4}}}}\n"
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=dev)
    r = await asyncio.to_thread(cli, "write", "boiler", "fallback_period", "17", "-c", str(site))
    assert r.returncode == 0, r.stderr
    assert "through the running agent" not in r.stdout
    assert await _read_register(port, 4, 21022) == 17


def test_plan_command_prints_the_requests(tmp_path: Path) -> None:
    import json

    dev = "  - {name: kitchen, type: socomec-countis-e34, connection: {host: 127.0.0.1, port: 9, unit: 3}}\n"
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=dev)
    r = cli("plan", "kitchen", "-c", str(site), "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    from agent.config import load_site

    points = load_site(site).devices[0].enabled_points
    enabled = {p.name for p in points}
    fast_pts = {p.name for p in points if p.poll == "fast"}
    fast = [req for req in plan if req["cycle"] == "fast"]
    slow = [req for req in plan if req["cycle"] == "slow"]
    # each cycle reads each of its points by exactly one request; the slow cycle reads fast and slow points
    # together, as they go on the wire when both are due
    assert [p for req in fast for p in req["points"]] and sorted(p for req in fast for p in req["points"]) \
        == sorted(fast_pts)
    assert sorted(p for req in slow for p in req["points"]) == sorted(enabled)
    assert all(req["unit"] == 3 and req["count"] <= 125 and req["table"] in ("holding", "input") for req in plan)
    assert len(fast) < len(fast_pts) / 3  # grouped, not one request per point
    text = cli("plan", "kitchen", "-c", str(site)).stdout
    assert text.startswith(f"kitchen: {len(fast)} request(s) per fast cycle, {len(slow)} per slow cycle (fast and "
                           f"slow points read together) for {len(enabled)} point(s)\n  from the files (no agent "
                           "answering")
    r = cli("plan", "nope", "-c", str(site))
    assert r.returncode == 2 and "no usable device named 'nope'" in r.stderr


async def test_plan_from_the_running_agent_is_what_goes_on_the_wire(tmp_path: Path) -> None:
    """Item 15: the slow cycle merges fast and slow blocks, and splits learned from exception 2 show up; the
    plan the running agent reports is exactly the set of reads the device receives."""
    import json

    from tests.peers.modbus import ModbusPeer

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "wire.yaml").write_text(
        "driver: modbus\ndefaults: {table: holding}\ndevice: {max_gap: 4}\npoints:\n"
        "  - {name: a, address: 0}\n  - {name: b, address: 6}\n"
        "  - {name: s, address: 3, poll: slow}\n"  # fills the gap: 0-6 in one read on slow cycles
        "  - {name: c, address: 18}\n  - {name: d, address: 22}\n"  # 19-21 unmapped: 18-22 refused, split
        "  - {name: w, address: 40, access: read-write, enabled: false}\n")  # not mapped: writes refused
    peer = await ModbusPeer({1: {"holding": {a: a for a in [*range(0, 19), 22]}}}).start()
    dev = (f"  - {{name: m, type: wire, interval: 0.2s, slow_interval: 0.6s, timeout: 1s, "
           f"connection: {{host: 127.0.0.1, port: {peer.port}}}}}\n")
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=dev, extra=f"profiles_dirs: [{profiles}]\n")
    try:
        offline = json.loads((await asyncio.to_thread(cli, "plan", "m", "-c", str(site), "--json")).stdout)
        assert [(r["cycle"], r["start"], r["count"]) for r in offline] == [
            ("fast", 0, 1), ("fast", 6, 1), ("fast", 18, 5), ("slow", 0, 7), ("slow", 18, 5)]
        async with running_agent(site) as agent:
            for _ in range(100):
                if peer.reads.count((3, 0, 7)) >= 2:  # two slow cycles done
                    break
                await asyncio.sleep(0.05)
            r = await asyncio.to_thread(cli, "plan", "m", "-c", str(site), "--json")
            assert r.returncode == 0 and "from the running agent" in r.stderr, r.stderr
            live = json.loads(r.stdout)
            text = (await asyncio.to_thread(cli, "plan", "m", "-c", str(site))).stdout
            seen = len(peer.reads)
            await asyncio.sleep(1.0)
            recent = {(a, n) for _, a, n in peer.reads[seen:]}
            # a write the device refuses is a failed write event with the device's reason
            w = await asyncio.to_thread(cli, "write", "m", "w", "5", "-c", str(site))
            assert w.returncode == 1 and "write refused by the device: exception 2" in w.stderr, w.stderr
            events = [json.loads(e.body)["data"] for e in await agent.outbox.take(500) if e.topic.endswith("/e/m")]
            failed = [e for e in events if e.get("result") == "failed"]
            assert failed == [{"point": "w", "value": "5", "result": "failed",
                               "reason": "m.w: write refused by the device: exception 2 illegal data address"}]
        assert [(r["cycle"], r["start"], r["count"], r.get("learned")) for r in live] == [
            ("fast", 0, 1, None), ("fast", 6, 1, None),
            ("fast", 18, 1, "split after exception 2"), ("fast", 22, 1, "split after exception 2"),
            ("slow", 0, 7, None), ("slow", 18, 1, "split after exception 2"),
            ("slow", 22, 1, "split after exception 2")]
        # what the device received in the last second is exactly the live plan
        assert recent == {(r["start"], r["count"]) for r in live}
        assert text.startswith("m: 4 request(s) per fast cycle, 3 per slow cycle (fast and slow points read "
                               "together) for 5 point(s)\n  from the running agent\n")
        assert "cycle=fast  learned=split after exception 2  [1 points] c" in text
    finally:
        await peer.stop()
