"""Access panel runtime: panel facts, doors and access points as points (polled, and following the events at
once), events (events.py), door commands (``door_command``, called only by the agent's door gate after the site
file's policy allowed it: agent/core/doors.py)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.contract.driver import Driver, DriverContext, Sink
from agent.contract.points import PointBase
from agent.errors import DriverError, ProtocolError
from agent.model import Quality, Sample, Value
from drivers.onvif import OnvifEvents
from drivers.onvif.events import EventFollower
from drivers.onvif.session import NoSuchService, password_of

from . import AccessConnection, AccessDeviceQuirks, AccessPanelPoint
from .events import PanelFollower
from .panel import PanelSession
from .privacy import Redactor

if TYPE_CHECKING:
    from agent.contract.device import DeviceConfig

log = logging.getLogger(__name__)
INFO_FACTS = {"manufacturer": "Manufacturer", "model": "Model", "firmware": "FirmwareVersion",
              "serial": "SerialNumber"}
DOOR_PROPS = {"door_mode": "mode", "door_physical": "physical", "lock_physical": "lock",
              "double_lock_physical": "double_lock", "door_alarm": "alarm", "door_tamper": "tamper",
              "door_fault": "fault"}
PROP_FACT = {v: k for k, v in DOOR_PROPS.items()}


class AccessDriver(Driver):
    backoff_max = 5.0  # a panel that comes back is followed again within seconds (states right within 15 s)

    def __init__(self, device: DeviceConfig, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        conn = self.device.connection
        assert isinstance(conn, AccessConnection)
        self.conn = conn
        self.quirks = AccessDeviceQuirks.model_validate(self.device.profile.device or {})
        self.session: PanelSession | None = None
        self.follower: PanelFollower | None = None
        self.redactor = Redactor(conn.privacy, ctx.state_dir)
        self._sink: Sink | None = None
        self._lists_stale = True
        self._told: tuple[list[str], list[str]] = ([], [])
        self._list_error: dict[str, str] = {}  # doors / access_points -> why the panel gave no list
        self._errors: dict[str | None, str] = {}  # token -> why its state could not be read this cycle
        self._unreadable: dict[str, str] = {}  # door / access_point -> why their states are never polled
        # (token, fact) -> points; built once: events find their points without a scan
        self._by_target: dict[tuple[str, str], list[AccessPanelPoint]] = {}
        for p in self.device.points:
            if isinstance(p, AccessPanelPoint) and p.token is not None:
                self._by_target.setdefault((p.token, p.fact), []).append(p)

    def _password(self) -> str:
        return password_of(self.conn.password)

    async def start(self) -> None:
        session = PanelSession(self.conn.host, self.conn.port, self.conn.user, self._password(),
                               self.device.model.timeout, self.quirks.adjust_time)
        try:
            await session.connect()
            await session.probe()
            await self._read_lists(session)
        except BaseException:
            await session.close()
            raise
        self.session = session

    async def _read_lists(self, s: PanelSession) -> None:
        """The panel's door and access point lists. A list the panel refuses (a fault, an operation it lacks) is
        an error of the points that need it, not of the panel: its other points and its events go on."""
        for what, read in (("doors", s.read_doors), ("access_points", s.read_access_points)):
            try:
                await read()
                self._list_error.pop(what, None)
            except (ProtocolError, NoSuchService) as exc:
                if self._list_error.get(what) != str(exc):
                    log.warning("%s: %s: %s", self.name, what, exc)
                self._list_error[what] = str(exc)
        self._lists_stale = False
        listed = {d.token for d in self.conn.doors}
        extra = [t for t in s.doors if t not in listed]
        missing = [d.key for d in self.conn.doors if d.token not in s.doors]
        if (extra, missing) == self._told:
            return  # transitions, not repetitions: the lists are read again every slow cycle
        self._told = (extra, missing)
        if extra:
            log.info("%s: panel doors not in the site file (events only, no points, no commands): %s", self.name,
                     ", ".join(f"{t}={s.doors[t].name}" for t in extra))
        if missing:
            log.warning("%s: doors of the site file unknown to the panel: %s", self.name, ", ".join(missing))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def read(self, points: Sequence[PointBase]) -> list[Sample]:
        s = self.session
        assert s is not None, "read before start"
        pts = [p for p in points if isinstance(p, AccessPanelPoint)]
        facts = {p.fact for p in pts}
        if facts & set(INFO_FACTS):
            await s.device_info()
        if self._lists_stale or facts & {"doors", "access_points", "door_name", "ap_name"}:
            await self._read_lists(s)
        doors = {p.token for p in pts if p.per == "door" and p.token in s.doors}
        aps = {p.token for p in pts if p.per == "access_point" and p.token in s.access_points}
        self._errors = {}
        for per, tokens, ask in (("door", doors, s.door_state), ("access_point", aps, s.access_point_enabled)):
            if per in self._unreadable:
                continue  # the panel lacks the operation: its events keep these points
            for t in sorted(x for x in tokens if x is not None):
                try:
                    await ask(t)
                except NoSuchService as exc:
                    log.warning("%s: %s; %s states follow the panel's events only", self.name, exc, per)
                    self._unreadable[per] = f"{exc.code}: {exc}"
                    break
                except ProtocolError as exc:  # this door's points fail, not the panel
                    self._errors[t] = f"{exc.code}: {exc}"
        if not doors and not aps and not facts & set(INFO_FACTS):
            await s.clock_offset()  # 'online' alone: one cheap request proves the panel answers
        now = time.time()
        return [self._sample(p, now) for p in pts]

    def _sample(self, p: AccessPanelPoint, now: float) -> Sample:
        s = self.session
        assert s is not None
        if p.fact in ("doors", "access_points") and p.fact in self._list_error:
            return Sample(self.name, p.name, None, Quality.ERROR, now, self._list_error[p.fact])
        if p.per == "door" and (p.token not in s.doors):
            why = self._list_error.get("doors") or f"the panel has no door {p.token!r}"
            return Sample(self.name, p.name, None, Quality.ERROR, now, why)
        if p.per == "access_point" and (p.token not in s.access_points):
            why = self._list_error.get("access_points") or f"the panel has no access point {p.token!r}"
            return Sample(self.name, p.name, None, Quality.ERROR, now, why)
        if p.per != "panel" and p.fact not in ("door_name", "ap_name"):
            if p.token in self._errors:
                return Sample(self.name, p.name, None, Quality.ERROR, now, self._errors[p.token])
            if p.per in self._unreadable and self._value(p) is None:
                return Sample(self.name, p.name, None, Quality.ERROR, now,
                              f"{self._unreadable[p.per]}; no event gave it yet")
        return Sample(self.name, p.name, self._value(p), Quality.GOOD, now)

    def _value(self, p: AccessPanelPoint) -> Value:
        s = self.session
        assert s is not None
        if p.fact == "online":
            return True
        if p.fact in INFO_FACTS:
            return s.facts.info.get(INFO_FACTS[p.fact])
        if p.fact == "doors":
            return "; ".join(f"{t}={d.name}" for t, d in s.doors.items())
        if p.fact == "access_points":
            return "; ".join(f"{t}={a.name}" for t, a in s.access_points.items())
        if p.fact == "door_name":
            return s.doors[str(p.token)].name
        if p.fact in DOOR_PROPS:
            return s.doors[str(p.token)].state.get(DOOR_PROPS[p.fact])
        if p.fact == "ap_name":
            return s.access_points[str(p.token)].name
        return s.access_points[str(p.token)].enabled  # ap_enabled

    # ------------------------------------------------------------------------------------------ events

    def names(self, per: str, token: str) -> tuple[str, str | None]:
        """The site's name and label of a door or access point token (the token itself when not listed)."""
        entries = self.conn.doors if per == "door" else self.conn.access_points
        e = next((x for x in entries if x.token == token), None)
        if e is not None:
            return e.key, e.label
        s = self.session
        panel_name = None
        if s is not None:
            obj: Any = (s.doors if per == "door" else s.access_points).get(token)
            panel_name = obj.name if obj is not None else None
        return token, panel_name

    def on_state(self, per: str, token: str, what: str, value: Any) -> None:
        """An event changed a door or access point state: its points follow now, not at the next poll."""
        s = self.session
        if s is None:
            return
        if per == "door":
            door = s.doors.get(token)
            if door is not None:
                door.state[what] = value
            fact = PROP_FACT.get(what)
            point_value: Value = value
        else:
            ap = s.access_points.get(token)
            point_value = None if value is None else str(value).strip().lower() in ("true", "1")
            if ap is not None and what == "enabled":
                ap.enabled = bool(point_value) if point_value is not None else None
            fact = "ap_enabled" if what == "enabled" else None
        pts = self._by_target.get((token, fact), []) if fact else []
        if pts and self._sink is not None:
            now = time.time()
            self._sink.samples(self.name, [Sample(self.name, p.name, point_value, Quality.GOOD, now) for p in pts])

    def on_config(self) -> None:
        self._lists_stale = True  # the next poll reads the door and access point lists again

    async def follow(self, sink: Sink) -> None:
        s = self.session
        self._sink = sink
        ev = self.quirks.events
        if s is None or not ev.enabled or not s.facts.events:
            return
        cfg = OnvifEvents(subscription=ev.subscription, pull_timeout=ev.pull_timeout, message_limit=ev.message_limit)
        self.follower = PanelFollower(self.name, s, cfg, list(ev.kinds), self.redactor, self.names, self.on_state,
                                      self.on_config)
        await self.follower.run(sink)

    # ---------------------------------------------------------------------------------------- commands

    async def door_command(self, token: str, command: str) -> dict[str, Any]:
        """Send one door command (already allowed by the site file) and read the door's state back."""
        s = self.session
        if s is None:
            raise DriverError(f"{self.name} is not connected", device=self.name)
        await s.command(token, command, self.quirks.access_time)
        out: dict[str, Any] = {"panel": "ok"}
        with contextlib.suppress(DriverError):
            async with asyncio.timeout(self.device.model.timeout * 2):
                state = await s.door_state(token)
            out["state"] = state
            for prop, value in state.items():
                self.on_state("door", token, prop, value)
        return out

    async def diag_steps(self) -> list[tuple[str, bool, str]]:
        s = self.session
        assert s is not None, "diag before start"
        return [
            ("door control", s.has_doors, f"{len(s.doors)} door(s): " + ", ".join(
                f"{t}={d.name}" for t, d in s.doors.items()) if s.has_doors else "no Door Control service"),
            ("access control", s.has_access, f"{len(s.access_points)} access point(s)" if s.has_access
             else "no Access Control service"),
            await self._diag_events(),
        ]

    async def _diag_events(self) -> tuple[str, bool, str]:
        """A PullPoint subscription made, one pull (the states the panel sends at subscription), dropped."""
        s = self.session
        assert s is not None
        if not s.facts.events:
            return ("events subscription", False, "the panel lists no events service")
        follower = EventFollower(self.name, s, OnvifEvents(subscription=60.0))
        try:
            manager = await follower._subscribe()
            try:
                req = {"MessageLimit": 100, "Timeout": dt.timedelta(seconds=1)}
                res = await s.call("PullMessages", manager.get_service().PullMessages(req), s.timeout + 1)
                n = len(getattr(res, "NotificationMessage", None) or [])
            finally:
                await follower._drop(manager)
        except DriverError as exc:
            return ("events subscription", False, f"{exc.code}: {exc}")
        return ("events subscription", True, f"PullPoint created, {n} message(s) in the first pull")
