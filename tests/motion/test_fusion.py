"""Fusion of the filter with the camera's own motion events: the rule per mode, then end to end with a
simulated ONVIF camera (its PullPoint events) and the clips over RTSP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.motion.analysis import FrameResult
from drivers.motion.fusion import CameraMotion, LocalMotion, fuse
from tests.core.agentkit import Collector, running_agent, write_site
from tests.motion.clips import make_clip, write_clip
from tests.motion.test_agent import _events
from tests.peers.onvif import OnvifCamera
from tests.peers.rtsp import RtspServer


def _r(on: bool) -> FrameResult:
    return FrameResult(on, on, 0.01 if on else 0.0)


def test_the_rule_of_each_mode() -> None:
    cam, local = CameraMotion(), LocalMotion()
    assert fuse("local", _r(True), 0, cam, local, 10).motion
    assert not fuse("camera", _r(True), 0, cam, local, 10).motion  # the filter alone counts for nothing
    assert fuse("either", _r(True), 0, cam, local, 10).motion
    assert not fuse("both", _r(True), 1, cam, local, 10).motion  # not confirmed by the camera
    cam.update(5, True)
    assert fuse("camera", _r(False), 6, cam, local, 10).motion
    assert fuse("either", _r(False), 6, cam, local, 10).motion
    assert fuse("both", _r(True), 7, cam, local, 10).motion  # the filter saw it at 1 and 7, camera since 5
    local2 = LocalMotion()
    assert not fuse("both", _r(False), 20, cam, local2, 10).motion  # camera alone: unconfirmed
    cam.update(21, False)
    assert fuse("both", _r(True), 30, cam, local2, 10).motion  # camera said motion 9 s before: within window
    assert not fuse("both", _r(True), 32, cam, local2, 10).motion  # 11 s: too late


async def test_modes_end_to_end_with_a_camera_and_rtsp(tmp_path: Path, broker: Any) -> None:
    person = RtspServer(write_clip(make_clip("person", 4), tmp_path / "p.avi", fps=15)).start()
    quiet = RtspServer(write_clip(make_clip("noise", 4), tmp_path / "n.avi", fps=15)).start()
    cam = OnvifCamera(tmp_path).start()
    try:
        pw = tmp_path / "cam-pw"
        pw.write_text(cam.password + "\n")
        onvif = f"onvif: {{host: 127.0.0.1, port: {cam.port}, user: admin, password: {{file: {pw}}}}}"
        (tmp_path / "profiles").mkdir()
        base = (Path(__file__).resolve().parents[2] / "profiles" / "generic-motion-camera.yaml").read_text()
        for mode in ("both", "camera"):
            text = base.replace("device:\n", f"device:\n  mode: {mode}\n")
            (tmp_path / "profiles" / f"m-{mode}.yaml").write_text(text)
        devices = "".join(f"  - name: {n}\n    type: m-{m}\n    interval: 1s\n"
                          f"    connection: {{url: '{u}', {onvif}}}\n"
                          for n, m, u in (("door", "both", person.url), ("hall", "both", quiet.url),
                                          ("yard", "camera", quiet.url)))
        site = write_site(tmp_path, broker.url, devices=devices)
        site.write_text(site.read_text().replace("devices:\n", f"profiles_dirs: [{tmp_path / 'profiles'}]\ndevices:\n"))
        async with Collector(broker.port) as col, running_agent(site):
            await col.wait(lambda: all(_events(col, d, "stream") for d in ("door", "hall", "yard")), 20, "streams")
            await col.wait(lambda: cam.stats()["subscriptions_live"] >= 3, 15, "subscriptions")
            cam.motion(True)  # the camera says motion on every picture (it alarms on anything)
            await col.wait(lambda: any(e["data"]["state"] == "start" for e in _events(col, "door", "motion")), 30,
                           "door: camera confirmed by the filter")
            await col.wait(lambda: any(e["data"]["state"] == "start" for e in _events(col, "yard", "motion")), 5,
                           "yard: the camera alone")
            cam.motion(False)
            await col.wait(lambda: any(e["data"]["state"] == "end" for e in _events(col, "yard", "motion")), 15,
                           "yard: ends after the camera's motion")
        assert not _events(col, "hall", "motion")  # camera says motion, the filter sees only noise: nothing
        start = next(e for e in _events(col, "door", "motion") if e["data"]["state"] == "start")
        assert start["data"]["mode"] == "both" and start["data"]["snapshot"] is True
    finally:
        cam.stop()
        person.stop()
        quiet.stop()


def test_a_fused_mode_without_the_cameras_onvif_service_is_a_located_error(tmp_path: Path) -> None:
    import pytest

    from agent.config import load_site
    from agent.errors import ConfigError

    (tmp_path / "profiles").mkdir()
    base = (Path(__file__).resolve().parents[2] / "profiles" / "generic-motion-camera.yaml").read_text()
    (tmp_path / "profiles" / "m-both.yaml").write_text(base.replace("device:\n", "device:\n  mode: both\n"))
    devices = "  - name: door\n    type: m-both\n    connection: {url: /var/clips/door.avi}\n"
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=devices)
    site.write_text(site.read_text().replace("devices:\n", f"profiles_dirs: [{tmp_path / 'profiles'}]\ndevices:\n"))
    line = site.read_text().splitlines().index("  - name: door") + 1
    with pytest.raises(ConfigError) as err:
        load_site(site)
    assert f"{site}:{line + 2}: devices[0].connection: the profile's mode both needs connection.onvif" in str(err.value)
    assert [d.name for d in load_site(site, strict=False).devices] == []  # run: the entry is skipped, not fatal
