"""The demo's simulated panel: door points, badges as access events with pseudonyms, no names on the wire."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_panel_doors_and_badges(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "demo" / "run.py"), "--workdir", str(tmp_path / "d"),
                        "--seconds", "22", "--json", "--sims", "access"], cwd=ROOT, capture_output=True, text=True,
                       timeout=90)
    msgs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert msgs, r.stderr[-3000:]
    points = {s["point"]: s["value"] for m in msgs if m.get("kind") == "t" and m.get("device") == "panel"
              for s in m["samples"]}
    assert points.get("model") == "EA-PANEL-2"
    assert points.get("staff.door") == "Closed" and "main.mode" in points
    access = [m["doc"]["data"] for m in msgs if m.get("kind") == "e" and (m.get("doc") or {}).get("kind") == "access"]
    assert {a["decision"] for a in access} == {"granted", "denied"}, access
    assert all(re.fullmatch(r"[0-9a-f]{16}", a["credential"]) for a in access), access
    for secret in ("Demo Person", "CARD-0001", "CARD-0666", "demo-panel-pw"):
        assert secret not in r.stdout
