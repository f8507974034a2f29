"""The demo's simulated camera: its facts, a motion event and the snapshot of that event reach the monitor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_camera_motion_and_snapshot(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "demo" / "run.py"), "--workdir", str(tmp_path / "d"),
                        "--seconds", "22", "--json", "--sims", "onvif"], cwd=ROOT, capture_output=True, text=True,
                       timeout=90)
    msgs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert msgs, r.stderr[-3000:]
    facts = {s["point"]: s["value"] for m in msgs if m.get("kind") == "t" and m.get("device") == "cam-hall"
             for s in m["samples"]}
    assert facts.get("model") == "EA-CAM-1" and facts.get("main_stream_uri") == "rtsp://127.0.0.1:8554/main"
    motion = [m["doc"] for m in msgs if m.get("kind") == "e" and (m.get("doc") or {}).get("kind") == "motion"
              and m["doc"]["data"]["state"] is True and m["doc"]["data"]["operation"] == "Changed"]
    assert motion, [m for m in msgs if m.get("kind") == "e"]
    pics = [m for m in msgs if m.get("kind") == "s"]
    assert [p["ref"] for p in pics] == [motion[0]["data"]["id"]] and 0 < pics[0]["bytes"] <= 150_000
    assert "demo-camera-pw" not in r.stdout
