"""ONVIF camera runtime: facts as points (polled), events followed by PullPoint (events.py).

A camera that refused our login is not asked again for 5 minutes (``DeviceAuthFailed.retry_after``) unless an
operator runs ``edge-agent retry``: cameras lock accounts after a few failures, so no retry storm.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.contract.driver import Driver, DriverContext, Sink
from agent.contract.points import PointBase
from agent.errors import DeviceBusy, DriverError
from agent.model import Quality, Sample, Value

from . import OnvifConnection, OnvifDeviceQuirks, OnvifPoint
from .events import PUSH_ONLY, EventFollower
from .session import CameraSession, password_of
from .snapshots import SnapshotQueue, Snapshotter

if TYPE_CHECKING:
    from agent.contract.device import DeviceConfig

log = logging.getLogger(__name__)
INFO_FACTS = {"manufacturer": "Manufacturer", "model": "Model", "firmware": "FirmwareVersion",
              "serial": "SerialNumber", "hardware_id": "HardwareId"}
STREAM_FACTS = {"profiles", "stream_uri", "resolution", "codec", "fps", "snapshot"}


class OnvifDriver(Driver):
    # a camera that comes back is asked again within seconds: events must flow again within 15 s
    backoff_max = 5.0

    def __init__(self, device: DeviceConfig, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        conn = self.device.connection
        assert isinstance(conn, OnvifConnection)
        self.conn = conn
        self.quirks = OnvifDeviceQuirks.model_validate(self.device.profile.device or {})
        self.session: CameraSession | None = None
        self.follower: EventFollower | None = None
        self.snapshotter: Snapshotter | None = None

    def _password(self) -> str:
        return password_of(self.conn.password)

    async def start(self) -> None:
        session = CameraSession(self.conn.host, self.conn.port, self.conn.user, self._password(),
                                self.device.model.timeout, self.quirks.adjust_time)
        try:
            await session.connect()
        except BaseException:
            await session.close()
            raise
        self.session = session

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def read(self, points: Sequence[PointBase]) -> list[Sample]:
        s = self.session
        assert s is not None, "read before start"
        facts = {p.fact for p in points if isinstance(p, OnvifPoint)}
        if facts & set(INFO_FACTS):
            await s.device_info()
        if "clock_offset" in facts:
            await s.clock_offset()
        elif not facts & set(INFO_FACTS) and not facts & STREAM_FACTS:
            await s.clock_offset()  # 'online' alone: one cheap request proves the camera answers
        if facts & STREAM_FACTS:
            await s.streams()
        now = time.time()
        return [Sample(self.name, p.name, self._value(p), Quality.GOOD, now) for p in points
                if isinstance(p, OnvifPoint)]

    def _value(self, p: OnvifPoint) -> Value:
        s = self.session
        assert s is not None
        f = s.facts
        if p.fact == "online":
            return True
        if p.fact in INFO_FACTS:
            return f.info.get(INFO_FACTS[p.fact])
        if p.fact == "clock_offset":
            return f.clock_offset
        if p.fact == "profiles":
            return "; ".join(x.summary() for x in f.streams)
        if p.fact == "snapshot":
            return f.snapshot
        if p.fact == "ptz":
            return f.ptz
        if p.fact == "events":
            return f.events
        st = s.stream(p.stream)
        if st is None:
            return None
        if p.fact == "stream_uri":
            return st.uri
        if p.fact == "resolution":
            return f"{st.width}x{st.height}" if st.width and st.height else None
        if p.fact == "codec":
            return st.codec
        return st.fps  # fps

    async def follow(self, sink: Sink) -> None:
        s = self.session
        if s is None:
            return
        self.snapshotter = Snapshotter(s, self.quirks.snapshots)
        if not self.quirks.events.enabled or not s.facts.events:
            return
        snaps = SnapshotQueue(self.name, self.snapshotter, sink.picture)
        self.follower = EventFollower(self.name, s, self.quirks.events, snaps.offer)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(snaps.run(), name=f"{self.name}:snapshots")
            await self.follower.run(sink)

    async def diag_steps(self) -> list[tuple[str, bool, str]]:
        """Camera checks beyond one read, for ``edge-agent diag device``: events subscription, snapshot."""
        s = self.session
        assert s is not None, "diag before start"
        out: list[tuple[str, bool, str]] = []
        if s.facts.events:
            follower = EventFollower(self.name, s, self.quirks.events)
            try:
                manager = await follower._subscribe()
                try:
                    req = {"MessageLimit": 100, "Timeout": dt.timedelta(seconds=1)}
                    res = await s.call("PullMessages", manager.get_service().PullMessages(req), s.timeout + 1)
                    n = len(getattr(res, "NotificationMessage", None) or [])
                    out.append(("events subscription", True, f"PullPoint created, {n} message(s) in the first pull"))
                finally:
                    await follower._drop(manager)
            except DriverError as exc:
                detail = f"events: {PUSH_ONLY}" if follower.mode == "push-only" else f"{exc.code}: {exc}"
                out.append(("events subscription", False, detail))
        else:
            out.append(("events subscription", False, "the camera lists no events service"))
        snap = Snapshotter(s, self.quirks.snapshots.model_copy(update={"min_interval": 0.001}))
        try:
            _, jpeg = await snap.take()
            out.append(("snapshot", True, f"{len(jpeg)} bytes after downscale ({'basic' if snap.basic else 'digest'} "
                                          "auth)"))
        except DriverError as exc:
            out.append(("snapshot", False, f"{exc.code}: {exc}"))
        out.append(await self._diag_stream())
        return out

    async def _diag_stream(self) -> tuple[str, bool, str]:
        """The sub stream opened with OpenCV (as the motion driver would) and one frame decoded."""
        from .streamcheck import read_one_frame

        s = self.session
        assert s is not None
        st = s.stream("sub")
        if st is None or not st.uri:
            try:
                await s.streams()
            except DriverError as exc:
                return ("sub stream", False, f"{exc.code}: {exc}")
            st = s.stream("sub")
        if st is None or not st.uri:
            return ("sub stream", False, "the camera offers no stream URI")
        ok, detail = await asyncio.to_thread(read_one_frame, st.uri, self.conn.user, self._password(),
                                             max(5.0, s.timeout * 2))
        return ("sub stream", ok, detail)

    @property
    def retain_pictures(self) -> bool:
        """Pictures also go retained on the camera's fixed topic (``snapshots.retain``)."""
        return self.quirks.snapshots.retain

    async def snapshot(self) -> tuple[str, bytes]:
        """A snapshot now (operator command): (ref, jpeg). DeviceBusy when rate-limited or not running."""
        if self.snapshotter is None:
            raise DeviceBusy(f"{self.name} is not running")
        return await self.snapshotter.take()
