"""Motion pre-filter: quality and cost against a Frigate-style baseline, in one run on the same clips.

1. Labelled synthetic clips (tests/motion/clips.py: crossings and distractors, ground truth per frame), run
   through three detectors: ours (drivers/motion/analysis.py), a Frigate-style running average (100 px high,
   threshold 30, contour area > 10 px, alpha 0.01, recalibration when most of the frame changes) and a MOG2
   background with a global-change gate and 3-of-5 persistence. Prints ms per analysed frame, clip recall and
   the share of distractor clips that alarm.
2. CPU share of one core for one camera: a 640x360 15 fps video file played in real time by the reader thread
   (decode of every frame included), analysed at 5 fps.
3. N readers (default 4) for --minutes: RSS over time (flat or not) and the event loop's lag while they run
   (why threads are enough: OpenCV releases the GIL while it decodes and filters).

    python bench/motion.py [--seeds 4] [--cpu-seconds 20] [--streams 4] [--minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.motion import MotionParams  # noqa: E402
from drivers.motion.analysis import MotionFilter  # noqa: E402
from drivers.motion.reader import StreamReader  # noqa: E402
from tests.motion.clips import Score, clip_set, make_clip, write_clip  # noqa: E402


class FrigateStyle:
    """Frigate's motion detector as its docs and code describe it, re-implemented for comparison."""

    def __init__(self) -> None:
        self.avg: np.ndarray | None = None
        self.kernel = np.ones((3, 3), np.uint8)

    def analyse(self, frame: np.ndarray) -> bool:
        g = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        h, w = g.shape
        g = cv2.resize(g, (round(w * 100 / h), 100), interpolation=cv2.INTER_LINEAR)
        g = cv2.normalize(g, None, 0, 255, cv2.NORM_MINMAX)  # contrast stretch
        f = cv2.GaussianBlur(g, (3, 3), 0).astype(np.float32)
        if self.avg is None:
            self.avg = f.copy()
            return False
        d = cv2.absdiff(f, self.avg)
        cv2.accumulateWeighted(f, self.avg, 0.01)
        t = cv2.dilate((d > 30).astype(np.uint8) * 255, self.kernel, iterations=2)
        if np.count_nonzero(t) > 0.8 * t.size:  # "lightning": recalibrate
            self.avg = f.copy()
            return False
        contours, _ = cv2.findContours(t, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return any(cv2.contourArea(c) > 10 for c in contours)


class Mog2Gated:
    """MOG2 background, global-change gate (relearn), 3 of 5 persistence."""

    def __init__(self) -> None:
        self.mog = cv2.createBackgroundSubtractorMOG2(history=100, varThreshold=25, detectShadows=False)
        self.recent: deque[bool] = deque(maxlen=5)
        self.kernel = np.ones((3, 3), np.uint8)

    def analyse(self, frame: np.ndarray) -> bool:
        g = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        h, w = g.shape
        g = cv2.GaussianBlur(cv2.resize(g, (round(w * 120 / h), 120), interpolation=cv2.INTER_AREA), (5, 5), 0)
        fg = self.mog.apply(g)
        if np.count_nonzero(fg) > 0.3 * fg.size:
            self.mog.apply(g, learningRate=1.0)
            self.recent.clear()
            return False
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self.kernel)
        n, _, stats, _ = cv2.connectedComponentsWithStats(fg)
        self.recent.append(bool(n > 1 and stats[1:, cv2.CC_STAT_AREA].max() >= 0.001 * fg.size))
        return sum(self.recent) >= 3


