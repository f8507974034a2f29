"""Compact telemetry encoding (``ea1``) and the JSON messages around it. Specification: docs/mqtt.md.

Why binary: a site sends the same few hundred points all day; names travel once in the retained *birth*
message, data messages carry small per-device aliases. Values scaled by drivers are mostly short decimals
(231.4 V, 12 345.67 kWh): we send them as integer mantissas with a decimal exponent in a varint, which is
exact (no float32 rounding of counters) and 1-4 bytes where Sparkplug B spends 4-8 plus protobuf tags.

Telemetry payload::

    payload = head(u8) varint(seq) gen(u16, big-endian) content
    head    = version(bits 4-7, = 1) | flags(bits 0-3)      flags bit0: content is raw-deflated
    content = varint(base_ts_ms) sample*
    sample  = tag(u8) [varint(alias)] [varint(dt_ms)] value [error]
            | tag(u8) [varint(alias)] [varint(dt_ms)] varint(n << 4 | vtype) value{n}     (tag vtype = 15)
    tag     = quality(bits 0-1) | vtype(bits 2-5) << 2 | has_dt(bit 6) | next_alias(bit 7)

``next_alias`` means alias = previous sample's alias + 1 (the first sample's "previous" is -1), so a poll
cycle of consecutive points spends no byte on aliases: samples are sorted by (time, alias). A *run* (vtype 15)
carries n values of one type for consecutive aliases at one instant with one quality: one tag for a whole
block of registers that changed together.

Values that are exactly a float32 (most Modbus and BACnet REALs) travel as the shortest decimal with the same
float32 value when one with at most 4 decimals exists: 231.39999389648438 arrives as 231.4.

``seq`` is assigned by the outbox when the message is committed and inserted at publish time, so the body
stored on disk (flags, gen, content) never changes. ``gen`` identifies the alias map: a 16-bit hash of the
birth's whole device map (names, units, ...); receivers keep the maps of the last few births.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.model import Quality, Sample, Value

VERSION = 0x01
FLAG_DEFLATE = 0x01
GEN_MASK = 0xFFFF

# value types (4 bits)
V_NULL, V_FALSE, V_TRUE, V_INT = 0, 1, 2, 3
V_DEC1, V_DEC2, V_DEC3, V_DEC4 = 4, 5, 6, 7  # zigzag mantissa, value = m / 10**k
V_F32, V_F64, V_STR = 8, 9, 10
V_RUN = 15  # varint(count << 4 | type), then count values of that type for consecutive aliases

_DEC = {V_DEC1: 10, V_DEC2: 100, V_DEC3: 1000, V_DEC4: 10000}


def put_varint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("varint must be non-negative")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def get_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63) if -(1 << 63) <= n < (1 << 63) else (n << 1 if n >= 0 else ((-n) << 1) - 1)


def unzigzag(z: int) -> int:
    return (z >> 1) ^ -(z & 1)


def _encode_value(out: bytearray, v: Value) -> int:
    """Append the value's bytes, return its vtype."""
    if v is None:
        return V_NULL
    if v is True:
        return V_TRUE
    if v is False:
        return V_FALSE
    if isinstance(v, int):
        put_varint(out, zigzag(v))
        return V_INT
    if isinstance(v, float):
        if not math.isfinite(v):
            out += struct.pack("<d", v)
            return V_F64
        if v.is_integer() and abs(v) < 2**53:
            put_varint(out, zigzag(int(v)))
            return V_INT
        for vt, mul in _DEC.items():
            m = round(v * mul)
            if abs(m) < 2**53 and m / mul == v:
                put_varint(out, zigzag(m))
                return vt
        f32 = struct.pack("<f", v)
        if struct.unpack("<f", f32)[0] == v:
            # A float32 register value (231.39999389648438): send the shortest decimal that is the same
            # float32 (231.4) when it has at most 4 decimals. Lossless at the device's own precision.
            for vt, mul in _DEC.items():
                m = round(v * mul)
                if abs(m) < 2**31 and struct.pack("<f", m / mul) == f32:
                    put_varint(out, zigzag(m))
                    return vt
            out += f32
            return V_F32
        out += struct.pack("<d", v)
        return V_F64
    data = str(v).encode("utf-8")
    put_varint(out, len(data))
    out += data
    return V_STR


def _decode_value(buf: bytes, pos: int, vt: int) -> tuple[Value, int]:
    if vt == V_NULL:
        return None, pos
    if vt == V_FALSE:
        return False, pos
    if vt == V_TRUE:
        return True, pos
    if vt == V_INT:
        z, pos = get_varint(buf, pos)
        return unzigzag(z), pos
    if vt in _DEC:
        z, pos = get_varint(buf, pos)
        return unzigzag(z) / _DEC[vt], pos
    if vt == V_F32:
        if pos + 4 > len(buf):
            raise ValueError("truncated float32")
        return struct.unpack_from("<f", buf, pos)[0], pos + 4
    if vt == V_F64:
        if pos + 8 > len(buf):
            raise ValueError("truncated float64")
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if vt == V_STR:
        n, pos = get_varint(buf, pos)
        if pos + n > len(buf):
            raise ValueError("truncated string")
        return buf[pos:pos + n].decode("utf-8"), pos + n
    raise ValueError(f"unknown value type {vt}")


RUN_MIN = 2  # a run costs its tag and one count/type byte (up to 7 samples): worth it from 2 samples on


