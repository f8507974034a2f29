"""Reads the box's health from procfs, sysfs and statvfs; outbox figures from the agent."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from agent.contract.driver import Driver, DriverContext
from agent.contract.points import PointBase
from agent.model import Quality, Sample, Value

from . import SystemConnection, SystemPoint


def _meminfo(proc: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def _cpu_temp(base: Path) -> float | None:
    """Highest temperature among CPU-like thermal zones, in degC; None where the kernel exposes none."""
    temps: list[float] = []
    for zone in sorted(base.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip().lower()
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        if any(k in kind for k in ("cpu", "x86_pkg", "soc", "core", "acpitz")) or len(temps) == 0:
            temps.append(milli / 1000.0)
    return max(temps) if temps else None


class SystemDriver(Driver):
    def __init__(self, device: object, ctx: DriverContext) -> None:
        super().__init__(device, ctx)  # type: ignore[arg-type]
        conn = cast(SystemConnection, self.device.connection)
        self.proc = Path(conn.proc)
        self.thermal = Path(conn.thermal_zone)

    async def read(self, points: Sequence[PointBase]) -> list[Sample]:
        now = time.time()
        cache: dict[str, Value] = {}
        errors: dict[str, str] = {}

        def measure(source: str) -> Value:
            if source in cache:
                return cache[source]
            if source.startswith("load"):
                la = os.getloadavg()
                cache.update(load1=round(la[0], 2), load5=round(la[1], 2), load15=round(la[2], 2))
            elif source.startswith("mem"):
                mi = _meminfo(self.proc)
                avail, total = mi.get("MemAvailable", 0), mi.get("MemTotal", 0)
                cache["mem_available"] = avail
                cache["mem_used_pct"] = round(100.0 * (total - avail) / total, 1) if total else None
            elif source.startswith("disk"):
                st = os.statvfs(self.ctx.state_dir if self.ctx.state_dir.exists() else "/")
                free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
                cache["disk_free"] = free
                cache["disk_used_pct"] = round(100.0 * (total - free) / total, 1) if total else None
            elif source == "uptime":
                cache["uptime"] = round(float((self.proc / "uptime").read_text().split()[0]), 0)
            elif source == "cpu_temp":
                cache["cpu_temp"] = _cpu_temp(self.thermal)
            elif source.startswith("outbox"):
                st2 = self.ctx.stats().get("outbox")
                if not st2:
                    raise ValueError("outbox figures come from the running agent")
                cache["outbox_backlog"] = st2.get("depth")
                cache["outbox_bytes"] = st2.get("bytes")
                oldest = st2.get("oldest_ts")
                cache["outbox_oldest_age"] = round(now - oldest, 1) if oldest else 0.0
                cache["outbox_dropped"] = st2.get("dropped_total")
            return cache.get(source)

        samples = []
        for p in points:
            sp = cast(SystemPoint, p)
            try:
                v = measure(sp.source)
            except OSError as exc:
                errors[sp.source] = f"{type(exc).__name__}: {exc}"
                v = None
            except ValueError as exc:
                errors[sp.source] = str(exc)
                v = None
            if v is None:
                err = errors.get(sp.source, "not available on this machine")
                samples.append(Sample(self.name, p.name, None, Quality.ERROR, now, err))
            else:
                samples.append(Sample(self.name, p.name, v, Quality.GOOD, now))
        return samples
