"""A device as a driver receives it: the site entry, its profile with overrides applied, its connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from agent.contract.points import STRICT, PointBase
from agent.contract.registry import DriverSpec
from agent.types import Name, PositiveDuration

# The shortest poll interval accepted. No field device is worth polling faster (meters and controllers refresh
# their values every 100 ms at best; one 125-register Modbus RTU reply alone takes about 270 ms at 9600 baud),
# and a shorter one is nearly always a unit slip ("10ms" for "10s", "0.001"): the device's runner would poll
# back to back, flood the bus and fill the outbox with repeats.
MIN_POLL_INTERVAL = 0.1


def _poll_interval(v: float) -> float:
    if v < MIN_POLL_INTERVAL:
        raise ValueError(f"poll interval of {v:g} s is below the minimum of {MIN_POLL_INTERVAL:g} s (a unit slip? "
                         "durations read like 10s, 500ms, 5m)")
    return v


PollInterval = Annotated[PositiveDuration, AfterValidator(_poll_interval)]


class ProfileMetadata(BaseModel):
    model_config = STRICT
    manufacturer: str | None = Field(None, description="manufacturer name")
    model: str | None = Field(None, description="model or series")
    document: str | None = Field(None, description="register map / PICS document the profile is written from")
    document_version: str | None = Field(None, description="version or date of that document")
    url: str | None = Field(None, description="where the document was published")
    notes: str | None = Field(None, description="caveats for installers")


@dataclass
class Profile:
    id: str
    driver: str
    file: str
    description: str | None
    metadata: ProfileMetadata
    device: dict[str, Any]
    points: list[PointBase]

    def point(self, name: str) -> PointBase | None:
        for p in self.points:
            if p.name == name:
                return p
        return None


class DeviceConfigModel(BaseModel):
    """One device of this building, in the site file."""

    model_config = STRICT
    name: Name = Field(description="device name, unique on the site; appears in topics")
    type: str = Field(description="profile id (see profiles/)")
    enabled: bool = Field(True, description="false keeps the device configured but not polled")
    interval: PollInterval = Field(10.0, description="poll interval of 'fast' points (at least 0.1 s)")
    slow_interval: PollInterval = Field(300.0, description="poll interval of 'slow' points (at least 0.1 s)")
    timeout: PositiveDuration = Field(3.0, description="budget of one request to the device")
    retries: int = Field(1, ge=0, le=5, description="retries of a failed request before giving up")
    connection: dict[str, Any] = Field(default_factory=dict, description="driver-specific address settings")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-point field overrides: {point: {deadband: 1, enabled: false}}"
    )
    labels: dict[str, str] = Field(default_factory=dict, description="free labels sent in the birth message")


@dataclass
class DeviceConfig:
    """A device ready for its driver: site entry + profile with overrides applied + typed connection."""

    name: str
    type: str
    driver: str
    spec: DriverSpec
    model: DeviceConfigModel
    profile: Profile
    connection: BaseModel
    points: list[PointBase]

    @property
    def interval(self) -> float:
        return self.model.interval

    @property
    def enabled_points(self) -> list[PointBase]:
        return [p for p in self.points if p.enabled]


