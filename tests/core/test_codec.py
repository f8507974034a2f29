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


def test_runs_of_consecutive_points_round_trip_and_save_bytes() -> None:
    """A poll of consecutive float32 points travels as one run: one tag for all of them."""
    import struct

    vals = [struct.unpack("<f", struct.pack("<f", 229.42604 + i * 1.37))[0] for i in range(7)]
    samples = [Sample("m", f"p{i}", v, Quality.GOOD, T0) for i, v in enumerate(vals)]
    aliases = {f"p{i}": i for i in range(7)}
    payload = frame(5, encode_samples(samples, aliases, 9))
    got = decode_telemetry(payload).samples
    assert [(a, v, q) for a, _, v, q, _ in got] == [(i, vals[i], Quality.GOOD) for i in range(7)]
    # header 1+1+2+6, one run tag, one count/type byte, 7 x 4 bytes of float32
    assert len(payload) == 10 + 2 + 7 * 4, len(payload)


def test_random_batches_round_trip() -> None:
    """Mixed runs, gaps, qualities, types and instants: decode(encode(x)) == x, deterministic seed."""
    import random
    import struct

    rnd = random.Random(7)
    for _ in range(300):
        n_points = rnd.randint(1, 40)
        aliases = {f"p{i}": i for i in range(n_points)}
        samples = []
        for _k in range(rnd.randint(1, 60)):
            alias = rnd.randrange(n_points)
            kind = rnd.random()
            q = Quality.GOOD if kind < 0.8 else Quality.STALE if kind < 0.9 else Quality.ERROR
            v: object = rnd.choice([
                rnd.randint(-10**6, 10**6), round(rnd.uniform(-1000, 1000), rnd.randint(0, 4)),
                struct.unpack("<f", struct.pack("<f", rnd.uniform(-1e4, 1e4)))[0], rnd.random(),
                rnd.random() < 0.5, None, "txt"])
            if q == Quality.ERROR:
                v = None
            samples.append(Sample("m", f"p{alias}", v, q, T0 + rnd.choice([0, 0, 0, 0.001, 1.5, 10]),  # type: ignore[arg-type]
                                  "timeout" if q == Quality.ERROR else None))
        got = decode_telemetry(frame(1, encode_samples(samples, aliases, 3))).samples
        want = sorted(((aliases[s.point], round(s.ts * 1000), s.value, s.quality) for s in samples),
                      key=lambda t: (t[1], t[0]))
        have = [(a, round(ts * 1000), v, q) for a, ts, v, q, _ in got]
        assert len(have) == len(want)
        for (a1, t1, v1, q1), (a2, t2, v2, q2) in zip(have, want, strict=True):
            assert (a1, t1, q1) == (a2, t2, q2)
            is_f32 = isinstance(v2, float) and struct.unpack("<f", struct.pack("<f", v2))[0] == v2
            if is_f32 and isinstance(v1, float):  # float32 values may travel as their shortest decimal
                assert struct.pack("<f", v1) == struct.pack("<f", v2)
            elif isinstance(v2, float):
                assert v1 == v2  # float64 values travel exactly
            else:
                assert v1 == v2 and type(v1) is type(v2)
