"""Decoding and encoding of every type and byte order, against an independent wire encoder."""

from __future__ import annotations

import math
import struct

import pytest

from agent.errors import WriteRefused
from drivers.modbus import ModbusPoint
from drivers.modbus.codec import decode, encode, set_bit

from .wire import device_registers

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
VALUES = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3_000_000_000,
    "int64": -1_234_567_890_123_456_789,
    "uint64": 12_345_678_901_234_567_890,
    "float32": 230.3,
    "float64": -12345.678901234,
}


def pt(**kw: object) -> ModbusPoint:
    return ModbusPoint.model_validate({"name": "p", "table": "holding", "address": 0, **kw})


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", list(VALUES))
def test_decode_every_type_and_order(type_: str, order: str) -> None:
    value = VALUES[type_]
    regs = device_registers(type_, value, order)
    got = decode(pt(type=type_, byte_order=order), regs)
    if type_ == "float32":
        assert got == 230.3  # shortest float32 repr, not 230.3000030517578
    elif type_ == "float64":
        assert got == value
    else:
        assert got == value and isinstance(got, int)
    # and the encoder puts the same registers on the wire
    assert encode(pt(type=type_, byte_order=order), value) == regs


def test_known_layouts() -> None:
    # 1.5 as float32 is 0x3FC00000: these are the four layouts as a device would send them
    assert decode(pt(type="float32"), [0x3FC0, 0x0000]) == 1.5
    assert decode(pt(type="float32", byte_order="CDAB"), [0x0000, 0x3FC0]) == 1.5
    assert decode(pt(type="float32", byte_order="BADC"), [0xC03F, 0x0000]) == 1.5
    assert decode(pt(type="float32", byte_order="DCBA"), [0x0000, 0xC03F]) == 1.5
    # 0x12345678 as int32
    assert decode(pt(type="uint32", byte_order="CDAB"), [0x5678, 0x1234]) == 0x12345678
    assert decode(pt(type="uint32", byte_order="BADC"), [0x3412, 0x7856]) == 0x12345678
    assert decode(pt(type="uint16", byte_order="BADC"), [0x3412]) == 0x1234


def test_scale_offset_and_signs() -> None:
    # Carlo Gavazzi EM340 V L1-N: INT32, LSW first, Volt*10: 2305 -> 230.5 V
    assert decode(pt(type="int32", byte_order="CDAB", scale=0.1), [2305, 0]) == 230.5
    # negative INT32 power, LSW first: -12.3 W as Watt*10 = -123
    assert decode(pt(type="int32", byte_order="CDAB", scale=0.1), device_registers("int32", -123, "CDAB")) == -12.3
    # Remeha GTW-08 INT16 0.01 degC: 0xFF38 = -200 -> -2.0 degC
    assert decode(pt(type="int16", scale=0.01), [0xFF38]) == -2.0
    # offset: raw 500 with scale 0.1 and offset -40 -> 10.0
    assert decode(pt(type="uint16", scale=0.1, offset=-40), [500]) == 10.0
    # scaled values are floats even when whole
    assert decode(pt(type="uint16", scale=10), [7]) == 70


def test_nan_is_not_a_value() -> None:
    nan = struct.unpack(">2H", struct.pack(">f", math.nan))
    assert decode(pt(type="float32"), list(nan)) is None


def test_bits_and_strings() -> None:
    assert decode(pt(type="bool", bit=0), [0b101]) is True
    assert decode(pt(type="bool", bit=1), [0b101]) is False
    assert decode(pt(type="bool", bit=15), [0x8000]) is True
    assert set_bit(0b101, 1, True) == 0b111 and set_bit(0b101, 0, False) == 0b100
    assert decode(pt(type="string", length=4), [0x534F, 0x434F, 0x0000, 0x0000]) == "SOCO"
    assert decode(pt(type="string", length=2, byte_order="BADC"), [0x4F53, 0x4F43]) == "SOCO"
    assert encode(pt(type="string", length=3), "SOCO") == [0x534F, 0x434F, 0]
    coil = ModbusPoint.model_validate({"name": "c", "table": "coil", "address": 3, "type": "bool"})
    assert decode(coil, [True]) is True and encode(coil, False) == [False]


@pytest.mark.parametrize(
    ("kw", "value", "why"),
    [
        ({"type": "int16"}, 40000, "outside int16"),
        ({"type": "uint16"}, -1, "outside uint16"),
        ({"type": "uint16", "scale": 0.1}, 6553.6, "outside uint16"),  # raw 65536
        ({"type": "int32", "scale": 0.01}, 21474836.48, "outside int32"),
        ({"type": "float32"}, 1e39, "does not fit in float32"),
        ({"type": "float32"}, math.inf, "finite"),
        ({"type": "uint16"}, True, "expected a number"),
        ({"type": "uint16"}, "12", "expected a number"),
        ({"type": "string", "length": 2}, "too long", "do not fit"),
        ({"type": "string", "length": 2}, "é", "ASCII"),
        ({"type": "bool", "bit": 3}, 2, "true/false"),
    ],
)
def test_encode_refuses_what_the_type_cannot_hold(kw: dict[str, object], value: object, why: str) -> None:
    with pytest.raises(WriteRefused, match=why):
        encode(pt(**kw), value)  # type: ignore[arg-type]


def test_encode_rounds_to_the_register_resolution() -> None:
    p = pt(type="int16", scale=0.01)
    assert encode(p, 21.5) == [2150]
    assert encode(p, -2.004) == [0xFF38]  # raw -200.4 rounds to -200
    assert decode(p, encode(p, 21.537)) == 21.54
