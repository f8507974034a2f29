"""The driver contract.

A driver instance serves one device. Building it does no I/O (config errors only); ``start()`` does the I/O
and may be called again after ``stop()`` when the supervisor restarts the device. Failures are raised as
``agent.errors.DriverError`` subclasses, chained to the library exception. Per-point problems (one register
refused) are returned as ERROR-quality samples, not raised: they must not blank the other points.

Polling is driven by the supervisor (interval, jitter, no overlapping cycles, cycle timeout); drivers that
can follow changes (BACnet COV, ONVIF events) also implement ``follow()``, which runs beside polling.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from agent.contract.writes import parse_generic
from agent.errors import DriverUnavailable, WriteRefused
from agent.model import Event, Sample, Value

if TYPE_CHECKING:
    from agent.contract.device import DeviceConfig
    from agent.contract.points import PointBase

T = TypeVar("T")


class Sink(Protocol):
    """Where drivers push what they follow (COV notifications, events)."""

    def samples(self, device: str, samples: Sequence[Sample]) -> None: ...

    def event(self, event: Event) -> None: ...

    def points_changed(self, device: str) -> None:
        """The driver learned point metadata at start (e.g. units read from the device)."""

    def picture(self, device: str, ref: str, jpeg: bytes, retain: bool = False) -> None:
        """A camera picture, published on its own topic; ``ref`` is the id of the event that asked for it.
        ``retain``: also kept by the broker as the camera's last picture (a fixed topic, docs/mqtt.md)."""


class DriverContext:
    """Services shared by all drivers of one agent: per-bus shared objects, agent statistics, paths."""

    def __init__(self, site_id: str, state_dir: Path, stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.site_id = site_id
        self.state_dir = state_dir
        self._stats = stats or (lambda: {})
        self._buses: dict[str, Any] = {}

    def bus(self, key: str, factory: Callable[[], T]) -> T:
        """The one shared object for a physical bus (serial line, TCP endpoint), created on first use.

        Devices on the same RS-485 line or behind the same gateway get the same object, hence one lock and
        one queue: polls and writes of all of them are serialised there.
        """
        obj = self._buses.get(key)
        if obj is None:
            obj = self._buses[key] = factory()
        return obj

    def buses(self) -> dict[str, Any]:
        return dict(self._buses)

    def stats(self) -> dict[str, Any]:
        """Agent statistics (outbox depth, bytes, drops) for the ``system`` driver."""
        return self._stats()


class Driver(abc.ABC):
    """Base class of every driver. Subclasses set nothing up in ``__init__`` beyond parsing config."""

    # Longest wait before a failed device is tried again (None: the supervisor's default). A driver whose
    # device must be followed again quickly once it answers (camera events) sets a short one.
    backoff_max: float | None = None

    def __init__(self, device: DeviceConfig, ctx: DriverContext) -> None:
        self.device = device
        self.ctx = ctx

    @property
    def name(self) -> str:
        return self.device.name

    async def start(self) -> None:  # noqa: B027  (optional hook)
        """Open connections, read device capabilities. Raise DriverError when the device is unreachable."""

    async def stop(self) -> None:  # noqa: B027  (optional hook)
        """Release connections. Must be quick and must not raise."""

    def probe_now(self) -> None:  # noqa: B027  (optional hook)
        """The supervisor probes the device now (its backoff ended, or ``edge-agent retry``): forget any
        fail-fast state (a circuit breaker) so that the next read really asks the device."""

    @abc.abstractmethod
    async def read(self, points: Sequence[PointBase]) -> list[Sample]:
        """Read these points once. Raise DriverError only when the whole device failed."""

    async def write(self, point: PointBase, value: Value) -> Value:
        """Write a value already checked by ``check_write``; return the value as written. Drivers check it
        again with ``checked`` before any I/O: no caller can put an unchecked value on the wire."""
        raise WriteRefused(f"driver {self.device.driver!r} does not support writes")

    def checked(self, point: PointBase, value: Value) -> Value:
        """The value to send for this point (the point type's checks), or WriteRefused."""
        if not point.writable:
            raise WriteRefused(f"{self.name}.{point.name} is read-only")
        try:
            return cast(Value, point.check_write(value))
        except ValueError as exc:
            raise WriteRefused(f"{self.name}.{point.name}: {exc}") from None

    async def follow(self, sink: Sink) -> None:
        """Follow changes (COV, events) until cancelled. Default: nothing to follow."""
        return None

    def polled_points(self) -> list[PointBase]:
        """Points the supervisor polls; drivers that follow some points by subscription may leave them out."""
        return self.device.enabled_points

    def plan(self) -> list[dict[str, Any]] | None:
        """The requests poll cycles make, for ``edge-agent plan`` (None: the driver has no plan). Each row has
        ``cycle``: ``fast`` (every interval: fast points) or ``slow`` (every slow_interval: fast and slow points
        read together, as the supervisor asks for them when both are due); ``cycles`` gives the point sets."""
        return None

    def cycles(self) -> list[tuple[str, list[PointBase]]]:
        """The point sets of the two kinds of cycle, as the supervisor passes them to ``read``."""
        polled = self.polled_points()
        fast = [p for p in polled if p.poll == "fast"]
        slow = [p for p in polled if p.poll == "slow"]
        out: list[tuple[str, list[PointBase]]] = []
        if fast:
            out.append(("fast", fast))
        if slow:
            out.append(("slow", fast + slow))
        return out


def driver_class(device: DeviceConfig) -> type[Driver]:
    """The runtime class of a device's driver, imported now; DriverUnavailable if it cannot be used."""
    cls = device.spec.load_class()
    if not issubclass(cls, Driver):
        raise DriverUnavailable(f"driver {device.driver!r} is unavailable: {cls.__name__} is not a Driver")
    return cls


def coerce_cli_value(text: str) -> Value:
    """Text typed for a point of unknown type: true/false, on/off, null, a number, else the text itself."""
    return parse_generic(text)


def check_write(device: DeviceConfig, point_name: str, value: Value) -> PointBase:
    """Refuse, before any I/O, a write to an unknown or read-only point, or of a value the point cannot take
    (wrong kind, not finite, outside the type's range or the profile's min/max)."""
    return prepare_write(device, point_name, value)[0]


def find_point(device: DeviceConfig, point_name: str) -> PointBase:
    point = next((p for p in device.points if p.name == point_name), None)
    if point is None:
        raise WriteRefused(f"{device.name}: no point named {point_name!r}")
    return point


def prepare_write(device: DeviceConfig, point_name: str, value: Value, *,
                  text: bool = False) -> tuple[PointBase, Value]:
    """The point and the value to send. ``text``: ``value`` is what a person typed, read by the point's type
    (``actve`` for a binary point is refused, ``21.5`` for an analog one is a number). WriteRefused names
    the point and the reason; nothing is sent."""
    point = find_point(device, point_name)
    if not point.writable:
        raise WriteRefused(f"{device.name}.{point_name} is read-only")
    try:
        if text and isinstance(value, str):
            value = point.parse_write(value)
        return point, point.check_write(value)
    except ValueError as exc:
        raise WriteRefused(f"{device.name}.{point_name}: {exc}") from None
