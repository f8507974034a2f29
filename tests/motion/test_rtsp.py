"""The same labelled clips served over a real RTSP server (GStreamer, loopback) reach the broker as motion
events through the running agent; a frozen server is reported as stalled and the stream comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.core.agentkit import Collector, running_agent, write_site
from tests.motion.clips import make_clip, write_clip
from tests.motion.test_agent import _events, _values
from tests.peers.rtsp import RtspServer, available

PROFILE = (Path(__file__).resolve().parents[2] / "profiles" / "generic-motion-camera.yaml").read_text().replace(
    "device:\n", "device:\n  read_timeout: 2s\n  open_timeout: 3s\n  backoff_max: 1s\n")


@pytest.fixture(scope="module", autouse=True)
def _gstreamer() -> None:
    why = available()
    if why:
        pytest.fail(why)  # scripts/setup installs it: a missing peer is a broken machine, not a skip


def _site(tmp_path: Path, broker: Any, cams: dict[str, str]) -> Path:
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "rtsp-motion.yaml").write_text(PROFILE)
    devices = "".join(f"  - name: {n}\n    type: rtsp-motion\n    interval: 1s\n    connection: {{url: '{u}'}}\n"
                      for n, u in cams.items())
    site = write_site(tmp_path, broker.url, devices=devices)
    site.write_text(site.read_text().replace("devices:\n", f"profiles_dirs: [{tmp_path / 'profiles'}]\ndevices:\n"))
    return site


async def test_clips_over_rtsp_reach_the_broker_as_motion_events(tmp_path: Path, broker: Any) -> None:
    door = RtspServer(write_clip(make_clip("person", 2), tmp_path / "person.avi", fps=15)).start()
    yard = RtspServer(write_clip(make_clip("foliage", 2), tmp_path / "foliage.avi", fps=15)).start()
    try:
        site = _site(tmp_path, broker, {"door": door.url, "yard": yard.url})
        async with Collector(broker.port) as col, running_agent(site):
            await col.wait(lambda: any(e["data"]["state"] == "start" for e in _events(col, "door", "motion")), 40,
                           "motion over RTSP")
            await col.wait(lambda: any(m["kind"] == "s" and m.get("device") == "door" for m in col.messages), 5,
                           "snapshot")
            # the file ends (the stream ends): reported, reopened, streaming again
            await col.wait(lambda: [e["data"]["state"] for e in _events(col, "yard", "stream")][:3]
                           == ["streaming", "stalled", "streaming"], 40, "end of the stream and reconnect")
        assert not _events(col, "yard", "motion")  # swaying foliage
        assert any(10 <= v <= 20 for v in _values(col, "door", "fps_in")), _values(col, "door", "fps_in")
    finally:
        door.stop()
        yard.stop()


async def test_a_frozen_camera_is_stalled_then_back(tmp_path: Path, broker: Any) -> None:
    cam = RtspServer(write_clip(make_clip("noise", 1), tmp_path / "noise.avi", fps=15, repeat=3)).start()
    try:
        site = _site(tmp_path, broker, {"cam": cam.url})
        async with Collector(broker.port) as col, running_agent(site):
            await col.wait(lambda: _events(col, "cam", "stream"), 20, "streaming")
            cam.pause()
            await col.wait(lambda: any(e["data"]["state"] == "stalled" for e in _events(col, "cam", "stream")), 8,
                           "stall noticed within seconds")
            await col.wait(lambda: False in _values(col, "cam", "connected"), 5, "connected point false")
            cam.resume()
            await col.wait(lambda: [e["data"]["state"] for e in _events(col, "cam", "stream")][-1] == "streaming",
                           20, "back")
            ev = _events(col, "cam", "stream")[-1]
            assert ev["data"]["reconnects"] >= 1
            assert not _events(col, "cam", "motion")
    finally:
        cam.stop()
