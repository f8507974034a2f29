"""The motion filter on labelled synthetic clips: recall, false alarms, cost; masks, zones, gate, events."""

from __future__ import annotations

import time

from drivers.motion import MotionEvents, MotionParams, Zone
from drivers.motion.analysis import FrameResult, MotionFilter
from drivers.motion.events import MotionTracker
from tests.motion.clips import DISTRACTORS, POSITIVES, WARMUP, Clip, Score, make_clip


def _run(clips: list[Clip], params: MotionParams | None = None) -> tuple[Score, float]:
    score = Score()
    spent = 0.0
    frames = 0
    for clip in clips:
        f = MotionFilter(params)
        motion = []
        for frame in clip.frames:
            t = time.perf_counter()
            motion.append(f.analyse(frame).motion)
            spent += time.perf_counter() - t
            frames += 1
        score.add(clip, motion)
    return score, spent / frames * 1000


def test_recall_and_false_alarms_on_labelled_clips(labelled_clips: list[Clip]) -> None:
    kinds = {c.kind for c in labelled_clips}
    assert kinds == set(POSITIVES) | set(DISTRACTORS)
    score, ms = _run(labelled_clips)
    print(f"recall {score.recall:.2f} false alarms {score.false_alarms:.2f} ({score.alarmed}) {ms:.3f} ms/frame")
    assert score.positives >= 20 and score.distractors >= 30
    assert score.recall >= 0.95, score.missed
    assert score.false_alarms <= 0.10, score.alarmed
    # the goal is <= 1 ms on an idle box (bench/motion.py measures it); a shared test machine gets some slack
    assert ms < 3.0


def test_each_defence_matters(labelled_clips: list[Clip]) -> None:
    """Without the global gate, the flicker map and the light test, the same clips alarm: the distractors are
    real and the assertion above can fail."""
    distractors = [c for c in labelled_clips if not c.positive]
    naive = MotionParams(global_gate=1.0, flicker=1.0, shadow=1.0, noise_factor=0.0, persistence=(1, 1))
    score, _ = _run(distractors, naive)
    assert score.false_alarms > 0.3, score.alarmed


def test_a_mask_hides_what_moves_behind_it() -> None:
    clip = make_clip("person", 1)
    assert _run([clip])[0].hits == 1
    everywhere = MotionParams(masks=[[(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]])
    f = MotionFilter(everywhere)
    assert not any(f.analyse(fr).raw for fr in clip.frames)


def test_events_name_the_zones_touched_and_sensitivity_counts() -> None:
    clip = make_clip("small", 2)
    zones = [Zone(name="left", polygon=[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]),
             Zone(name="right", polygon=[(0.5, 0), (1, 0), (1, 1), (0.5, 1)])]
    f = MotionFilter(MotionParams(zones=zones))
    seen = {z for fr in clip.frames for z in f.analyse(fr).zones}
    assert seen == {"left", "right"}  # a crossing touches both halves
    # a zone 4x less sensitive than needed: the small object is no longer an object there
    deaf = [z.model_copy(update={"sensitivity": 0.1}) for z in zones]
    f = MotionFilter(MotionParams(zones=deaf))
    assert not any(f.analyse(fr).motion for fr in clip.frames)


def test_a_light_switch_is_gated_and_relearned() -> None:
    clip = make_clip("light_switch", 0)
    f = MotionFilter()
    results = [f.analyse(fr) for fr in clip.frames]
    assert any(r.gated for r in results[WARMUP:])
    assert not any(r.motion for r in results)
    assert not results[-1].gated  # relearned: the lit scene is the background now


def _fr(motion: bool, area: float = 0.01, zones: list[str] | None = None) -> FrameResult:
    return FrameResult(motion, motion, area if motion else 0.0, zones or [])


def test_tracker_start_updates_end_and_rate_limit() -> None:
    tr = MotionTracker("cam", MotionEvents(quiet=2.0, update_every=1.0, max_per_minute=2))
    out = []
    t = 100.0
    for i in range(10):  # 2 s of motion at 5 fps, peak at frame 3
        out += tr.feed(t, _fr(True, 0.05 if i == 3 else 0.01, ["door"]))
        t += 0.2
    for _ in range(15):
        out += tr.feed(t, _fr(False))
        t += 0.2
    states = [e.state for e in out]
    assert states == ["start", "update", "end"], states
    end = out[-1].data
    assert end["zones"] == ["door"] and end["peak_area"] == 0.05 and end["score"] > 0.3
    assert end["end"] - end["start"] >= 1.7
    # a storm: starts beyond max_per_minute are suppressed and counted in the next allowed start
    starts = 0
    for k in range(8):
        for ok in (True, False, False, False, False, False, False, False, False, False, False, False):
            for e in tr.feed(t, _fr(ok)):
                starts += e.state == "start"
                if e.state == "start" and k > 0:
                    raise AssertionError("rate limit broken")
            t += 0.2
    assert starts == 1  # one more was allowed in the first minute (the first episode used one)
    t += 61
    ev = [e for e in tr.feed(t, _fr(True)) if e.state == "start"]
    assert ev and ev[0].data["suppressed"] >= 6
