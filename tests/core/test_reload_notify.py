"""What the agent tells systemd around a reload: RELOADING=1, never STOPPING=1 (the same PID re-execs).

systemd 252 takes a STOPPING=1 that arrives while it reaps `ExecReload=/bin/kill -HUP` (or once the
service is running) as the service stopping, waits TimeoutStopSec= for an exit that never comes (the agent
re-execs and runs on), then kills it: found by the nspawn test under load (tests/packaging/test_systemd.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.notify import Notifier

from .agentkit import running_agent, write_site
from .test_supervisor import BROKER, NotifySocket, _collect, _devices, fake_profiles  # noqa: F401 (fixture)


@pytest.mark.parametrize("how", ["reload", "stop"])
async def test_stopping_is_said_only_when_the_agent_really_stops(
        tmp_path: Path, fake_profiles: str, monkeypatch: pytest.MonkeyPatch, how: str) -> None:  # noqa: F811
    ns = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    site = write_site(tmp_path, BROKER, extra=fake_profiles, devices=_devices(("good", "ok")))
    async with running_agent(site, notifier=Notifier()) as agent:
        await _collect(ns, 0.5)
        if how == "reload":
            agent.reloader.requested.set()  # what SIGHUP does
            for _ in range(100):
                await _collect(ns, 0.05)
                if agent.restart:
                    break
            assert agent.restart
    await _collect(ns, 0.3)
    lines = [line for _, line in ns.got]
    if how == "reload":
        assert "RELOADING=1" in lines and "STOPPING=1" not in lines, lines
    else:
        assert "STOPPING=1" in lines and "RELOADING=1" not in lines, lines
