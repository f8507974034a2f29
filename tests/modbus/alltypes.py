"""A profile with every type in every byte order, and the registers a device holds for it."""

from __future__ import annotations

from typing import Any

from .wire import device_registers

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
VALUES: dict[str, int | float] = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3_000_000_000,
    "int64": -1_234_567_890_123_456_789,
    "uint64": 12_345_678_901_234_567_890,
    "float32": -230.25,
    "float64": 12345.678901234,
}
SIZE = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2, "float64": 4}


def build() -> tuple[dict[str, Any], dict[str, dict[int, int | bool]], dict[str, Any]]:
    """(profile data, server tables, expected decoded values)."""
    points: list[dict[str, Any]] = []
    holding: dict[int, int | bool] = {}
    expected: dict[str, Any] = {}
    addr = 0
    for order in ORDERS:
        for t, v in VALUES.items():
            name = f"{t}_{order}"
            points.append({"name": name, "table": "holding", "address": addr, "type": t, "byte_order": order})
            for i, w in enumerate(device_registers(t, v, order)):
                holding[addr + i] = w
            expected[name] = v
            addr += SIZE[t]
    # scaled, with offset (typical meter encodings)
    points += [
        {"name": "volts_x10", "table": "holding", "address": 100, "type": "int32", "byte_order": "CDAB",
         "scale": 0.1, "unit": "V"},
        {"name": "temp_c", "table": "holding", "address": 102, "type": "int16", "scale": 0.01, "unit": "degC",
         "access": "read-write", "min": -20, "max": 90},
        {"name": "kelvin", "table": "holding", "address": 103, "type": "uint16", "scale": 0.1, "offset": -273.15},
        {"name": "run", "table": "holding", "address": 104, "type": "bool", "bit": 0, "access": "read-write"},
        {"name": "fault", "table": "holding", "address": 104, "type": "bool", "bit": 15},
        {"name": "label", "table": "holding", "address": 110, "type": "string", "length": 4, "access": "read-write"},
        {"name": "label_swapped", "table": "holding", "address": 114, "type": "string", "length": 2,
         "byte_order": "BADC"},
        {"name": "setpoint", "table": "holding", "address": 120, "type": "float32", "access": "read-write",
         "min": 0, "max": 100},
        {"name": "limit_u32", "table": "holding", "address": 122, "type": "uint32", "byte_order": "CDAB",
         "access": "read-write"},
        {"name": "counter", "table": "input", "address": 7, "type": "uint32", "unit": "Wh"},
        {"name": "relay", "table": "coil", "address": 3, "type": "bool", "access": "read-write"},
        {"name": "relay_far", "table": "coil", "address": 40, "type": "bool"},
        {"name": "door", "table": "discrete_input", "address": 17, "type": "bool"},
    ]
    holding.update({100: 2305, 101: 0, 102: (-1050) & 0xFFFF, 103: 2931, 104: 0x8001})
    holding.update({110: 0x534F, 111: 0x434F, 112: 0x4D45, 113: 0x4300, 114: 0x4241, 115: 0x4443})
    holding.update({120: 0x41A4, 121: 0x0000, 122: 0, 123: 0})  # 20.5
    expected.update({
        "volts_x10": 230.5, "temp_c": -10.5, "kelvin": 19.95, "run": True, "fault": True,
        "label": "SOCOMEC", "label_swapped": "ABCD", "setpoint": 20.5, "limit_u32": 0,
        "counter": 70000, "relay": True, "relay_far": False, "door": True,
    })
    tables: dict[str, dict[int, int | bool]] = {
        "holding": holding,
        "input": {7: 1, 8: 4464},  # 70000 = 0x0001_1170 big-endian
        "coil": {a: a == 3 for a in range(0, 48)},
        "discrete_input": {a: a == 17 for a in range(0, 32)},
    }
    return {"points": points}, tables, expected
