"""A simulated ONVIF camera (drivers/onvif/sim.py) as a real process on loopback, started by the tests.

It keeps its port across restarts, so a restart is a camera reboot: every subscription is forgotten. Faults
(motion, dropped renews, slow answers) are set through its control URLs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .common import free_port, port_open, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pw-9f1"  # tests grep every payload and log line for it


@dataclass
class OnvifCamera:
    workdir: Path
    port: int = field(default_factory=free_port)
    user: str = "admin"
    password: str = PASSWORD
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OnvifCamera:
        log = (self.workdir / f"onvif-sim-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drivers.onvif.sim", "--host", "127.0.0.1", "--port", str(self.port),
             "--user", self.user, "--password", self.password, *self.extra],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        log.close()
        wait_for(lambda: port_open("127.0.0.1", self.port) or self.proc.poll() is not None, 15, what="onvif sim")
        if self.proc.poll() is not None:
            raise RuntimeError((self.workdir / f"onvif-sim-{self.port}.log").read_text())
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        """A reboot: the process goes away (its subscriptions with it) and comes back on the same port."""
        self.stop()
        self.start()

    def control(self, what: str, **query: Any) -> dict[str, Any]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        url = f"http://127.0.0.1:{self.port}/control/{what}" + (f"?{qs}" if qs else "")
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def motion(self, on: bool = True) -> None:
        self.control("motion", on=int(on))

    def stats(self) -> dict[str, Any]:
        return self.control("stats")


@pytest.fixture
def onvif_camera(tmp_path: Path) -> Iterator[OnvifCamera]:
    cam = OnvifCamera(tmp_path).start()
    yield cam
    cam.stop()
