"""Bytes per sample of edge-agent's telemetry encoding on a generated 3-phase meter trace, against
(1) one JSON message per point (ThingsBoard-gateway style, the baseline the issue names) and
(2) Sparkplug B alias-only data messages (protobuf, encoded here field by field per the Tahu schema),
all three fed the same samples after the same report-by-exception, measured in the same run.

    python bench/encoding_size.py [--hours 24] [--interval 10] [--seed 1]

Payload bytes only (MQTT headers and topics excluded; the topic costs are printed separately).
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.core.pipeline import changed_enough
from agent.model import Quality, Sample
from agent.uplink.codec import encode_samples, frame

# name, unit, deadband (abs), generator kind
SEQ0 = 1_795_884_000_000_000  # a sequence space starts above the clock in µs (docs/mqtt.md): 8-byte varints

POINTS = [
    ("v_l1_n", "V", 0.5), ("v_l2_n", "V", 0.5), ("v_l3_n", "V", 0.5),
    ("v_l1_l2", "V", 1.0), ("v_l2_l3", "V", 1.0), ("v_l3_l1", "V", 1.0),
    ("i_l1", "A", 0.1), ("i_l2", "A", 0.1), ("i_l3", "A", 0.1),
    ("p_l1", "kW", 0.05), ("p_l2", "kW", 0.05), ("p_l3", "kW", 0.05), ("p_total", "kW", 0.1),
    ("q_total", "kvar", 0.1), ("s_total", "kVA", 0.1), ("pf_total", "", 0.02), ("freq", "Hz", 0.05),
    ("e_import", "kWh", 0.1), ("e_export", "kWh", 0.1), ("e_reactive", "kvarh", 0.1),
]


def f32(x: float) -> float:
    """What a driver decodes from a float32 register pair."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


# Integer-register meters (Carlo Gavazzi EM24/EM340, Socomec Countis: INT32 with a fixed weight) report
# V x10, A x1000, W x10 (here kW x10000), PF x1000, Hz x10, kWh x10: their values are short decimals.
INT_WEIGHT = {"V": 10, "A": 1000, "kW": 10000, "kvar": 10000, "kVA": 10000, "": 1000, "Hz": 10, "kWh": 10,
              "kvarh": 10}


def quantise(name: str, x: float) -> float:
    unit = next(u for n, u, _ in POINTS if n == name)
    w = INT_WEIGHT[unit]
    return round(x * w) / w


def trace(hours: float, interval: float, seed: int, meter: str = "float32") -> list[list[Sample]]:
    """One list of 20 samples per poll: a small public building (school), daily load shape, noise."""
    rnd = random.Random(seed)
    t0 = 1_795_000_000.0
    e_imp, e_exp, e_rea = 182_345.6, 12.3, 40_210.0
    polls = []
    for k in range(int(hours * 3600 / interval)):
        ts = t0 + k * interval
        hour = (ts / 3600) % 24
        occupied = 7.5 <= hour <= 18.5
        base = 18.0 if occupied else 3.5
        v = [230.5 + rnd.gauss(0, 0.6) for _ in range(3)]
        i = [max(0.0, (base + rnd.gauss(0, base * 0.08)) * 1000 / 3 / 230) for _ in range(3)]
        pf = min(0.99, 0.93 + rnd.gauss(0, 0.01))
        p = [v[n] * i[n] * pf / 1000 for n in range(3)]
        pt = sum(p)
        e_imp += pt * interval / 3600
        e_rea += pt * 0.35 * interval / 3600
        values = [*v, *(x * 1.7320508 for x in v), *i, *p, pt, pt * 0.35, pt / pf, pf,
                  50.0 + rnd.gauss(0, 0.01), e_imp, e_exp, e_rea]
        polls.append([Sample("meter", POINTS[n][0], f32(val) if meter == "float32" else quantise(POINTS[n][0], val),
                             Quality.GOOD, ts) for n, val in enumerate(values)])
    return polls


def rbe(polls: list[list[Sample]], silence: float = 900.0) -> list[list[Sample]]:
    last: dict[str, tuple[float, float]] = {}
    db = {n: (d, False) for n, _, d in POINTS}
    out = []
    for poll in polls:
        keep = []
        for s in poll:
            prev = last.get(s.point)
            if prev is None or changed_enough(prev[0], s.value, db[s.point]) or s.ts - prev[1] >= silence:
                last[s.point] = (s.value, s.ts)  # type: ignore[assignment]
                keep.append(s)
        out.append(keep)
    return out


