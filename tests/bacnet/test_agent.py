"""End to end: the real agent (supervisor, pipeline, outbox, uplink) with a simulated controller and Mosquitto."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.core.agentkit import Collector, running_agent, write_site
from tests.peers.bacnet import BACnetLab, next_host


def _values(col: Collector, point: str) -> list[Any]:
    return [s["value"] for m in col.of("t") if m.get("device") == "ahu" for s in m["samples"]
            if s["point"] == point]


async def test_cov_change_reaches_broker_within_1s_without_polling(bacnet_lab: BACnetLab, broker: Any,
                                                                   tmp_path: Path) -> None:
    sim = await bacnet_lab.sim()
    local = next_host()
    devices = (
        "  - name: ahu\n"
        "    type: demo-bacnet-ahu\n"
        "    interval: 60s\n"
        "    timeout: 1s\n"
        f"    connection: {{device_instance: {sim.instance}, address: '{sim.host}', local_address: {local}/8, "
        "local_port: 47809}\n"
    )
    site = write_site(tmp_path, broker.url, devices=devices)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        # first poll (staggered by up to 2 s) and the COV initial values
        await col.wait(lambda: _values(col, "mode") == [4] and 21.0 in _values(col, "room_temp"), 10,
                       "first poll")
        runner_driver = agent.runners["ahu"].driver
        assert runner_driver is not None and runner_driver.subscribed == {"room_temp", "room_setpoint"}
        sim.requests.clear()
        t0 = time.monotonic()
        sim.obj("analog-input,3").presentValue = 23.25
        await col.wait(lambda: 23.25 in _values(col, "room_temp"), 1.0, "COV value at the broker")
        latency = time.monotonic() - t0
        assert sim.requests["ReadPropertyMultipleRequest"] == 0 and sim.requests["ReadPropertyRequest"] == 0
        print(f"COV change to broker: {latency * 1000:.0f} ms")
        # units the profile leaves out are taken from the device at start
        units = {p.name: p.unit for p in agent.runners["ahu"].device.points}
        assert units["room_temp"] == "degC"  # the profile names no unit for room_temp
        # ... and published: a new birth carries them, and the monitor shows the unit with the value
        await col.wait(lambda: any(p.get("u") == "degC" and p["n"] == "room_temp"
                                   for m in col.of("birth") for p in m["doc"]["devices"]["ahu"]["points"]), 5,
                       "birth with device units")
        assert agent.snapshot()["devices"]["ahu"]["points"]["room_temp"]["unit"] == "degC"


async def test_dead_controller_does_not_delay_a_live_one(bacnet_lab: BACnetLab, broker: Any, tmp_path: Path) -> None:
    sim = await bacnet_lab.sim()
    local = next_host()
    conn = f"local_address: {local}/8, local_port: 47809"
    devices = (
        "  - name: ahu\n    type: demo-bacnet-ahu\n    interval: 0.5s\n    timeout: 1s\n"
        f"    connection: {{device_instance: {sim.instance}, address: '{sim.host}', {conn}}}\n"
        "  - name: dead\n    type: demo-bacnet-ahu\n    interval: 0.5s\n    timeout: 2s\n    retries: 0\n"
        f"    connection: {{device_instance: 4242, address: '127.77.252.252', {conn}}}\n"
    )
    site = write_site(tmp_path, broker.url, devices=devices)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await col.wait(lambda: len(_values(col, "supply_air_temp")) >= 1, 10, "first poll")
        t0 = time.monotonic()
        sim.requests.clear()
        await asyncio.sleep(3.0)
        polls = sim.requests["ReadPropertyMultipleRequest"]
        assert polls >= 5, polls  # ~6 cycles of 0.5 s while the dead one times out (2 s) and backs off
        assert agent.runners["dead"].health.available is False
        assert "timeout" in (agent.runners["dead"].health.last_error or "")
        # a polled change still reaches the broker within a cycle or two
        sim.obj("multi-state-value,1").presentValue = 2
        await col.wait(lambda: 2 in _values(col, "mode"), 1.5, "polled mode change")
        print(f"live device: {polls} polls in {time.monotonic() - t0:.1f} s beside a dead one")


async def test_device_followed_only_by_cov_is_online(bacnet_lab: BACnetLab, tmp_path: Path) -> None:
    """All points by COV, nothing to poll: the device still shows online (status and availability event)."""
    sim = await bacnet_lab.sim()
    local = next_host()
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "cov-only.yaml").write_text(
        "driver: bacnet\npoints:\n"
        "  - {name: room_temp, unit: degC, object_type: analog-input, instance: 3, cov: true}\n"
        "  - {name: room_setpoint, unit: degC, object_type: analog-value, instance: 1, cov: true}\n")
    devices = (
        "  - name: ahu\n    type: cov-only\n    interval: 0.5s\n    timeout: 1s\n"
        f"    connection: {{device_instance: {sim.instance}, address: '{sim.host}', local_address: {local}/8, "
        "local_port: 47809}\n"
    )
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=devices, extra=f"profiles_dirs: [{profiles}]\n")
    async with running_agent(site) as agent:
        for _ in range(100):
            if agent.health["ahu"].available:
                break
            await asyncio.sleep(0.05)
        drv = agent.runners["ahu"].driver
        assert drv is not None and drv.subscribed == {"room_temp", "room_setpoint"}  # type: ignore[attr-defined]
        assert agent.health["ahu"].state == "online"
        assert agent.snapshot()["devices"]["ahu"]["points"]["room_temp"]["quality"] == "good"
