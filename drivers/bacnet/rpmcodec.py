"""ReadPropertyMultiple framed and parsed here for the common case (issue 15); bacpypes3 for everything else.

Measured on bench/site_poll.py ``--only bacnet`` (20 controllers x 40 points): building each request with
bacpypes3's Sequence objects, decoding each ComplexACK into them, and the per-datagram task and layer hops of
its stack took most of the agent's CPU for BACnet; without them it went from 0.114-0.124 to 0.019-0.023 CPU-s
per 1,000 points (same machine, asyncio's loop). This module only knows:

- the request: BVLC original-unicast, an NPDU expecting a reply, a confirmed-request header that does not
  accept a segmented reply, and the ReadAccessSpecifications (object identifier, property references);
- the reply header (ComplexACK, Error, Reject, Abort: type and invoke id);
- the ComplexACK's ReadAccessResults, with each value left as the bytes between its opening and closing tag.

A value is decoded here only when it is one application-tagged primitive of the type that bacpypes3's object
model gives that property (Real, Double, Unsigned, Integer, Boolean, Enumerated, UTF-8 CharacterString).
Anything else (constructed values, another type than the property's, other character sets, proprietary
properties) goes through bacpypes3's own ``Any.cast_out`` on exactly those bytes, as its
``read_property_multiple`` does, so the agent's values are the same either way
(tests/bacnet/test_rpmcodec.py compares both, value type by value type, and against bacpypes3 peers).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from agent.model import Value

from .values import read_value, to_value

# the kinds a value can be decoded as here; SLOW: bacpypes3 decodes it; NONE: bacpypes3 has no type for the
# property and reports None
SLOW, NONE, REAL, DOUBLE, UNSIGNED, INTEGER, BOOLEAN, ENUM, BINARY_PV, STRING = range(10)
# the application tag each kind is decoded from (BOOLEAN carries its value in the tag's length field)
APP_TAG = {REAL: 4, DOUBLE: 5, UNSIGNED: 2, INTEGER: 3, BOOLEAN: 1, ENUM: 9, BINARY_PV: 9, STRING: 7}

MAX_APDU_CODE = 5  # 1476 octets accepted: the BACnet/IP maximum
SERVICE_RPM = 14
PDU_CONFIRMED, PDU_COMPLEX_ACK, PDU_ERROR, PDU_REJECT, PDU_ABORT = 0, 3, 5, 6, 7

_REAL = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")


class Malformed(ValueError):
    """The reply does not parse as a ReadPropertyMultiple-ACK."""


# ------------------------------------------------------------------------------------------------ encoding

def _unsigned_bytes(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"negative unsigned {n}")
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


def _context(tag: int, content: bytes) -> bytes:
    if len(content) > 4:
        raise ValueError("context values here are at most 4 octets")
    return bytes([(tag << 4) | 0x08 | len(content)]) + content


def encode_request(specs: Sequence[tuple[int, int, Sequence[tuple[int, int | None]]]]) -> bytes:
    """The service data of a ReadPropertyMultiple-Request: per object (type, instance) its property
    references (property identifier, array index or None), in that order."""
    out = bytearray()
    for obj_type, instance, props in specs:
        if not 0 <= obj_type < 1024 or not 0 <= instance < (1 << 22):
            raise ValueError(f"object identifier out of range: {obj_type},{instance}")
        out += _context(0, ((obj_type << 22) | instance).to_bytes(4, "big"))
        out.append(0x1E)  # opening tag 1: listOfPropertyReferences
        for prop, index in props:
            out += _context(0, _unsigned_bytes(prop))
            if index is not None:
                out += _context(1, _unsigned_bytes(index))
        out.append(0x1F)
    return bytes(out)


def frame_request(invoke_id: int, service_data: bytes) -> bytes:
    """One datagram: BVLC original-unicast, NPDU (expecting a reply), confirmed request without segmented
    replies accepted (a reply too big for one APDU comes back as an Abort and the caller asks bacpypes3)."""
    npdu_apdu = bytes((0x01, 0x04, PDU_CONFIRMED << 4, MAX_APDU_CODE, invoke_id, SERVICE_RPM)) + service_data
    length = 4 + len(npdu_apdu)
    return bytes((0x81, 0x0A, length >> 8, length & 0xFF)) + npdu_apdu


# ------------------------------------------------------------------------------------------------ replies

def reply_header(data: bytes) -> tuple[int, int, int] | None:
    """(PDU type, invoke id, offset of the service data) of a unicast reply from a station on this network,
    or None for anything else (broadcasts, forwarded or routed NPDUs, network messages, requests, segmented
    ACKs): those are bacpypes3's."""
    if len(data) < 9 or data[0] != 0x81 or data[1] != 0x0A or data[4] != 0x01:
        return None
    if data[5] & 0xA8:  # network-layer message, DNET or SNET present: not a direct reply
        return None
    kind = data[6] >> 4
    if kind == PDU_COMPLEX_ACK:
        if data[6] & 0x08:  # segmented: only bacpypes3 reassembles
            return None
        return kind, data[7], 9 if data[8] == SERVICE_RPM else -1
    if kind in (PDU_ERROR, PDU_REJECT, PDU_ABORT):
        return kind, data[7], 8
    return None


