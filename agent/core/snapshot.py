"""What ``edge-agent status`` shows: one JSON document of the running agent (docs/cli.md)."""

from __future__ import annotations

import os
import time
from typing import Any

from agent import __version__
from agent.config import Site
from agent.core.commanding import CommandChannel
from agent.core.flusher import Flusher
from agent.core.pipeline import Pipeline
from agent.model import DeviceHealth, Quality
from agent.outbox import Outbox
from agent.uplink.mqtt import Uplink


def _device(d: Any, h: DeviceHealth, now: float) -> dict[str, Any]:
    pts = {}
    for name, ps in h.points.items():
        pts[name] = {
            "value": ps.value, "unit": ps.unit, "quality": ps.quality.name.lower(),
            "age": round(now - ps.ts, 1) if ps.ts else None,
            "last_good_age": round(now - ps.last_good, 1) if ps.last_good else None,
            "last_error": ps.last_error,
            "last_error_age": round(now - ps.last_error_ts, 1) if ps.last_error_ts else None,
        }
    enabled = [p.name for p in d.enabled_points]
    good = sum(1 for n in enabled if n in h.points and h.points[n].quality == Quality.GOOD)
    return {
        "type": d.type, "driver": d.driver, "state": h.state, "available": h.available,
        "enabled": d.model.enabled,
        "last_ok_age": round(now - h.last_ok, 1) if h.last_ok else None,
        "last_error": h.last_error, "consecutive_failures": h.consecutive_failures,
        "restarts": h.restarts, "cycle_ms": h.cycle_ms, "points_good": good, "points_total": len(enabled),
        "next_probe_in": round(max(0.0, h.next_probe - time.monotonic()), 1) if h.next_probe else None,
        "points": pts,
    }


def snapshot(site: Site, started: float, health: dict[str, DeviceHealth], uplink: Uplink, outbox: Outbox,
             flusher: Flusher, commands: CommandChannel, pipeline: Pipeline) -> dict[str, Any]:
    now = time.time()
    up = uplink.state
    st = outbox.stats()
    oldest = st.get("oldest_ts")
    return {
        "agent": {"version": __version__, "pid": os.getpid(), "uptime": round(now - started, 1),
                  "site": site.id, "config": site.file,
                  "config_problems": [str(p) for p in site.problems]},
        "uplink": {"broker": f"{site.model.uplink.host}:{site.model.uplink.port}",
                   "tls": site.model.uplink.uses_tls,
                   "cleartext_credentials": site.model.uplink.cleartext_credentials,
                   "state": up.state, "connected": up.connected, "since_age": round(now - up.since, 1),
                   "last_error": up.last_error, "connects": up.connects, "published": up.published,
                   "last_publish_age": round(now - up.last_publish, 1) if up.last_publish else None},
        "outbox": {**st, "oldest_age": round(now - oldest, 1) if oldest else None, **flusher.stats()},
        "commands": commands.stats(),
        "pipeline": {"offered": pipeline.offered, "reported": pipeline.reported, "gen": pipeline.gen},
        "devices": {d.name: _device(d, health[d.name], now) for d in site.devices},
    }
