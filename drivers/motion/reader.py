"""One reader thread per camera: decode the stream continuously, analyse at a set rate, reconnect with backoff.

A thread, not a process: OpenCV releases the GIL while it decodes, resizes and filters, so the event loop
keeps running (bench/motion.py measures the loop's lag with 4 readers), and a thread shares the frame of
peak motion for the snapshot without copying it across processes. Results go to the caller through
callbacks run in the reader thread (the driver hands them to the event loop with ``call_soon_threadsafe``).

Timeouts: FFmpeg's open and read timeouts (``CAP_PROP_OPEN_TIMEOUT_MSEC``, ``CAP_PROP_READ_TIMEOUT_MSEC``) end
a blocked open or read; RTSP runs over TCP. A stream that ends, stalls or fails to decode is released and
opened again after a backoff (1 s doubling to ``backoff_max``); every transition is reported once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from . import MotionParams
from .analysis import FrameResult, MotionFilter

log = logging.getLogger(__name__)
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
MAX_DECODE_ERRORS = 25  # frames in a row that fail to decode before the stream is opened again

OnResult = Callable[[float, FrameResult, np.ndarray], None]
OnState = Callable[[str, str], None]


def is_live(source: str) -> bool:
    return "://" in source


def redact(source: str) -> str:
    """The source without a password (rtsp://user:pw@host/ -> rtsp://user:***@host/)."""
    if "://" in source and "@" in source.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = source.split("://", 1)
        cred, host = rest.split("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return source


@dataclass
class StreamStats:
    frames_in: int = 0
    analysed: int = 0
    decode_errors: int = 0
    reconnects: int = 0
    connected: bool = False
    last_frame: float = 0.0  # monotonic time of the last decoded frame
    analysis_s: float = 0.0  # time spent in the filter
    state: str = "starting"


class StreamReader:
    def __init__(self, source: str, params: MotionParams, on_result: OnResult, on_state: OnState, *,
                 fps: float = 5.0, open_timeout: float = 10.0, read_timeout: float = 5.0,
                 realtime: bool = True, backoff_max: float = 30.0, name: str = "motion") -> None:
        self.source = source
        self.filter = MotionFilter(params)
        self.on_result = on_result
        self.on_state = on_state
        self.fps = fps
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.realtime = realtime
        self.backoff_max = backoff_max
        self.name = name
        self.stats = StreamStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"motion:{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _state(self, state: str, detail: str = "") -> None:
        if state != self.stats.state:
            self.stats.state = state
            self.on_state(state, detail)

    def _open(self) -> cv2.VideoCapture | None:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout * 1000)]
        cap = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _run(self) -> None:
        backoff = 1.0
        first = True
        while not self._stop.is_set():
            if not first:
                self.stats.reconnects += 1
            first = False
            cap = self._open()
            if cap is None:
                self._state("unreachable", f"cannot open {redact(self.source)}")
            else:
                try:
                    why = self._read(cap)
                except Exception as exc:  # a frame the filter cannot take must not end the camera's thread
                    log.exception("%s: reader failed", self.name)
                    why = ("garbage", f"{type(exc).__name__}: {exc}")
                finally:
                    cap.release()
                    self.stats.connected = False
                if self.stats.analysed:
                    backoff = 1.0
                self._state(why[0], why[1])
            if self._stop.wait(backoff):
                break
            backoff = min(self.backoff_max, backoff * 2)

    def _read(self, cap: cv2.VideoCapture) -> tuple[str, str]:
        """Read until the stream fails or we are stopped: (state, detail) saying why it ended."""
        fps_in = cap.get(cv2.CAP_PROP_FPS)
        fps_in = fps_in if 1.0 <= fps_in <= 120.0 else 15.0
        step = max(1, round(fps_in / self.fps))
        live = is_live(self.source)
        self.filter.reset()
        t0 = time.monotonic()
        n = 0
        next_due = t0
        bad = 0
        while not self._stop.is_set():
            if not cap.grab():
                if live:
                    return "stalled", f"no frame within {self.read_timeout:g} s or the stream closed"
                return "ended", "end of file"
            now = time.monotonic()
            n += 1
            st = self.stats
            st.frames_in += 1
            st.last_frame = now
            if not st.connected:
                st.connected = True
                self._state("streaming", f"{fps_in:g} fps in, analysing {min(self.fps, fps_in):g} fps")
            if self.realtime and not live:  # a file played as a camera would send it
                delay = t0 + n / fps_in - now
                if delay > 0 and self._stop.wait(delay):
                    break
            if live:
                if now < next_due:
                    continue
                next_due = max(next_due + 1.0 / self.fps, now)
            elif (n - 1) % step:
                continue
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                st.decode_errors += 1
                bad += 1
                if bad >= MAX_DECODE_ERRORS:
                    return "garbage", f"{bad} frames in a row failed to decode"
                continue
            bad = 0
            t = time.perf_counter()
            res = self.filter.analyse(frame)
            st.analysis_s += time.perf_counter() - t
            st.analysed += 1
            ts = time.time() if (live or self.realtime) else (n - 1) / fps_in
            self.on_result(ts, res, frame)
        return "stopped", ""
