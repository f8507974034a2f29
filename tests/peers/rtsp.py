"""RTSP server fixture: tests/peers/rtsp_server.py (GStreamer, system Python) on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.peers.common import free_port, port_open, stop_process, wait_for

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PY = "/usr/bin/python3"


def available() -> str | None:
    """None when the GStreamer RTSP server can run here, else why not."""
    if not Path(SYSTEM_PY).exists():
        return "no /usr/bin/python3"
    r = subprocess.run([SYSTEM_PY, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                        "from gi.repository import GstRtspServer; gi.require_version('Gst', '1.0'); "
                        "from gi.repository import Gst; Gst.init(None); "
                        "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('avidemux')"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode:
        return "GStreamer RTSP server missing (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 " \
               "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)"
    return None


class RtspServer:
    def __init__(self, clip: Path, path: str = "/sub") -> None:
        self.clip = clip
        self.path = path
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self) -> RtspServer:
        env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1")
        self.proc = subprocess.Popen([SYSTEM_PY, str(SERVER), "--port", str(self.port), "--file", str(self.clip),
                                      "--path", self.path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        wait_for(lambda: port_open("127.0.0.1", self.port), 15, what="RTSP server")
        return self

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing flows: a stalled camera."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            stop_process(self.proc)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


__all__ = ["RtspServer", "available"]
