"""The motion filter: a pure function of the frames it is given (no I/O, no clock), run off the event loop.

Per analysed frame: gray -> downscale to ``height`` px -> blur -> masks (set to a constant, so the background
model never sees them) -> gain compensation (the frame's mean brought to the background's: slow ramps and
exposure steps cancel) -> difference to a running-average background, thresholded at the larger of
``threshold`` and ``noise_factor`` times the frame's measured noise -> flicker map (pixels that change in many
recent frames, such as foliage or water, are ignored) -> morphology -> connected areas of at least
``min_area`` (scaled by zone sensitivity) -> shadow/light test (an area whose texture still matches the
background is a change of light, not an object) -> global gate (a large share changing at once is lighting, IR
or the camera moving: the background is relearned at once and nothing is reported) -> persistence (k of n).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from . import MotionParams, Polygon

FLICKER_RATE = 0.05  # per analysed frame: the flicker map remembers about the last 20 frames
MAX_BLOBS = 12  # areas examined per frame (largest first)


@dataclass(slots=True)
class FrameResult:
    """The filter's verdict on one frame."""

    motion: bool  # persistent motion (k of the last n frames)
    raw: bool  # an object was seen in this frame
    area: float  # share of the picture covered by accepted objects
    zones: list[str] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x, y, w, h at analysis size
    gated: bool = False  # global change: background relearned
    changed: float = 0.0  # share of the picture above threshold (before gate and filters)
    mask: np.ndarray | None = None  # foreground mask at analysis size, when asked for (debug)


def _raster(polys: list[Polygon], w: int, h: int) -> np.ndarray:
    out = np.zeros((h, w), np.uint8)
    for poly in polys:
        pts = np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in poly], np.int32)
        cv2.fillPoly(out, [pts], 255)
    return out


class MotionFilter:
    """State of the filter for one camera. ``analyse`` takes BGR or gray uint8 frames of any size."""

    def __init__(self, params: MotionParams | None = None, keep_mask: bool = False) -> None:
        self.p = params or MotionParams()
        self.keep_mask = keep_mask
        self.size: tuple[int, int] | None = None  # analysis (w, h)
        self.bg: np.ndarray | None = None
        self.flick: np.ndarray | None = None
        self.valid: np.ndarray | None = None  # 255 where analysed
        self.zone_maps: list[tuple[str, float, np.ndarray]] = []
        self.recent: deque[bool] = deque(maxlen=self.p.persistence[1])
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))

    def reset(self) -> None:
        """Forget the background (after a reconnect: the picture may have changed)."""
        self.bg = None
        self.flick = None
        self.recent.clear()

    def _setup(self, shape: tuple[int, ...]) -> None:
        h0, w0 = shape[:2]
        h = min(self.p.height, h0)
        w = max(8, round(w0 * h / h0))
        self.size = (w, h)
        self.valid = 255 - _raster(self.p.masks, w, h) if self.p.masks else np.full((h, w), 255, np.uint8)
        self.zone_maps = [(z.name, z.sensitivity, _raster([z.polygon], w, h)) for z in self.p.zones]
        self.min_px = max(2.0, self.p.min_area * w * h)
        self.n_valid = max(1, int(np.count_nonzero(self.valid)))

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """Gray, downscaled, blurred, masked float32 picture at analysis size."""
        if self.size is None or self.valid is None:
            self._setup(frame.shape)
        assert self.size is not None and self.valid is not None
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        small = gray
        while small.shape[0] >= 2 * self.size[1]:  # exact halving by area is fast and averages the noise out
            small = cv2.resize(small, (small.shape[1] // 2, small.shape[0] // 2), interpolation=cv2.INTER_AREA)
        small = cv2.resize(small, self.size, interpolation=cv2.INTER_LINEAR)
        small = cv2.GaussianBlur(small, (5, 5), 0)
        out = small.astype(np.float32)
        if self.p.masks:
            out[self.valid == 0] = 0.0  # masked areas stay 0 in the frame and the background: never changed
        return out

    def analyse(self, frame: np.ndarray) -> FrameResult:
        f = self.prepare(frame)
        if self.bg is None or self.flick is None or self.bg.shape != f.shape:
            self.bg = f.copy()
            self.flick = np.zeros_like(f)
            self.recent.clear()
            return FrameResult(False, False, 0.0)
        bg = self.bg
        mb = float(bg.mean())
        mf = float(f.mean())
        if mf > 1.0:
            f *= min(2.0, max(0.5, mb / mf))
        absd = cv2.absdiff(f, bg)
        fg: np.ndarray = (absd > self.p.threshold).astype(np.uint8)
        changed = float(np.count_nonzero(fg)) / self.n_valid
        if changed > self.p.global_gate:
            # lighting, IR switch or camera movement: relearn now, report nothing, forget partial evidence
            self.bg = f
            self.recent.clear()
            return FrameResult(False, False, 0.0, gated=True, changed=changed,
                               mask=fg * 255 if self.keep_mask else None)
        sigma = 1.4826 * float(np.median(absd[::3, ::3]))  # the frame's noise, robust to the objects in it
        if self.p.noise_factor * sigma > self.p.threshold:
            fg = (absd > self.p.noise_factor * sigma).astype(np.uint8)
        cv2.accumulateWeighted(fg.astype(np.float32), self.flick, FLICKER_RATE)
        fg[self.flick > self.p.flicker] = 0
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self.kernel)
        fg = cv2.dilate(fg, self.kernel)
        boxes, zones, area = self._objects(fg, f, bg)
        cv2.accumulateWeighted(f, bg, self.p.alpha)
        raw = bool(boxes)
        self.recent.append(raw)
        k = self.p.persistence[0]
        return FrameResult(sum(self.recent) >= k, raw, area, zones, boxes, False, changed,
                           fg * 255 if self.keep_mask else None)

    def _objects(self, fg: np.ndarray, f: np.ndarray,
                 bg: np.ndarray) -> tuple[list[tuple[int, int, int, int]], list[str], float]:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8, ltype=cv2.CV_16U)
        if n <= 1:
            return [], [], 0.0
        order = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:MAX_BLOBS] + 1
        boxes: list[tuple[int, int, int, int]] = []
        zones: list[str] = []
        total = 0
        w, h = self.size or (1, 1)
        for i in order:
            x, y, bw, bh, a = (int(v) for v in stats[i])
            if a < self.min_px / 4:
                break  # even the most sensitive zone wants more
            sel = labels[y:y + bh, x:x + bw] == i
            touched = [(name, sens) for name, sens, zmap in self.zone_maps
                       if np.any(zmap[y:y + bh, x:x + bw][sel])]
            sens = max((s for _, s in touched), default=1.0)
            if a < self.min_px / sens:
                continue
            if self._is_light(f[y:y + bh, x:x + bw][sel], bg[y:y + bh, x:x + bw][sel]):
                continue
            boxes.append((x, y, bw, bh))
            total += a
            for name, _ in touched:
                if name not in zones:
                    zones.append(name)
        return boxes, zones, total / float(w * h)

    def _is_light(self, a: np.ndarray, b: np.ndarray) -> bool:
        """A change of light keeps the texture: the area still correlates with the background."""
        sa = float(a.std())
        sb = float(b.std())
        if sa < 2.0 or sb < 2.0:
            return False  # flat area: texture says nothing
        corr = float(((a - a.mean()) * (b - b.mean())).mean()) / (sa * sb)
        return corr > self.p.shadow
