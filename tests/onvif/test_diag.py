"""`edge-agent diag device CAMERA`: authenticated or not (wrong password vs. clock skew), events, snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.core.agentkit import ROOT, write_site
from tests.peers.onvif import OnvifCamera


def _diag(tmp_path: Path, cam: OnvifCamera, password: str, adjust_time: bool = True) -> tuple[int, dict, str]:
    pw = tmp_path / "pw"
    pw.write_text(password + "\n")
    prof_dir = tmp_path / "profiles"
    prof_dir.mkdir(exist_ok=True)
    text = (ROOT / "profiles" / "generic-onvif-camera.yaml").read_text()
    quirk = f"device:\n  adjust_time: {str(adjust_time).lower()}\n"
    (prof_dir / "cam.yaml").write_text(text.replace("device:\n", quirk))
    devices = (f"  - {{name: cam1, type: cam, timeout: 2s, connection: {{host: 127.0.0.1, port: {cam.port}, "
               f"password: {{file: {pw}}}}}}}\n")
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=devices)
    site.write_text(site.read_text().replace("devices:\n", f"profiles_dirs: [{prof_dir}]\ndevices:\n"))
    r = subprocess.run([sys.executable, "-m", "agent.tools.cli", "diag", "device", "cam1", "--config", str(site),
                        "--json"], capture_output=True, text=True, cwd=ROOT, timeout=90)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def _steps(doc: dict) -> dict[str, dict]:
    return {s["name"]: s for s in doc["steps"]}


def test_diag_camera_ok_with_events_snapshot_and_sub_stream(tmp_path: Path) -> None:
    from tests.motion.clips import make_clip, write_clip
    from tests.peers.rtsp import RtspServer

    rtsp = RtspServer(write_clip(make_clip("person", 0), tmp_path / "sub.avi", fps=15), path="/sub").start()
    cam = OnvifCamera(tmp_path, extra=["--rtsp-port", str(rtsp.port)]).start()
    try:
        rc, doc, err = _diag(tmp_path, cam, cam.password)
    finally:
        cam.stop()
        rtsp.stop()
    assert rc == 0, (doc, err)
    steps = _steps(doc)
    assert steps["events subscription"]["ok"] and "PullPoint created" in steps["events subscription"]["detail"]
    assert steps["snapshot"]["ok"] and "bytes after downscale" in steps["snapshot"]["detail"]
    sub = steps["sub stream"]
    assert sub["ok"] and sub["detail"].startswith(f"640x360 frame decoded from rtsp://127.0.0.1:{rtsp.port}/sub"), sub
    assert cam.password not in json.dumps(doc)


def test_diag_camera_sub_stream_that_does_not_open(onvif_camera: OnvifCamera, tmp_path: Path) -> None:
    from tests.peers.common import free_port

    closed = free_port()  # nothing listens there: the camera's RTSP service is down
    cam = OnvifCamera(tmp_path, extra=["--rtsp-port", str(closed)]).start()
    try:
        rc, doc, _ = _diag(tmp_path, cam, cam.password)
    finally:
        cam.stop()
    assert rc == 1
    sub = _steps(doc)["sub stream"]
    assert not sub["ok"] and sub["detail"].startswith(f"cannot open rtsp://127.0.0.1:{closed}/sub"), sub
    assert cam.password not in json.dumps(doc)


def test_diag_tells_wrong_password_from_clock_skew(tmp_path: Path) -> None:
    cam = OnvifCamera(tmp_path).start()
    try:
        rc, doc, _ = _diag(tmp_path, cam, "wrong")
        assert rc == 1
        start = _steps(doc)["start"]
        assert not start["ok"] and "wrong user or password (clocks agree" in start["detail"], start
    finally:
        cam.stop()
    skewed = OnvifCamera(tmp_path, extra=["--clock-offset", "600", "--max-skew", "30"]).start()
    try:
        rc, doc, _ = _diag(tmp_path, skewed, skewed.password, adjust_time=False)
        assert rc == 1
        start = _steps(doc)["start"]
        assert "clock is +600 s off" in start["detail"] and "clock skew" in start["detail"], start
        rc, doc, _ = _diag(tmp_path, skewed, skewed.password, adjust_time=True)  # signed with the camera's clock
        # every step passes but the sub stream (this camera has no RTSP server behind it)
        assert [n for n, st in _steps(doc).items() if not st["ok"]] == ["sub stream"], doc
    finally:
        skewed.stop()


def test_diag_says_a_camera_only_pushes_events(tmp_path: Path) -> None:
    cam = OnvifCamera(tmp_path, extra=["--push-only"]).start()
    try:
        rc, doc, _ = _diag(tmp_path, cam, cam.password)
    finally:
        cam.stop()
    assert rc == 1
    ev = _steps(doc)["events subscription"]
    assert not ev["ok"] and ev["detail"] == "events: camera offers only push notifications, not followed", ev
    assert _steps(doc)["snapshot"]["ok"]
