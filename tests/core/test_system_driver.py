"""The `system` driver reads real values, and a missing source gives that point an error, not another's value."""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import load_site
from agent.contract.driver import DriverContext
from agent.model import Quality
from drivers.system.driver import SystemDriver


def _driver(tmp_path: Path, proc: str | None = None) -> SystemDriver:
    conn = f", connection: {{proc: {proc}}}" if proc else ""
    f = tmp_path / "site.yaml"
    f.write_text(f"site: {{id: t}}\nuplink: {{broker: 'mqtt://127.0.0.1:9'}}\ndevices:\n"
                 f"  - {{name: box, type: edge-box{conn}}}\n")
    site = load_site(f)
    stats = {"outbox": {"depth": 7, "bytes": 700, "oldest_ts": None, "dropped_total": 2}}
    return SystemDriver(site.devices[0], DriverContext("t", tmp_path, lambda: stats))


async def test_real_values(tmp_path: Path) -> None:
    d = _driver(tmp_path)
    got = {s.point: s for s in await d.read(d.device.enabled_points)}
    assert got["load1"].quality == Quality.GOOD and abs(got["load1"].value - os.getloadavg()[0]) < 1.0  # type: ignore[operator]
    assert got["outbox_backlog"].value == 7 and got["outbox_dropped"].value == 2
    assert got["outbox_oldest_age"].value == 0.0
    assert 0 < got["mem_used_pct"].value < 100  # type: ignore[operator]


async def test_missing_proc_gives_errors_not_wrong_values(tmp_path: Path) -> None:
    empty = tmp_path / "proc"
    empty.mkdir()
    d = _driver(tmp_path, str(empty))
    pts = [p for p in d.device.enabled_points if p.name in ("mem_available", "load1", "mem_used_pct", "uptime")]
    got = {s.point: s for s in await d.read(pts)}
    assert got["load1"].quality == Quality.GOOD
    for name in ("mem_available", "mem_used_pct", "uptime"):
        assert got[name].quality == Quality.ERROR and got[name].value is None
        assert "FileNotFoundError" in (got[name].error or "")
    # a failing first point must not crash the read either
    first = [p for p in d.device.enabled_points if p.name == "uptime"]
    (s,) = await d.read(first)
    assert s.quality == Quality.ERROR
