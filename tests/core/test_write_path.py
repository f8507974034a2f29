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

    enabled = {p.name for p in load_site(site).devices[0].enabled_points}
    assert {p for req in plan for p in req["points"]} == enabled  # every point read, by exactly one request
    assert sum(len(req["points"]) for req in plan) == len(enabled)
    assert all(req["unit"] == 3 and req["count"] <= 125 and req["table"] in ("holding", "input") for req in plan)
    assert len(plan) < len(enabled) / 3  # grouped, not one request per point
    text = cli("plan", "kitchen", "-c", str(site)).stdout
    assert text.startswith(f"kitchen: {len(plan)} request(s) per cycle for {len(enabled)} point(s)")
    r = cli("plan", "nope", "-c", str(site))
    assert r.returncode == 2 and "no usable device named 'nope'" in r.stderr
