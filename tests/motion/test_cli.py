"""`edge-agent motion test` on real clips, as an installer runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2

from tests.motion.clips import make_clip, write_clip

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.tools.cli", "motion", "test", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_prints_events_and_writes_a_strip(tmp_path: Path) -> None:
    clip = write_clip(make_clip("person", 1), tmp_path / "hall.avi", fps=15)
    strip = tmp_path / "strip.png"
    r = _run(str(clip), "--strip", str(strip))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "start" in lines[0] and "end" in lines[1]
    assert "225 frames, 75 analysed" in lines[-1] and "1 motion event(s)" in lines[-1]
    img = cv2.imread(str(strip))
    assert img is not None and img.shape[1] == 640  # frame with boxes beside the mask


def test_json_tuning_and_errors(tmp_path: Path) -> None:
    clip = write_clip(make_clip("small", 0), tmp_path / "far.avi", fps=15)
    r = _run(str(clip), "--json")
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["state"] for d in docs[:-1]][:1] == ["start"] and docs[-1]["summary"]["events"] == 1
    # tuned less sensitive on site: the small far object no longer counts
    r = _run(str(clip), "--json", "--set", "min_area=0.02")
    assert json.loads(r.stdout.splitlines()[-1])["summary"]["events"] == 0
    r = _run(str(clip), "--set", "min_area=7", "--set", "bogus=1")
    assert r.returncode == 2 and "filter.min_area:" in r.stderr and "filter.bogus:" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run(str(tmp_path / "missing.avi"))
    assert r.returncode == 3 and "no such file" in r.stderr
    bad = tmp_path / "garbage.avi"
    bad.write_bytes(b"\0" * 5000)
    r = _run(str(bad))
    assert r.returncode == 3 and "cannot open" in r.stderr
