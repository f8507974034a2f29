"""Birth and generation agree: units read from a BACnet device at start make a new generation, so a receiver
that keeps alias maps by `gen` (docs/mqtt.md) never keeps a map without the units under the current `gen`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.core.agentkit import Collector, running_agent, write_site
from tests.peers.bacnet import BACnetLab, next_host


def _room_temp_unit(birth: dict[str, Any]) -> str | None:
    return next(p.get("u") for p in birth["devices"]["ahu"]["points"] if p["n"] == "room_temp")


async def test_births_with_one_gen_have_one_content(bacnet_lab: BACnetLab, broker: Any, tmp_path: Path) -> None:
    sim = await bacnet_lab.sim()
    local = next_host()
    devices = (
        "  - name: ahu\n    type: demo-bacnet-ahu\n    interval: 60s\n    timeout: 1s\n"
        f"    connection: {{device_instance: {sim.instance}, address: '{sim.host}', local_address: {local}/8, "
        "local_port: 47809}\n"
    )
    site = write_site(tmp_path, broker.url, devices=devices)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await col.wait(lambda: any(_room_temp_unit(m["doc"]) == "degC" for m in col.of("birth")), 10,
                       "birth with the unit read from the device")
        await col.wait(lambda: any(m.get("device") == "ahu" and m["gen"] == agent.pipeline.gen
                                   for m in col.of("t")), 10, "telemetry of the new generation")
        by_gen: dict[int, set[str]] = {}
        for m in col.of("birth"):
            doc = m["doc"]
            by_gen.setdefault(doc["gen"], set()).add(json.dumps(doc["devices"], sort_keys=True))
        assert len(by_gen) >= 2, "the units read at start make a new generation"
        assert all(len(contents) == 1 for contents in by_gen.values()), "one gen, one content"
        # a receiver that keeps the last birth of each gen decodes current telemetry with the units
        for m in col.of("t"):
            if m.get("device") == "ahu" and m["gen"] == agent.pipeline.gen:
                assert any(s["point"] == "room_temp" and s["unit"] == "degC" for s in m["samples"]) or \
                    all(s["point"] != "room_temp" for s in m["samples"])
        # the retained birth a newcomer gets is the current generation
        async with Collector(broker.port) as late:
            await late.wait(lambda: bool(late.of("birth")), 5, "retained birth")
            assert late.of("birth")[-1]["doc"]["gen"] == agent.pipeline.gen
            assert _room_temp_unit(late.of("birth")[-1]["doc"]) == "degC"
