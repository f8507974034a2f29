"""Motion camera runtime: a reader thread per camera, events and pictures handed to the event loop.

Everything heavy (decode, filter, hysteresis, JPEG of the peak frame) runs in the reader thread; the loop only
receives finished events through a bounded queue (``call_soon_threadsafe``), so a motion storm or a slow
uplink cannot grow memory. Stream health is polled as points and reported as ``stream`` events on each
transition (streaming, stalled, ended, garbage, unreachable).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from agent.contract.driver import Driver, DriverContext, Sink
from agent.contract.points import PointBase
from agent.errors import DeviceUnreachable
from agent.model import Event, Quality, Sample, Severity, Value

from . import MotionConnection, MotionDevice, MotionPoint, MotionSnapshot
from .analysis import FrameResult
from .events import MotionTracker
from .fusion import CameraMotion, LocalMotion, fuse
from .reader import StreamReader, redact

if TYPE_CHECKING:
    from agent.contract.device import DeviceConfig

log = logging.getLogger(__name__)
QUEUE = 64  # events waiting for the loop; beyond it they are counted and dropped (the tracker rate-limits first)
BAD_STATES = {"stalled", "ended", "garbage", "unreachable"}


def encode_snapshot(frame: np.ndarray, cfg: MotionSnapshot) -> bytes:
    """The frame at most ``cfg.width`` wide as JPEG, quality lowered (then size halved) until it fits."""
    h, w = frame.shape[:2]
    if w > cfg.width:
        frame = cv2.resize(frame, (cfg.width, max(1, round(h * cfg.width / w))), interpolation=cv2.INTER_AREA)
    q = cfg.quality
    while True:
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, q])
        data = buf.tobytes() if ok else b""
        if ok and len(data) <= cfg.max_bytes:
            return data
        if q > 20:
            q -= 15
        else:
            frame = cv2.resize(frame, (max(16, frame.shape[1] // 2), max(16, frame.shape[0] // 2)))


def with_password(url: str, password_file: str | None) -> str:
    if not password_file or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    host, sep, path = rest.partition("/")
    if "@" not in host:
        return url
    user, at = host.rsplit("@", 1)
    try:
        pw = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise DeviceUnreachable(f"cannot read the RTSP password from {password_file}: {exc.strerror}") from None
    from urllib.parse import quote

    return f"{scheme}://{user}:{quote(pw, safe='')}@{at}{sep}{path}"


class MotionDriver(Driver):
    backoff_max = 5.0

    def __init__(self, device: DeviceConfig, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        conn = self.device.connection
        assert isinstance(conn, MotionConnection)
        self.conn = conn
        self.cfg = MotionDevice.model_validate(self.device.profile.device or {})
        f = self.cfg.filter
        self.params = f.model_copy(update={"masks": f.masks + conn.masks, "zones": f.zones + conn.zones})
        self.reader: StreamReader | None = None
        self.tracker = MotionTracker(self.name, self.cfg.events)
        self.queue: asyncio.Queue[tuple[Event, bytes | None]] = asyncio.Queue(QUEUE)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0
        self._last: tuple[float, int, int, float] | None = None  # time, frames_in, analysed, analysis_s
        self.camera = CameraMotion()
        self.local = LocalMotion()
        self.session: Any = None  # drivers.onvif.session.CameraSession when the camera's events are fused
        if self.cfg.mode != "local" and conn.onvif is None:
            raise ValueError(f"mode {self.cfg.mode} needs connection.onvif (the camera's ONVIF service)")

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.cfg.mode != "local" and self.conn.onvif is not None and self.session is None:
            await self._connect_camera(self.conn.onvif)
        url = with_password(self.conn.url, self.conn.password_file)
        c = self.cfg
        self.reader = StreamReader(url, self.params, self._on_result, self._on_state, fps=c.fps,
                                   open_timeout=c.open_timeout, read_timeout=c.read_timeout, realtime=c.realtime,
                                   backoff_max=c.backoff_max, name=self.name)
        self.reader.start()

    async def _connect_camera(self, oc: Any) -> None:
        from drivers.onvif.session import CameraSession

        try:
            password = oc.password.read() if oc.password is not None else ""
        except ValueError as exc:
            raise DeviceUnreachable(str(exc)) from None
        session = CameraSession(oc.host, oc.port, oc.user, password, self.device.model.timeout, True)
        try:
            await session.connect()
        except BaseException:
            await session.close()
            raise
        self.session = session

    async def stop(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()
        rd, self.reader = self.reader, None
        if rd is not None:
            await asyncio.to_thread(rd.stop, 2.0 + self.cfg.read_timeout)
            for ev in self.tracker.close(time.time()):
                self._offer(Event(self.name, "motion", ev.data, Severity.INFO), None)

    # -- in the reader thread --------------------------------------------------------------------------
    def _on_result(self, ts: float, r: FrameResult, frame: np.ndarray) -> None:
        r = fuse(self.cfg.mode, r, ts, self.camera, self.local, self.cfg.window)
        for ev in self.tracker.feed(ts, r, frame):
            jpeg = None
            if ev.state == "start" and self.cfg.snapshot.enabled and ev.frame is not None:
                jpeg = encode_snapshot(ev.frame, self.cfg.snapshot)
                ev.data["snapshot"] = True
            sev = Severity.WARNING if ev.state != "end" else Severity.INFO
            self._post(Event(self.name, "motion", ev.data, sev, ts), jpeg)

    def _on_state(self, state: str, detail: str) -> None:
        sev = Severity.WARNING if state in BAD_STATES else Severity.INFO
        if state in BAD_STATES:
            log.warning("%s: stream %s: %s", self.name, state, detail)
            for ev in self.tracker.close(time.time()):
                self._post(Event(self.name, "motion", ev.data, Severity.INFO), None)
        else:
            log.info("%s: stream %s: %s", self.name, state, detail)
        rd = self.reader
        data: dict[str, Any] = {"state": state, "detail": detail, "source": redact(self.conn.url)}
        if rd is not None:
            data["reconnects"] = rd.stats.reconnects
        self._post(Event(self.name, "stream", data, sev), None)

    def _post(self, event: Event, jpeg: bytes | None) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._offer, event, jpeg)

    # -- in the event loop -----------------------------------------------------------------------------
    def _offer(self, event: Event, jpeg: bytes | None) -> None:
        try:
            self.queue.put_nowait((event, jpeg))
        except asyncio.QueueFull:
            self.dropped += 1

    async def follow(self, sink: Sink) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.session is not None:
                tg.create_task(self._camera_events(), name=f"{self.name}:camera-events")
            while True:
                event, jpeg = await self.queue.get()
                if event.kind == "motion" and self.cfg.mode != "local":
                    event.data["mode"] = self.cfg.mode
                sink.event(event)
                if jpeg is not None:
                    sink.picture(self.name, str(event.data["id"]), jpeg)

    async def _camera_events(self) -> None:
        """The camera's own motion events (ONVIF PullPoint) update the fusion state; nothing else is sent."""
        from drivers.onvif import OnvifEvents
        from drivers.onvif.events import EventFollower

        follower = EventFollower(self.name, self.session, OnvifEvents(kinds=["motion"]))
        await follower.run(_CameraSink(self.camera))

    async def read(self, points: Sequence[PointBase]) -> list[Sample]:
        rd = self.reader
        assert rd is not None, "read before start"
        if not rd.alive:
            raise DeviceUnreachable(f"the reader of {redact(self.conn.url)} stopped")  # the supervisor restarts us
        st = rd.stats
        now = time.monotonic()
        last = self._last or (now - 1e-9, st.frames_in, st.analysed, st.analysis_s)
        self._last = (now, st.frames_in, st.analysed, st.analysis_s)
        dt = max(1e-3, now - last[0])
        n_an = st.analysed - last[2]
        connected = st.connected and now - st.last_frame < self.cfg.read_timeout
        values: dict[str, Value] = {
            "connected": connected,
            "fps_in": round((st.frames_in - last[1]) / dt, 2),
            "fps_analysed": round(n_an / dt, 2),
            "decode_errors": st.decode_errors,
            "reconnects": st.reconnects,
            "motion": self.tracker.active,
            "analysis_time": round((st.analysis_s - last[3]) / n_an, 6) if n_an else None,
        }
        ts = time.time()
        out = []
        for p in points:
            if isinstance(p, MotionPoint):
                v = values[p.fact]
                q = Quality.GOOD if v is not None else Quality.STALE
                out.append(Sample(self.name, p.name, v, q, ts))
        return out


class _CameraSink:
    """Takes the camera's events from the ONVIF follower: motion state only (the ``onvif`` device, if the site
    has one for this camera, publishes the camera's events itself)."""

    def __init__(self, camera: CameraMotion) -> None:
        self.camera = camera

    def samples(self, device: str, samples: Sequence[Sample]) -> None:
        return None

    def event(self, event: Event) -> None:
        if event.kind == "motion":
            self.camera.update(time.time(), event.data.get("state") is True)
        elif event.kind == "availability":
            log.info("%s: camera events: %s", event.source, event.data)

    def points_changed(self, device: str) -> None:
        return None

    def picture(self, device: str, ref: str, jpeg: bytes, retain: bool = False) -> None:
        return None
