"""WS-Discovery inside a network namespace this test creates (multicast routed on its loopback only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.onvif.discovery import parse_matches
from tests.peers.common import stop_process

ROOT = Path(__file__).resolve().parents[2]
ADDR = "10.99.0.1"


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns)")
    ns = f"ea-onvif-{os.getpid()}"
    cmds = [["ip", "netns", "add", ns], ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "addr", "add", f"{ADDR}/32", "dev", "lo"],
            ["ip", "-n", ns, "link", "set", "lo", "multicast", "on"],
            ["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "lo"]]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.CalledProcessError) as exc:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        pytest.skip(f"ip netns not permitted here: {getattr(exc, 'stderr', '') or exc}")
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.root
def test_discover_finds_cameras_with_and_without_the_wrapper(netns: str, tmp_path: Path) -> None:
    procs = []
    try:
        for port, serial, extra in ((8081, "A1", []), (8082, "B2", ["--discovery-bare"])):
            log = (tmp_path / f"sim-{port}.log").open("wb")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "drivers.onvif.sim", "--host", ADDR,
                 "--port", str(port), "--serial", serial, "--model", f"M-{serial}", "--discovery", *extra],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 15
        while not all("ready" in (tmp_path / f"sim-{p}.log").read_text() for p in (8081, 8082)):
            assert time.monotonic() < deadline, [(tmp_path / f"sim-{p}.log").read_text() for p in (8081, 8082)]
            time.sleep(0.05)
        r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "agent.tools.cli", "onvif",
                            "discover", "--json", "--timeout", "1.5"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        found = json.loads(r.stdout)
        assert [(c["address"], c["port"], c["model"]) for c in found] == [(ADDR, 8081, "M-A1"), (ADDR, 8082, "M-B2")]
        assert found[0]["name"] == "EdgeSim-A1" and found[0]["location"] == "hall"
        assert "onvif://www.onvif.org/hardware/M-B2" in found[1]["scopes"]
        text = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "agent.tools.cli", "onvif",
                               "discover", "--timeout", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert f"{ADDR}:8081" in text.stdout and "M-A1" in text.stdout
    finally:
        for p in procs:
            stop_process(p)
    # nobody answers: exit 3
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "agent.tools.cli", "onvif", "discover",
                        "--timeout", "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "no camera answered" in r.stderr


def test_parser_accepts_hello_and_ignores_noise() -> None:
    hello = (b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope" '
             b'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"><e:Body><d:Hello><d:XAddrs>'
             b"http://192.0.2.9/onvif/device_service</d:XAddrs><d:Scopes>onvif://www.onvif.org/hardware/X9"
             b"</d:Scopes></d:Hello></e:Body></e:Envelope>")
    [m] = parse_matches(hello, "192.0.2.9")
    assert (m["address"], m["port"], m["model"]) == ("192.0.2.9", 80, "X9")
    bare = hello.replace(b"hardware/X9", b"name/Front Door%202 onvif://www.onvif.org/hardware/X9")
    [m] = parse_matches(bare, "192.0.2.9")
    assert m["name"] == "Front Door 2" and m["model"] == "X9" and len(m["scopes"]) == 2, m
    assert parse_matches(b"not xml", "x") == [] and parse_matches(b"<a/>", "x") == []
