"""Labelled synthetic clips for the motion filter: real crossings and the distractors users complain about.

No labelled motion data set can be installed, so clips are generated with known ground truth: a textured
static scene, then per frame either an object crossing (``truth[i]`` True while it is in view) or a
distractor (light switch, slow illumination ramp, IR day/night switch, sensor noise, rain, swaying foliage,
moving cloud shadow, heavy JPEG artefacts) with ``truth`` all False. Every clip starts with a warm-up during
which its steady conditions (rain, sway, noise) already run but nothing happens: a detector on a box has been
running for a while when the event comes. Frames are BGR uint8 like OpenCV's decoder gives them.

The same seed gives the same clip (``numpy.random.default_rng``); ``write_clip`` stores one as a video file
for the reader, the RTSP server and ``edge-agent motion test``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

FPS = 5.0  # analysed frame rate of the clips (the filter's default)
WARMUP = 30  # frames of steady conditions before anything happens (6 s at 5 fps)
LENGTH = 75  # frames in all (15 s)

Frame = np.ndarray


@dataclass
class Clip:
    name: str
    kind: str  # "person", "small", or the distractor's name
    frames: list[Frame]
    truth: list[bool]  # per frame: a real object is in view
    fps: float = FPS
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def positive(self) -> bool:
        return any(self.truth)


def _scene(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A static textured scene (float32 gray 0..255): smooth shading, blocks (walls, windows), fine texture."""
    low = cv2.resize(rng.uniform(60, 170, (6, 10)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = low.copy()
    for _ in range(14):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        bw, bh = int(rng.integers(w // 20, w // 4)), int(rng.integers(h // 20, h // 3))
        img[y0:y0 + bh, x0:x0 + bw] += float(rng.uniform(-40, 40))
    fine = cv2.GaussianBlur(rng.normal(0, 10, (h, w)).astype(np.float32), (0, 0), 1.2)
    return np.clip(img + fine, 10, 240).astype(np.float32)


def _to_bgr(gray: np.ndarray, tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Frame:
    g = np.clip(gray, 0, 255)
    return np.dstack([np.clip(g * t, 0, 255) for t in tint]).astype(np.uint8)


def _blob(canvas: np.ndarray, cx: float, cy: float, bw: float, bh: float, delta: float,
          rng: np.random.Generator) -> None:
    """A person-like shape (body ellipse plus head) darker or brighter than the scene, with a little texture."""
    h, w = canvas.shape
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (int(cx), int(cy + bh * 0.1)), (max(1, int(bw / 2)), max(1, int(bh * 0.4))), 0, 0, 360, 255, -1)
    cv2.circle(mask, (int(cx), int(cy - bh * 0.38)), max(1, int(bw * 0.28)), 255, -1)
    sel = mask > 0
    if not sel.any():
        return
    # clothes: a colour of their own (the scene's local mean shifted by delta) with a little texture
    base = float(canvas[sel].mean()) + delta
    canvas[sel] = np.clip(base + rng.normal(0, 6, int(sel.sum())), 5, 250)


def _crossing(rng: np.random.Generator, w: int, h: int, size: float, seconds: float, contrast: float,
              n: int) -> tuple[list[tuple[float, float]], list[bool], float, float]:
    """Positions of an object crossing the frame during frames WARMUP.., and the per-frame truth."""
    bh = h * size
    bw = bh * 0.4
    y = float(rng.uniform(h * 0.35, h * 0.85 - bh / 2)) if size < 0.3 else float(h * 0.55)
    left = bool(rng.integers(0, 2))
    steps = max(2, int(seconds * FPS))
    xs = np.linspace(-bw, w + bw, steps)
    if not left:
        xs = xs[::-1]
    pos: list[tuple[float, float]] = []
    truth: list[bool] = []
    for i in range(n):
        k = i - WARMUP
        if 0 <= k < steps:
            x = float(xs[k])
            pos.append((x, y + float(rng.normal(0, 0.5))))
            truth.append(-bw / 2 < x < w + bw / 2)
        else:
            pos.append((float("nan"), y))
            truth.append(False)
    return pos, truth, bw, bh


def _rain(canvas: np.ndarray, rng: np.random.Generator, drops: int) -> None:
    h, w = canvas.shape
    streaks = np.zeros((h, w), np.float32)
    xs = rng.integers(0, w, drops)
    ys = rng.integers(0, h, drops)
    lens = rng.integers(h // 30, h // 12, drops)
    for x, y, ln in zip(xs, ys, lens, strict=True):
        cv2.line(streaks, (int(x), int(y)), (int(x + ln // 5), int(y + ln)), 1.0, 1)
    canvas += streaks * float(rng.uniform(35, 60))


def _foliage(scene: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    h, w = scene.shape
    tw, th = w // 4, h // 3
    x0, y0 = int(rng.integers(0, w - tw)), int(rng.integers(0, h // 2))
    leaves = cv2.GaussianBlur(rng.normal(0, 1, (th + 16, tw + 16)).astype(np.float32), (0, 0), 2.0)
    leaves = np.clip(90 + leaves * 160, 20, 230)
    return leaves, (x0, y0, tw, th)


def _jpeg(frame: Frame, quality: int) -> Frame:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def make_clip(kind: str, seed: int, w: int = 640, h: int = 360, n: int = LENGTH) -> Clip:
    """One clip: kind is person, small, person_rain, small_noise, person_dusk (positives) or a distractor:
    light_switch, illum_ramp, ir_switch, noise, rain, foliage, cloud_shadow, jpeg."""
    rng = np.random.default_rng(seed * 1009 + sum(map(ord, kind)))
    scene = _scene(rng, w, h)
    truth = [False] * n
    pos: list[tuple[float, float]] = []
    bw = bh = 0.0
    delta = 0.0
    if kind.startswith("person") or kind.startswith("small"):
        small = kind.startswith("small")
        size = float(rng.uniform(0.09, 0.13)) if small else float(rng.uniform(0.35, 0.55))
        seconds = float(rng.uniform(6, 9)) if small else float(rng.uniform(3, 5))
        delta = float(rng.uniform(35, 60)) * (1 if rng.integers(0, 2) else -1)
        pos, truth, bw, bh = _crossing(rng, w, h, size, seconds, delta, n)
    noise = float(rng.uniform(2, 4))
    if kind in ("noise", "small_noise"):
        noise = float(rng.uniform(9, 12))
    gain = np.ones(n, np.float32)
    spot: np.ndarray | None = None
    if kind == "light_switch":
        # a lamp lights part of the scene (a pool of light), or the whole room's lights go off
        at = WARMUP + int(rng.integers(5, 20))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        r = rng.uniform(0.3, 0.6) * w
        spot = np.clip(1.0 - ((xx - cx) ** 2 + (yy - cy) ** 2) / r ** 2, 0, 1).astype(np.float32)
        strength = float(rng.uniform(0.4, 0.8)) * (1 if rng.integers(0, 2) else -0.8)
        gain_map = [np.ones((h, w), np.float32) if i < at else 1 + strength * spot for i in range(n)]
    if kind == "illum_ramp":
        gain = np.concatenate([np.ones(WARMUP), np.linspace(1.0, float(rng.uniform(0.45, 0.6)), n - WARMUP)])
    leaves = None
    if kind == "foliage":
        leaves, box = _foliage(scene, rng)
        amp = float(rng.uniform(3, 6)) * w / 640
        period = float(rng.uniform(1.0, 3.0)) * FPS
    shadow = None
    if kind == "cloud_shadow":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        sr = rng.uniform(0.35, 0.6) * w
        sy = rng.uniform(0.2, 0.8) * h
        speed = rng.uniform(0.01, 0.025) * w  # px per frame
        depth = float(rng.uniform(0.3, 0.5))
        shadow = (xx, yy, sr, sy, speed, depth)
    ir_at = WARMUP + int(rng.integers(5, 20))
    frames: list[Frame] = []
    for i in range(n):
        g = scene.copy()
        if leaves is not None:
            x0, y0, tw, th = box
            dx = round(amp * np.sin(2 * np.pi * i / period + rng.normal(0, 0.3)))
            dy = round(amp * 0.3 * np.sin(2 * np.pi * i / (period * 1.3)))
            g[y0:y0 + th, x0:x0 + tw] = leaves[8 + dy:8 + dy + th, 8 + dx:8 + dx + tw]
        if pos and not np.isnan(pos[i][0]):
            _blob(g, pos[i][0], pos[i][1], bw, bh, delta, rng)
        if kind == "light_switch":
            g = g * gain_map[i]
        if shadow is not None:
            xx, yy, sr, sy, speed, depth = shadow
            cx = -sr + speed * (i + 20)
            d = np.sqrt((xx - cx) ** 2 + ((yy - sy) * 1.6) ** 2)
            g = g * (1 - depth * np.clip((sr - d) / (0.4 * sr), 0, 1))
        g = g * gain[i]
        if kind in ("rain", "person_rain"):
            _rain(g, rng, drops=int(w * h / 900))
        sigma = noise
        if kind in ("noise", "small_noise"):
            g = g * 0.45 + 8  # a dim scene with the gain turned up: strong sensor noise
        if kind == "ir_switch" and i >= ir_at:
            g = np.clip((g - g.mean()) * 1.5 + 140, 0, 255)  # IR: flat colour, other contrast
            sigma = noise * 2.5
        if kind == "person_dusk":
            g = g * 0.5 + 5
        g = g + rng.standard_normal((h, w), dtype=np.float32) * np.float32(sigma)
        tint = (1.0, 1.0, 1.0) if kind == "ir_switch" and i >= ir_at else (0.92, 1.0, 1.06)
        frame = _to_bgr(g, tint)
        if kind == "jpeg":
            frame = _jpeg(frame, int(rng.integers(4, 9)))
        frames.append(frame)
    return Clip(f"{kind}-{seed}", kind, frames, truth)


POSITIVES = ("person", "small", "person_rain", "small_noise", "person_dusk")
DISTRACTORS = ("light_switch", "illum_ramp", "ir_switch", "noise", "rain", "foliage", "cloud_shadow", "jpeg")


def clip_set(seeds: int = 3, w: int = 640, h: int = 360) -> Iterator[Clip]:
    """Every kind with ``seeds`` seeds each: positives first."""
    for kind in POSITIVES + DISTRACTORS:
        for seed in range(seeds):
            yield make_clip(kind, seed, w, h)


def write_clip(clip: Clip, path: Path, fps: float | None = None, repeat: int = 1) -> Path:
    """The clip as an MJPEG AVI (OpenCV can always write and read it); frames repeated to reach ``fps``."""
    fps = fps or clip.fps
    rep = max(1, round(fps / clip.fps))
    h, w = clip.frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert out.isOpened(), path
    for _ in range(repeat):
        for f in clip.frames:
            for _ in range(rep):
                out.write(f)
    out.release()
    return path


Scorer = Callable[[Clip], bool]


@dataclass
class Score:
    """Clip-level figures: recall over positive clips, false-alarm share over distractor clips."""

    hits: int = 0
    positives: int = 0
    alarms: int = 0
    distractors: int = 0
    missed: list[str] = field(default_factory=list)
    alarmed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.hits / self.positives if self.positives else 1.0

    @property
    def false_alarms(self) -> float:
        return self.alarms / self.distractors if self.distractors else 0.0

    def add(self, clip: Clip, motion: list[bool]) -> None:
        """``motion``: the detector's verdict per frame. A positive clip is caught when motion is reported while
        the object is in view (or within a second after); a distractor alarms on any motion after the warm-up."""
        if clip.positive:
            self.positives += 1
            first = clip.truth.index(True)
            last = len(clip.truth) - 1 - clip.truth[::-1].index(True)
            if any(motion[first:last + int(clip.fps) + 1]):
                self.hits += 1
            else:
                self.missed.append(clip.name)
        else:
            self.distractors += 1
            if any(motion[WARMUP:]):
                self.alarms += 1
                self.alarmed.append(clip.name)