def encode_samples(samples: Sequence[Sample], aliases: dict[str, int], gen: int,
                   deflate_min: int = 96) -> bytes:
    """Encode one device's samples into a telemetry body (without version and seq)."""
    ordered = sorted(samples, key=lambda s: (s.ts, aliases[s.point]))
    items = []  # (sample, alias, ms, value type, value bytes)
    for s in ordered:
        vbuf = bytearray()
        vt = _encode_value(vbuf, s.value)
        items.append((s, aliases[s.point], round(s.ts * 1000), vt, bytes(vbuf)))
    content = bytearray()
    base_ms = items[0][2] if items else 0
    put_varint(content, base_ms)
    prev_ms = base_ms
    prev_alias = -1
    i = 0
    while i < len(items):
        s, alias, ms, vt, vbytes = items[i]
        ms = max(ms, prev_ms)
        # a run: consecutive aliases, same instant, same value type and quality, no error text
        n = 1
        if s.quality != Quality.ERROR:
            while i + n < len(items):
                s2, a2, ms2, vt2, _ = items[i + n]
                if a2 != alias + n or max(ms2, prev_ms) != ms or vt2 != vt or s2.quality != s.quality:
                    break
                n += 1
        run = n >= RUN_MIN
        next_alias = alias == prev_alias + 1
        dt = ms - prev_ms
        content.append(int(s.quality) | ((V_RUN if run else vt) << 2) | (0x40 if dt else 0)
                       | (0x80 if next_alias else 0))
        if not next_alias:
            put_varint(content, alias)
        if dt:
            put_varint(content, dt)
        prev_ms = ms
        if run:
            put_varint(content, (n << 4) | vt)  # one byte up to 7 samples
            for k in range(n):
                content += items[i + k][4]
            prev_alias = alias + n - 1
            i += n
            continue
        content += vbytes
        if s.quality == Quality.ERROR:
            err = (s.error or "").encode("utf-8")[:120]
            put_varint(content, len(err))
            content += err
        prev_alias = alias
        i += 1
    flags = 0
    payload = bytes(content)
    if len(payload) >= deflate_min:
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = z.compress(payload) + z.flush()
        if len(packed) < len(payload):
            payload, flags = packed, FLAG_DEFLATE
    return bytes([flags]) + (gen & GEN_MASK).to_bytes(2, "big") + payload


def frame(seq: int, body: bytes) -> bytes:
    """Merge version into the stored flags byte and insert the sequence number."""
    head = bytearray([(VERSION << 4) | (body[0] & 0x0F)])
    put_varint(head, seq)
    return bytes(head) + body[1:]


@dataclass
class Decoded:
    seq: int
    gen: int
    samples: list[tuple[int, float, Value, Quality, str | None]]  # alias, ts, value, quality, error


def decode_telemetry(payload: bytes) -> Decoded:
    """Decode a telemetry payload; ValueError on anything malformed."""
    if not payload or payload[0] >> 4 != VERSION:
        raise ValueError(f"unknown telemetry version {payload[:1]!r}")
    flags = payload[0] & 0x0F
    seq, pos = get_varint(payload, 1)
    if pos + 2 > len(payload):
        raise ValueError("truncated header")
    gen = int.from_bytes(payload[pos:pos + 2], "big")
    content = payload[pos + 2:]
    if flags & FLAG_DEFLATE:
        try:
            content = zlib.decompress(content, -15)
        except zlib.error as exc:
            raise ValueError(f"bad deflate stream: {exc}") from exc
    ts_ms, p = get_varint(content, 0)
    out: list[tuple[int, float, Value, Quality, str | None]] = []
    alias = -1
    while p < len(content):
        tag = content[p]
        p += 1
        if tag & 0x80:
            alias += 1
        else:
            alias, p = get_varint(content, p)
        if tag & 0x40:
            dt, p = get_varint(content, p)
            ts_ms += dt
        vt = (tag >> 2) & 0x0F
        q = Quality(tag & 0x03)
        if vt == V_RUN:
            head, p = get_varint(content, p)
            n, rvt = head >> 4, head & 0x0F
            if n < 1 or n > len(content):
                raise ValueError("bad run")
            if rvt == V_RUN:
                raise ValueError("nested run")
            for k in range(n):
                value, p = _decode_value(content, p, rvt)
                out.append((alias + k, ts_ms / 1000.0, value, q, None))
            alias += n - 1
            continue
        value, p = _decode_value(content, p, vt)
        err = None
        if q == Quality.ERROR:
            n, p = get_varint(content, p)
            err = content[p:p + n].decode("utf-8", "replace")
            p += n
        out.append((alias, ts_ms / 1000.0, value, q, err))
    return Decoded(seq, gen, out)


# -------------------------------------------------------------------------------------------- JSON side


def dumps(obj: Any) -> bytes:
    """Strict JSON (RFC 8259) for everything the agent publishes: a non-finite float (NaN, ±Infinity, which
    Python would write as bare ``NaN``) becomes ``null``; other non-JSON values become strings."""
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False)
    return text.encode("utf-8")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def with_seq(seq: int, body: bytes) -> bytes:
    """Insert ``"seq":N`` as the first member of a stored JSON object body."""
    if body[:1] != b"{":
        raise ValueError("JSON body must be an object")
    rest = body[1:]
    return b'{"seq":%d%s%s' % (seq, b"," if rest[:1] != b"}" else b"", rest)


def birth_gen(devices: Any) -> int:
    """A stable 16-bit id of a birth's whole device map (aliases, names, units, writable flags, types, labels):
    two births with the same ``gen`` carry the same map, so a receiver keeping maps by ``gen`` keeps the right
    one whichever it saw last."""
    canon = json.dumps(devices, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(canon.encode("utf-8")).digest()[:2], "big")
