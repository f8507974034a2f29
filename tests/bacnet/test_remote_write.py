"""A signed ``write`` from the operator's broker reaches a real BACnet device (bacpypes3 simulator); an unsigned
one never does (no WriteProperty on the wire)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt

from tests.core.agentkit import Collector, running_agent, write_site
from tests.core.test_remote_commands import SITE, Operator, ack_of
from tests.peers.bacnet import BACnetLab, next_host


async def test_signed_write_reaches_bacnet_and_unsigned_does_not(bacnet_lab: BACnetLab, broker: Any,
                                                                 tmp_path: Path) -> None:
    sim = await bacnet_lab.sim()
    devices = (
        "  - name: ahu\n    type: demo-bacnet-ahu\n    interval: 0.5s\n    timeout: 1s\n"
        f"    connection: {{device_instance: {sim.instance}, address: '{sim.host}', local_address: {next_host()}/8, "
        "local_port: 47809}\n"
    )
    site = write_site(tmp_path, broker.url, site_id=SITE, devices=devices)
    op = Operator(tmp_path)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        async with asyncio.timeout(10):
            while not agent.health["ahu"].available:
                await asyncio.sleep(0.05)
        sim.requests.clear()
        args = {"device": "ahu", "point": "room_setpoint", "value": 22.5}
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.publish(f"ea/v1/{SITE}/cmd", json.dumps({"id": "u1", "cmd": "write", "args": args}).encode(), qos=1)
            ack = await ack_of(col, "u1")
            assert ack["ok"] is False and "unsigned" in ack["error"]
            assert sim.requests["WritePropertyRequest"] == 0
            assert float(sim.obj("analog-value,1").presentValue) != 22.5
            mid, payload = op.signed("write", args)
            await c.publish(f"ea/v1/{SITE}/cmd", payload, qos=1)
            ack = await ack_of(col, mid, 15)
        assert ack["ok"] is True, ack
        assert sim.requests["WritePropertyRequest"] == 1
        assert float(sim.obj("analog-value,1").presentValue) == 22.5
