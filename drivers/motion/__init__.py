"""``motion`` driver: on-box motion pre-filter over a camera's stream (or a video file).

This module holds the configuration schema only (pydantic): it never imports OpenCV or numpy, so validating a
profile stays cheap. ``analysis.py`` is the filter (a pure function of frames), ``events.py`` turns its
per-frame verdicts into motion start/update/end events, ``reader.py`` decodes the stream off the event loop.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.contract.points import PointBase
from agent.contract.registry import DriverSpec
from agent.types import PositiveDuration
from drivers.onvif import OnvifConnection

Polygon = list[tuple[float, float]]


def _check_polygon(poly: Polygon) -> Polygon:
    if len(poly) < 3:
        raise ValueError("a polygon needs at least 3 points")
    for x, y in poly:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"polygon point ({x}, {y}) is outside 0..1 (coordinates are shares of width, height)")
    return poly


class Zone(BaseModel):
    """A named area of the picture with its own sensitivity; events name the zones they touched."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=40, description="zone name, reported in motion events")
    polygon: Polygon = Field(description="[[x, y], ...] in shares of width and height (0..1), at least 3 points")
    sensitivity: float = Field(
        1.0, gt=0, le=4, description="scales detection in the zone: 2 halves the minimum object area, 0.5 doubles it"
    )

    _poly = field_validator("polygon")(_check_polygon)


class MotionParams(BaseModel):
    """The filter's tuning; the defaults suit a 640x360 sub stream of a fixed camera."""

    model_config = ConfigDict(extra="forbid")
    height: int = Field(120, ge=60, le=240, description="analysis height in pixels (the frame is downscaled)")
    threshold: float = Field(
        16.0, ge=2, le=120, description="gray-level difference from the background that counts as changed"
    )
    noise_factor: float = Field(
        4.0, ge=0, le=20, description="threshold is at least this many times the frame's measured noise"
    )
    min_area: float = Field(
        0.001, gt=0, lt=0.5, description="smallest moving object, as a share of the picture (0.001 = 0.1 %)"
    )
    alpha: float = Field(0.05, gt=0, le=0.5, description="background learning rate per analysed frame")
    global_gate: float = Field(
        0.3, gt=0, le=1, description="share of the picture changing at once that is taken as lighting, IR or "
        "camera movement: the background is relearned and nothing is reported"
    )
    flicker: float = Field(
        0.3, gt=0, le=1, description="pixels changed more often than this share of recent frames (foliage, water) "
        "are ignored"
    )
    shadow: float = Field(
        0.85, gt=0, le=1, description="a changed area whose texture still matches the background this well "
        "(normalised correlation) is a shadow or a light, not an object"
    )
    persistence: tuple[int, int] = Field(
        (3, 5), description="[k, n]: motion must be seen in k of the last n analysed frames to start an event"
    )
    masks: list[Polygon] = Field(
        default_factory=list, description="areas never analysed (clocks, roads, trees): polygons in shares 0..1"
    )
    zones: list[Zone] = Field(default_factory=list, description="named areas with their own sensitivity")

    @field_validator("masks")
    @classmethod
    def _masks(cls, v: list[Polygon]) -> list[Polygon]:
        return [_check_polygon(p) for p in v]

    @field_validator("persistence")
    @classmethod
    def _kn(cls, v: tuple[int, int]) -> tuple[int, int]:
        k, n = v
        if not 1 <= k <= n <= 30:
            raise ValueError("persistence is [k, n] with 1 <= k <= n <= 30")
        return v


class MotionEvents(BaseModel):
    """How per-frame motion becomes events."""

    model_config = ConfigDict(extra="forbid")
    quiet: PositiveDuration = Field(5.0, description="seconds without motion before the end event")
    update_every: PositiveDuration = Field(5.0, description="at most one update event this often during motion")
    max_per_minute: int = Field(6, ge=1, le=120, description="at most this many start events per minute per camera")


FACTS = ("connected", "fps_in", "fps_analysed", "decode_errors", "reconnects", "motion", "analysis_time")


