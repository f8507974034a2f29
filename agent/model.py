"""The few types that cross from drivers to the core."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

Value = float | int | bool | str | None


class Quality(enum.IntEnum):
    """Quality carried with each sample. Values are part of the wire format (docs/mqtt.md)."""

    GOOD = 0
    STALE = 1  # last good value, but the device has not answered for longer than the point's interval
    ERROR = 2  # the read failed; ``error`` says why, value is None


@dataclass(slots=True)
class Sample:
    """One value of one point of one device."""

    device: str
    point: str
    value: Value
    quality: Quality = Quality.GOOD
    ts: float = field(default_factory=time.time)
    error: str | None = None  # short reason when quality is ERROR (e.g. "timeout", "exception 2")


class Severity(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ALARM = 2


@dataclass(slots=True)
class Event:
    """Something that happened: availability change, motion, door forced, alarm. Events are never dropped
    before telemetry."""

    source: str  # device name, or "agent"
    kind: str  # e.g. "availability", "motion", "door", "config"
    data: dict[str, Any] = field(default_factory=dict)
    severity: Severity = Severity.INFO
    ts: float = field(default_factory=time.time)


@dataclass(slots=True)
class PointState:
    """What the agent knows of one point, for ``status`` and the field tech."""

    value: Value = None
    quality: Quality = Quality.ERROR
    ts: float | None = None  # time of the last sample of any quality
    last_good: float | None = None
    last_error: str | None = None
    last_error_ts: float | None = None
    unit: str | None = None


@dataclass(slots=True)
class DeviceHealth:
    """Availability of one device, tracked by the supervisor."""

    available: bool = False
    state: str = "starting"  # starting | online | failing | offline | backoff | disabled
    last_ok: float | None = None
    last_error: str | None = None
    last_error_ts: float | None = None
    consecutive_failures: int = 0
    restarts: int = 0
    cycle_ms: float | None = None
    next_probe: float | None = None  # monotonic time of the next attempt while in backoff
    last_progress: float = field(default_factory=time.monotonic)
    points: dict[str, PointState] = field(default_factory=dict)
