"""An encoder independent of drivers.modbus.codec: how a device lays values out on the wire, written from
the byte-order definitions (A = most significant byte), to check the driver's decoder against."""

from __future__ import annotations

import struct

FMT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q", "uint64": ">Q",
       "float32": ">f", "float64": ">d"}


def device_registers(type_: str, value: float | int, order: str) -> list[int]:
    """Registers a device sends for this value. big = bytes most significant first (A B C D ...)."""
    big = list(struct.pack(FMT[type_], value))
    n = len(big)
    if order == "ABCD":
        wire = big
    elif order == "DCBA":
        wire = big[::-1]
    elif order == "BADC":
        wire = [big[i ^ 1] for i in range(n)]  # swap the two bytes of each word
    elif order == "CDAB":
        words = [big[i : i + 2] for i in range(0, n, 2)]
        wire = [b for w in reversed(words) for b in w]
    else:
        raise ValueError(order)
    return [(wire[i] << 8) | wire[i + 1] for i in range(0, n, 2)]


def raw_for(value: float, scale: float = 1.0, offset: float = 0.0) -> int:
    return round((value - offset) / scale)
