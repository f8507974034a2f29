"""Supervisor and systemd notify: isolation of failing devices, restart budget, READY/STATUS/WATCHDOG."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from pathlib import Path

import pytest

from agent.core.notify import Notifier

from . import fakedrivers
from .agentkit import running_agent, write_site

BROKER = "mqtt://127.0.0.1:9"  # nothing listens: these tests don't need the uplink


def _devices(*entries: tuple[str, str]) -> str:
    return "".join(f"  - {{name: {n}, type: fake-device, interval: 0.1s, timeout: 0.2s, retries: 0, "
                   f"connection: {{behaviour: {b}}}}}\n" for n, b in entries)


@pytest.fixture
def fake_profiles(tmp_path: Path) -> str:
    d = tmp_path / "profiles"
    fakedrivers.install(str(d))
    return f"profiles_dirs: [{d}]\n"


async def test_failing_devices_never_stop_the_others(tmp_path: Path, fake_profiles: str) -> None:
    site = write_site(tmp_path, BROKER, extra=fake_profiles,
                      devices=_devices(("good", "ok"), ("dead", "dead"), ("buggy", "crash")))
    async with running_agent(site) as agent:
        await asyncio.sleep(1.5)
        snap = agent.snapshot()["devices"]
        assert snap["good"]["state"] == "online" and snap["good"]["points"]["counter"]["quality"] == "good"
        assert snap["dead"]["state"] in ("offline", "backoff") and "timeout" in snap["dead"]["last_error"]
        assert snap["buggy"]["state"] in ("offline", "backoff", "disabled")
        assert "ZeroDivisionError" in snap["buggy"]["last_error"]
        assert snap["buggy"]["restarts"] >= 1
        good_cycles = agent.health["good"].last_ok
        await asyncio.sleep(0.5)
        assert agent.health["good"].last_ok and good_cycles and agent.health["good"].last_ok > good_cycles


async def test_restart_budget_disables_only_the_crashing_device(tmp_path: Path, fake_profiles: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.core import supervisor

    monkeypatch.setattr(supervisor, "BACKOFF_MAX", 0.05)
    site = write_site(tmp_path, BROKER, extra=fake_profiles, devices=_devices(("good", "ok"), ("buggy", "crash")))
    async with running_agent(site) as agent:
        agent.runners["buggy"]._initial_backoff = agent.runners["buggy"]._backoff = 0.01
        deadline = time.monotonic() + 10
        while agent.health["buggy"].state != "disabled" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert agent.health["buggy"].state == "disabled"
        assert agent.health["buggy"].restarts == supervisor.RESTART_BUDGET
        assert agent.health["good"].state == "online"
        assert agent.alive()[0], "a disabled device must not withhold the watchdog"


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.got: list[tuple[float, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except BlockingIOError:
                return
            for line in data.splitlines():
                self.got.append((time.monotonic(), line))

    def times(self, prefix: str) -> list[float]:
        self.drain()
        return [t for t, line in self.got if line.startswith(prefix)]


async def _collect(ns: NotifySocket, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ns.drain()
        await asyncio.sleep(0.02)


async def test_sd_notify_ready_status_watchdog_and_wedged_loop(tmp_path: Path, fake_profiles: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.core import app as app_mod

    monkeypatch.setattr(app_mod, "READY_GRACE", 0.5)
    ns = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # systemd would kill us after 0.4 s without WATCHDOG=1
    site = write_site(tmp_path, BROKER, extra=fake_profiles, devices=_devices(("good", "ok")))
    async with running_agent(site, notifier=Notifier()) as agent:
        await _collect(ns, 1.5)
        assert ns.times("READY=1"), ns.got
        assert any(line.startswith("STATUS=") and "devices" in line for _, line in ns.got)
        wd = ns.times("WATCHDOG=1")
        assert len(wd) >= 4 and max(b - a for a, b in itertools.pairwise(wd)) < 0.4

        # 1. the event loop itself wedges (blocking call): no WATCHDOG while it is stuck
        before = len(ns.times("WATCHDOG=1"))
        t_block = time.monotonic()
        asyncio.get_running_loop().call_soon(time.sleep, 1.0)
        await asyncio.sleep(0)
        await _collect(ns, 0.3)
        during = [t for t in ns.times("WATCHDOG=1")[before:] if t_block < t < t_block + 0.95]
        assert during == []
        await _collect(ns, 0.6)
        assert ns.times("WATCHDOG=1")[-1] > t_block + 1.0, "watchdog resumes once the loop runs again"

        # 2. the outbox worker wedges: WATCHDOG stops while the loop itself runs
        import threading

        gate = threading.Event()
        agent.outbox._executor.submit(gate.wait)  # type: ignore[union-attr]
        await _collect(ns, 0.5)
        t_wedge = time.monotonic()
        await _collect(ns, 1.0)
        assert not [t for t in ns.times("WATCHDOG=1") if t > t_wedge], "outbox wedged, watchdog must stop"
        gate.set()
        await _collect(ns, 0.6)
        assert [t for t in ns.times("WATCHDOG=1") if t > t_wedge + 1.0]


async def test_wedged_device_loop_withholds_watchdog(tmp_path: Path, fake_profiles: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.core import supervisor

    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    ns = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setattr(supervisor, "PROGRESS_SLACK", 0.2)
    site = write_site(tmp_path, BROKER, extra=fake_profiles, devices=_devices(("good", "ok"), ("stuck", "wedge")))
    async with running_agent(site, notifier=Notifier()) as agent:
        await _collect(ns, 4.0)
        assert not agent.alive()[0] and "stuck" in agent.alive()[1]
        wd = ns.times("WATCHDOG=1")
        cycle = agent.runners["stuck"].cycle_timeout
        assert not [t for t in wd if t > ns.got[0][0] + cycle + 0.5 + 0.4], "no WATCHDOG once the loop is stuck"
        assert any("unhealthy: device loop stuck stalled" in line for _, line in ns.got)
    # shutdown stayed bounded although the wedged task ignored cancellation
    assert agent.abandoned == ["device:stuck"]
    fakedrivers.FakeDriver.unwedge = True
    await asyncio.sleep(0.2)


async def test_devices_with_one_interval_poll_in_the_same_wakeup(tmp_path: Path, fake_profiles: str) -> None:
    """Polls are aligned on the interval grid: N devices cost one event-loop wake-up per cycle, not N
    (bench/site_poll.py measures what that saves). Randomly staggered devices fail this."""
    devices = "".join(f"  - {{name: d{i}, type: fake-device, interval: 0.5s, timeout: 0.2s, retries: 0, "
                      "connection: {behaviour: ok}}\n" for i in range(4))
    site = write_site(tmp_path, BROKER, extra=fake_profiles, devices=devices)
    fakedrivers.FakeDriver.reads.clear()
    async with running_agent(site):
        await asyncio.sleep(2.2)
    reads = list(fakedrivers.FakeDriver.reads)
    per_device: dict[str, list[float]] = {}
    for name, t in reads:
        per_device.setdefault(name, []).append(t)
    assert sorted(per_device) == ["d0", "d1", "d2", "d3"]
    cycles = min(len(v) for v in per_device.values())
    assert cycles >= 3
    for k in range(cycles):
        times = [v[k] for v in per_device.values()]
        assert max(times) - min(times) < 0.05, f"cycle {k}: devices polled {max(times) - min(times):.3f} s apart"
    for t in (t for v in per_device.values() for t in v):
        off = t % 0.5
        assert min(off, 0.5 - off) < 0.05, f"a poll at {off:.3f} s past the 0.5 s grid"
