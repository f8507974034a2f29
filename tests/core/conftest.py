"""Fixtures shared by the core tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.peers.common import free_port, stop_process, wait_for

from .agentkit import ROOT


@pytest.fixture
def modbus_sim() -> Iterator[Callable[..., int]]:
    """Start the shipped Modbus simulator (a real pymodbus server) for profile:unit pairs; returns its port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*devices: str) -> int:
        port = free_port()
        cmd = [sys.executable, "-m", "drivers.modbus.sim", "--host", "127.0.0.1", "--port", str(port)]
        for d in devices:
            prof, _, unit = d.partition(":")
            cmd += ["--device", f"{ROOT / 'profiles' / prof}.yaml:{unit}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append(proc)
        out = proc.stdout
        assert out is not None
        wait_for(lambda: b"simulating" in out.readline(), 20, what="modbus simulator")
        return port

    yield start
    for p in procs:
        stop_process(p)
