"""Outbox full while the broker is away: oldest telemetry dropped first, events kept, drops in `status`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from agent.model import Event, Severity
from tests.peers.mosquitto import Broker

from .agentkit import ROOT, Collector, running_agent, write_site

CHATTY = f"profiles_dirs: [{Path(__file__).parent / 'profiles'}]\n"


async def test_full_outbox_drops_oldest_telemetry_keeps_events(tmp_path: Path) -> None:
    broker = Broker(tmp_path)  # port reserved, not started yet: the uplink is down
    devices = "".join(f"  - {{name: box{i}, type: chatty-box, interval: 0.1s}}\n" for i in range(5))
    site = write_site(tmp_path, broker.url, extra=CHATTY + "outbox: {max_bytes: 256KiB, sync: normal}\n",
                      devices=devices, silence="0.01s")
    async with running_agent(site) as agent:
        # the smallest budget a site file accepts is 256 KiB; shrink it here so the test fills it in seconds
        agent.outbox.max_bytes = 10 * 1024
        for i in range(30):
            agent.event(Event("door-1", "door", {"n": i, "state": "forced"}, Severity.ALARM))
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        st = agent.outbox.stats()
        assert st["dropped_telemetry"] > 0 and st["dropped_events"] == 0, st
        assert st["bytes"] <= 10 * 1024
        # the field tech's view: edge-agent status --json through the socket
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "agent.tools.cli", "status", "--json",
                                                       "--config", str(site)],
                                      capture_output=True, text=True, cwd=ROOT, timeout=20)
        assert out.returncode == 1, out.stderr  # unhealthy: the broker is away
        snap = json.loads(out.stdout)
        assert snap["health"]["problems"][0].startswith("uplink offline")
        assert snap["outbox"]["dropped_telemetry"] >= st["dropped_telemetry"] > 0
        assert snap["outbox"]["dropped_events"] == 0
        assert snap["uplink"]["connected"] is False
        text = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "agent.tools.cli", "status",
                                                        "--config", str(site)],
                                       capture_output=True, text=True, cwd=ROOT, timeout=20)
        assert "dropped" in text.stdout and "box0" in text.stdout, text.stdout
        # broker comes back: every door event arrives, in seq order, none lost
        broker.start()
        try:
            async with Collector(broker.port) as col:
                await col.wait(lambda: len([m for m in col.of("e") if m["doc"]["kind"] == "door"]) >= 30, 20,
                               "door events")
                doors = [m["doc"] for m in col.of("e") if m["doc"]["kind"] == "door"]
                assert sorted(d["data"]["n"] for d in doors) == list(range(30))
                assert all(d["sev"] == "alarm" and d["src"] == "door-1" for d in doors)
        finally:
            agent.stop_event.set()
            await asyncio.sleep(0.5)
            broker.stop()
