"""drivers/bacnet/speedups.py: the cached ``getattr_static`` gives bacpypes3 exactly the real function's answers
(every Sequence class, every element), reads against a simulated controller give the same samples with and
without it, and once warm a poll makes no walk of a class at all."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from typing import Any

import bacpypes3.apdu
import bacpypes3.basetypes
import bacpypes3.constructeddata as cd
import bacpypes3.object
import pytest

from drivers.bacnet import speedups
from tests.peers.bacnet import BACnetLab, write_profile

POINTS = """\
- {name: supply, object_type: analog-input, instance: 1}
- {name: room, object_type: analog-input, instance: 3}
- {name: setpoint, object_type: analog-value, instance: 1, access: read-write, priority: 8, min: 10, max: 30}
- {name: fan_cmd, object_type: binary-value, instance: 1, access: read-write, priority: 8}
- {name: fan, object_type: binary-input, instance: 1}
- {name: mode, object_type: multi-state-value, instance: 1, access: read-write, priority: 8}
- {name: room_name, object_type: analog-input, instance: 3, property: object-name}
- {name: units, object_type: analog-input, instance: 1, property: units}
- {name: flags, object_type: analog-input, instance: 1, property: status-flags}
- {name: pa8, object_type: analog-value, instance: 1, property: priority-array, array_index: 8}
- {name: oos, object_type: binary-value, instance: 1, property: out-of-service}
- {name: missing, object_type: analog-input, instance: 99}
- {name: x0, object_type: analog-value, instance: 100}
"""


def _sequence_classes() -> Iterator[type]:
    todo, seen = [cd.Sequence], set()
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                yield sub


def test_cached_answers_are_the_real_ones_for_every_sequence_class() -> None:
    sentinel = object()
    cache = speedups._CachedInspect()
    checked = 0
    for cls in _sequence_classes():
        try:
            inst = cls.__new__(cls)
        except TypeError:
            continue
        for attr in [*getattr(cls, "_elements", {}), "_elements", "encode", "no_such_name"]:
            for _ in range(2):  # the first answer is computed, the second comes from the cache
                assert cache.getattr_static(inst, attr, sentinel) is inspect.getattr_static(inst, attr, sentinel)
            checked += 1
    assert checked > 500
    # a name the instance itself holds is never answered from the cache
    obj = bacpypes3.basetypes.PropertyReference.__new__(bacpypes3.basetypes.PropertyReference)
    first = cache.getattr_static(obj, "propertyArrayIndex", sentinel)
    object.__setattr__(obj, "propertyArrayIndex", 5)
    assert cache.getattr_static(obj, "propertyArrayIndex", sentinel) == 5 != first
    assert cache.getattr_static(bacpypes3.basetypes.PropertyReference, "_elements") \
        is inspect.getattr_static(bacpypes3.basetypes.PropertyReference, "_elements")


async def _read(lab: BACnetLab, sim: Any, name: str) -> dict[str, Any]:
    drv = await lab.driver("kinds", sim, name=name)
    got = await drv.read(drv.device.enabled_points)
    return {s.point: (s.quality, s.value, s.error) for s in got}


async def test_reads_are_the_same_with_and_without_the_cache(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(extra=1)
    write_profile(bacnet_lab.tmp, "kinds", POINTS, device="max_points_per_request: 64")
    try:
        speedups.uninstall()
        plain = await _read(bacnet_lab, sim, "plain")
        speedups.install()
        assert cd.inspect is speedups.CACHED
        cached = await _read(bacnet_lab, sim, "cached")
    finally:
        speedups.install()
    assert cached == plain
    assert plain["supply"][1] == 16.0 and plain["room_name"][1] == "room-temp" and plain["missing"][2]


async def test_a_warm_poll_walks_no_class(bacnet_lab: BACnetLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once every class was seen, a poll (request and reply, encoded and decoded by bacpypes3) makes no call
    to the real ``inspect.getattr_static`` (before: several per decoded object)."""
    sim = await bacnet_lab.sim(extra=1)
    write_profile(bacnet_lab.tmp, "kinds", POINTS, device="max_points_per_request: 64")
    drv = await bacnet_lab.driver("kinds", sim)
    await drv.read(drv.device.enabled_points)
    real = inspect.getattr_static
    calls = {"n": 0}

    def counting(*args: Any) -> Any:
        # only what Sequence construction asks (directly, or through the cache); the simulator's server code in
        # this process has other uses
        if sys._getframe(1).f_globals["__name__"] in ("bacpypes3.constructeddata", speedups.__name__):
            calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(inspect, "getattr_static", counting)  # counting only: the real answer is returned
    for _ in range(3):
        samples = await drv.read(drv.device.enabled_points)
    assert {s.point: s.value for s in samples}["supply"] == 16.0
    assert calls["n"] == 0


async def test_a_poll_reuses_its_request_and_plan(bacnet_lab: BACnetLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ReadPropertyMultiple parameters and the batches of a point set are built once: later polls of the
    same points build no PropertyReference and plan nothing, and read what the controller holds now (the
    bacpypes3 path: the agent's own framing is off for this device)."""
    import drivers.bacnet.polling as driver_module

    sim = await bacnet_lab.sim(extra=1)
    write_profile(bacnet_lab.tmp, "kinds", POINTS, device="max_points_per_request: 64\nrpm_codec: bacpypes3")
    drv = await bacnet_lab.driver("kinds", sim)
    await drv.read(drv.device.enabled_points)
    assert drv.fast is None
    built = {"refs": 0, "plans": 0}
    real_ref, real_plan = driver_module.PropertyReference, driver_module.plan_batches

    def ref(*a: Any, **kw: Any) -> Any:
        built["refs"] += 1
        return real_ref(*a, **kw)

    def plan(*a: Any, **kw: Any) -> Any:
        built["plans"] += 1
        return real_plan(*a, **kw)

    monkeypatch.setattr(driver_module, "PropertyReference", ref)  # counting only
    monkeypatch.setattr(driver_module, "plan_batches", plan)
    sim.obj("analog-value,100").presentValue = 42.5
    for _ in range(2):
        got = {s.point: s.value for s in await drv.read(drv.device.enabled_points)}
    assert built == {"refs": 0, "plans": 0}
    assert got["supply"] == 16.0 and got["room_name"] == "room-temp" and got["x0"] == 42.5
    assert drv.facts.requests["read-property-multiple"] >= 3