class MotionPoint(PointBase):
    """One stream-health or motion fact of the camera."""

    fact: Literal["connected", "fps_in", "fps_analysed", "decode_errors", "reconnects", "motion", "analysis_time"] = (
        Field(description="connected (frames arrive), fps_in (decoded per second), fps_analysed, decode_errors and "
              "reconnects (counts since start), motion (an event is open), "
              "analysis_time (mean filter time per analysed frame, s)")
    )


class MotionConnection(BaseModel):
    """The stream to analyse: the camera's sub stream (RTSP, over TCP) or a video file; per-camera masks, zones."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, description="rtsp://[user@]host[:port]/path of the sub stream, or a video file path")
    password_file: str | None = Field(
        None, description="file holding the RTSP password (inserted for the user named in the URL); never inline"
    )
    masks: list[Polygon] = Field(default_factory=list, description="this camera's masks (added to the profile's)")
    zones: list[Zone] = Field(default_factory=list, description="this camera's zones (added to the profile's)")
    onvif: OnvifConnection | None = Field(
        None, description="the camera's ONVIF service, whose motion events are fused with the filter "
        "(device.mode camera, both or either): host, port, user, password by reference"
    )

    @field_validator("url")
    @classmethod
    def _no_inline_password(cls, v: str) -> str:
        if "://" in v and ":" in v.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]:
            raise ValueError("no password in the URL: use password_file")
        return v

    @field_validator("masks")
    @classmethod
    def _masks(cls, v: list[Polygon]) -> list[Polygon]:
        return [_check_polygon(p) for p in v]

    @property
    def bus_key(self) -> str:
        return f"motion:{self.url}"


class MotionSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="publish a picture of the frame of peak motion with each start event")
    width: int = Field(320, ge=64, le=1920, description="downscale to at most this width")
    quality: int = Field(70, ge=10, le=95, description="JPEG quality (lowered until max_bytes is met)")
    max_bytes: int = Field(30_000, ge=2_000, le=500_000, description="bound of the published JPEG")


class MotionDevice(BaseModel):
    """Profile ``device:`` section of a motion camera."""

    model_config = ConfigDict(extra="forbid")
    fps: float = Field(5.0, gt=0, le=30, description="frames analysed per second (the stream is decoded whole)")
    open_timeout: PositiveDuration = Field(10.0, description="budget to open the stream")
    read_timeout: PositiveDuration = Field(5.0, description="a stream silent this long is stalled: reopened")
    backoff_max: PositiveDuration = Field(30.0, description="longest wait between two attempts to open the stream")
    realtime: bool = Field(True, description="play a video file at its own frame rate, as a camera would send it")
    filter: MotionParams = Field(default_factory=MotionParams, description="the filter's tuning")
    events: MotionEvents = Field(default_factory=MotionEvents, description="event hysteresis and rate limit")
    snapshot: MotionSnapshot = Field(default_factory=MotionSnapshot, description="picture of each motion")
    mode: Literal["local", "camera", "both", "either"] = Field(
        "local", description="local: the filter alone; camera: the camera's ONVIF motion events alone; either: "
        "motion when either says so; both: the camera's motion confirmed by the filter within 'window'"
    )
    window: PositiveDuration = Field(10.0, description="for mode both: camera and filter agree within this time")


def check_device(device: dict[str, Any], conn: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
    """A fused mode needs the camera's ONVIF service in the site entry."""
    mode = device.get("mode", "local")
    if mode != "local" and isinstance(conn, MotionConnection) and conn.onvif is None:
        return [(("connection",), f"the profile's mode {mode} needs connection.onvif (the camera's ONVIF service: "
                                  "host, port, user, password)")]
    return []


SPEC = DriverSpec(
    name="motion",
    point_model=MotionPoint,
    connection_model=MotionConnection,
    device_model=MotionDevice,
    driver_class="drivers.motion.driver:MotionDriver",
    check_device=check_device,
    description="on-box motion pre-filter over a camera stream or a video file (OpenCV), events with a snapshot",
)

__all__ = [
    "FACTS", "SPEC", "MotionConnection", "MotionDevice", "MotionEvents", "MotionParams", "MotionPoint",
    "MotionSnapshot", "Polygon", "Zone",
]