# --- minimal protobuf for Sparkplug B Payload / Metric (field numbers from sparkplug_b.proto) ---

def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def sparkplug_payload(samples: list[Sample], aliases: dict[str, int], seq: int) -> bytes:
    body = bytearray()
    body += _key(1, 0) + _varint(int(samples[0].ts * 1000) if samples else 0)  # Payload.timestamp
    for s in samples:
        m = bytearray()
        m += _key(2, 0) + _varint(aliases[s.point])  # Metric.alias
        if s.point.startswith("e_"):  # counters need Double to keep kWh resolution
            m += _key(4, 0) + _varint(10)  # datatype Double
            m += _key(13, 1) + struct.pack("<d", float(s.value))  # type: ignore[arg-type]
        else:
            m += _key(4, 0) + _varint(9)  # datatype Float
            m += _key(12, 5) + struct.pack("<f", float(s.value))  # type: ignore[arg-type]
        body += _key(2, 2) + _varint(len(m)) + m  # Payload.metrics
    body += _key(3, 0) + _varint(seq % 256)  # Payload.seq
    return bytes(body)


def json_per_point(s: Sample) -> bytes:
    return json.dumps({"ts": int(s.ts * 1000), "values": {s.point: s.value}}, separators=(",", ":")).encode()


def run(polls: list[list[Sample]], interval: float) -> dict[str, float]:
    reported = rbe(polls)
    n_polled = sum(len(p) for p in polls)
    n_rep = sum(len(p) for p in reported)
    aliases = {n: i for i, (n, _, _) in enumerate(POINTS)}
    gen = 0xBEEF
    t = time.perf_counter()
    ours = sum(len(frame(SEQ0 + k, encode_samples(p, aliases, gen))) for k, p in enumerate(reported) if p)
    t_ours = time.perf_counter() - t
    spb = sum(len(sparkplug_payload(p, aliases, k)) for k, p in enumerate(reported) if p)
    js = sum(len(json_per_point(s)) for p in reported for s in p)
    js_all = sum(len(json_per_point(s)) for p in polls for s in p)
    per_min = max(1, int(60 / interval))  # what batch_interval: 60s costs
    batched = sum(len(frame(SEQ0 + k, encode_samples([s for p in reported[k:k + per_min] for s in p], aliases, gen)))
                  for k in range(0, len(reported), per_min) if any(reported[k:k + per_min]))
    print(f"  {n_polled} samples polled, {n_rep} reported after report-by-exception ({n_rep / n_polled:.1%})")
    print(f"  {'encoding':<44}{'bytes':>10}{'B/reported':>12}{'B/polled':>10}{'vs ea1':>9}")
    for name, b in (("JSON, one message per point, no RBE", js_all), ("JSON, one message per point, with RBE", js),
                    ("Sparkplug B alias-only, one msg per poll", spb), ("edge-agent ea1, one msg per poll", ours),
                    ("edge-agent ea1, one msg per minute", batched)):
        print(f"  {name:<44}{b:>10}{b / n_rep:>12.2f}{b / n_polled:>10.2f}{b / ours:>8.2f}x")
    print(f"  ratio ea1/Sparkplug B per sample: {ours / spb:.3f} per poll, {batched / spb:.3f} batched per minute"
          f"  (goal <= 0.5)")
    print(f"  ratio ea1/JSON-per-point: {ours / js:.3f} (same RBE), {ours / js_all:.4f} (JSON without RBE)")
    print(f"  encode speed: {n_rep / t_ours:,.0f} reported samples/s on one core")
    return {"per_poll": ours / spb, "batched": batched / spb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--interval", type=float, default=10.0, help="poll interval, seconds")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"trace: {args.hours:g} h of a 20-point 3-phase meter of a school, polled every {args.interval:g} s")
    for meter, label in (("float32", "float32 registers (Schneider iEM3000 style: noisy floats)"),
                         ("int", "scaled integer registers (Carlo Gavazzi EM24 / Socomec style)")):
        print(f"\n{label}:")
        run(trace(args.hours, args.interval, args.seed, meter), args.interval)
    print(f"\npayload bytes only; each MQTT message also carries its topic, e.g. "
          f"{len('ea/v1/site-0001/t/meter')} B for ea/v1/site-0001/t/meter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
