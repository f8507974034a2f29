"""All Modbus decoding and encoding: byte/word order, types, scale and offset, in one place.

Decoders are compiled once per point (``Decoder``) because the poll loop runs them for every point of every
cycle: the bench (bench/modbus_poll.py) measures points decoded per CPU-second.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

from agent.errors import WriteRefused
from agent.model import Value

from . import BIT_TABLES, ModbusPoint

_FMT = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
    "float32": "f", "float64": "d",
}
_RANGE = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}
_F32_MAX = 3.4028234663852886e38


def _swap16(w: int) -> int:
    return ((w & 0xFF) << 8) | (w >> 8)


def words_to_wire(words: Sequence[int], order: str) -> list[int]:
    """Big-endian words (A first) → registers as the device sends them, for this byte order."""
    out = list(words)
    if order in ("BADC", "DCBA"):
        out = [_swap16(w) for w in out]
    if order in ("CDAB", "DCBA"):
        out.reverse()
    return out


def wire_to_words(regs: Sequence[int], order: str) -> list[int]:
    """Registers as received → big-endian words (the inverse of ``words_to_wire``; it is an involution)."""
    return words_to_wire(regs, order)


def _short_float32(x: float) -> float:
    """The shortest decimal that is the same float32: 230.3, not 230.3000030517578."""
    if not math.isfinite(x):
        return x
    packed = struct.pack(">f", x)
    for digits in (7, 8, 9):
        y = float(f"{x:.{digits}g}")
        if struct.pack(">f", y) == packed:
            return y
    return x


class Decoder:
    """Decodes one point from the registers (or bits) of a read that contains it."""

    __slots__ = ("count", "fn", "name", "offset")

    def __init__(self, point: ModbusPoint, block_start: int) -> None:
        self.name = point.name
        self.offset = point.address - block_start
        self.count = point.register_count
        self.fn: Callable[[Sequence[Any], int], Value] = compile_decoder(point)

    def __call__(self, values: Sequence[Any]) -> Value:
        return self.fn(values, self.offset)


def compile_decoder(point: ModbusPoint) -> Callable[[Sequence[Any], int], Value]:
    """A function (values, offset) → decoded, scaled value for this point."""
    if point.table in BIT_TABLES:
        return lambda vals, off: bool(vals[off])
    if point.type == "bool":
        bit = point.bit or 0
        return lambda vals, off: bool((vals[off] >> bit) & 1)
    order = point.byte_order
    n = point.register_count
    swap_bytes = order in ("BADC", "DCBA")
    reverse = order in ("CDAB", "DCBA") and n > 1
    if point.type == "string":
        def dec_str(vals: Sequence[Any], off: int) -> Value:
            words = vals[off : off + n]
            if swap_bytes:
                words = [_swap16(w) for w in words]
            raw = struct.pack(f">{n}H", *words)
            return raw.split(b"\x00", 1)[0].decode("latin-1").strip()
        return dec_str
    st = struct.Struct(">" + _FMT[point.type])
    words_st = struct.Struct(f">{n}H")
    scale, offset = point.scale, point.offset
    plain = scale == 1.0 and offset == 0.0
    f32 = point.type == "float32"
    is_float = point.type in ("float32", "float64")

    def dec(vals: Sequence[Any], off: int) -> Value:
        words = vals[off : off + n]
        if swap_bytes:
            words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
        if reverse:
            words = words[::-1]
        raw = st.unpack(words_st.pack(*words))[0]
        if is_float:
            if not math.isfinite(raw):
                return None  # NaN marks "not available" on many meters; caller turns None into ERROR
            if f32:
                raw = _short_float32(raw)
        if plain:
            return raw
        v = raw * scale + offset
        return round(v, 9)

    return dec


def decode(point: ModbusPoint, values: Sequence[Any]) -> Value:
    """Decode a point from exactly its own registers/bits (convenience for tests and writes)."""
    return compile_decoder(point)(values, 0)


def encode(point: ModbusPoint, value: Value) -> list[int] | list[bool]:
    """Registers (or one bit) to write for this value; WriteRefused when the type cannot hold it.

    A bit of a register cannot be encoded alone: the driver does read-modify-write (``set_bit``).
    """
    where = f"{point.name}"
    if point.table in BIT_TABLES or point.type == "bool":
        if isinstance(value, bool):
            return [value]
        if isinstance(value, int) and value in (0, 1):
            return [bool(value)]
        raise WriteRefused(f"{where}: expected true/false (or 0/1), got {value!r}")
    order = point.byte_order
    if point.type == "string":
        if not isinstance(value, str):
            raise WriteRefused(f"{where}: expected a string, got {value!r}")
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise WriteRefused(f"{where}: only ASCII characters can be written") from None
        size = 2 * (point.length or 1)
        if len(raw) > size:
            raise WriteRefused(f"{where}: {len(raw)} characters do not fit in {size}")
        raw = raw.ljust(size, b"\x00")
        words = list(struct.unpack(f">{size // 2}H", raw))
        if order in ("BADC", "DCBA"):
            words = [_swap16(w) for w in words]
        return words
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused(f"{where}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteRefused(f"{where}: value must be finite")
    raw_f = (value - point.offset) / point.scale
    st = struct.Struct(">" + _FMT[point.type])
    if point.type in ("float32", "float64"):
        if point.type == "float32" and abs(raw_f) > _F32_MAX:
            raise WriteRefused(f"{where}: {value} does not fit in float32")
        packed = st.pack(raw_f)
    else:
        exact = isinstance(value, int) and point.scale == 1.0 and point.offset == 0.0
        raw_i = value if exact else round(raw_f)  # 64-bit integers do not survive a float
        lo, hi = _RANGE[point.type]
        if not lo <= raw_i <= hi:
            raise WriteRefused(
                f"{where}: {value} is raw {raw_i} after scale/offset, outside {point.type} ({lo}..{hi})"
            )
        packed = st.pack(raw_i)
    n = point.register_count
    return words_to_wire(struct.unpack(f">{n}H", packed), order)


def set_bit(register: int, bit: int, on: bool) -> int:
    """The register with one bit changed (read-modify-write of a bit-field point)."""
    return (register | (1 << bit)) if on else (register & ~(1 << bit) & 0xFFFF)
