"""Write safety as a property of the write path (issue 8, items 1-3), against a real bacpypes3 controller.

For every writable BACnet object type the simulator offers (analog/binary/multi-state values and outputs,
INTEGER, Unsigned, Double and CharacterString values), a table of hostile and valid values goes through
``check_write``. What it refuses must also be refused by the driver itself (a caller that skips the check)
with no WriteProperty sent and the property unchanged; what it accepts lands, and the controller's
present-value reads back as the test's own oracle expects.
"""

from __future__ import annotations

import asyncio
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from agent.contract.driver import prepare_write
from agent.errors import WriteRefused
from tests.peers.bacnet import BACnetLab, next_host, write_profile

INVALID = object()
RELINQUISHED = object()
F32_MAX = 3.4028234663852886e38

# name, object type, kind (the test's own classification), profile extras
POINTS: list[tuple[str, str, str, str]] = [
    ("setpoint", "analog-value", "real", "min: 10, max: 30"),
    ("valve", "analog-output", "real", "unit: '%'"),
    ("fan", "binary-value", "binary", ""),
    ("pump", "binary-output", "binary", ""),
    ("stage", "multi-state-output", "state", "max: 3"),
    ("count", "integer-value", "int32", ""),
    ("hours", "positive-integer-value", "uint32", ""),
    ("energy", "large-analog-value", "double", ""),
    ("label", "characterstring-value", "text", ""),
]
PROFILE = "\n".join(
    f"- {{name: {n}, object_type: {t}, instance: 1, access: read-write, priority: 8{', ' + x if x else ''}}}"
    for n, t, _, x in POINTS
)

VALUES: list[Any] = [
    "actve", "", "2", "0.5", "-1", "true", "FALSE", "on", "off", "Active", "inactive", "yes", "21.5", "héllo",
    True, False, 0, 1, 2, 3, 4, -1, 0.5, 1.0, 3.0, 21.5, 25, 30.5, 2**31 - 1, 2**31, -(2**31) - 1, 2**32 - 1,
    2**32, 1e39, -1e39, 1e300, math.nan, math.inf, -math.inf, None, [1], {"v": 1},
]


def oracle(kind: str, extra: str, v: Any) -> Any:
    """What the controller must end up holding, RELINQUISHED, or INVALID."""
    if v is None:
        return RELINQUISHED  # every object here is commandable
    if kind == "binary":
        if isinstance(v, bool):
            return v
        if type(v) is int and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "on", "off", "active", "inactive"):
            return v.lower() in ("true", "1", "on", "active")
        return INVALID
    if kind == "text":
        return v if isinstance(v, str) else INVALID
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return INVALID
    lo, hi = {"real": (-F32_MAX, F32_MAX), "double": (-math.inf, math.inf), "int32": (-(2**31), 2**31 - 1),
              "uint32": (0, 2**32 - 1), "state": (1, 2**32 - 1)}[kind]
    if "min: 10" in extra:
        lo, hi = 10, 30
    if extra == "max: 3":
        hi = 3
    if not lo <= v <= hi:
        return INVALID
    if kind in ("int32", "uint32", "state"):
        return int(v) if v == int(v) else INVALID
    if kind == "real":
        return struct.unpack(">f", struct.pack(">f", v))[0]
    return float(v)


def held(obj: Any, kind: str) -> Any:
    pv = obj.presentValue
    if kind == "binary":
        return str(pv) == "active"
    if kind == "text":
        return str(pv)
    if kind in ("int32", "uint32", "state"):
        return int(pv)
    return float(pv)


