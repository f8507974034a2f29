"""`edge-agent diag device PANEL`: the services, the doors the panel has, one events subscription."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.core.agentkit import ROOT
from tests.peers.mosquitto import Broker
from tests.peers.panel import AccessPanel

from .test_agent import panel_site


def test_diag_panel(access_panel: AccessPanel, tmp_path: Path) -> None:
    broker = Broker(tmp_path)  # never started: diag needs no broker
    doors = "        - {token: Door_1, name: main}\n        - {token: Door_9, name: ghost}\n"
    site = panel_site(tmp_path, broker, {"panel": access_panel}, doors)
    r = subprocess.run([sys.executable, "-m", "agent.tools.cli", "diag", "device", "panel", "--config", str(site),
                        "--json"], capture_output=True, text=True, cwd=ROOT, timeout=90)
    doc = json.loads(r.stdout)
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["door control"]["ok"] and "Door_1=Main entrance, Door_2=Staff entrance" in steps["door control"][
        "detail"], steps
    assert steps["events subscription"]["ok"] and "PullPoint created" in steps["events subscription"]["detail"]
    points = {p["point"]: p for p in doc["points"]}
    assert points["main.mode"]["value"] == "Locked"
    assert "the panel has no door 'Door_9'" in points["ghost.mode"]["error"]
    assert access_panel.stats()["subscriptions_live"] == 0  # the diag's subscription was dropped
    assert access_panel.password not in r.stdout + r.stderr
