"""The reader thread on real video files and real sockets: decimation, health, end/stall/garbage, reconnect."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from drivers.motion import MotionParams
from drivers.motion.analysis import FrameResult
from drivers.motion.reader import StreamReader, redact
from tests.motion.clips import make_clip, write_clip


class Seen:
    def __init__(self) -> None:
        self.results: list[tuple[float, FrameResult]] = []
        self.states: list[tuple[str, str]] = []

    def result(self, ts: float, r: FrameResult, frame: object) -> None:
        self.results.append((ts, r))

    def state(self, state: str, detail: str) -> None:
        self.states.append((state, detail))


def _wait(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_file_is_decoded_whole_and_analysed_at_the_set_rate(tmp_path: Path) -> None:
    clip = make_clip("person", 0)
    path = write_clip(clip, tmp_path / "person.avi", fps=15)
    seen = Seen()
    rd = StreamReader(str(path), MotionParams(), seen.result, seen.state, fps=5, realtime=False)
    rd.start()
    try:
        _wait(lambda: rd.stats.reconnects >= 1, 20)  # the file ended and was opened again
    finally:
        rd.stop()
    assert not rd.alive
    assert rd.stats.frames_in >= 3 * len(clip.frames)
    first = [r for ts, r in seen.results[: len(clip.frames)]]
    assert len(first) == len(clip.frames)  # 15 fps in, 5 fps analysed
    assert any(r.motion for r in first)
    assert ("ended", "end of file") in seen.states
    assert seen.states[0][0] == "streaming"


def test_unreachable_and_silent_servers_are_reported_not_hung(tmp_path: Path) -> None:
    # a loopback server that accepts and never says a word: the open timeout ends the attempt
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    seen = Seen()
    rd = StreamReader(f"rtsp://u:secret@127.0.0.1:{port}/sub", MotionParams(), seen.result, seen.state,
                      open_timeout=1.0, read_timeout=1.0, backoff_max=1.0)
    t0 = time.monotonic()
    rd.start()
    try:
        _wait(lambda: rd.stats.reconnects >= 2, 15)
    finally:
        rd.stop()
        stop.set()
        th.join()
        srv.close()
        for s in held:
            s.close()
    assert time.monotonic() - t0 < 15
    assert seen.states[0][0] == "unreachable"
    assert "secret" not in seen.states[0][1] and "u:***@127.0.0.1" in seen.states[0][1]
    assert not rd.alive


def test_a_garbage_file_is_unreachable_and_retried(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.avi"
    bad.write_bytes(b"RIFF" + bytes(range(256)) * 400)
    seen = Seen()
    rd = StreamReader(str(bad), MotionParams(), seen.result, seen.state, backoff_max=1.0)
    rd.start()
    try:
        _wait(lambda: rd.stats.reconnects >= 1, 10)
    finally:
        rd.stop()
    assert seen.states and seen.states[0][0] == "unreachable"
    assert not seen.results


def test_redact() -> None:
    assert redact("rtsp://admin:pw@10.0.0.1:554/s") == "rtsp://admin:***@10.0.0.1:554/s"
    assert redact("/var/clips/a.avi") == "/var/clips/a.avi"


def test_a_filter_failure_does_not_end_the_reader(tmp_path: Path) -> None:
    """Fault injection: the filter raises on one frame; the reader reports it, reopens and goes on."""
    path = write_clip(make_clip("person", 0), tmp_path / "p.avi", fps=15)
    seen = Seen()
    rd = StreamReader(str(path), MotionParams(), seen.result, seen.state, realtime=False, backoff_max=1.0)
    real = rd.filter.analyse
    calls = [0]

    def flaky(frame: object) -> FrameResult:
        calls[0] += 1
        if calls[0] == 10:
            raise ValueError("injected")
        return real(frame)  # type: ignore[arg-type]

    rd.filter.analyse = flaky  # type: ignore[method-assign]
    rd.start()
    try:
        _wait(lambda: len(seen.results) > 100, 20)
    finally:
        rd.stop()
    assert ("garbage", "ValueError: injected") in seen.states
    assert rd.stats.reconnects >= 1 and not rd.alive
