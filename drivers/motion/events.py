"""From per-frame verdicts to motion events: start, updates at most every ``update_every`` seconds, end after
``quiet`` seconds without motion; starts rate-limited per camera so a storm cannot flood the uplink."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import MotionEvents
from .analysis import FrameResult


@dataclass
class MotionEvent:
    state: str  # start | update | end
    data: dict[str, Any]
    frame: np.ndarray | None = None  # the frame of peak motion so far (for the snapshot), start only


@dataclass
class _Episode:
    id: str
    start: float
    last_motion: float
    last_sent: float
    zones: list[str] = field(default_factory=list)
    peak_area: float = 0.0
    peak_frame: np.ndarray | None = None
    frames: int = 0
    moving: int = 0


class MotionTracker:
    """Hysteresis and rate limit for one camera. ``feed`` is given the analysis time of each frame."""

    def __init__(self, camera: str, cfg: MotionEvents | None = None) -> None:
        self.camera = camera
        self.cfg = cfg or MotionEvents()
        self.ep: _Episode | None = None
        self.starts: deque[float] = deque()
        self.suppressed = 0
        self.count = 0

    @property
    def active(self) -> bool:
        return self.ep is not None

    def feed(self, ts: float, r: FrameResult, frame: np.ndarray | None = None) -> list[MotionEvent]:
        ep = self.ep
        if ep is None:
            if not r.motion:
                return []
            while self.starts and self.starts[0] <= ts - 60.0:
                self.starts.popleft()
            if len(self.starts) >= self.cfg.max_per_minute:
                self.suppressed += 1
                return []
            self.starts.append(ts)
            self.count += 1
            ep = self.ep = _Episode(f"{self.camera}-{int(ts * 1000)}", ts, ts, ts)
            self._note(ep, r, frame)
            data = self._data(ep, "start")
            if self.suppressed:
                data["suppressed"] = self.suppressed
                self.suppressed = 0
            return [MotionEvent("start", data, ep.peak_frame)]
        self._note(ep, r, frame)
        if r.raw or r.motion:
            ep.last_motion = ts
        if ts - ep.last_motion >= self.cfg.quiet:
            self.ep = None
            out = self._data(ep, "end")
            out["end"] = round(ep.last_motion, 3)
            return [MotionEvent("end", out)]
        if (r.raw or r.motion) and ts - ep.last_sent >= self.cfg.update_every:
            ep.last_sent = ts
            return [MotionEvent("update", self._data(ep, "update"))]
        return []

    def close(self, ts: float) -> list[MotionEvent]:
        """The stream went away: end an open episode now."""
        ep, self.ep = self.ep, None
        if ep is None:
            return []
        out = self._data(ep, "end")
        out["end"] = round(ts, 3)
        return [MotionEvent("end", out)]

    def _note(self, ep: _Episode, r: FrameResult, frame: np.ndarray | None) -> None:
        ep.frames += 1
        if r.raw:
            ep.moving += 1
        for z in r.zones:
            if z not in ep.zones:
                ep.zones.append(z)
        if r.area > ep.peak_area:
            ep.peak_area = r.area
            if frame is not None:
                ep.peak_frame = frame.copy()

    def _data(self, ep: _Episode, state: str) -> dict[str, Any]:
        return {"state": state, "id": ep.id, "start": round(ep.start, 3), "zones": list(ep.zones),
                "peak_area": round(ep.peak_area, 4), "score": round(ep.moving / max(1, ep.frames), 2)}
