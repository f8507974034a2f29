"""One panel's Door Control and Access Control services, through the camera driver's ONVIF session.

onvif-zeep-async ships the 1.0 WSDLs of both services (``doorcontrol.wsdl``, ``accesscontrol.wsdl``) but no
entry for them in its service table: they are added here (same shape as the library's own entries), so the
library builds, caches and closes these services like its others. The 1.0 operations cover what the agent
needs: GetDoorInfoList, GetDoorState, the seven door commands, GetAccessPointInfoList, GetAccessPointState.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from onvif.definition import SERVICES

from agent.errors import ProtocolError
from drivers.onvif.session import CameraSession, NoSuchService

from . import DOOR_COMMANDS

log = logging.getLogger(__name__)
NS_DOOR = "http://www.onvif.org/ver10/doorcontrol/wsdl"
NS_ACCESS = "http://www.onvif.org/ver10/accesscontrol/wsdl"
SERVICES.setdefault("doorcontrol", {"ns": NS_DOOR, "wsdl": "doorcontrol.wsdl", "binding": "DoorControlBinding"})
SERVICES.setdefault("accesscontrol", {"ns": NS_ACCESS, "wsdl": "accesscontrol.wsdl", "binding": "PACSBinding"})
LIST_PAGES = 64  # pages of GetDoorInfoList / GetAccessPointInfoList followed at most (a loop guard)
# DoorState element -> our property name (points door_physical...; event property)
STATE_FIELDS = {"DoorMode": "mode", "DoorPhysicalState": "physical", "LockPhysicalState": "lock",
                "DoubleLockPhysicalState": "double_lock", "Alarm": "alarm", "Tamper": "tamper", "Fault": "fault"}


@dataclass
class Door:
    token: str
    name: str
    capabilities: dict[str, bool] = field(default_factory=dict)
    state: dict[str, str | None] = field(default_factory=dict)  # property -> value (mode, physical, ...)


@dataclass
class AccessPointInfo:
    token: str
    name: str
    enabled: bool | None = None


def _text(v: Any) -> str | None:
    if v is None:
        return None
    v = getattr(v, "State", v)  # DoorTamper / DoorFault carry {State, Reason}
    return None if v is None else str(getattr(v, "value", v))


class PanelSession(CameraSession):
    """The ONVIF session of a panel; ``doors``/``access_points`` are the panel's lists as last read."""

    noun = "panel"

    def __init__(self, host: str, port: int, user: str, password: str, timeout: float, adjust_time: bool) -> None:
        super().__init__(host, port, user, password, timeout, adjust_time)
        self.doors: dict[str, Door] = {}
        self.access_points: dict[str, AccessPointInfo] = {}
        self.door_caps: dict[str, Any] = {}
        self.ap_caps: dict[str, Any] = {}
        self.has_doors = self.has_access = False

    async def connect(self) -> None:
        await super().connect()
        self.has_doors = NS_DOOR in self.cam.xaddrs
        self.has_access = NS_ACCESS in self.cam.xaddrs
        if not self.has_doors and not self.has_access:
            raise NoSuchService("connect: the device offers neither Door Control nor Access Control (not a "
                                "Profile C panel?)")

    async def _svc(self, name: str) -> Any:
        present = self.has_doors if name == "doorcontrol" else self.has_access
        if not present:
            raise NoSuchService(f"the panel offers no {name} service")
        return await self.call(f"{name} service", self.cam.create_onvif_service(name))

    async def probe(self) -> None:
        """GetServiceCapabilities of both services (what the panel says it supports)."""
        for name, dest in (("doorcontrol", self.door_caps), ("accesscontrol", self.ap_caps)):
            if not (self.has_doors if name == "doorcontrol" else self.has_access):
                continue
            svc = await self._svc(name)
            try:
                caps = await self.call("GetServiceCapabilities", svc.GetServiceCapabilities())
            except (ProtocolError, NoSuchService) as exc:
                log.info("%s: %s GetServiceCapabilities: %s", self.where, name, exc)
                continue
            dest.clear()
            for k in ("MaxLimit",):
                if getattr(caps, k, None) is not None:
                    dest[k] = getattr(caps, k)

    def _limit(self, caps: dict[str, Any]) -> int | None:
        limit = caps.get("MaxLimit")
        return int(limit) if isinstance(limit, int) and limit > 0 else None

    async def _pages(self, svc: Any, op: str, item: str, limit: int | None) -> list[Any]:
        out: list[Any] = []
        ref: str | None = None
        for _ in range(LIST_PAGES):
            req: dict[str, Any] = {}
            if limit:
                req["Limit"] = limit
            if ref:
                req["StartReference"] = ref
            res = await self.call(op, getattr(svc, op)(req))
            out.extend(getattr(res, item, None) or [])
            ref = getattr(res, "NextStartReference", None)
            if not ref:
                return out
        raise ProtocolError(f"{op}: the panel keeps answering with a next page after {LIST_PAGES} pages")

    async def read_doors(self) -> dict[str, Door]:
        if not self.has_doors:
            self.doors = {}
            return self.doors
        svc = await self._svc("doorcontrol")
        infos = await self._pages(svc, "GetDoorInfoList", "DoorInfo", self._limit(self.door_caps))
        doors: dict[str, Door] = {}
        for info in infos:
            token = str(info.token)
            caps = getattr(info, "Capabilities", None)
            capd = {c: bool(getattr(caps, c, False)) for c in
                    ("Access", "Lock", "Unlock", "Block", "DoubleLock", "LockDown", "LockOpen", "DoorMonitor",
                     "LockMonitor", "DoubleLockMonitor", "Alarm", "Tamper", "Fault")}
            old = self.doors.get(token)
            doors[token] = Door(token, str(getattr(info, "Name", "") or token), capd, old.state if old else {})
        self.doors = doors
        return doors

    async def read_access_points(self) -> dict[str, AccessPointInfo]:
        if not self.has_access:
            self.access_points = {}
            return self.access_points
        svc = await self._svc("accesscontrol")
        infos = await self._pages(svc, "GetAccessPointInfoList", "AccessPointInfo", self._limit(self.ap_caps))
        aps: dict[str, AccessPointInfo] = {}
        for info in infos:
            token = str(info.token)
            old = self.access_points.get(token)
            aps[token] = AccessPointInfo(token, str(getattr(info, "Name", "") or token), old.enabled if old else None)
        self.access_points = aps
        return aps

    async def door_state(self, token: str) -> dict[str, str | None]:
        svc = await self._svc("doorcontrol")
        res = await self.call("GetDoorState", svc.GetDoorState({"Token": token}))
        st = getattr(res, "DoorState", res)
        state = {prop: _text(getattr(st, el, None)) for el, prop in STATE_FIELDS.items()}
        door = self.doors.get(token)
        if door is not None:
            door.state.update(state)
        return state

    async def access_point_enabled(self, token: str) -> bool | None:
        svc = await self._svc("accesscontrol")
        res = await self.call("GetAccessPointState", svc.GetAccessPointState({"Token": token}))
        st = getattr(res, "AccessPointState", res)
        enabled = getattr(st, "Enabled", None)
        value = None if enabled is None else bool(enabled)
        ap = self.access_points.get(token)
        if ap is not None:
            ap.enabled = value
        return value

    async def command(self, token: str, command: str, access_time: float | None = None) -> None:
        """One door command; NoSuchService when the panel lacks it (capability false or ActionNotSupported),
        ProtocolError with the panel's fault text when it refuses."""
        op, cap = DOOR_COMMANDS[command]
        door = self.doors.get(token)
        if door is None:
            await self.read_doors()
            door = self.doors.get(token)
            if door is None:
                raise ProtocolError(f"{op}: the panel has no door {token!r} (its doors: "
                                    f"{', '.join(self.doors) or 'none'})")
        if door.capabilities and not door.capabilities.get(cap, False):
            raise NoSuchService(f"{op}: the panel says door {token!r} does not support it (capability {cap})")
        svc = await self._svc("doorcontrol")
        req: dict[str, Any] = {"Token": token}
        if command == "access" and access_time is not None:
            req["AccessTime"] = dt.timedelta(seconds=access_time)
        await self.call(op, getattr(svc, op)(req))
