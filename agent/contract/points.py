"""The protocol-independent part of a point; each driver subclasses PointBase with its addressing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.contract.writes import check_generic, parse_generic
from agent.types import Deadband, Duration, Name

STRICT = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


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

    def parse_write(self, text: str) -> Any:
        """The value a person typed for a write of this point (``edge-agent write``); ValueError if none.
        Drivers override it per point type (agent/contract/writes.py)."""
        return parse_generic(text)

    def check_write(self, value: Any) -> Any:
        """The value a write of this point sends, checked before any I/O; ValueError with the reason.
        Drivers override it per point type (agent/contract/writes.py)."""
        return check_generic(value, self.min, self.max)


