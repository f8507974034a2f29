"""Fusion of the local filter with the camera's own motion events (ONVIF), per camera ``mode``:

- ``local``: the filter alone (the camera's events are not read).
- ``camera``: the camera's motion state alone (the filter still gives the snapshot of peak motion and health).
- ``either``: motion when either says so (most recall: cameras with good analytics plus our filter).
- ``both``: the camera's motion counts only when the filter also saw an object within ``window`` seconds
  (fewest false alarms: a camera that alarms on rain or lights, confirmed by the filter).

A pure function of the filter's verdict and the camera's state; the tracker downstream does the hysteresis.
"""

from __future__ import annotations

import dataclasses
import threading

from .analysis import FrameResult


class CameraMotion:
    """The camera's motion state as its events report it; written by the event loop, read by the reader thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = False
        self.last_active = float("-inf")  # time the camera last said motion (or still says it)

    def update(self, ts: float, active: bool) -> None:
        with self._lock:
            self.active = active
            self.last_active = max(self.last_active, ts)

    def seen_within(self, now: float, window: float) -> bool:
        with self._lock:
            return self.active or now - self.last_active <= window


class LocalMotion:
    """When the filter last saw an object (reader thread only)."""

    def __init__(self) -> None:
        self.last = float("-inf")


def fuse(mode: str, r: FrameResult, now: float, cam: CameraMotion, local: LocalMotion,
         window: float) -> FrameResult:
    if mode == "local":
        return r
    if r.raw:
        local.last = now
    if mode == "camera":
        on = cam.active
        return dataclasses.replace(r, motion=on, raw=on)
    if mode == "either":
        on = r.motion or cam.active
        return dataclasses.replace(r, motion=on, raw=r.raw or cam.active)
    # both: the camera's event confirmed by the filter within the window (either order)
    confirmed = cam.seen_within(now, window) and now - local.last <= window
    return dataclasses.replace(r, motion=confirmed and (r.motion or cam.active), raw=confirmed and r.raw)
