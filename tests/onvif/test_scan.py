"""`edge-agent onvif scan HOST`: a site snippet and a profile skeleton that validate and run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.core.agentkit import ROOT, Collector, running_agent, write_site
from tests.peers.onvif import OnvifCamera


def _scan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.tools.cli", "onvif", "scan", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


async def test_scan_writes_snippet_and_profile_that_run(onvif_camera: OnvifCamera, broker: Any,
                                                         tmp_path: Path) -> None:
    pw = tmp_path / "cam-pw"
    pw.write_text(onvif_camera.password + "\n")
    prof_dir = tmp_path / "profiles"
    prof_dir.mkdir()
    r = _scan("127.0.0.1", "--port", str(onvif_camera.port), "--password-file", str(pw), "--name", "hall",
              "-o", str(prof_dir / "edgesim-ea-cam-1.yaml"))
    assert r.returncode == 0, r.stderr
    assert "EdgeSim EA-CAM-1, firmware 1.4.2" in r.stderr and "media profile SubStream 640x360" in r.stderr
    assert onvif_camera.password not in r.stdout + r.stderr
    snippet = yaml.safe_load(r.stdout)
    assert snippet[0]["connection"]["password"] == {"file": str(pw)}
    assert snippet[0]["type"] == "edgesim-ea-cam-1"
    profile = yaml.safe_load((prof_dir / "edgesim-ea-cam-1.yaml").read_text())
    assert {p["name"] for p in profile["points"]} >= {"model", "main_stream_uri", "sub_resolution"}
    # the snippet goes into a site file as it is: it validates and the agent runs it
    devices = "".join("  " + line + "\n" for line in r.stdout.splitlines() if not line.startswith("#"))
    site = write_site(tmp_path, broker.url, devices=devices)
    site.write_text(site.read_text().replace("devices:\n", f"profiles_dirs: [{prof_dir}]\ndevices:\n"))
    v = subprocess.run([sys.executable, "-m", "agent.tools.cli", "validate", str(site)], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: any(s["point"] == "model" and s["value"] == "EA-CAM-1" for m in col.of("t")
                                   if m.get("device") == "hall" for s in m["samples"]), 15, "facts of the scan")


def test_scan_tells_wrong_password_and_no_answer(onvif_camera: OnvifCamera, tmp_path: Path) -> None:
    r = _scan("127.0.0.1", "--port", str(onvif_camera.port), "--password-env", "CAM_PW", env={"CAM_PW": "wrong"})
    assert r.returncode == 1, r.stderr
    assert "auth:" in r.stderr and "wrong user or password" in r.stderr and "Traceback" not in r.stderr
    onvif_camera.stop()
    r = _scan("127.0.0.1", "--port", str(onvif_camera.port), "--password-env", "CAM_PW", "--timeout", "1",
              env={"CAM_PW": "x"})
    assert r.returncode == 3, r.stderr
    assert "cannot connect" in r.stderr