def quality(seeds: int) -> None:
    """Each clip is generated, run through every detector, then dropped (52 clips would hold 2.7 GB)."""
    rows: list[tuple[str, Callable[[], Callable[[np.ndarray], bool]]]] = [
        ("edge-agent filter", lambda: (lambda f, m=MotionFilter(): m.analyse(f).motion)),
        ("Frigate-style running average", lambda: FrigateStyle().analyse),
        ("MOG2 + gate + 3-of-5", lambda: Mog2Gated().analyse),
    ]
    scores = [Score() for _ in rows]
    spent = [0.0 for _ in rows]
    frames = 0
    t0 = time.perf_counter()
    for clip in clip_set(seeds):
        frames += len(clip.frames)
        for i, (_, make) in enumerate(rows):
            det = make()
            motion = []
            for frame in clip.frames:
                t = time.perf_counter()
                motion.append(det(frame))
                spent[i] += time.perf_counter() - t
            scores[i].add(clip, motion)
    s0 = scores[0]
    print(f"clips: {s0.positives + s0.distractors} ({s0.positives} with a crossing, {s0.distractors} distractors), "
          f"640x360, {frames} frames, {time.perf_counter() - t0:.0f} s in all")
    print(f"{'detector':32} {'ms/frame':>9} {'recall':>7} {'false alarms':>13}  alarmed on")
    for (name, _), s, sp in zip(rows, scores, spent, strict=True):
        kinds = sorted({a.rsplit("-", 1)[0] for a in s.alarmed})
        print(f"{name:32} {sp / frames * 1000:9.3f} {s.recall:7.2f} {s.false_alarms:12.0%}   {', '.join(kinds) or '-'}"
              + (f"  (missed: {', '.join(s.missed)})" if s.missed else ""))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _video(tmp: Path) -> tuple[Path, str]:
    clip = make_clip("person", 7)
    path = tmp / "cam.mp4"
    for codec in ("mp4v",):  # MPEG-4 part 2: the pip OpenCV has no H.264 encoder (decoding H.264 works)
        out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 15.0, (640, 360))
        if out.isOpened():
            for _ in range(4):
                for f in clip.frames:
                    for _ in range(3):
                        out.write(f)
            out.release()
            return path, codec
    return write_clip(clip, tmp / "cam.avi", fps=15, repeat=4), "MJPG"


def cpu_share(tmp: Path, seconds: float) -> None:
    path, codec = _video(tmp)
    results = []
    rd = StreamReader(str(path), MotionParams(), lambda ts, r, f: results.append(r.motion),
                      lambda s, d: None, fps=5, realtime=True)
    time.sleep(0.5)
    c0, w0 = _cpu(), time.monotonic()
    rd.start()
    time.sleep(seconds)
    c1, w1 = _cpu(), time.monotonic()
    rd.stop()
    st = rd.stats
    share = (c1 - c0) / (w1 - w0)
    print(f"one camera, 640x360 {codec} 15 fps decoded whole, analysed at 5 fps, {seconds:.0f} s: "
          f"{share:.1%} of one core (goal <= 3 %); {st.frames_in / (w1 - w0):.1f} fps in, "
          f"{st.analysed / (w1 - w0):.1f} fps analysed, "
          f"filter {st.analysis_s / max(1, st.analysed) * 1000:.3f} ms/frame in the reader thread")


async def _lag(seconds: float) -> tuple[float, float]:
    lags = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - t - 0.01)
    lags.sort()
    return lags[len(lags) // 2] * 1000, lags[int(len(lags) * 0.99)] * 1000


def soak(tmp: Path, streams: int, minutes: float) -> None:
    path, codec = _video(tmp)
    base_lag = asyncio.run(_lag(3))
    readers = [StreamReader(str(path), MotionParams(), lambda ts, r, f: None, lambda s, d: None, fps=5,
                            realtime=True, name=f"cam{i}") for i in range(streams)]
    for rd in readers:
        rd.start()
    rss = []
    c0, w0 = _cpu(), time.monotonic()
    lag = asyncio.run(_lag(5))
    end = w0 + minutes * 60
    while time.monotonic() < end:
        rss.append(_rss_mib())
        time.sleep(min(10.0, max(0.1, end - time.monotonic())))
    rss.append(_rss_mib())
    c1, w1 = _cpu(), time.monotonic()
    for rd in readers:
        rd.stop()
    tenth = max(1, len(rss) // 10)
    early = max(rss[tenth:2 * tenth] or rss[:1])
    print(f"{streams} streams ({codec}, files replayed in a loop) for {minutes:g} min: "
          f"{(c1 - c0) / (w1 - w0) / streams:.1%} of one core per stream; RSS {rss[0]:.0f} MiB at start, "
          f"{early:.0f} MiB after {minutes / 10:g} min, {rss[-1]:.0f} MiB at the end (max {max(rss):.0f}); "
          f"reconnects {sum(r.stats.reconnects for r in readers)} (end of file each loop)")
    print(f"event loop lag (asyncio.sleep(10 ms) overshoot) median/p99: idle {base_lag[0]:.2f}/{base_lag[1]:.2f} ms, "
          f"with {streams} reader threads {lag[0]:.2f}/{lag[1]:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4, help="clips per kind")
    ap.add_argument("--cpu-seconds", type=float, default=20.0)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=10.0)
    a = ap.parse_args()
    cv2.setNumThreads(1)
    quality(a.seeds)
    with tempfile.TemporaryDirectory() as d:
        cpu_share(Path(d), a.cpu_seconds)
        if a.minutes > 0:
            soak(Path(d), a.streams, a.minutes)


if __name__ == "__main__":
    main()
