"""ipycam, an independent virtual ONVIF camera, through the running agent to Mosquitto.

ipycam binds 0.0.0.0 and multicasts, so ipycam, Mosquitto and the agent all run in a network namespace this
test creates (``unshare -n``, loopback only: nothing it sends can leave). The work happens in
tests/onvif/ipycam_inside.py, which prints what reached the broker; this test asserts on it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import ipycam

ROOT = Path(__file__).resolve().parents[2]


def _run_inside(tmp_path: Path) -> dict:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace (unshare -n); CI runs as root")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode:
        pytest.skip(f"network namespaces are not permitted here: {probe.stderr.strip()}")
    why = ipycam.ensure_venv()
    if why:
        pytest.fail(why)
    # loopback up, multicast routed on it (WS-Discovery), an address of the namespace's own for the probe
    setup = ("ip link set lo up && ip link set lo multicast on && ip addr add 10.99.0.1/32 dev lo && "
             "ip route add 224.0.0.0/4 dev lo && ")
    cmd = ["unshare", "-n", "--", "sh", "-c", setup + 'exec "$0" -m tests.onvif.ipycam_inside "$1"',
           sys.executable, str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    doc: dict = json.loads(r.stdout.strip().splitlines()[-1])
    return doc


@pytest.mark.root
def test_ipycam_facts_and_snapshot_reach_the_broker(tmp_path: Path) -> None:
    doc = _run_inside(tmp_path)
    f = doc["facts"]
    assert not doc["errors"], doc
    assert f["online"] is True
    assert f["manufacturer"] == "IPyCam-Test" and f["model"] == "VirtualCam-T", f
    assert f["firmware"] == ipycam.VERSION and f["serial"] == "PY-4242", f
    assert re.fullmatch(r"rtsp://127\.0\.0\.1:\d+/video_main", f["main_stream_uri"]), f
    assert f["sub_stream_uri"].endswith("/video_sub") and "@" not in f["sub_stream_uri"], f
    assert (f["main_resolution"], f["main_codec"], f["main_fps"]) == ("640x360", "H264", 10), f
    assert f["sub_resolution"] == "320x180", f
    assert f["profiles"] == "MainStream 640x360 H264 10fps; SubStream 320x180 H264 5fps", f
    assert f["snapshot_supported"] is True and f["ptz"] is True and f["events_supported"] is False, f
    assert abs(f["clock_offset"]) <= 2.0, f
    # its snapshot wants HTTP basic auth: the driver's auto mode falls back from digest
    assert doc["ack"]["ok"], doc["ack"]
    pic = doc["picture"]
    assert pic["format"] == "JPEG" and pic["size"] == [640, 360] and pic["retain"] is False, pic
    assert pic["topic"].startswith("ea/v1/t1/s/ipy/"), pic
    # a wrong password: ipycam answers HTTP 401 with a bare fault (no ter:NotAuthorized subcode); it must still
    # be told as a refused login (no quick retries that lock the account), not as a protocol error
    bad = [a for a in doc["availability_bad"] if a.get("state") == "offline"]
    assert bad and bad[0]["reason"].startswith("auth: connect: the camera refused the login"), bad
    # no events service: the camera is online, nothing loops on a missing subscription
    assert not any(a.get("state") == "offline" for a in doc["availability"]), doc["availability"]
    # its discovery answer has no ProbeMatches wrapper: our tolerant parser still lists it
    disc = doc["discover"]
    assert disc["rc"] == 0, disc
    [found] = disc["found"]
    assert found["address"] == "127.0.0.1" and found["port"] > 0, found
    # its name scope carries an unescaped space ("name/Hall Cam 2"): kept whole, not split into two scopes
    assert found["name"] == "Hall Cam 2" and "onvif://www.onvif.org/name/Hall Cam 2" in found["scopes"], found
    assert found["xaddrs"][0].endswith("/onvif/device_service"), found
    assert doc["password_in_payloads"] is False and doc["password_in_logs"] is False