def _tag(data: bytes, i: int) -> tuple[int, bool, int, int, int]:
    """(tag number, context class, lvt, offset of the content, kind: 0 primitive, 1 opening, 2 closing)."""
    b = data[i]
    i += 1
    number = b >> 4
    if number == 0x0F:
        number = data[i]
        i += 1
    context = bool(b & 0x08)
    lvt = b & 0x07
    if context and lvt == 6:
        return number, True, 0, i, 1
    if context and lvt == 7:
        return number, True, 0, i, 2
    if lvt == 5:
        lvt = data[i]
        i += 1
        if lvt == 254:
            lvt = int.from_bytes(data[i:i + 2], "big")
            i += 2
        elif lvt == 255:
            lvt = int.from_bytes(data[i:i + 4], "big")
            i += 4
    return number, context, lvt, i, 0


def _skip_to_close(data: bytes, i: int, number: int) -> int:
    """Offset of the closing tag ``number`` that matches an opening tag ending just before ``i``."""
    depth = 0
    n = len(data)
    while i < n:
        tag, context, lvt, j, kind = _tag(data, i)
        if kind == 1:
            depth += 1
        elif kind == 2:
            if depth == 0:
                if tag != number:
                    raise Malformed(f"closing tag {tag} where {number} was expected")
                return i
            depth -= 1
        elif context or tag != 1:  # an application boolean has its value in the length field, no content
            j += lvt
        i = j
    raise Malformed(f"no closing tag {number}")


def _context_unsigned(data: bytes, i: int, number: int) -> tuple[int, int]:
    tag, context, lvt, j, kind = _tag(data, i)
    if not context or kind or tag != number or not 1 <= lvt <= 4:
        raise Malformed(f"context tag {number} expected at {i}")
    return int.from_bytes(data[j:j + lvt], "big"), j + lvt


# (object type, instance, property, array index) -> (value octets, None) | (None, (error class, error code))
Results = dict[tuple[int, int, int, int | None], tuple[bytes | None, tuple[int, int] | None]]


def decode_ack(data: bytes, start: int) -> Results:
    """The ReadAccessResults of a ReadPropertyMultiple-ACK, values as raw octets (see ``decode_value``).

    The usual shapes (a property identifier below 65536, one primitive value of at most 4 octets) are read
    inline; anything else through the general tag walk."""
    out: Results = {}
    n = len(data)
    i = start
    try:
        while i < n:
            oid, i = _context_unsigned(data, i, 0)
            obj_type, instance = oid >> 22, oid & 0x3FFFFF
            if data[i] != 0x1E:
                raise Malformed(f"listOfResults expected at {i}")
            i += 1
            while (b := data[i]) != 0x1F:
                if b == 0x29:  # context 2, one octet: the property identifier
                    prop, i = data[i + 1], i + 2
                elif b == 0x2A:
                    prop, i = (data[i + 1] << 8) | data[i + 2], i + 3
                else:
                    prop, i = _context_unsigned(data, i, 2)
                index: int | None = None
                b = data[i]
                if b >> 4 == 3 and b & 0x08 and b & 0x07 < 5:
                    index, i = _context_unsigned(data, i, 3)
                    b = data[i]
                if b == 0x4E:  # propertyValue
                    v = data[i + 1]
                    short = not v & 0x08 and v & 0x07 < 5 and v >> 4 != 0x0F
                    end = i + 2 + (0 if v >> 4 == 1 else v & 0x07) if short else -1
                    if end < 0 or data[end] != 0x4F:  # not one short primitive: walk the tags
                        end = _skip_to_close(data, i + 1, 4)
                    out[(obj_type, instance, prop, index)] = (data[i + 1:end], None)
                    i = end + 1
                elif b == 0x5E:  # propertyAccessError: error class, error code (enumerated)
                    i += 1
                    codes = []
                    for _ in range(2):
                        tag, context, lvt, j, kind = _tag(data, i)
                        if context or kind or tag != 9 or not 1 <= lvt <= 4:
                            raise Malformed(f"enumerated expected at {i}")
                        codes.append(int.from_bytes(data[j:j + lvt], "big"))
                        i = j + lvt
                    if data[i] != 0x5F:
                        raise Malformed(f"closing tag 5 expected at {i}")
                    i += 1
                    out[(obj_type, instance, prop, index)] = (None, (codes[0], codes[1]))
                else:
                    raise Malformed(f"readResult expected at {i}")
            i += 1
    except IndexError as exc:
        raise Malformed("truncated") from exc
    return out


