"""What the agent announces upstream about itself: configuration problems at start, births that agree with
their generation."""

from __future__ import annotations

from pathlib import Path

from tests.peers.mosquitto import Broker

from .agentkit import Collector, start_agent_process, write_site


async def test_device_skipped_at_start_is_announced_as_config_event(broker: Broker, tmp_path: Path) -> None:
    devices = ("  - {name: box, type: edge-box, interval: 1s}\n"
               "  - {name: meter, type: no-such-meter}\n"
               "  - {name: box3, type: edge-box, interval: soon}\n")
    site = write_site(tmp_path, broker.url, devices=devices)
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await col.wait(lambda: any(m["doc"].get("kind") == "config" for m in col.of("e")), 15, "config event")
            ev = next(m["doc"] for m in col.of("e") if m["doc"].get("kind") == "config")
            assert ev["src"] == "agent" and ev["sev"] == "warning"
            assert ev["data"]["result"] == "skipped"
            assert ev["data"]["devices"] == ["meter", "box3"]
            problems = ev["data"]["problems"]
            assert any("site.yaml:" in p and "devices[1].type" in p for p in problems), problems
            assert any("site.yaml:" in p and "devices[2].interval" in p for p in problems), problems
            await col.wait(lambda: any(m.get("device") == "box" for m in col.of("t")), 10, "box still runs")
        finally:
            proc.terminate()
            proc.wait(10)


async def test_no_config_event_when_the_configuration_is_clean(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url)
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await col.wait(lambda: any(m.get("device") == "box" for m in col.of("t")), 15, "telemetry")
            assert not any(m["doc"].get("kind") == "config" for m in col.of("e"))
        finally:
            proc.terminate()
            proc.wait(10)
