"""The demo can practise failures: one simulated device is stopped and started again while the rest runs, by
schedule (--fail) and from another terminal (`demo stop|start NAME`); the demo itself keeps running.

Runs the real demo (Mosquitto, the Modbus simulators, the agent, the monitor) on loopback in a temporary
work directory, and reads what the monitor decodes from the broker."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo" / "run.py"

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                                reason="mosquitto not installed")


def ctl(work: Path, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEMO), *words, "--workdir", str(work)], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def availability(lines: list[dict[str, Any]], device: str) -> list[str]:
    return [m["doc"]["data"]["state"] for m in lines
            if m.get("kind") == "e" and m["topic"].endswith(f"/{device}") and (m.get("doc") or {}).get("kind")
            == "availability"]


def telemetry_times(lines: list[tuple[float, dict[str, Any]]], device: str) -> list[float]:
    return [t for t, m in lines if m.get("kind") == "t" and m.get("device") == device]


def test_stop_and_restart_one_simulated_device_while_the_rest_runs(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, str(DEMO), "--workdir", str(work), "--seconds", "40", "--json", "--sims", "modbus",
         "--interval", "1s", "--fail", "kitchen:4s:6s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    got: list[tuple[float, dict[str, Any]]] = []
    try:
        assert proc.stdout is not None
        t0 = time.monotonic()
        stopped_by_hand = restarted_by_hand = None
        for line in proc.stdout:
            now = time.monotonic() - t0
            got.append((now, json.loads(line)))
            msgs = [m for _, m in got]
            # From another terminal: stop the boiler once kitchen is back, start it again 4 s later.
            if stopped_by_hand is None and availability(msgs, "kitchen")[-1:] == ["online"] and \
                    "offline" in availability(msgs, "kitchen"):
                r = ctl(work, "stop", "boiler")
                assert r.returncode == 0 and "boiler: simulator stopped" in r.stdout, r.stdout + r.stderr
                stopped_by_hand = now
            if stopped_by_hand is not None and restarted_by_hand is None and now > stopped_by_hand + 4:
                listing = ctl(work, "devices").stdout
                assert "boiler" in listing and "stopped" in listing.split("boiler", 1)[1].splitlines()[0], listing
                r = ctl(work, "start", "boiler")
                assert r.returncode == 0 and "boiler: simulator started" in r.stdout, r.stdout + r.stderr
                restarted_by_hand = now
            if restarted_by_hand is not None and availability(msgs, "boiler")[-1:] == ["online"] and \
                    "offline" in availability(msgs, "boiler"):
                break
        else:
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"demo ended before the devices came back (rc {proc.returncode}):\n{err[-3000:]}")
        assert proc.poll() is None, "the demo still runs after a simulator was stopped"
        # The demo turns the metrics listener on: scrape it while everything runs.
        listen = re.search(r"listen: '([^']+)'", (work / "site.yaml").read_text())
        assert listen, "no metrics.listen in the demo's site file"
        with urllib.request.urlopen(f"http://{listen.group(1)}/metrics", timeout=5) as resp:
            scrape = resp.read().decode()
        assert re.search(r'^edge_agent_device_up\{device="tgbt-main"\} 1\.0$', scrape, re.M), scrape[:2000]
    finally:
        proc.terminate()  # the demo stops its broker, simulators, agent and monitor on SIGTERM
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # only if the demo left something of its own behind
    assert proc.returncode == 0, err
    msgs = [m for _, m in got]
    print(err)
    assert availability(msgs, "kitchen")[-2:] == ["offline", "online"], availability(msgs, "kitchen")
    assert availability(msgs, "boiler")[-2:] == ["offline", "online"], availability(msgs, "boiler")
    assert "--fail: kitchen: simulator stopped" in err and "--fail: kitchen: simulator started" in err
    # The rest ran on: the main meter kept reporting while kitchen was down.
    off = next(t for t, m in got if m.get("kind") == "e" and m["topic"].endswith("/kitchen")
               and (m.get("doc") or {}).get("data", {}).get("state") == "offline")
    back = next(t for t, m in got if t > off and m.get("kind") == "e" and m["topic"].endswith("/kitchen")
                and (m.get("doc") or {}).get("data", {}).get("state") == "online")
    assert any(off < t < back for t in telemetry_times(got, "tgbt-main")), "tgbt-main reported during the outage"


def test_control_without_a_running_demo_says_so(tmp_path: Path) -> None:
    r = ctl(tmp_path, "stop", "kitchen")
    assert r.returncode == 3 and "no demo running" in r.stderr and "Traceback" not in r.stderr
    r = ctl(tmp_path, "stop")
    assert r.returncode == 2 and "needs a DEVICE" in r.stderr
