"""Write safety as a property of the write path (issue 8, items 1-3), against a real pymodbus server.

For every writable Modbus point type, a table of hostile and valid values goes through ``check_write``. What
it refuses must also be refused by the driver itself (a caller that skips the check) with no request on the
wire and the registers unchanged; what it accepts lands and reads back from the server as the value the
test's own oracle expects (the oracle below is written from the Modbus types, not from the driver's code).
"""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.contract.driver import DriverContext, check_write, prepare_write
from agent.errors import WriteRefused
from tests.peers.modbus import ModbusPeer

from .conftest import make_driver, write_profile
from .wire import device_registers

INVALID = object()
F32_MAX = 3.4028234663852886e38
RANGES = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
          "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}

POINTS: list[dict[str, Any]] = [
    {"name": "relay", "table": "coil", "address": 0, "type": "bool"},
    {"name": "flag", "table": "holding", "address": 10, "type": "bool", "bit": 3},
    {"name": "i16", "table": "holding", "address": 20, "type": "int16"},
    {"name": "u16", "table": "holding", "address": 21, "type": "uint16"},
    {"name": "i32", "table": "holding", "address": 22, "type": "int32"},
    {"name": "u32", "table": "holding", "address": 24, "type": "uint32", "byte_order": "CDAB"},
    {"name": "i64", "table": "holding", "address": 26, "type": "int64"},
    {"name": "u64", "table": "holding", "address": 30, "type": "uint64", "byte_order": "DCBA"},
    {"name": "f32", "table": "holding", "address": 34, "type": "float32"},
    {"name": "f64", "table": "holding", "address": 36, "type": "float64", "byte_order": "BADC"},
    {"name": "scaled", "table": "holding", "address": 40, "type": "int16", "scale": 0.1, "min": -20, "max": 90},
    {"name": "bounded", "table": "holding", "address": 41, "type": "uint16", "min": 5, "max": 300},
    {"name": "text", "table": "holding", "address": 42, "type": "string", "length": 2},
]

VALUES: list[Any] = [
    "actve", "", "2", "0.5", "-1", "true", "FALSE", "on", "off", "active", "inactive", "yes", "21.5", "ABCD",
    "ABCDE", "é", True, False, 0, 1, 2, -1, 0.5, 1.0, 3.0, 21.5, 25, 89.96, 90.04, 255, -32768, 32767, 32768,
    65535, 65536, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 9.0e15, 1e39, -1e39, 1e300, math.nan, math.inf,
    -math.inf, None, [1], {"v": 1},
]


def oracle(p: dict[str, Any], v: Any) -> Any:
    """The value the device must end up holding, or INVALID."""
    t = p["type"]
    if t == "bool":
        if isinstance(v, bool):
            return v
        if type(v) is int and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "on", "off", "active", "inactive"):
            return v.lower() in ("true", "1", "on", "active")
        return INVALID
    if t == "string":
        return v if isinstance(v, str) and v.isascii() and len(v) <= 2 * p["length"] else INVALID
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return INVALID
    if ("min" in p and v < p["min"]) or ("max" in p and v > p["max"]):
        return INVALID
    if t in RANGES:
        scale = p.get("scale", 1.0)
        if scale == 1.0 and v != int(v):
            return INVALID  # an unscaled integer register holds whole numbers only
        raw = round(v / scale) if scale != 1.0 else int(v)
        lo, hi = RANGES[t]
        return raw * scale if lo <= raw <= hi else INVALID
    if t == "float32":
        return struct.unpack(">f", struct.pack(">f", v))[0] if abs(v) <= F32_MAX else INVALID
    return float(v)


async def held(peer: ModbusPeer, p: dict[str, Any]) -> Any:
    """What the server holds for the point, decoded by the test (not by the driver)."""
    if p["table"] == "coil":
        return bool((await peer.get(1, "coil", p["address"]))[0])
    t, a = p["type"], p["address"]
    if t == "bool":
        return bool((await peer.get(1, "holding", a))[0] >> p["bit"] & 1)
    if t == "string":
        regs = await peer.get(1, "holding", a, p["length"])
        return b"".join(struct.pack(">H", r) for r in regs).rstrip(b"\0").decode("ascii")
    n = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2, "float64": 4}[t]
    regs = await peer.get(1, "holding", a, n)
    order = p.get("byte_order", "ABCD")
    fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q", "uint64": ">Q",
           "float32": ">f", "float64": ">d"}[t]
    perm = _wire_positions(order, n)
    wire = b"".join(struct.pack(">H", r) for r in regs)
    raw = bytes(wire[perm[i]] for i in range(2 * n))
    value = struct.unpack(fmt, raw)[0]
    return value * p.get("scale", 1.0) if t not in ("float32", "float64") else value


