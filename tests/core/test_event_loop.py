"""The site's ``event_loop``: the agent process on uvloop (default) and on asyncio's own loop, both delivering to
a real Mosquitto and stopping cleanly on SIGTERM; a box without uvloop starts anyway."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import pytest

from agent.tools.commands import loop_factory
from tests.peers.mosquitto import Broker

from .agentkit import Collector, start_agent_process, write_site


def test_loop_factory_choices(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import uvloop

    log = logging.getLogger("t")
    assert loop_factory("asyncio", log) is None
    assert loop_factory("uvloop", log) is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a box installed without it
    with caplog.at_level(logging.WARNING):
        assert loop_factory("uvloop", log) is None
    assert "running on asyncio's own event loop" in caplog.text


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
async def test_agent_runs_and_stops_on_either_loop(broker: Broker, tmp_path: Path, choice: str) -> None:
    site = write_site(tmp_path, broker.url, extra=f"event_loop: {choice}\n")
    log = tmp_path / "agent.log"
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, log)
        try:
            await col.wait(lambda: any(m.get("device") == "box" for m in col.of("t")), timeout=20, what="telemetry")
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(20)
    text = log.read_text()
    assert rc == 0, text[-2000:]
    assert ("event loop: uvloop" in text) == (choice == "uvloop"), text[-2000:]
    assert "Traceback" not in text
