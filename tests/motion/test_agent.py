"""End to end: the running agent with a motion camera reading a labelled clip; events reach Mosquitto."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from tests.core.agentkit import Collector, running_agent, write_site
from tests.motion.clips import make_clip, write_clip


def _events(col: Collector, device: str, kind: str) -> list[dict[str, Any]]:
    return [m["doc"] for m in col.of("e") if isinstance(m.get("doc"), dict) and m["doc"].get("src") == device
            and m["doc"].get("kind") == kind]


def _values(col: Collector, device: str, point: str) -> list[Any]:
    return [s["value"] for m in col.of("t") if m.get("device") == device for s in m["samples"]
            if s["point"] == point]


def _site(tmp_path: Path, broker: Any, cams: dict[str, Path]) -> Path:
    devices = "".join(
        f"  - name: {name}\n    type: generic-motion-camera\n    interval: 1s\n"
        f"    connection: {{url: {path}}}\n" for name, path in cams.items()
    )
    return write_site(tmp_path, broker.url, devices=devices)


async def test_a_crossing_reaches_the_broker_as_motion_with_a_snapshot(tmp_path: Path, broker: Any) -> None:
    person = write_clip(make_clip("person", 3), tmp_path / "person.avi", fps=15)
    rain = write_clip(make_clip("rain", 3), tmp_path / "rain.avi", fps=15)
    site = _site(tmp_path, broker, {"door": person, "yard": rain})
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: any(e["data"]["state"] == "end" for e in _events(col, "door", "motion")), 40,
                       "motion start and end from the clip")
        await col.wait(lambda: any(m["kind"] == "s" and m.get("device") == "door" for m in col.messages), 5,
                       "snapshot")
        await col.wait(lambda: _values(col, "door", "fps_in"), 5, "health points")
    start = next(e for e in _events(col, "door", "motion") if e["data"]["state"] == "start")
    end = next(e for e in _events(col, "door", "motion") if e["data"]["state"] == "end")
    assert start["data"]["id"] == end["data"]["id"] and start["data"]["snapshot"] is True
    assert 0 < end["data"]["peak_area"] < 0.2 and end["data"]["end"] > end["data"]["start"]
    pic = next(m for m in col.messages if m["kind"] == "s" and m.get("device") == "door")
    assert pic["topic"].endswith(f"/door/{start['data']['id']}")
    img = Image.open(io.BytesIO(pic["raw"]))
    assert img.format == "JPEG" and img.width == 320 and len(pic["raw"]) <= 30_000
    assert not _events(col, "yard", "motion")  # rain
    streams = [e["data"]["state"] for e in _events(col, "door", "stream")]
    assert streams[0] == "streaming"
    assert True in _values(col, "door", "connected")
    assert any(10 <= v <= 20 for v in _values(col, "door", "fps_in")), _values(col, "door", "fps_in")
