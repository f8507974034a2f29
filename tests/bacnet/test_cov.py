"""COV: changes pushed without polling, renewal, dropped and refused subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from agent.model import Quality
from tests.peers.bacnet import BACnetLab, CollectSink, write_profile

POINTS = """\
- {name: room, object_type: analog-input, instance: 3, cov: true, cov_lifetime: 4s}
- {name: setpoint, object_type: analog-value, instance: 1, cov: true, cov_lifetime: 4s, cov_confirmed: true}
- {name: supply, object_type: analog-input, instance: 1}
- {name: ghost, object_type: analog-input, instance: 77, cov: true}
"""


@contextlib.asynccontextmanager
async def following(drv, sink: CollectSink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(drv.follow(sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _wait_subscribed(drv, names: set[str], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not names <= drv.subscribed:
        assert time.monotonic() < deadline, drv.subscribed
        await asyncio.sleep(0.02)


async def test_change_reaches_sink_within_1s_without_polling(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", POINTS)
    drv = await bacnet_lab.driver("ahu", sim)
    sink = CollectSink()
    async with following(drv, sink) as task:
        await _wait_subscribed(drv, {"room", "setpoint"})
        # subscribed points leave the poll list; the refused one (unknown object) stays polled
        assert {p.name for p in drv.polled_points()} == {"supply", "ghost"}
        await sink.wait_for(lambda s: s.point == "room" and s.value == 21.0, 1.0)  # initial notification
        sim.requests.clear()
        t0 = time.monotonic()
        sim.obj("analog-input,3").presentValue = 24.5
        t, s = await sink.wait_for(lambda s: s.point == "room" and s.value == 24.5, 1.0)
        assert s.quality == Quality.GOOD and t - t0 < 1.0
        # confirmed notifications work too
        sim.obj("analog-value,1").presentValue = 22.0
        await sink.wait_for(lambda s: s.point == "setpoint" and s.value == 22.0, 1.0)
        assert sim.requests["ReadPropertyMultipleRequest"] == 0 and sim.requests["ReadPropertyRequest"] == 0
        assert not task.done()
        print(f"COV latency {1000 * (t - t0):.1f} ms")


async def test_dropped_subscription_is_resubscribed(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", POINTS)
    drv = await bacnet_lab.driver("ahu", sim)
    sink = CollectSink()
    async with following(drv, sink):
        await _wait_subscribed(drv, {"room"})
        await sink.wait_for(lambda s: s.point == "room", 1.0)
        assert sim.drop_subscriptions() == 2  # the controller restarted and forgot us
        sim.obj("analog-input,3").presentValue = 19.0
        # renewal at half the 4 s lifetime re-creates it; its first notification carries the new value
        t0 = time.monotonic()
        await sink.wait_for(lambda s: s.point == "room" and s.value == 19.0, 3.0)
        assert time.monotonic() - t0 < 2.6
        sim.obj("analog-input,3").presentValue = 18.0
        await sink.wait_for(lambda s: s.point == "room" and s.value == 18.0, 1.0)


async def test_silent_device_falls_back_to_polling(bacnet_lab: BACnetLab) -> None:
    """A device that acknowledges but stops notifying: the point goes back to the poll list."""
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", POINTS)
    drv = await bacnet_lab.driver("ahu", sim, timeout=0.5)
    sink = CollectSink()
    async with following(drv, sink):
        await _wait_subscribed(drv, {"room", "setpoint"})
        # fault injection: the controller keeps acking SubscribeCOV but never notifies again
        det_cls = type(sim.app._cov_detections[next(iter(sim.app._cov_detections))])
        orig = det_cls.send_cov_notifications
        det_cls.send_cov_notifications = lambda self, subscription=None: None  # type: ignore[method-assign]
        try:
            deadline = time.monotonic() + 4.0
            while "room" not in {p.name for p in drv.polled_points()}:
                assert time.monotonic() < deadline, "room never went back to polling"
                await asyncio.sleep(0.05)
        finally:
            det_cls.send_cov_notifications = orig  # type: ignore[method-assign]
        # and polling reads it
        got = {s.point: s for s in await drv.read(drv.polled_points())}
        assert got["room"].quality == Quality.GOOD


async def test_refused_subscription_is_polled(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", POINTS)
    drv = await bacnet_lab.driver("ahu", sim)
    sink = CollectSink()
    async with following(drv, sink):
        await _wait_subscribed(drv, {"room", "setpoint"})
        await asyncio.sleep(0.2)
        assert "ghost" not in drv.subscribed
        got = {s.point: s for s in await drv.read(drv.polled_points())}
        assert got["ghost"].error == "unknown-object"
    # after follow() ends nothing is considered subscribed: everything is polled again
    assert {p.name for p in drv.polled_points()} == {"room", "setpoint", "supply", "ghost"}


async def test_cov_increment_is_set_on_the_device(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", """\
        - {name: room, object_type: analog-input, instance: 3, cov: true, cov_increment: 2.0}
    """)
    drv = await bacnet_lab.driver("ahu", sim)
    sink = CollectSink()
    async with following(drv, sink):
        await _wait_subscribed(drv, {"room"})
        assert sim.obj("analog-input,3").covIncrement == 2.0
        await sink.wait_for(lambda s: s.value == 21.0, 1.0)
        sim.obj("analog-input,3").presentValue = 22.0  # below the increment: no notification
        await asyncio.sleep(0.3)
        assert [s.value for _, s in sink.got] == [21.0]
        sim.obj("analog-input,3").presentValue = 23.5
        await sink.wait_for(lambda s: s.value == 23.5, 1.0)
