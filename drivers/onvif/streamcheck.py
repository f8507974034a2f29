"""Open a camera stream with OpenCV and read one frame (``edge-agent diag device`` for a camera).

Blocking: run it in a thread. OpenCV is imported here only, when the check runs; without it the check says so.
"""

from __future__ import annotations

import os
import time
from urllib.parse import quote, urlsplit, urlunsplit

from .session import strip_credentials


def with_credentials(uri: str, user: str, password: str) -> str:
    parts = urlsplit(uri)
    if not user or parts.username or not parts.hostname:
        return uri
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def read_one_frame(uri: str, user: str, password: str, timeout: float = 10.0) -> tuple[bool, str]:
    """(ok, detail): the frame's size and the time it took, or why not (never the password)."""
    try:
        import cv2
    except ImportError as exc:
        return False, f"OpenCV is not installed ({exc.name})"
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    shown = strip_credentials(uri) or uri
    t0 = time.monotonic()
    ms = int(timeout * 1000)
    cap = cv2.VideoCapture(with_credentials(uri, user, password), cv2.CAP_FFMPEG,
                           [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    try:
        if not cap.isOpened():
            return False, f"cannot open {shown} (RTSP over TCP) within {timeout:g} s"
        ok, frame = cap.read()
        if not ok or frame is None:
            return False, f"{shown} opened but no frame decoded within {timeout:g} s"
        h, w = frame.shape[:2]
        return True, f"{w}x{h} frame decoded from {shown} in {time.monotonic() - t0:.1f} s"
    finally:
        cap.release()