async def test_only_valid_values_reach_the_controller(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(kinds=True)
    write_profile(bacnet_lab.tmp, "kinds", PROFILE)
    drv = await bacnet_lab.driver("kinds", sim)
    dev = drv.device
    pts = {p.name: p for p in dev.points}
    accepted = refused = 0
    for name, otype, kind, extra in POINTS:
        obj = sim.obj(f"{otype},1")
        for v in VALUES:
            want = oracle(kind, extra, v)
            before, sent = held(obj, kind), sim.requests["WritePropertyRequest"]
            try:
                pt, value = prepare_write(dev, name, v)
            except WriteRefused as exc:
                assert want is INVALID, f"{name} = {v!r} refused ({exc}) but valid (expected {want!r})"
                with pytest.raises(WriteRefused):  # a caller that skips check_write: refused, nothing sent
                    await drv.write(pts[name], v)
                assert sim.requests["WritePropertyRequest"] == sent, f"{name} = {v!r} reached the controller"
                assert held(obj, kind) == before
                refused += 1
                continue
            assert want is not INVALID, f"{name} = {v!r} accepted as {value!r}, but it is not a valid value"
            await drv.write(pt, value)
            assert sim.requests["WritePropertyRequest"] == sent + 1
            if want is RELINQUISHED:
                assert obj.priorityArray[7].null is not None, name
                assert held(obj, kind) == held(SimpleDefault(obj.relinquishDefault), kind)
            else:
                got = held(obj, kind)
                assert got == want, f"{name} = {v!r}: controller holds {got!r}, expected {want!r}"
                assert _slot(obj.priorityArray[7]) is not None
            accepted += 1
    print(f"accepted {accepted}, refused {refused}")
    assert accepted > 60 and refused > 200


class SimpleDefault:
    def __init__(self, value: Any) -> None:
        self.presentValue = value


def _slot(choice: Any) -> Any:
    for n in getattr(choice, "_elements", {}):
        if n != "null" and getattr(choice, n, None) is not None:
            return getattr(choice, n)
    return None


@pytest.mark.parametrize(("point", "text", "expect"), [
    ("fan", "actve", "fan: expects true/false, 1/0, on/off or active/inactive; got 'actve'"),
    ("fan", "2", "got '2'"), ("fan", "0.5", "got '0.5'"), ("fan", "-1", "got '-1'"), ("fan", "yes", "got 'yes'"),
    ("setpoint", "true", "setpoint: expects a number; got 'true'"), ("setpoint", "31", "above the maximum 30"),
    ("setpoint", "nan", "finite"), ("valve", "1e39", "outside a REAL"), ("stage", "0", "state number"),
    ("stage", "1.5", "state number"), ("stage", "4", "above the maximum 3"), ("count", "2.5", "whole number"),
    ("hours", "-1", "outside an Unsigned"),
])
async def test_typed_text_is_read_by_the_point_type(bacnet_lab: BACnetLab, point: str, text: str,
                                                     expect: str) -> None:
    write_profile(bacnet_lab.tmp, "kinds", PROFILE)
    drv = await bacnet_lab.driver("kinds", None, start=False)
    with pytest.raises(WriteRefused, match=_re(expect)):
        prepare_write(drv.device, point, text, text=True)


async def test_typed_text_accepted(bacnet_lab: BACnetLab) -> None:
    write_profile(bacnet_lab.tmp, "kinds", PROFILE)
    drv = await bacnet_lab.driver("kinds", None, start=False)
    for point, text, value in [("fan", "active", True), ("fan", "OFF", False), ("fan", "1", True),
                               ("setpoint", "21.5", 21.5), ("setpoint", "null", None), ("stage", "2", 2),
                               ("label", "42", "42"), ("label", "relinquish", None), ("energy", "1e300", 1e300)]:
        _, got = prepare_write(drv.device, point, text, text=True)
        assert got == value and type(got) is type(value), (point, text, got)


def _re(s: str) -> str:
    import re

    return re.escape(s)


async def test_cli_refusals_through_the_agent_and_direct_leave_a_trace(
        bacnet_lab: BACnetLab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Items 1, 2, 4: `write ahu fan_command actve` (and 2, 0.5, -1; true for an analog point) is refused
    before any I/O, through the agent and with --direct, naming the accepted forms; each refusal through the
    agent is a log line and a `write` event with result refused and the reason."""
    import json

    from tests.core.agentkit import running_agent, write_site
    from tests.core.test_write_path import cli

    sim = await bacnet_lab.sim()
    devices = (f"  - name: ahu\n    type: demo-bacnet-ahu\n    interval: 0.5s\n    timeout: 1s\n"
               f"    connection: {{device_instance: {sim.instance}, address: '{sim.host}', "
               f"local_address: {next_host()}/8, local_port: 47809}}\n")
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=devices)
    forms = "expects true/false, 1/0, on/off or active/inactive"
    bad = [("fan_command", "actve", forms), ("fan_command", "2", forms), ("fan_command", "0.5", forms),
           ("fan_command", "-1", forms), ("room_setpoint", "true", "expects a number; got 'true'"),
           ("room_setpoint", "30", "above the maximum 26"), ("mode", "2.5", "state number")]
    caplog.set_level("INFO", logger="edge_agent")
    async with running_agent(site) as agent:
        for _ in range(100):
            if agent.health["ahu"].available:
                break
            await asyncio.sleep(0.05)
        assert agent.health["ahu"].available
        sim.requests.clear()
        for point, text, reason in bad:
            for direct in ((), ("--direct",)):
                r = await asyncio.to_thread(cli, "write", "ahu", point, text, *direct, "-c", str(site))
                assert r.returncode == 1 and reason in r.stderr, (point, text, direct, r.stderr)
                assert "Traceback" not in r.stderr
        assert sim.requests["WritePropertyRequest"] == 0
        assert str(sim.obj("binary-value,1").presentValue) == "active"
        assert float(sim.obj("analog-value,1").presentValue) == 21.0
        r = await asyncio.to_thread(cli, "write", "ahu", "fan_command", "off", "-c", str(site))
        assert r.returncode == 0 and "through the running agent" in r.stdout, r.stderr
        assert str(sim.obj("binary-value,1").presentValue) == "inactive"
        events = [json.loads(r.body) for r in await agent.outbox.take(500) if r.topic.endswith("/e/ahu")]
    writes = [e["data"] for e in events if e["kind"] == "write"]
    refused = [w for w in writes if w["result"] == "refused"]
    assert [(w["point"], w["value"]) for w in refused] == [(p, t) for p, t, _ in bad]
    assert all(reason in w["reason"] for w, (_, _, reason) in zip(refused, bad, strict=True))
    assert [w for w in writes if w["result"] == "ok"] == [{"point": "fan_command", "value": False, "result": "ok"}]
    assert sum("write ahu.fan_command = 'actve' refused" in m for m in caplog.messages) == 1
