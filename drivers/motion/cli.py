"""``edge-agent motion test FILE_OR_URL``: run the motion filter on a clip or a stream and print its events, so an
installer can tune a camera on site. OpenCV is imported only when the command runs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agent.tools.args import json_arg
from agent.tools.helptext import epilog


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "motion", help="motion pre-filter: try the filter on a clip or a camera stream",
        description="Tools for the on-box motion pre-filter (docs/motion.md).",
        epilog=epilog(["edge-agent motion test /tmp/hall.mp4"], {0: "done", 3: "the stream could not be opened"}))
    sub = p.add_subparsers(dest="motion_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(sys.stderr), 2)[1])
    t = sub.add_parser(
        "test", help="run the motion filter on a video file or a stream and print its events",
        description="Open a video file or a camera stream (rtsp://, over TCP), run the motion filter on it at the "
                    "analysis rate and print each motion event (start, update, end) with its time, zones, peak area "
                    "and score, then a summary (frames, gated frames, ms per frame). Filter settings come from a "
                    "profile (--profile, its device.filter and device.events) and --set overrides, so a camera can "
                    "be tuned on site before the settings go into the profile or the site file. --strip writes a "
                    "PNG of the frames where motion started, boxes drawn, beside the filter's mask. A file is read "
                    "as fast as it decodes; a stream is read for --seconds.",
        epilog=epilog(["edge-agent motion test /var/tmp/hall.mp4",
                       "edge-agent motion test rtsp://viewer@192.0.2.10/sub --seconds 120",
                       "edge-agent motion test hall.mp4 --set min_area=0.003 --set threshold=20 --strip /tmp/hall.png",
                       "edge-agent motion test hall.mp4 --profile /etc/edge-agent/profiles/hall-camera.yaml --json"],
                      {0: "the clip or stream was analysed (events may be none)",
                       3: "the file or stream could not be opened"}))
    t.add_argument("source", metavar="FILE_OR_URL", help="video file, or rtsp:// URL of the camera's sub stream")
    t.add_argument("--profile", metavar="FILE", help="profile whose device.filter and device.events are used")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one filter setting, e.g. min_area=0.003 or persistence=[2,4] (repeatable)")
    t.add_argument("--fps", type=float, default=None, metavar="FPS", help="frames analysed per second (default 5)")
    t.add_argument("--seconds", type=float, default=60.0, metavar="SECONDS",
                   help="how long to read a stream (default 60); a file is read to its end")
    t.add_argument("--strip", metavar="PNG", help="write an image strip of the frames where motion started")
    json_arg(t, "one JSON object per event on stdout, then the summary")
    t.set_defaults(func=cmd_test)


def _settings(args: argparse.Namespace) -> tuple[Any, Any, float]:
    from . import MotionDevice

    device: dict[str, Any] = {}
    if args.profile:
        try:
            doc = yaml.safe_load(Path(args.profile).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read the profile {args.profile}: {exc}") from None
        device = dict(doc.get("device") or {}) if isinstance(doc, dict) else {}
    filt = dict(device.get("filter") or {})
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected KEY=VALUE")
        filt[key.strip()] = yaml.safe_load(val)
    device["filter"] = filt
    if args.fps is not None:
        device["fps"] = args.fps
    from pydantic import ValidationError

    try:
        cfg = MotionDevice.model_validate(device)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    return cfg.filter, cfg.events, cfg.fps


def _tile(frame: Any, res: Any, width: int = 320) -> Any:
    import cv2
    import numpy as np

    h, w = frame.shape[:2]
    img = cv2.resize(frame, (width, round(h * width / w)))
    mh, mw = res.mask.shape if res.mask is not None else (1, 1)
    sx, sy = img.shape[1] / mw, img.shape[0] / mh
    for x, y, bw, bh in res.boxes:
        cv2.rectangle(img, (int(x * sx), int(y * sy)), (int((x + bw) * sx), int((y + bh) * sy)), (0, 0, 255), 2)
    mask = res.mask if res.mask is not None else np.zeros((mh, mw), np.uint8)
    mask = cv2.cvtColor(cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST),
                        cv2.COLOR_GRAY2BGR)
    return np.hstack([img, mask])


def cmd_test(args: argparse.Namespace) -> int:
    try:
        params, events, fps = _settings(args)
    except ValueError as exc:
        print(f"edge-agent motion test: {exc}", file=sys.stderr)
        return 2
    import cv2
    import numpy as np

    from .analysis import MotionFilter
    from .events import MotionTracker
    from .reader import is_live, redact

    live = is_live(args.source)
    if not live and not Path(args.source).is_file():
        print(f"edge-agent motion test: {args.source}: no such file", file=sys.stderr)
        return 3
    cap = cv2.VideoCapture(args.source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000,
                                                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5_000])
    if not cap.isOpened():
        print(f"edge-agent motion test: cannot open {redact(args.source)}", file=sys.stderr)
        return 3
    fps_in = cap.get(cv2.CAP_PROP_FPS)
    fps_in = fps_in if 1.0 <= fps_in <= 120.0 else 15.0
    step = max(1, round(fps_in / fps))
    filt = MotionFilter(params, keep_mask=bool(args.strip))
    tracker = MotionTracker("test", events)
    tiles: list[Any] = []
    n = analysed = gated = 0
    spent = 0.0
    t0 = time.monotonic()
    ts = 0.0
    try:
        while not (live and time.monotonic() - t0 > args.seconds):
            if not cap.grab():
                break
            n += 1
            if (n - 1) % step:
                continue
            ok, frame = cap.retrieve()
            if not ok:
                continue
            ts = (n - 1) / fps_in
            t = time.perf_counter()
            res = filt.analyse(frame)
            spent += time.perf_counter() - t
            analysed += 1
            gated += res.gated
            for ev in tracker.feed(ts, res, frame):
                _print(ev.state, ev.data, args.json)
                if ev.state == "start" and args.strip and len(tiles) < 8:
                    tiles.append(_tile(frame, res))
    finally:
        cap.release()
    for ev in tracker.close(ts):
        _print(ev.state, ev.data, args.json)
    summary = {"frames": n, "analysed": analysed, "gated": gated, "events": tracker.count,
               "ms_per_frame": round(spent / max(1, analysed) * 1000, 3)}
    if args.strip:
        if tiles:
            width = max(t.shape[1] for t in tiles)
            cv2.imwrite(args.strip, np.vstack([cv2.copyMakeBorder(t, 0, 0, 0, width - t.shape[1],
                                                                   cv2.BORDER_CONSTANT) for t in tiles]))
            summary["strip"] = args.strip
        else:
            print("no motion: no strip written", file=sys.stderr)
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(f"{n} frames, {analysed} analysed ({gated} gated as lighting/IR/camera change), "
              f"{tracker.count} motion event(s), {summary['ms_per_frame']} ms per analysed frame")
    return 0


def _print(state: str, data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data))
        return
    t = data.get("end", data["start"]) if state == "end" else data["start"]
    zones = ",".join(data["zones"]) or "-"
    print(f"{t:9.1f} s  {state:<6}  zones {zones:<16} peak area {data['peak_area']:.2%}  score {data['score']:.2f}")
