"""Controller restarts (issue 8, item 8): a bacpypes3 controller process is killed and started again within
1 s; it has forgotten the COV subscriptions. The driver notices (its I-Am, or its time-of-device-restart read
once per poll interval), emits a ``restart`` event and resubscribes at once: COV values flow again within two
poll intervals, instead of at the next renewal (cov_lifetime / 2 = 150 s)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bacpypes3.pdu import Address

from tests.peers.bacnet import BACnetLab, CollectSink, next_host, write_profile
from tests.peers.common import stop_process

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = 4100 + os.getpid() % 1000
INTERVAL = 1.5
POINTS = "- {name: room_temp, object_type: analog-input, instance: 3, cov: true, cov_lifetime: 300s}\n"


def _sim(host: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "drivers.bacnet.sim", "--address", f"{host}/8", "--instance",
                             str(INSTANCE), "--tick", "0.3", *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _line(proc: subprocess.Popen[str], want: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(want), f"simulator said {line!r}"


async def next_sample(sink: CollectSink, after: int, timeout: float) -> float:
    """Arrival time of the first sample after the first ``after`` ones."""
    deadline = time.monotonic() + timeout
    while len(sink.got) <= after:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no new sample within {timeout} s")
        await asyncio.sleep(0.01)
    return sink.got[after][0]


@contextlib.asynccontextmanager
async def following(drv: Any) -> AsyncIterator[CollectSink]:
    sink = CollectSink()
    task = asyncio.create_task(drv.follow(sink))
    try:
        yield sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("announce", [True, False], ids=["i-am", "restart-time"])
async def test_restart_within_1s_is_noticed_and_cov_resumes(bacnet_lab: BACnetLab, announce: bool) -> None:
    host = next_host()
    first = _sim(host)
    second = _sim(host, "--hold", *(["--announce", f"{bacnet_lab.client_host}:47809"] if announce else []))
    try:
        await asyncio.to_thread(_line, first, "ready")
        await asyncio.to_thread(_line, second, "loaded")  # imported, waiting to bind
        write_profile(bacnet_lab.tmp, "ahu", POINTS)
        drv = await bacnet_lab.driver("ahu", None, conn={"device_instance": INSTANCE, "address": host},
                                      interval=f"{INTERVAL}s")
        async with following(drv) as sink:
            await sink.wait_for(lambda s: s.point == "room_temp", 5)
            await asyncio.sleep(0.3)
            assert drv.subscribed == {"room_temp"}
            # kill -9 and start again: the new process has no subscriptions
            n = len(sink.got)
            t_kill = time.monotonic()
            os.kill(first.pid, signal.SIGKILL)
            first.wait(5)
            assert second.stdin is not None
            second.stdin.write("\n")
            second.stdin.flush()
            await asyncio.to_thread(_line, second, "ready")
            t_back = time.monotonic()
            assert t_back - t_kill < 1.0, f"restart took {t_back - t_kill:.2f} s"
            assert len(sink.got) == n  # nothing from the dead controller
            t_sample = await next_sample(sink, n, 2 * INTERVAL)
            resumed = t_sample - t_back
            print(f"restart {t_back - t_kill:.2f} s; COV resumed {resumed:.2f} s after the controller was back "
                  f"({'I-Am' if announce else 'time-of-device-restart'})")
            assert resumed < 2 * INTERVAL
            restarts = [e for e in sink.events if e.kind == "restart"]
            assert len(restarts) == 1 and restarts[0].data["resubscribed"] == ["room_temp"]
            assert "time-of-device-restart changed" in restarts[0].data["reason"]
            assert drv.restarts == 1
            if announce:  # the I-Am is checked at once, not at the next interval
                assert resumed < INTERVAL
            # the point keeps following the new process's changes (the simulated room temperature drifts
            # slowly: its next change can take a few seconds on a loaded machine)
            await next_sample(sink, len(sink.got), 10)
    finally:
        stop_process(first)
        stop_process(second)


async def test_i_am_is_a_restart_only_when_the_restart_time_says_so(bacnet_lab: BACnetLab) -> None:
    """An I-Am answering someone's Who-Is (unchanged time-of-device-restart) is not a restart; for a device
    without that property, an I-Am is one."""
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", POINTS)
    drv = await bacnet_lab.driver("ahu", sim, interval="30s")
    client = Address(f"{bacnet_lab.client_host}:47809")
    async with following(drv) as sink:
        await sink.wait_for(lambda s: s.point == "room_temp", 5)
        sim.requests.clear()
        sim.app.i_am(client)
        await asyncio.sleep(0.5)
        assert drv.restarts == 0 and not sink.events
        assert sim.requests["SubscribeCOVRequest"] == 0 and sim.requests["ReadPropertyRequest"] == 1  # one check

    # a device without time-of-device-restart (or with an unspecified one: no clock) that forgot its
    # subscriptions and announces itself
    await _i_am_restarts(bacnet_lab, client, 1002, None)
    await _i_am_restarts(bacnet_lab, client, 1003, "unspecified")


async def _i_am_restarts(bacnet_lab: BACnetLab, client: Address, instance: int, restart_time: str | None) -> None:
    from bacpypes3.basetypes import DateTime, TimeStamp
    from bacpypes3.primitivedata import Date, Time

    sim2 = await bacnet_lab.sim(instance=instance)
    if restart_time is None:
        del sim2.app.device_object.timeOfDeviceRestart
    else:
        sim2.app.device_object.timeOfDeviceRestart = TimeStamp(dateTime=DateTime(
            date=Date((255, 255, 255, 255)), time=Time((255, 255, 255, 255))))
    drv2 = await bacnet_lab.driver("ahu", sim2, name=f"ahu{instance}", interval="30s")
    async with following(drv2) as sink:
        await sink.wait_for(lambda s: s.point == "room_temp", 5)
        assert sim2.drop_subscriptions() == 1
        n = len(sink.got)
        t0 = time.monotonic()
        sim2.app.i_am(client)
        t = await next_sample(sink, n, 2)
        assert drv2.restarts == 1 and "I-Am" in sink.events[0].data["reason"]
        assert sim2.requests["SubscribeCOVRequest"] == 2  # the first subscription and the one after the I-Am
        print(f"resubscribed {1000 * (t - t0):.0f} ms after the I-Am")
