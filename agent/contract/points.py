"""The protocol-independent part of a point; each driver subclasses PointBase with its addressing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.types import Deadband, Duration, Name

STRICT = ConfigDict(extra="forbid", populate_by_name=True)


class PointBase(BaseModel):
    """Fields every point has, whatever its protocol. Drivers subclass this with their addressing."""

    model_config = STRICT

    name: Name = Field(description="point name, unique in the profile; used in telemetry and commands")
    description: str | None = Field(None, description="free text for humans")
    unit: str | None = Field(None, description="engineering unit after scaling, e.g. kWh, V, degC")
    access: Literal["read", "read-write"] = Field("read", description="read-write allows writes")
    min: float | None = Field(None, description="lowest value a write may set (read-write points)")
    max: float | None = Field(None, description="highest value a write may set (read-write points)")
    deadband: Deadband = Field(
        None, description="report only changes larger than this: a number (absolute) or 'N%' (relative)"
    )
    max_silence: Duration | None = Field(
        None, description="re-send the value at least this often even when unchanged (default: site's)"
    )
    poll: Literal["fast", "slow"] = Field("fast", description="poll class: device interval or slow_interval")
    enabled: bool = Field(True, description="false keeps the point in the profile but never reads it")

    @property
    def writable(self) -> bool:
        return self.access == "read-write"