def _wire_positions(order: str, n: int) -> list[int]:
    """For each big-endian byte index i, where it sits on the wire (from the byte-order definitions)."""
    size = 2 * n
    if order == "ABCD":
        return list(range(size))
    if order == "DCBA":
        return [size - 1 - i for i in range(size)]
    if order == "BADC":
        return [i ^ 1 for i in range(size)]
    return [(n - 1 - i // 2) * 2 + i % 2 for i in range(size)]  # CDAB: words reversed


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Any, ModbusPeer]]:
    points = [{**p, "access": "read-write"} for p in POINTS]
    prof = write_profile(tmp_path, {"points": points})
    tables: dict[str, dict[int, int | bool]] = {"coil": {a: False for a in range(16)},
                                                "holding": {a: 0 for a in range(64)}}
    peer = await ModbusPeer({1: tables}).start()
    drv = make_driver(prof, {"host": "127.0.0.1", "port": peer.port}, DriverContext("t", tmp_path), timeout=1.0)
    await drv.start()
    try:
        yield drv, peer
    finally:
        await drv.stop()
        await peer.stop()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


async def test_only_valid_values_reach_the_device(rig: tuple[Any, ModbusPeer]) -> None:
    drv, peer = rig
    dev = drv.device
    pts = {p.name: p for p in dev.points}
    accepted = refused = 0
    for spec in POINTS:
        name = spec["name"]
        for v in VALUES:
            want = oracle(spec, v)
            before, sent = await held(peer, spec), peer.requests
            try:
                pt, value = prepare_write(dev, name, v)
            except WriteRefused as exc:
                assert want is INVALID, f"{name} = {v!r} refused ({exc}) but valid (expected {want!r})"
                assert str(exc).startswith(f"dev.{name}: "), exc
                # a caller that skips check_write gets the same refusal from the driver, before any I/O
                with pytest.raises(WriteRefused):
                    await drv.write(pts[name], v)
                assert peer.requests == sent, f"{name} = {v!r} reached the device"
                assert _same(await held(peer, spec), before)
                refused += 1
                continue
            assert want is not INVALID, f"{name} = {v!r} accepted as {value!r}, but it is not a valid value"
            assert check_write(dev, name, v) is pt
            await drv.write(pt, v)
            got = await held(peer, spec)
            assert _same(got, want), f"{name} = {v!r}: device holds {got!r}, expected {want!r}"
            accepted += 1
    print(f"accepted {accepted}, refused {refused}, requests {peer.requests}")
    assert accepted > 60 and refused > 400  # the table exercises both sides for every point


@pytest.mark.parametrize(("point", "text", "expect"), [
    ("relay", "actve", "expects true/false, 1/0, on/off or active/inactive; got 'actve'"),
    ("relay", "2", "got '2'"), ("relay", "0.5", "got '0.5'"), ("relay", "-1", "got '-1'"),
    ("relay", "yes", "got 'yes'"), ("flag", "", "got ''"),
    ("i16", "true", "expects a number; got 'true'"), ("i16", "1.5", "whole number"), ("i16", "nan", "finite"),
    ("f32", "inf", "finite"), ("f32", "1e39", "does not fit in float32"), ("u16", "-1", "outside uint16"),
    ("bounded", "301", "above the maximum 300"), ("scaled", "-20.5", "below the minimum -20"),
    ("i16", "null", "BACnet only"), ("relay", "relinquish", "BACnet only"), ("text", "ABCDE", "do not fit"),
])
def test_typed_text_is_read_by_the_point_type_and_refused_clearly(rig: tuple[Any, ModbusPeer], point: str,
                                                                  text: str, expect: str) -> None:
    drv, _ = rig
    with pytest.raises(WriteRefused, match=f"^dev.{point}: .*{_re(expect)}"):
        prepare_write(drv.device, point, text, text=True)


@pytest.mark.parametrize(("point", "text", "value"), [
    ("relay", "on", True), ("relay", "Inactive", False), ("relay", "1", True), ("flag", "false", False),
    ("i16", "-7", -7), ("u16", "0x10", 16), ("f32", "21.5", 21.5), ("scaled", "21.55", 21.55),
    ("text", "123", "123"), ("text", "on", "on"),
])
def test_typed_text_accepted(rig: tuple[Any, ModbusPeer], point: str, text: str, value: Any) -> None:
    drv, _ = rig
    _, got = prepare_write(drv.device, point, text, text=True)
    assert got == value and type(got) is type(value)


def _re(s: str) -> str:
    import re

    return re.escape(s)


def test_the_tests_decoder_inverts_the_wire_encoder() -> None:
    """``held`` decodes with ``_wire_positions``; check it against tests/modbus/wire.py for every order."""
    for order in ("ABCD", "CDAB", "BADC", "DCBA"):
        for t, v, n in (("int32", -123456789, 2), ("uint64", 12_345_678_901_234_567_890, 4),
                        ("float64", 12345.678901234, 4)):
            regs = device_registers(t, v, order)
            wire = b"".join(struct.pack(">H", r) for r in regs)
            perm = _wire_positions(order, n)
            fmt = {"int32": ">i", "uint64": ">Q", "float64": ">d"}[t]
            assert struct.unpack(fmt, bytes(wire[perm[i]] for i in range(2 * n)))[0] == v
