"""BACnetDriver against simulated bacpypes3 controllers on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.errors import DeviceTimeout, DeviceUnreachable, WriteRefused
from agent.model import Quality
from tests.peers.bacnet import BACnetLab, write_profile

AHU_POINTS = """\
- {name: supply, object_type: analog-input, instance: 1}
- {name: room, object_type: analog-input, instance: 3}
- {name: humidity, object_type: analog-input, instance: 5, unit: "%"}
- {name: setpoint, object_type: analog-value, instance: 1, access: read-write, priority: 8, min: 10, max: 30}
- {name: fan_cmd, object_type: binary-value, instance: 1, access: read-write, priority: 8}
- {name: fan, object_type: binary-input, instance: 1}
- {name: mode, object_type: multi-state-value, instance: 1, access: read-write, priority: 8}
- {name: room_name, object_type: analog-input, instance: 3, property: object-name, poll: slow}
- {name: pa8, object_type: analog-value, instance: 1, property: priority-array, array_index: 8, poll: slow}
"""


def _by_name(samples: list) -> dict:
    return {s.point: s for s in samples}


async def test_read_all_kinds_and_units_from_device(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", AHU_POINTS)
    drv = await bacnet_lab.driver("ahu", sim)
    assert drv.facts.rpm and drv.facts.max_apdu == 1024 and drv.facts.segmentation == "segmented-both"
    got = _by_name(await drv.read(drv.device.enabled_points))
    assert all(s.quality == Quality.GOOD for s in got.values()), got
    assert got["supply"].value == 16.0 and got["room"].value == 21.0
    assert got["fan"].value is True and got["fan_cmd"].value is True
    assert got["mode"].value == 4
    assert got["room_name"].value == "room-temp"
    assert got["pa8"].value is None  # nothing commanded at priority 8
    units = {p.name: p.unit for p in drv.device.points}
    assert units["supply"] == "degC" and units["setpoint"] == "degC"  # from the device
    assert units["humidity"] == "%"  # the profile wins
    assert drv.facts.requests["read-property-multiple"] == 2  # units at start, then one poll


async def test_unknown_object_and_property_give_point_errors(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", """\
        - {name: room, object_type: analog-input, instance: 3}
        - {name: ghost, object_type: analog-input, instance: 99}
        - {name: noprop, object_type: binary-input, instance: 1, property: cov-increment}
        - {name: vendor_prop, object_type: analog-input, instance: 3, property: 600}
        - {name: vendor_obj, object_type: 130, instance: 5}
    """)
    drv = await bacnet_lab.driver("ahu", sim)
    got = _by_name(await drv.read(drv.device.enabled_points))
    assert got["room"].quality == Quality.GOOD and got["room"].value == 21.0
    assert (got["ghost"].quality, got["ghost"].error, got["ghost"].value) == (Quality.ERROR, "unknown-object", None)
    assert (got["noprop"].quality, got["noprop"].error) == (Quality.ERROR, "unknown-property")
    assert (got["vendor_prop"].quality, got["vendor_prop"].error) == (Quality.ERROR, "unknown-property")
    assert (got["vendor_obj"].quality, got["vendor_obj"].error) == (Quality.ERROR, "unknown-object")
    # a request made only of unknown objects is refused as a whole: points are then told apart one by one
    only = [p for p in drv.device.points if p.name == "ghost"]
    got = _by_name(await drv.read(only))
    assert got["ghost"].error == "unknown-object"


def _many_points(n: int) -> str:
    return "\n".join(f"- {{name: av{i}, object_type: analog-value, instance: {100 + i}}}" for i in range(n))


async def _poll_count(lab: BACnetLab, sim, pid: str) -> tuple[int, int, list]:
    drv = await lab.driver(pid, sim, name=f"d-{pid}")
    sim.requests.clear()
    samples = await drv.read(drv.device.enabled_points)
    return sim.requests["ReadPropertyMultipleRequest"], sim.requests["ReadPropertyRequest"], samples


async def test_rpm_batching_100_points_against_readproperty_baseline(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(extra=100)
    write_profile(bacnet_lab.tmp, "many", _many_points(100), device="max_points_per_request: 100")
    write_profile(bacnet_lab.tmp, "many-rp", _many_points(100), device="read_property_multiple: never")
    rpm, rp, samples = await _poll_count(bacnet_lab, sim, "many")
    base_rpm, base_rp, base_samples = await _poll_count(bacnet_lab, sim, "many-rp")
    assert [s.value for s in samples] == [float(i) for i in range(100)] == [s.value for s in base_samples]
    assert (base_rpm, base_rp) == (0, 100)
    assert rp == 0 and rpm == 1  # 100 present-values: 904-byte request < 1024, segmented reply
    [batch] = bacnet_lab.drivers[0].plan()
    assert batch["request_bytes"] == 904 and batch["reply_bytes"] > 1476  # the reply (1604 B) came in segments
    print(f"100 points: {rpm} ReadPropertyMultiple vs {base_rp} ReadProperty")


async def test_small_apdu_non_segmenting_device(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(extra=100, max_apdu=206, segmentation=False)
    write_profile(bacnet_lab.tmp, "small", _many_points(100), device="max_points_per_request: 100")
    drv = await bacnet_lab.driver("small", sim)
    assert (drv.facts.max_apdu, drv.facts.segmentation) == (206, "no-segmentation")
    plan = drv.plan()
    assert all(b["request_bytes"] <= 206 and b["reply_bytes"] <= 206 for b in plan)
    sim.requests.clear()
    samples = await drv.read(drv.device.enabled_points)
    assert all(s.quality == Quality.GOOD for s in samples)
    assert [s.value for s in samples] == [float(i) for i in range(100)]
    n = sim.requests["ReadPropertyMultipleRequest"]
    assert n == len(plan) and 6 <= n <= 12, n  # ~19 small replies per request; no aborts, no retries
    print(f"206-byte non-segmenting device, 100 points: {n} ReadPropertyMultiple")


async def test_estimate_too_optimistic_splits_after_abort(bacnet_lab: BACnetLab) -> None:
    """Replies bigger than planned (long names) are aborted by the device: the driver halves and remembers."""
    sim = await bacnet_lab.sim(extra=40, max_apdu=206, segmentation=False)
    long = "x" * 100
    for i in range(40):
        sim.obj(f"analog-value,{100 + i}").objectName = f"{long}-{i:03d}"
    pts = "\n".join(f"- {{name: n{i}, object_type: analog-value, instance: {100 + i}, property: object-name}}"
                    for i in range(40))
    write_profile(bacnet_lab.tmp, "names", pts)
    drv = await bacnet_lab.driver("names", sim)
    planned = len(drv.plan())  # 2 names per request by the estimate (80 bytes each)
    sim.requests.clear()
    samples = await drv.read(drv.device.enabled_points)
    assert [s.value for s in samples] == [f"{long}-{i:03d}" for i in range(40)]
    assert drv.reads.max_points == 1 and sim.requests["ReadPropertyMultipleRequest"] > planned
    sim.requests.clear()
    await drv.read(drv.device.enabled_points)
    assert sim.requests["ReadPropertyMultipleRequest"] == 40  # learnt: no more aborted requests


async def test_device_rejecting_rpm_is_read_property_by_property(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(rpm=False)
    write_profile(bacnet_lab.tmp, "ahu", AHU_POINTS)
    drv = await bacnet_lab.driver("ahu", sim)
    got = _by_name(await drv.read(drv.device.enabled_points))
    assert all(s.quality == Quality.GOOD for s in got.values())
    assert not drv.facts.rpm
    sim.requests.clear()
    await drv.read(drv.device.enabled_points)
    assert sim.requests["ReadPropertyMultipleRequest"] == 0 and sim.requests["ReadPropertyRequest"] == 9


async def test_write_with_priority_and_relinquish(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", AHU_POINTS)
    drv = await bacnet_lab.driver("ahu", sim)
    pts = {p.name: p for p in drv.device.points}
    av = sim.obj("analog-value,1")
    assert await drv.write(pts["setpoint"], 23.5) == 23.5
    assert av.presentValue == 23.5
    assert av.priorityArray[7].real == 23.5  # priority 8 (1-based)
    got = _by_name(await drv.read([pts["setpoint"], pts["pa8"]]))
    assert got["setpoint"].value == 23.5 and got["pa8"].value == 23.5
    await drv.write(pts["fan_cmd"], False)
    assert str(sim.obj("binary-value,1").presentValue) == "inactive"
    await drv.write(pts["mode"], 2)
    assert int(sim.obj("multi-state-value,1").presentValue) == 2
    for bad in ("abc", 2.7, 0, True):  # clear refusals, nothing sent
        with pytest.raises(WriteRefused, match="state number"):
            await drv.write(pts["mode"], bad)
    assert int(sim.obj("multi-state-value,1").presentValue) == 2
    # relinquish: null at priority 8, the relinquish default comes back
    assert await drv.write(pts["setpoint"], None) is None
    assert av.presentValue == 21.0 and av.priorityArray[7].null is not None
    await drv.write(pts["fan_cmd"], None)
    assert str(sim.obj("binary-value,1").presentValue) == "active"


async def test_dead_controller_times_out_without_delaying_another(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", AHU_POINTS)
    good = await bacnet_lab.driver("ahu", sim, name="good", timeout=1.0)
    dead = await bacnet_lab.driver("ahu", sim, name="dead", start=False, timeout=0.5,
                                   conn={"address": "127.77.250.250"})
    assert dead.conn.bus_key == good.conn.bus_key
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout) as ei:
        await dead.start()
    assert 0.4 < time.monotonic() - t0 < 1.5
    assert isinstance(ei.value.__cause__, TimeoutError)

    async def poll_good() -> float:
        t = time.monotonic()
        for _ in range(5):
            samples = await good.read(good.device.enabled_points)
            assert all(s.quality == Quality.GOOD for s in samples)
        return time.monotonic() - t

    dead2 = await bacnet_lab.driver("ahu", None, name="dead2", start=False, timeout=1.0,
                                    conn={"address": "127.77.250.251"})
    failing = asyncio.create_task(dead2.start())
    elapsed = await poll_good()
    with pytest.raises(DeviceTimeout):
        await failing
    assert elapsed < 0.5, elapsed  # the shared socket kept serving the live device


async def test_unbindable_local_address_is_unreachable(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", AHU_POINTS)
    drv = await bacnet_lab.driver("ahu", sim, start=False, conn={"local_address": "10.254.254.254/24"})
    with pytest.raises(DeviceUnreachable, match="cannot bind"):
        await drv.start()


async def test_requests_stay_within_one_apdu_of_a_segmenting_device(bacnet_lab: BACnetLab) -> None:
    """bacpypes3 would segment a long request itself, miscounting the header; the planner never needs it."""
    sim = await bacnet_lab.sim(extra=100, max_apdu=480, segmentation=True)
    write_profile(bacnet_lab.tmp, "mid", _many_points(100), device="max_points_per_request: 100")
    drv = await bacnet_lab.driver("mid", sim)
    plan = drv.plan()
    assert len(plan) == 2 and all(b["request_bytes"] <= 480 for b in plan)
    sim.requests.clear()
    samples = await drv.read(drv.device.enabled_points)
    assert [s.value for s in samples] == [float(i) for i in range(100)]
    assert sim.requests["ReadPropertyMultipleRequest"] == 2
