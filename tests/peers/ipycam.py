"""ipycam (PyPI, a virtual ONVIF camera) as a second, independent camera peer.

ipycam binds 0.0.0.0 and announces itself by WS-Discovery multicast, so it runs ONLY inside a network
namespace that the test creates (``in_namespace()`` refuses anything else). It depends on the GUI build of
OpenCV, which conflicts with the agent's headless one: it lives in its own virtual environment,
``.peers/ipycam`` (made by scripts/setup, pinned version; ``ensure_venv()`` makes it lazily otherwise).
It serves device, media and PTZ services (no events service), a snapshot behind HTTP basic auth and, when
Debian's ffmpeg is installed, RTSP; without ffmpeg it falls back to MJPEG, which these tests do not need.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from .common import free_port, port_open, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
VERSION = "1.3.0"
VENV = ROOT / ".peers" / "ipycam"
PYTHON = VENV / "bin" / "python"


def installed() -> bool:
    if not PYTHON.exists():
        return False
    r = subprocess.run([str(PYTHON), "-c", "import importlib.metadata as m; print(m.version('ipycam'))"],
                       capture_output=True, text=True, timeout=60)
    return r.returncode == 0 and r.stdout.strip() == VERSION


def ensure_venv() -> str | None:
    """None when ipycam is there (made now if missing), else why it could not be installed."""
    if installed():
        return None
    r = subprocess.run([str(ROOT / "scripts" / "setup-ipycam")], capture_output=True, text=True,
                       timeout=900)
    if r.returncode or not installed():
        return f"ipycam {VERSION} could not be installed in {VENV}: {(r.stderr or r.stdout)[-500:]}"
    return None


def in_namespace() -> bool:
    """True only in a network namespace whose single interface is the loopback (made by the test)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


class IpyCam:
    """One ipycam process with its own config file; call only inside the test's network namespace."""

    def __init__(self, workdir: Path, source: Path, user: str, password: str, **config: object) -> None:
        if not in_namespace():
            raise RuntimeError("ipycam binds 0.0.0.0 and multicasts: run it only inside a test network namespace")
        self.workdir, self.source = workdir, source
        self.user, self.password = user, password
        self.port = free_port()
        self.config = {"local_ip": "127.0.0.1", "onvif_port": self.port, "rtsp_port": free_port(),
                       "web_port": free_port(), "username": user, "password": password, "show_timestamp": False,
                       "hw_accel": "cpu", **config}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IpyCam:
        cfg = self.workdir / f"ipycam-{self.port}.json"
        cfg.write_text(json.dumps(self.config))
        log = (self.workdir / f"ipycam-{self.port}.log").open("ab")
        env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "NO_PROXY": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([str(PYTHON), "-m", "ipycam", "--config", str(cfg), "--source",
                                      str(self.source), "--log-level", "WARNING"],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        log.close()
        wait_for(lambda: port_open("127.0.0.1", self.port) or self.proc.poll() is not None, 30, what="ipycam")
        if self.proc.poll() is not None:
            raise RuntimeError((self.workdir / f"ipycam-{self.port}.log").read_text())
        return self

    def log(self) -> str:
        return (self.workdir / f"ipycam-{self.port}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


__all__ = ["PYTHON", "VERSION", "IpyCam", "ensure_venv", "in_namespace", "installed"]