# ------------------------------------------------------------------------------------------------- values

@dataclass(frozen=True)
class ValueType:
    """How one point's value is decoded: its kind and bacpypes3's datatype for the property (None: unknown)."""

    kind: int
    datatype: Any


def value_type(datatype: Any, array_index: int | None) -> ValueType:
    """The kind of a property's values from bacpypes3's datatype, as ``read_property_multiple`` resolves it
    (an array's element type, or Unsigned for index 0)."""
    from bacpypes3.basetypes import BinaryPV
    from bacpypes3.constructeddata import Array
    from bacpypes3.primitivedata import (
        Boolean,
        CharacterString,
        Double,
        Enumerated,
        Integer,
        Real,
        Unsigned,
    )

    if datatype is None:
        return ValueType(NONE, None)
    if isinstance(datatype, type) and issubclass(datatype, Array):
        if array_index == 0:
            datatype = Unsigned
        elif array_index is not None:
            datatype = cast(Any, datatype)._subtype
    if not isinstance(datatype, type):
        return ValueType(SLOW, datatype)
    # exactly these classes: bacpypes3's subclasses add limits (Unsigned8, a CharacterString of at least one
    # character) that its decoding enforces, so their values are left to it
    exact = {Real: REAL, Double: DOUBLE, Unsigned: UNSIGNED, Integer: INTEGER, Boolean: BOOLEAN,
             CharacterString: STRING}
    kind = exact.get(datatype)
    if kind is not None:
        return ValueType(kind, datatype)
    if issubclass(datatype, BinaryPV):
        return ValueType(BINARY_PV, datatype)
    if issubclass(datatype, Enumerated):
        return ValueType(ENUM, datatype)
    return ValueType(SLOW, datatype)


_ENUM_VALUES: dict[tuple[Any, int], Value] = {}


def _slow(raw: bytes, vt: ValueType) -> tuple[Value, str | None]:
    """bacpypes3's own decoding of these value octets, as its read_property_multiple does it."""
    from bacpypes3.constructeddata import Any as AnyValue
    from bacpypes3.pdu import PDUData
    from bacpypes3.primitivedata import TagList

    if vt.datatype is None:
        return None, None
    try:
        v = AnyValue(TagList.decode(PDUData(raw))).cast_out(vt.datatype)
    except Exception as exc:  # whatever bacpypes3 raises on a value it cannot decode
        return None, f"undecodable value: {type(exc).__name__}"
    return read_value(v)


def decode_value(raw: bytes, vt: ValueType) -> tuple[Value, str | None]:
    """A point's value from the octets between its opening and closing tag 4: (value, None) or (None, why)."""
    kind = vt.kind
    if kind <= NONE or not raw:
        return _slow(raw, vt)
    b = raw[0]
    if b & 0x08 or b >> 4 != APP_TAG[kind]:  # a context tag, or another type than the property's
        return _slow(raw, vt)
    lvt = b & 0x07
    if kind == BOOLEAN:
        return (lvt == 1, None) if len(raw) == 1 and lvt <= 1 else _slow(raw, vt)
    j = 1
    if lvt == 5:  # extended length (a Double, a longer string)
        if len(raw) < 2 or raw[1] >= 254:
            return _slow(raw, vt)
        lvt, j = raw[1], 2
    if not lvt or len(raw) != j + lvt:  # empty, or more than one value
        return _slow(raw, vt)
    if kind == REAL:
        return (float(f"{_REAL.unpack_from(raw, j)[0]:.7g}"), None) if lvt == 4 else _slow(raw, vt)
    if kind == UNSIGNED:
        return int.from_bytes(raw[j:], "big"), None
    if kind == INTEGER:
        return int.from_bytes(raw[j:], "big", signed=True), None
    if kind == BINARY_PV:
        return int.from_bytes(raw[j:], "big") == 1, None
    if kind == ENUM:
        key = (vt.datatype, int.from_bytes(raw[j:], "big"))
        got = _ENUM_VALUES.get(key)
        if got is None:
            try:
                got = to_value(vt.datatype(key[1]))
            except (ValueError, TypeError):  # a number this enumeration refuses: bacpypes3 says what it is
                return _slow(raw, vt)
            if len(_ENUM_VALUES) < 4096:
                _ENUM_VALUES[key] = got
        return got, None
    if kind == DOUBLE:
        return (float(_DOUBLE.unpack_from(raw, j)[0]), None) if lvt == 8 else _slow(raw, vt)
    if raw[j] == 0:  # STRING, character set 0 (UTF-8); bacpypes3 reads invalid UTF-8 as latin-1
        try:
            return raw[j + 1:].decode("utf-8"), None
        except UnicodeDecodeError:
            pass
    return _slow(raw, vt)
