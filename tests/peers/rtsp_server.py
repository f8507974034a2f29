"""A loopback RTSP server (Debian's GStreamer RTSP server) serving a video file as H.264, for the motion tests.

Run with the system Python, which has the GObject bindings (python3-gi, gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 tests/peers/rtsp_server.py --port PORT --file CLIP.avi [--path /sub]

Each client gets its own pipeline from the start of the file; at the end of the file the stream ends (the
client sees it end and opens it again). Prints "ready" on stdout once listening. Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--path", default="/sub")
    a = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( filesrc location={a.file} ! avidemux ! jpegdec ! videoconvert ! video/x-raw,format=I420 ! "
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(False)
    server.get_mount_points().add_factory(a.path, factory)
    if server.attach(None) == 0:
        print("cannot listen", file=sys.stderr)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
