"""The ea1 telemetry encoding: round trips, exactness, sizes, malformed input."""

from __future__ import annotations

import math

import pytest

from agent.model import Quality, Sample
from agent.uplink.codec import decode_telemetry, encode_samples, frame, get_varint, put_varint, with_seq

T0 = 1_795_000_000.123


@pytest.mark.parametrize(
    "value",
    [0, 1, -1, 300, -70000, 2**40, 231.4, 12345.67, -0.5, 0.001, 49.9999, 1e-9, 3.4e38, math.pi, True, False,
     None, "", "état: marche", 0.1 + 0.2],
)
def test_value_round_trip(value: object) -> None:
    s = Sample("m", "p", value, Quality.GOOD, T0)  # type: ignore[arg-type]
    d = decode_telemetry(frame(7, encode_samples([s], {"p": 3}, 42)))
    assert d.seq == 7 and d.gen == 42
    ((alias, ts, got, q, err),) = d.samples
    assert alias == 3 and q == Quality.GOOD and err is None
    assert abs(ts - T0) < 0.001
    assert got == value and (type(got) is type(value) or isinstance(value, float))


def test_qualities_errors_and_time_offsets() -> None:
    samples = [
        Sample("m", "a", 1.5, Quality.GOOD, T0),
        Sample("m", "b", 7.0, Quality.STALE, T0 + 2.5, "timeout"),
        Sample("m", "c", None, Quality.ERROR, T0 + 0.25, "exception 2 illegal data address"),
    ]
    d = decode_telemetry(frame(1, encode_samples(samples, {"a": 0, "b": 1, "c": 2}, 1)))
    by_alias = {s[0]: s for s in d.samples}
    assert by_alias[1][2:4] == (7, Quality.STALE)
    assert by_alias[2][2:] == (None, Quality.ERROR, "exception 2 illegal data address")
    assert abs(by_alias[1][1] - (T0 + 2.5)) < 0.002 and abs(by_alias[2][1] - (T0 + 0.25)) < 0.002


def test_meter_sample_is_small() -> None:
    """20 typical meter values at one instant: well under Sparkplug B's 189 B alias-only message."""
    vals = [230.1, 231.4, 229.8, 12.34, 11.9, 12.01, 2.841, 2.75, 2.77, 8.36, 0.97, 0.96, 0.98, 49.98,
            123456.7, 2345.6, 400.2, 399.8, 401.1, 0.0]
    samples = [Sample("m", f"p{i}", v, Quality.GOOD, T0) for i, v in enumerate(vals)]
    body = encode_samples(samples, {f"p{i}": i for i in range(20)}, 123456)
    payload = frame(1000, body)
    assert len(payload) <= 75, len(payload)  # Sparkplug B: 189 B
    assert [s[2] for s in sorted(decode_telemetry(payload).samples)] == vals


def test_deflate_used_only_when_smaller() -> None:
    samples = [Sample("m", f"p{i % 5}", float(i % 5), Quality.GOOD, T0 + i) for i in range(300)]
    body = encode_samples(samples, {f"p{i}": i for i in range(5)}, 1)
    assert body[0] & 1, "a repetitive batch should be deflated"
    assert len(decode_telemetry(frame(1, body)).samples) == 300


@pytest.mark.parametrize("payload", [b"", b"\x20\x01", b"\x10\x05", b"\x10\x05\x01", b"\x10\x05\x00\x01\x80",
                                     b"\x11\x05\x00\x01\xff\xff", b"\x10\x05\x00\x01\x00\x3f",
                                     b"\x10\x05\x00\x01\x00\xbc"])
def test_malformed_payloads_raise_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_telemetry(payload)


def test_varint_and_seq_splice() -> None:
    for n in (0, 1, 127, 128, 300, 2**31, 2**63):
        buf = bytearray()
        put_varint(buf, n)
        assert get_varint(bytes(buf), 0) == (n, len(buf))
    assert with_seq(12, b'{"a":1}') == b'{"seq":12,"a":1}'
    assert with_seq(3, b"{}") == b'{"seq":3}'


def test_float32_register_values_travel_as_short_decimals() -> None:
    import struct

    raw = struct.unpack("<f", struct.pack("<f", 231.4))[0]  # what a driver decodes from two registers
    assert raw != 231.4
    payload = frame(1, encode_samples([Sample("m", "v", raw, Quality.GOOD, T0)], {"v": 0}, 1))
    ((_, _, got, _, _),) = decode_telemetry(payload).samples
    assert got == 231.4 and struct.pack("<f", got) == struct.pack("<f", raw)
    assert len(payload) < 20
