"""Helpers shared by peer fixtures: free ports, readiness polling, clean process teardown, simulator processes."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or pred}")


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@dataclass
class SimProcess:
    """A simulator of ours (``python -m MODULE --host 127.0.0.1 --port P --user U --password PW ...``) as a real
    process on loopback. It keeps its port across restarts, so a restart is a reboot; faults are set through its
    unauthenticated control URLs (``/control/<what>``)."""

    module: ClassVar[str]  # e.g. "drivers.onvif.sim"
    log_prefix: ClassVar[str]  # the log file is <workdir>/<prefix>-<port>.log

    workdir: Path
    port: int = field(default_factory=free_port)
    user: str = "admin"
    password: str = ""
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.log_prefix}-{self.port}.log"

    def start(self) -> Self:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--host", "127.0.0.1", "--port", str(self.port),
                 "--user", self.user, "--password", self.password, *self.extra],
                stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
            )
        proc = self.proc
        wait_for(lambda: port_open("127.0.0.1", self.port) or proc.poll() is not None, 15, what=self.module)
        if proc.poll() is not None:
            raise RuntimeError(self.log.read_text())
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        """A reboot: the process goes away (its subscriptions with it) and comes back on the same port."""
        self.stop()
        self.start()

    def control(self, what: str, method: str = "POST", **query: Any) -> dict[str, Any]:
        qs = urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        url = f"http://127.0.0.1:{self.port}/control/{what}" + (f"?{qs}" if qs else "")
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result
