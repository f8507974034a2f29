"""Report-by-exception, deadband, heartbeat and batching, between drivers and the outbox.

Every sample updates the point's live state (what ``status`` shows). A sample is *reported* upstream only
when it matters: first value, quality change, change beyond the deadband (absolute or % of the last reported
value), any change of a non-numeric value, or when the point has been silent for ``max_silence``. Reported
samples are gathered per device and turned into one telemetry message per device per flush.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.contract.device import DeviceConfig
from agent.contract.points import PointBase
from agent.model import PointState, Quality, Sample, Value
from agent.uplink.codec import birth_gen, encode_samples

MAX_SAMPLES_PER_MESSAGE = 400


@dataclass(slots=True)
class _Reported:
    value: Value
    quality: Quality
    at: float  # monotonic time of the last report


def changed_enough(prev: Value, new: Value, deadband: tuple[float, bool] | None) -> bool:
    """True if ``new`` differs from the last reported ``prev`` by more than the deadband."""
    if isinstance(prev, bool) or isinstance(new, bool) or not isinstance(prev, int | float) \
            or not isinstance(new, int | float):
        return prev != new
    if math.isnan(prev) or math.isnan(new):
        return not (math.isnan(prev) and math.isnan(new))
    if deadband is None:
        return prev != new
    amount, percent = deadband
    limit = abs(prev) * amount / 100.0 if percent else amount
    if limit == 0:
        return prev != new
    return abs(new - prev) >= limit


@dataclass
class DeviceChannel:
    """Per-device pipeline state: aliases, last reported values, pending batch, live point states."""

    device: DeviceConfig
    default_silence: float
    aliases: dict[str, int] = field(init=False)
    points: dict[str, PointBase] = field(init=False)
    reported: dict[str, _Reported] = field(default_factory=dict)
    pending: list[Sample] = field(default_factory=list)
    live: dict[str, PointState] = field(default_factory=dict)
    rules: dict[str, tuple[float, tuple[float, bool] | None]] = field(init=False)

    def __post_init__(self) -> None:
        self.points = {p.name: p for p in self.device.points}
        self.aliases = {p.name: i for i, p in enumerate(self.device.points)}
        self._rules()
        for p in self.device.points:
            if p.enabled:
                self.live[p.name] = PointState(unit=p.unit)

    def _rules(self) -> None:
        """Per point, what ``offer`` needs: (max silence, deadband), looked up once instead of per sample."""
        self.rules = {name: (p.max_silence if p.max_silence is not None else self.default_silence, p.deadband)
                      for name, p in self.points.items()}

    def offer(self, s: Sample, now_mono: float) -> bool:
        """Update live state; queue the sample if it should be reported. Returns True if queued."""
        return self.offer_all((s,), now_mono) == 1

    def offer_all(self, samples: Sequence[Sample], now_mono: float) -> int:
        """``offer`` for every sample of a cycle, in one loop (this runs for every point of every poll);
        returns how many were queued."""
        rules, live, reported, pending = self.rules, self.live, self.reported, self.pending
        error, good = Quality.ERROR, Quality.GOOD
        n = 0
        for s in samples:
            name = s.point
            rule = rules.get(name)
            if rule is None:
                continue
            st = live.get(name)
            if st is None:
                st = live[name] = PointState(unit=self.points[name].unit)
            quality, value, ts = s.quality, s.value, s.ts
            st.ts = ts
            st.quality = quality
            if quality == error:
                st.last_error, st.last_error_ts = s.error, ts
                if value is not None:
                    st.value = value
            else:
                st.value = value
                if quality == good:
                    st.last_good = ts
            prev = reported.get(name)
            if prev is not None and prev.quality == quality:
                silence = rule[0]
                # ``value is prev.value``: a driver that saw unchanged raw data hands back the very object it
                # reported, which never differs from itself: no change test needed
                if (quality == error or value is prev.value or not changed_enough(prev.value, value, rule[1])) \
                        and not (silence > 0 and now_mono - prev.at >= silence):
                    continue
                prev.value, prev.at = value, now_mono
            else:
                reported[name] = _Reported(value, quality, now_mono)
            pending.append(s)
            n += 1
        return n

    def forget(self) -> None:
        """Next value of every point is reported again (used after a rebirth)."""
        self.reported.clear()

    def refresh(self) -> bool:
        """Take the device's current point objects (a driver may fill in units at start); True if a unit
        changed, i.e. the birth must be published again."""
        changed = False
        for p in self.device.points:
            old = self.points.get(p.name)
            if old is not None and old.unit != p.unit:
                changed = True
            self.points[p.name] = p
            st = self.live.get(p.name)
            if st is not None:
                st.unit = p.unit
        self._rules()
        return changed


class Pipeline:
    """Holds one channel per device; ``drain()`` returns encoded telemetry bodies ready for the outbox."""

    def __init__(self, devices: Sequence[DeviceConfig], default_silence: float) -> None:
        self.channels: dict[str, DeviceChannel] = {d.name: DeviceChannel(d, default_silence) for d in devices}
        self.gen = birth_gen(self._devices())
        self.offered = 0
        self.reported = 0

    def offer(self, device: str, samples: Sequence[Sample]) -> int:
        ch = self.channels.get(device)
        if ch is None:
            return 0
        n = ch.offer_all(samples, time.monotonic())
        self.offered += len(samples)
        self.reported += n
        return n

    def pending_count(self) -> int:
        return sum(len(c.pending) for c in self.channels.values())

    def drain(self) -> list[tuple[str, bytes, float]]:
        """Take all pending samples: [(device, telemetry body, oldest ts)], at most 400 samples a message."""
        out = []
        for name, ch in self.channels.items():
            while ch.pending:
                chunk = ch.pending[:MAX_SAMPLES_PER_MESSAGE]
                del ch.pending[:MAX_SAMPLES_PER_MESSAGE]
                out.append((name, encode_samples(chunk, ch.aliases, self.gen), min(s.ts for s in chunk)))
        return out

    def forget(self) -> None:
        for ch in self.channels.values():
            ch.forget()

    def regen(self) -> bool:
        """Recompute ``gen`` after a channel's points changed (units learned from a device); True if it changed.
        Telemetry drained from now on carries the new generation."""
        old, self.gen = self.gen, birth_gen(self._devices())
        return self.gen != old

    def birth(self) -> dict[str, object]:
        """The alias map: what a receiver needs to decode telemetry of generation ``gen``."""
        return {"gen": self.gen, "devices": self._devices()}

    def _devices(self) -> dict[str, object]:
        devices: dict[str, object] = {}
        for name, ch in self.channels.items():
            d = ch.device
            devices[name] = {
                "type": d.type,
                "driver": d.driver,
                "labels": d.model.labels,
                "points": [
                    {k: v for k, v in (("a", ch.aliases[p.name]), ("n", p.name), ("u", p.unit),
                                       ("w", True if p.writable else None)) if v is not None}
                    for p in d.points
                ],
            }
        return devices
