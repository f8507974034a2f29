"""``system`` driver: the box's own health. No protocol library: always available."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.contract.points import PointBase
from agent.contract.registry import DriverSpec

Source = Literal[
    "load1", "load5", "load15",
    "mem_available", "mem_used_pct",
    "disk_free", "disk_used_pct",
    "uptime", "cpu_temp",
    "outbox_backlog", "outbox_bytes", "outbox_oldest_age", "outbox_dropped",
]


class SystemPoint(PointBase):
    source: Source = Field(description="which measurement of the box this point reads")


class SystemConnection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thermal_zone: str = Field(
        "/sys/class/thermal", description="where to look for thermal_zone*/temp (CPU temperature)"
    )
    proc: str = Field("/proc", description="procfs mount point")


SPEC = DriverSpec(
    name="system",
    point_model=SystemPoint,
    connection_model=SystemConnection,
    driver_class="drivers.system.driver:SystemDriver",
    description="the box's own health: load, memory, disk, uptime, temperature, outbox backlog",
)
