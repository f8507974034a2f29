"""Metrics of a BACnet device: poll cycles and requests per cycle counted from the driver's own counts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.core.agentkit import running_agent, write_site
from tests.peers.bacnet import BACnetLab, next_host


def _sample(text: str, name: str, default: float | None = None, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    if default is not None:
        return default
    raise AssertionError(f"no {name} {labels}")


async def test_bacnet_requests_per_cycle(bacnet_lab: BACnetLab, tmp_path: Path) -> None:
    sim = await bacnet_lab.sim()
    devices = (
        "  - name: ahu\n    type: demo-bacnet-ahu\n    interval: 0.3s\n    timeout: 1s\n"
        f"    connection: {{device_instance: {sim.instance}, address: '{sim.host}', "
        f"local_address: {next_host()}/8, local_port: 47809}}\n"
    )
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=devices)
    async with running_agent(site) as agent:
        for _ in range(100):
            text = agent.metrics.exposition().decode()
            if _sample(text, "edge_agent_device_requests_per_cycle_count", 0.0, device="ahu") >= 3:
                break
            await asyncio.sleep(0.1)
    cycles = _sample(text, "edge_agent_device_requests_per_cycle_count", device="ahu")
    sent = _sample(text, "edge_agent_device_requests_per_cycle_sum", device="ahu")
    assert cycles >= 3 and sent >= cycles, (cycles, sent)  # at least one ReadPropertyMultiple per cycle
    assert _sample(text, "edge_agent_device_cycle_duration_seconds_count", device="ahu") >= cycles
    assert _sample(text, "edge_agent_device_up", device="ahu") == 1
