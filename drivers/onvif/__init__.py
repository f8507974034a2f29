"""``onvif`` driver: IP cameras over ONVIF (onvif-zeep-async).

This module holds the configuration schema only and never imports the ONVIF library: validating a profile or
a site file stays cheap on a box where it is missing. A camera's points are *facts* (model, firmware, clock
offset, streams...) polled at the slow interval; its events (motion, tamper, inputs) arrive through a
PullPoint subscription followed beside the polls (``driver.py``, ``events.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.contract.points import PointBase
from agent.contract.registry import DriverSpec
from agent.types import PositiveDuration

FACTS = (
    "online", "manufacturer", "model", "firmware", "serial", "hardware_id", "clock_offset", "profiles",
    "stream_uri", "resolution", "codec", "fps", "snapshot", "ptz", "events",
)
STREAM_FACTS = {"stream_uri", "resolution", "codec", "fps"}
KINDS = ("motion", "tamper", "input", "other")


class OnvifPoint(PointBase):
    """One fact about the camera."""

    fact: Literal[
        "online", "manufacturer", "model", "firmware", "serial", "hardware_id", "clock_offset", "profiles",
        "stream_uri", "resolution", "codec", "fps", "snapshot", "ptz", "events",
    ] = Field(
        description="what the point reports: online, manufacturer, model, firmware, serial, hardware_id, "
        "clock_offset (camera clock minus the box's, s), profiles (summary of the media profiles), "
        "stream_uri/resolution/codec/fps (of the stream named by 'stream'), snapshot (snapshot URI offered), "
        "ptz (PTZ service present), events (events service present)"
    )
    stream: Literal["main", "sub"] = Field(
        "main", description="for stream facts: main (first media profile) or sub (second, else the first)"
    )

    @model_validator(mode="after")
    def _stream_only_for_stream_facts(self) -> OnvifPoint:
        if "stream" in self.model_fields_set and self.fact not in STREAM_FACTS:
            raise ValueError(f"'stream' applies to {', '.join(sorted(STREAM_FACTS))} only")
        return self


class SecretSource(BaseModel):
    """A camera password by reference: exactly one of env, file, credential (as the uplink's secrets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str | None = Field(None, description="environment variable holding the password")
    file: str | None = Field(None, description="file holding the password")
    credential: str | None = Field(None, description="systemd credential name ($CREDENTIALS_DIRECTORY/NAME)")

    @model_validator(mode="after")
    def _one(self) -> SecretSource:
        if len([k for k in ("env", "file", "credential") if getattr(self, k)]) != 1:
            raise ValueError("a secret reference needs exactly one of env, file, credential")
        return self

    def read(self) -> str:
        """The password; ValueError saying where it was looked for."""
        if self.env:
            val = os.environ.get(self.env)
            if val is None:
                raise ValueError(f"environment variable {self.env} is not set")
            return val
        if self.file:
            path = Path(self.file)
        else:
            base = os.environ.get("CREDENTIALS_DIRECTORY")
            candidates = [Path(base)] if base else [Path("/etc/credstore"), Path("/run/credstore")]
            path = next((d / str(self.credential) for d in candidates if (d / str(self.credential)).is_file()),
                        candidates[0] / str(self.credential))
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read the camera password from {path}: {exc.strerror or exc}") from None


class OnvifLogin(BaseModel):
    """Where an ONVIF device (camera, access panel) answers and how to log in."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field(description="device address (IP or name)")
    port: int = Field(80, ge=1, le=65535, description="HTTP port of the ONVIF device service")
    user: str = Field("admin", description="ONVIF user")
    password: SecretSource | None = Field(
        None, description="password by reference: {env: NAME}, {file: PATH} or {credential: NAME}; never inline"
    )


class OnvifConnection(OnvifLogin):
    """Where the camera answers and how to log in."""

    @property
    def bus_key(self) -> str:
        return f"onvif:{self.host}:{self.port}"


class TopicRule(BaseModel):
    """Maps camera topics to an agent event kind (checked before the built-in table)."""

    model_config = ConfigDict(extra="forbid")
    match: str = Field(description="text the topic contains, e.g. RuleEngine/CellMotionDetector/Motion")
    kind: Literal["motion", "tamper", "input", "other"] = Field(description="agent event kind")
    severity: Literal["info", "warning", "alarm"] = Field("warning", description="severity when active")
    item: str | None = Field(None, description="data item holding the state (default: the first one)")


class OnvifEvents(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="subscribe to the camera's events (PullPoint)")
    subscription: PositiveDuration = Field(
        60.0, description="subscription lifetime asked of the camera; renewed at 80 % of it"
    )
    pull_timeout: PositiveDuration = Field(5.0, description="long-poll time of one PullMessages request")
    message_limit: int = Field(100, ge=1, le=1000, description="messages fetched by one PullMessages")
    kinds: list[Literal["motion", "tamper", "input", "other"]] = Field(
        ["motion", "tamper", "input", "other"], description="event kinds published upstream"
    )
    topics: list[TopicRule] = Field(default_factory=list, description="vendor topics beyond the built-in table")


class OnvifSnapshots(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="allow snapshots (on events and on the snapshot command)")
    kinds: list[Literal["motion", "tamper", "input", "other"]] = Field(
        ["motion", "tamper"], description="event kinds that take a snapshot when they become active"
    )
    stream: Literal["main", "sub"] = Field("main", description="media profile whose snapshot URI is used")
    width: int = Field(640, ge=16, le=4096, description="downscale to at most this width (aspect kept)")
    quality: int = Field(70, ge=10, le=95, description="JPEG quality of the published picture")
    max_bytes: int = Field(
        150_000, ge=2_000, le=2_000_000, description="bound of the published JPEG (quality, then size lowered)"
    )
    min_interval: PositiveDuration = Field(10.0, description="at most one snapshot per camera this often")
    auth: Literal["auto", "digest", "basic"] = Field(
        "auto", description="HTTP authentication of the snapshot URI; auto tries digest, then basic"
    )
    retain: bool = Field(
        False, description="also publish each picture retained on <prefix>/<site>/s/<device>/last, so a late "
        "subscriber gets the camera's last picture (its bytes go up twice)"
    )


class OnvifDeviceQuirks(BaseModel):
    """Profile ``device:`` section: what this camera model needs."""

    model_config = ConfigDict(extra="forbid")
    events: OnvifEvents = Field(default_factory=OnvifEvents, description="event subscription settings")
    snapshots: OnvifSnapshots = Field(default_factory=OnvifSnapshots, description="snapshot settings")
    adjust_time: bool = Field(
        True, description="sign requests with the camera's clock (cameras refuse tokens too far from it)"
    )


SPEC = DriverSpec(
    name="onvif",
    point_model=OnvifPoint,
    connection_model=OnvifConnection,
    device_model=OnvifDeviceQuirks,
    driver_class="drivers.onvif.driver:OnvifDriver",
    description="ONVIF IP cameras: device and media facts, PullPoint events that survive reboots",
)

__all__ = [
    "FACTS", "KINDS", "SPEC", "OnvifConnection", "OnvifDeviceQuirks", "OnvifPoint", "OnvifSnapshots", "SecretSource",
]
