"""A simulated ONVIF Profile C access-control panel (a test peer, also for the demo): real HTTP on loopback.

Run: ``python -m drivers.access.sim --host 127.0.0.1 --port P --user U --password PW [--doors N]
[--no-op OPERATION ...] [--open-too-long S] [--access-time S] [--state-file F]``; it prints
``access-sim ready on HOST:PORT`` when it serves. In the tests use ``tests/peers/panel.py`` (fixture
``access_panel``).

What a client sees (WS-Security UsernameToken digest on every operation but GetSystemDateAndTime; the replies
are judged by zeep against the WSDLs shipped with onvif-zeep-async):

- device service ``/onvif/device_service``: GetSystemDateAndTime, GetServices (device, events, DoorControl
  ``http://www.onvif.org/ver10/doorcontrol/wsdl`` at ``/onvif/doorcontrol_service``, AccessControl
  ``http://www.onvif.org/ver10/accesscontrol/wsdl`` at ``/onvif/accesscontrol_service``), GetCapabilities,
  GetDeviceInformation (EdgeSim, EA-PANEL-2), GetScopes.
- DoorControl (1.0 WSDL: it has no GetDoors/GetDoorList): GetServiceCapabilities, GetDoorInfoList (Limit,
  StartReference paging, MaxLimit 10), GetDoorInfo, GetDoorState, AccessDoor (AccessTime and
  OpenTooLongTime honoured), LockDoor, UnlockDoor, BlockDoor, LockDownDoor, LockDownReleaseDoor,
  LockOpenDoor, LockOpenReleaseDoor, DoubleLockDoor.
- AccessControl: GetServiceCapabilities, GetAccessPointInfoList, GetAccessPointInfo, GetAccessPointState,
  EnableAccessPoint, DisableAccessPoint, GetAreaInfoList, GetAreaInfo.
- Events: GetServiceCapabilities, GetEventProperties (a TopicSet with the message descriptions below),
  CreatePullPointSubscription (optional TopicExpression filter such as ``tns1:Door//.|tns1:AccessControl//.``),
  PullMessages (long poll), Renew, Unsubscribe, SetSynchronizationPoint. A new subscription and every
  synchronisation point queue the state of every door and access point as ``Initialized`` property events.

Doors ``Door_1`` "Main entrance", ``Door_2`` "Staff entrance", then ``Door_N`` "Door N"; one access point per
door (``AP_1`` "Main entrance reader" on ``Door_1``...) between areas ``Area_1`` "Street" and ``Area_2``
"Lobby". Every door starts Locked, Closed, Normal, no tamper, no fault; access points start enabled.

Door rules (the Door Control spec's DoorMode rules as read here):

- LockPhysicalState is Locked in modes Locked, Blocked, LockedDown, DoubleLocked; Unlocked in Unlocked,
  Accessed, LockedOpen.
- AccessDoor works from Locked, Unlocked or Accessed: mode Accessed for ``--access-time`` (default 3 s) or
  the request's AccessTime, then back to the mode before. From any other mode: Failure fault.
- LockedDown refuses every command but LockDownDoor and LockDownReleaseDoor; LockedOpen every command but
  LockOpenDoor and LockOpenReleaseDoor (Failure fault). LockDownReleaseDoor only from LockedDown (then
  Locked), LockOpenReleaseDoor only from LockedOpen (then Unlocked).
- Opening a door whose lock is Locked raises DoorAlarm DoorForcedOpen. A door opened while Accessed and held
  open past ``--open-too-long`` (default 10 s) or the AccessDoor's OpenTooLongTime raises DoorOpenTooLong.
  In Unlocked/LockedOpen a door may stay open. Closing the door clears the alarm (Normal).
- A fault puts DoorFault FaultDetected (with a Reason) and DoorPhysicalState Fault; clearing it restores both.

Faults (SOAP 1.2, ONVIF subcodes): unknown door/access point token -> Sender / ter:InvalidArgVal /
ter:NotFound; refused by the door mode -> Receiver / ter:Action / ter:Failure; an operation the panel lacks
(``--no-op``, or not implemented) -> Receiver / ter:ActionNotSupported / ter:NotSupported; wrong credentials
-> Sender / ter:NotAuthorized (HTTP 400). ``--no-op LockDoor`` also sets the doors' ``Lock`` capability false
(Access, Lock, Unlock, Block, DoubleLock, LockDown, LockOpen for the door commands; DisableAccessPoint for
Enable/DisableAccessPoint; WSPullPointSupport for CreatePullPointSubscription).

Events (Source / Data simple items): ``tns1:Door/State/DoorMode``, ``DoorPhysicalState``,
``LockPhysicalState``, ``DoorAlarm``, ``DoorTamper`` (DoorToken / State), ``tns1:Door/State/DoorFault``
(DoorToken / Reason, State), ``tns1:AccessPoint/State/Enabled`` (AccessPointToken / State true|false) are
property events; ``tns1:AccessControl/AccessGranted/Credential`` (AccessPointToken / CredentialToken,
CredentialHolderName), ``tns1:AccessControl/Denied/Credential`` and ``tns1:AccessControl/Duress``
(+ Reason), ``tns1:AccessControl/Request/Timeout`` (AccessPointToken / CredentialToken, CredentialHolderName)
and ``tns1:Configuration/Door/Changed`` (DoorToken) are not. An item without a value (no holder name) is
left out.

Control URLs (unauthenticated: a loopback simulator; POST or GET, JSON answers; unknown door -> 404):
``/control/open?door=Door_1``, ``/control/close?door=Door_1``,
``/control/badge?ap=AP_1&credential=CRED&holder=NAME&result=granted|denied|duress|timeout&reason=...``
(granted and duress also access the door as AccessDoor does, when its mode allows; a disabled access
point turns granted and duress into Denied with Reason AccessPointDisabled),
``/control/tamper?door=..&on=1``, ``/control/fault?door=..&on=1&reason=..``, ``/control/rename?door=..&name=..``
(a Configuration/Door/Changed event), ``/control/delay?s=2`` (every SOAP answer late by that much),
``/control/forget`` (drop every subscription), ``/control/drop-renew?n=1`` (the next n Renew requests are
refused and their subscription dropped), ``/control/fail?op=LockDoor[&on=0]`` (that operation answers a
Failure fault), ``GET /control/stats`` (counters: ``ops`` = every SOAP operation received by name, even
unauthenticated; ``door_commands`` = each door command received with its door and result; requests,
auth_failures, faults, subscriptions, subscriptions_live, pulls, renews, sync_points, dropped_renews),
``GET /control/state`` (every door and access point).

Every command, access point change and fault answered is also printed on stdout (``access-sim: LockDoor
Door_1 -> ok``; the test peer keeps it in ``access-sim-PORT.log``).

A restart of the process is a reboot: subscriptions are forgotten. With ``--state-file`` door modes,
physical states, tamper, fault, names and access point states survive it (as a panel's own storage would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from aiohttp import web

from drivers.onvif.soapsim import (
    PullPoints,
    SoapDevice,
    SoapFault,
    add_common_arguments,
    failure,
    not_found,
    notification,
    parse_duration,
)

TDC = "http://www.onvif.org/ver10/doorcontrol/wsdl"
TAC = "http://www.onvif.org/ver10/accesscontrol/wsdl"
XMLNS = {"tdc": TDC, "tac": TAC, "pt": "http://www.onvif.org/ver10/pacs", "xs": "http://www.w3.org/2001/XMLSchema"}
NAMES = ["Main entrance", "Staff entrance"]
LOCKED_MODES = {"Locked", "Blocked", "LockedDown", "DoubleLocked"}
TARGET = {"LockDoor": "Locked", "UnlockDoor": "Unlocked", "BlockDoor": "Blocked", "LockDownDoor": "LockedDown",
          "LockOpenDoor": "LockedOpen", "DoubleLockDoor": "DoubleLocked"}
DOOR_COMMANDS = ("AccessDoor", *TARGET, "LockDownReleaseDoor", "LockOpenReleaseDoor")
# door capability flag -> the operations it announces
CAPABILITY_OPS = {
    "Access": ("AccessDoor",), "AccessTimingOverride": ("AccessDoor",), "Lock": ("LockDoor",),
    "Unlock": ("UnlockDoor",), "Block": ("BlockDoor",), "DoubleLock": ("DoubleLockDoor",),
    "LockDown": ("LockDownDoor", "LockDownReleaseDoor"), "LockOpen": ("LockOpenDoor", "LockOpenReleaseDoor"),
}
MONITORS = {"DoorMonitor": True, "LockMonitor": True, "DoubleLockMonitor": False, "Alarm": True, "Tamper": True,
            "Fault": True}

DOOR_SRC = [("DoorToken", "pt:ReferenceToken")]
AP_SRC = [("AccessPointToken", "pt:ReferenceToken")]
CRED = [("CredentialToken", "pt:ReferenceToken"), ("CredentialHolderName", "xs:string")]
# topic -> (is a property, source items, data items): GetEventProperties and the messages sent
TOPICS: dict[str, tuple[bool, list[tuple[str, str]], list[tuple[str, str]]]] = {
    "tns1:Door/State/DoorMode": (True, DOOR_SRC, [("State", "tdc:DoorMode")]),
    "tns1:Door/State/DoorPhysicalState": (True, DOOR_SRC, [("State", "tdc:DoorPhysicalState")]),
    "tns1:Door/State/LockPhysicalState": (True, DOOR_SRC, [("State", "tdc:LockPhysicalState")]),
    "tns1:Door/State/DoorAlarm": (True, DOOR_SRC, [("State", "tdc:DoorAlarmState")]),
    "tns1:Door/State/DoorTamper": (True, DOOR_SRC, [("State", "tdc:DoorTamperState")]),
    "tns1:Door/State/DoorFault": (True, DOOR_SRC, [("Reason", "xs:string"), ("State", "tdc:DoorFaultState")]),
    "tns1:AccessPoint/State/Enabled": (True, AP_SRC, [("State", "xs:boolean")]),
    "tns1:AccessControl/AccessGranted/Credential": (False, AP_SRC, CRED),
    "tns1:AccessControl/Denied/Credential": (False, AP_SRC, [*CRED, ("Reason", "xs:string")]),
    "tns1:AccessControl/Duress": (False, AP_SRC, [*CRED, ("Reason", "xs:string")]),
    "tns1:AccessControl/Request/Timeout": (False, AP_SRC, CRED),
    "tns1:Configuration/Door/Changed": (False, DOOR_SRC, []),
}
DOOR_STATES = [t.rpartition("/")[2] for t in TOPICS if t.startswith("tns1:Door/State/")]
BADGE_TOPICS = {"granted": "tns1:AccessControl/AccessGranted/Credential",
                "denied": "tns1:AccessControl/Denied/Credential", "duress": "tns1:AccessControl/Duress",
                "timeout": "tns1:AccessControl/Request/Timeout"}


@dataclass
class Door:
    token: str
    name: str
    mode: str = "Locked"
    physical: str = "Closed"  # Open / Closed (reported as Fault while a fault is on)
    alarm: str = "Normal"
    tamper: bool = False
    fault: bool = False
    fault_reason: str = ""
    resume: str = "Locked"  # the mode an Accessed door goes back to
    open_too_long: float | None = None  # the last AccessDoor's OpenTooLongTime
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)

    def lock(self) -> str:
        return "Locked" if self.mode in LOCKED_MODES else "Unlocked"

    def state(self, kind: str) -> str:
        """The State data item of a tns1:Door/State/<kind> event."""
        return {
            "DoorMode": self.mode, "DoorPhysicalState": "Fault" if self.fault else self.physical,
            "LockPhysicalState": self.lock(), "DoorAlarm": self.alarm,
            "DoorTamper": "TamperDetected" if self.tamper else "NotInTamper",
            "DoorFault": "FaultDetected" if self.fault else "NotInFault",
        }[kind]

    def cancel(self, timer: str) -> None:
        handle = self.timers.pop(timer, None)
        if handle is not None:
            handle.cancel()


@dataclass
class AccessPoint:
    token: str
    name: str
    door: str
    enabled: bool = True


class PanelEvents:
    """Builds the panel's notification messages and hands them to the PullPoint hub."""

    def __init__(self, device: SoapDevice) -> None:
        self.dev = device
        self.hub = PullPoints(device, self.initial)
        self.model: DoorModel | None = None

    def door_message(self, door: Door, kind: str, operation: str = "Changed") -> tuple[str, str]:
        topic = f"tns1:Door/State/{kind}"
        data = [("State", door.state(kind))]
        if kind == "DoorFault":
            data.insert(0, ("Reason", door.fault_reason if door.fault else ""))
        return topic, notification(topic, self.dev.now(), [("DoorToken", door.token)], [d for d in data if d[1]],
                                   operation)

    def ap_message(self, ap: AccessPoint, operation: str = "Changed") -> tuple[str, str]:
        topic = "tns1:AccessPoint/State/Enabled"
        return topic, notification(topic, self.dev.now(), [("AccessPointToken", ap.token)],
                                   [("State", "true" if ap.enabled else "false")], operation)

    def door(self, door: Door, kind: str) -> None:
        self.hub.publish(*self.door_message(door, kind))

    def access_point(self, ap: AccessPoint) -> None:
        self.hub.publish(*self.ap_message(ap))

    def access(self, topic: str, ap: AccessPoint, items: list[tuple[str, str]]) -> None:
        msg = notification(topic, self.dev.now(), [("AccessPointToken", ap.token)], [i for i in items if i[1]], None)
        self.hub.publish(topic, msg)

    def configuration(self, door: Door) -> None:
        topic = "tns1:Configuration/Door/Changed"
        self.hub.publish(topic, notification(topic, self.dev.now(), [("DoorToken", door.token)], [], None))

    def initial(self) -> list[tuple[str, str]]:
        assert self.model is not None
        out = [self.door_message(d, k, "Initialized") for d in self.model.doors.values() for k in DOOR_STATES]
        return out + [self.ap_message(ap, "Initialized") for ap in self.model.aps.values()]

    @staticmethod
    def topic_set() -> str:
        """The wstop:TopicSet of GetEventProperties: one element per topic level, message descriptions below."""
        tree: dict[str, Any] = {}
        for topic in TOPICS:
            node = tree
            for seg in topic.split(":", 1)[1].split("/"):
                node = node.setdefault(seg, {})
            node[""] = topic

        def items(kind: str, pairs: list[tuple[str, str]]) -> str:
            inner = "".join(f'<tt:SimpleItemDescription Name="{n}" Type="{t}"/>' for n, t in pairs)
            return f"<tt:{kind}>{inner}</tt:{kind}>"

        def render(node: dict[str, Any]) -> str:
            out = ""
            for name, child in node.items():
                if name == "":
                    continue
                body, attr = render(child), ""
                if "" in child:
                    prop, src, data = TOPICS[child[""]]
                    attr = ' wstop:topic="true"'
                    body = (f'<tt:MessageDescription IsProperty="{str(prop).lower()}">{items("Source", src)}'
                            f'{items("Data", data)}</tt:MessageDescription>{body}')
                out += f"<tns1:{name}{attr}>{body}</tns1:{name}>"
            return out

        return f"<wstop:TopicSet>{render(tree)}</wstop:TopicSet>"


class DoorModel:
    """Doors and access points with their state machines; every change goes out as an event."""

    def __init__(self, args: argparse.Namespace, events: PanelEvents) -> None:
        self.args = args
        self.events = events
        events.model = self
        self.doors: dict[str, Door] = {}
        self.aps: dict[str, AccessPoint] = {}
        for i in range(1, args.doors + 1):
            name = NAMES[i - 1] if i <= len(NAMES) else f"Door {i}"
            self.doors[f"Door_{i}"] = Door(f"Door_{i}", name)
            self.aps[f"AP_{i}"] = AccessPoint(f"AP_{i}", f"{name} reader", f"Door_{i}")
        self.state_file = Path(args.state_file) if args.state_file else None
        self.load()

    # ------------------------------------------------------------------------------ persistence
    def load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            self._apply(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SystemExit(f"access-sim: --state-file {self.state_file}: unreadable ({exc!r})") from None

    def _apply(self, saved: dict[str, Any]) -> None:
        for token, d in saved.get("doors", {}).items():
            if token in self.doors:
                door = self.doors[token]
                door.name, door.mode, door.physical = d["name"], d["mode"], d["physical"]
                door.tamper, door.fault, door.fault_reason = d["tamper"], d["fault"], d["fault_reason"]
                door.alarm = "DoorForcedOpen" if door.physical == "Open" and door.lock() == "Locked" else "Normal"
        for token, enabled in saved.get("access_points", {}).items():
            if token in self.aps:
                self.aps[token].enabled = bool(enabled)

    def save(self) -> None:
        if self.state_file is None:
            return
        doors = {t: {"name": d.name, "mode": d.resume if d.mode == "Accessed" else d.mode, "physical": d.physical,
                     "tamper": d.tamper, "fault": d.fault, "fault_reason": d.fault_reason}
                 for t, d in self.doors.items()}
        aps = {t: ap.enabled for t, ap in self.aps.items()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"doors": doors, "access_points": aps}))
        tmp.replace(self.state_file)

    # ------------------------------------------------------------------------------ lookups
    def door(self, token: str) -> Door:
        if token not in self.doors:
            raise not_found(f"door {token!r}")
        return self.doors[token]

    def ap(self, token: str) -> AccessPoint:
        if token not in self.aps:
            raise not_found(f"access point {token!r}")
        return self.aps[token]

    # ------------------------------------------------------------------------------ changes
    def _update(self, door: Door, change: Callable[[], None]) -> None:
        """Apply a change and send an event for every state it altered."""
        before = {k: door.state(k) for k in DOOR_STATES}
        change()
        for kind in DOOR_STATES:
            if door.state(kind) != before[kind]:
                self.events.door(door, kind)
        self.save()

    def set_mode(self, door: Door, mode: str) -> None:
        door.cancel("access")

        def change() -> None:
            door.mode = mode

        self._update(door, change)

    def set_alarm(self, door: Door, alarm: str) -> None:
        def change() -> None:
            door.alarm = alarm

        self._update(door, change)

    def access(self, door: Door, seconds: float | None = None, open_too_long: float | None = None) -> None:
        if door.mode != "Accessed":
            door.resume = door.mode
            self.set_mode(door, "Accessed")
        door.cancel("access")
        door.open_too_long = open_too_long
        loop = asyncio.get_running_loop()
        door.timers["access"] = loop.call_later(
            seconds if seconds is not None else self.args.access_time, self._relock, door)

    def _relock(self, door: Door) -> None:
        door.timers.pop("access", None)
        if door.mode == "Accessed":
            self.set_mode(door, door.resume)

    def command(self, op: str, token: str, access_time: float | None, open_too_long: float | None) -> None:
        door = self.door(token)
        mode = door.mode
        if op == "AccessDoor":
            if mode not in ("Locked", "Unlocked", "Accessed"):
                raise failure(f"door {token} is {mode}: AccessDoor refused")
            self.access(door, access_time, open_too_long)
        elif op == "LockDownReleaseDoor":
            if mode != "LockedDown":
                raise failure(f"door {token} is {mode}, not LockedDown")
            self.set_mode(door, "Locked")
        elif op == "LockOpenReleaseDoor":
            if mode != "LockedOpen":
                raise failure(f"door {token} is {mode}, not LockedOpen")
            self.set_mode(door, "Unlocked")
        else:
            target = TARGET[op]
            if mode in ("LockedDown", "LockedOpen") and target != mode:
                raise failure(f"door {token} is {mode}: {op} refused until released")
            self.set_mode(door, target)

    def open(self, door: Door) -> None:
        if door.physical == "Open":
            return

        def change() -> None:
            door.physical = "Open"
            if door.lock() == "Locked":
                door.alarm = "DoorForcedOpen"

        self._update(door, change)
        if door.mode == "Accessed":
            limit = door.open_too_long or self.args.open_too_long
            door.timers["open"] = asyncio.get_running_loop().call_later(limit, self._held_open, door)

    def _held_open(self, door: Door) -> None:
        door.timers.pop("open", None)
        if door.physical == "Open" and door.alarm == "Normal":
            self.set_alarm(door, "DoorOpenTooLong")

    def close(self, door: Door) -> None:
        door.cancel("open")

        def change() -> None:
            door.physical, door.alarm = "Closed", "Normal"

        self._update(door, change)

    def tamper(self, door: Door, on: bool) -> None:
        def change() -> None:
            door.tamper = on

        self._update(door, change)

    def fault(self, door: Door, on: bool, reason: str) -> None:
        def change() -> None:
            door.fault, door.fault_reason = on, (reason or "door monitor fault") if on else ""

        self._update(door, change)

    def rename(self, door: Door, name: str) -> None:
        door.name = name
        self.save()
        self.events.configuration(door)

    def enable(self, ap: AccessPoint, on: bool) -> None:
        if ap.enabled != on:
            ap.enabled = on
            self.events.access_point(ap)
            self.save()

    def badge(self, ap: AccessPoint, result: str, credential: str, holder: str, reason: str) -> None:
        if not ap.enabled and result in ("granted", "duress"):
            result, reason = "denied", "AccessPointDisabled"
        items = [("CredentialToken", credential), ("CredentialHolderName", holder)]
        if result in ("denied", "duress"):
            items.append(("Reason", reason or ("CredentialNotEnabled" if result == "denied" else "")))
        self.events.access(BADGE_TOPICS[result], ap, items)
        door = self.doors[ap.door]
        if result in ("granted", "duress") and door.mode in ("Locked", "Unlocked", "Accessed"):
            self.access(door)

    def snapshot(self) -> dict[str, Any]:
        doors = {t: {"name": d.name, "mode": d.mode, "door_physical_state": d.state("DoorPhysicalState"),
                     "lock_physical_state": d.lock(), "alarm": d.alarm, "tamper": d.tamper, "fault": d.fault,
                     "access_point": f"AP_{t.rpartition('_')[2]}"} for t, d in self.doors.items()}
        aps = {t: {"name": ap.name, "door": ap.door, "enabled": ap.enabled} for t, ap in self.aps.items()}
        return {"doors": doors, "access_points": aps}


MAX_LIMIT = 10


class Panel(SoapDevice):
    """The SOAP services of the panel: device, DoorControl, AccessControl and events."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, XMLNS)
        self.events = PanelEvents(self)
        self.model = DoorModel(args, self.events)
        self.register(self.events.hub)
        self.missing = set(args.no_op)
        self.door_commands: list[dict[str, str]] = []
        for key in ("requests", "auth_failures", "faults", "subscriptions", "pulls", "renews", "sync_points",
                    "dropped_renews"):
            self.stats[key] = 0

    def observe(self, name: str, op: ET.Element, outcome: str) -> None:
        token = op.findtext(f"{{{TDC}}}Token") or op.findtext(f"{{{TAC}}}Token") or ""
        if name in DOOR_COMMANDS:
            self.door_commands.append({"op": name, "door": token, "result": outcome})
        if name in DOOR_COMMANDS or name in ("EnableAccessPoint", "DisableAccessPoint") or outcome != "ok":
            print(f"access-sim: {name} {token} -> {outcome}", flush=True)  # the peer's log file, for debugging

    def has(self, *ops: str) -> bool:
        return not any(o in self.missing for o in ops)

    # ------------------------------------------------------------------------------ device
    async def op_GetServices(self, _r: web.Request, op: ET.Element) -> str:
        include = (op.findtext(f"{{{self.ns['tds']}}}IncludeCapability") or "").strip() in ("true", "1")
        return self.services_xml([(self.ns["tds"], "/onvif/device_service", "2.60"),
                                  (self.ns["tev"], "/onvif/events_service", "2.60"),
                                  (TDC, "/onvif/doorcontrol_service", "1.0"),
                                  (TAC, "/onvif/accesscontrol_service", "1.0")],
                                 self.capabilities if include else None)

    async def op_GetCapabilities(self, _r: web.Request, _op: ET.Element) -> str:
        pull = str(self.has("CreatePullPointSubscription")).lower()
        return (f"<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Device><tt:XAddr>{self.base}/onvif/"
                f"device_service</tt:XAddr></tt:Device><tt:Events><tt:XAddr>{self.base}/onvif/events_service"
                "</tt:XAddr><tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>"
                f"<tt:WSPullPointSupport>{pull}</tt:WSPullPointSupport>"
                "<tt:WSPausableSubscriptionManagerInterfaceSupport>false"
                "</tt:WSPausableSubscriptionManagerInterfaceSupport></tt:Events></tds:Capabilities>"
                "</tds:GetCapabilitiesResponse>")

    async def op_GetDeviceInformation(self, _r: web.Request, _op: ET.Element) -> str:
        return ("<tds:GetDeviceInformationResponse><tds:Manufacturer>EdgeSim</tds:Manufacturer>"
                "<tds:Model>EA-PANEL-2</tds:Model><tds:FirmwareVersion>2.1.0</tds:FirmwareVersion>"
                f"<tds:SerialNumber>{escape(self.args.serial)}</tds:SerialNumber><tds:HardwareId>PNL1"
                "</tds:HardwareId></tds:GetDeviceInformationResponse>")

    async def op_GetScopes(self, _r: web.Request, _op: ET.Element) -> str:
        scopes = ["onvif://www.onvif.org/Profile/C", "onvif://www.onvif.org/type/access_control",
                  "onvif://www.onvif.org/hardware/EA-PANEL-2", "onvif://www.onvif.org/name/EdgeSim-Panel"]
        items = "".join(f"<tds:Scopes><tt:ScopeDef>Fixed</tt:ScopeDef><tt:ScopeItem>{s}</tt:ScopeItem></tds:Scopes>"
                        for s in scopes)
        return f"<tds:GetScopesResponse>{items}</tds:GetScopesResponse>"

    def capabilities(self, ns: str) -> str:
        """The Capabilities element of a service ("" if it has none here)."""
        n = len(self.model.doors)
        if ns == TDC:
            return f'<tdc:Capabilities MaxLimit="{MAX_LIMIT}" MaxDoors="{n}"/>'
        if ns == TAC:
            return f'<tac:Capabilities MaxLimit="{MAX_LIMIT}" MaxAccessPoints="{n}" MaxAreas="2"/>'
        if ns == self.ns["tev"]:
            pull = str(self.has("CreatePullPointSubscription")).lower()
            return ('<tev:Capabilities WSSubscriptionPolicySupport="false" '
                    f'WSPullPointSupport="{pull}" WSPausableSubscriptionManagerInterfaceSupport="false" '
                    'MaxNotificationProducers="0" MaxPullPoints="10"/>')
        return ""

    async def op_GetServiceCapabilities(self, _r: web.Request, op: ET.Element) -> str:
        ns = op.tag[1:].partition("}")[0]
        caps = self.capabilities(ns)
        if not caps:
            raise SoapFault("Receiver", ["ter:ActionNotSupported", "ter:NotSupported"],
                            f"GetServiceCapabilities of {ns} is not supported")
        prefix = next(k for k, v in self.ns.items() if v == ns)
        return f"<{prefix}:GetServiceCapabilitiesResponse>{caps}</{prefix}:GetServiceCapabilitiesResponse>"

    # ------------------------------------------------------------------------------ events
    async def op_GetEventProperties(self, _r: web.Request, _op: ET.Element) -> str:
        return ("<tev:GetEventPropertiesResponse>"
                "<tev:TopicNamespaceLocation>http://www.onvif.org/onvif/ver10/topics/topicns.xml"
                f"</tev:TopicNamespaceLocation><wsnt:FixedTopicSet>true</wsnt:FixedTopicSet>{self.events.topic_set()}"
                "<wsnt:TopicExpressionDialect>http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"
                "</wsnt:TopicExpressionDialect><wsnt:TopicExpressionDialect>"
                "http://docs.oasis-open.org/wsn/t-1/TopicExpression/Concrete</wsnt:TopicExpressionDialect>"
                "<tev:MessageContentFilterDialect>http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter"
                "</tev:MessageContentFilterDialect><tev:MessageContentSchemaLocation>"
                "http://www.onvif.org/onvif/ver10/schema/onvif.xsd</tev:MessageContentSchemaLocation>"
                "</tev:GetEventPropertiesResponse>")

    # ------------------------------------------------------------------------------ door control
    @staticmethod
    def _page(tokens: list[str], op: ET.Element, ns: str) -> tuple[list[str], str]:
        limit = int(op.findtext(f"{{{ns}}}Limit") or MAX_LIMIT)
        limit = MAX_LIMIT if limit <= 0 else min(limit, MAX_LIMIT)
        start = op.findtext(f"{{{ns}}}StartReference")
        first = 0
        if start:
            if start not in tokens:
                raise SoapFault("Sender", ["ter:InvalidArgVal", "ter:InvalidStartReference"],
                                f"StartReference {start!r} is not valid")
            first = tokens.index(start)
        page = tokens[first:first + limit]
        nxt = tokens[first + limit] if first + limit < len(tokens) else ""
        return page, nxt

    @staticmethod
    def _tokens(op: ET.Element, ns: str) -> list[str]:
        tokens = [t.text or "" for t in op.findall(f"{{{ns}}}Token")]
        if len(tokens) > MAX_LIMIT:
            raise SoapFault("Sender", ["ter:InvalidArgs", "ter:TooManyItems"], f"more than {MAX_LIMIT} tokens")
        return tokens

    def _door_info(self, token: str) -> str:
        door = self.model.doors[token]
        caps = {cap: self.has(*ops) for cap, ops in CAPABILITY_OPS.items()} | MONITORS
        attrs = " ".join(f'{k}="{str(v).lower()}"' for k, v in caps.items())
        return (f'<tdc:DoorInfo token="{token}"><tdc:Name>{escape(door.name)}</tdc:Name>'
                f"<tdc:Description>{escape(door.name)} (simulated)</tdc:Description>"
                f"<tdc:Capabilities {attrs}/></tdc:DoorInfo>")

    async def op_GetDoorInfoList(self, _r: web.Request, op: ET.Element) -> str:
        page, nxt = self._page(list(self.model.doors), op, TDC)
        ref = f"<tdc:NextStartReference>{nxt}</tdc:NextStartReference>" if nxt else ""
        return f"<tdc:GetDoorInfoListResponse>{ref}{''.join(map(self._door_info, page))}</tdc:GetDoorInfoListResponse>"

    async def op_GetDoorInfo(self, _r: web.Request, op: ET.Element) -> str:
        found = [t for t in self._tokens(op, TDC) if t in self.model.doors]
        return f"<tdc:GetDoorInfoResponse>{''.join(map(self._door_info, found))}</tdc:GetDoorInfoResponse>"

    async def op_GetDoorState(self, _r: web.Request, op: ET.Element) -> str:
        door = self.model.door(op.findtext(f"{{{TDC}}}Token") or "")
        fault = f"<tdc:Reason>{escape(door.fault_reason)}</tdc:Reason>" if door.fault else ""
        return ("<tdc:GetDoorStateResponse><tdc:DoorState>"
                f"<tdc:DoorPhysicalState>{door.state('DoorPhysicalState')}</tdc:DoorPhysicalState>"
                f"<tdc:LockPhysicalState>{door.lock()}</tdc:LockPhysicalState><tdc:Alarm>{door.alarm}</tdc:Alarm>"
                f"<tdc:Tamper><tdc:State>{door.state('DoorTamper')}</tdc:State></tdc:Tamper>"
                f"<tdc:Fault>{fault}<tdc:State>{door.state('DoorFault')}</tdc:State></tdc:Fault>"
                f"<tdc:DoorMode>{door.mode}</tdc:DoorMode></tdc:DoorState></tdc:GetDoorStateResponse>")

    async def _door_command(self, name: str, op: ET.Element) -> str:
        def seconds(tag: str) -> float | None:
            text = op.findtext(f"{{{TDC}}}{tag}")
            return max(0.1, parse_duration(text, 0.0)) if text else None

        self.model.command(name, op.findtext(f"{{{TDC}}}Token") or "", seconds("AccessTime"),
                           seconds("OpenTooLongTime"))
        return f"<tdc:{name}Response/>"

    async def op_AccessDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("AccessDoor", op)

    async def op_LockDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("LockDoor", op)

    async def op_UnlockDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("UnlockDoor", op)

    async def op_BlockDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("BlockDoor", op)

    async def op_LockDownDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("LockDownDoor", op)

    async def op_LockDownReleaseDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("LockDownReleaseDoor", op)

    async def op_LockOpenDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("LockOpenDoor", op)

    async def op_LockOpenReleaseDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("LockOpenReleaseDoor", op)

    async def op_DoubleLockDoor(self, _r: web.Request, op: ET.Element) -> str:
        return await self._door_command("DoubleLockDoor", op)

    # ------------------------------------------------------------------------------ access control
    def _ap_info(self, token: str) -> str:
        ap = self.model.aps[token]
        disable = str(self.has("EnableAccessPoint", "DisableAccessPoint")).lower()
        return (f'<tac:AccessPointInfo token="{token}"><tac:Name>{escape(ap.name)}</tac:Name>'
                f"<tac:Description>card reader of {escape(ap.door)}</tac:Description>"
                "<tac:AreaFrom>Area_1</tac:AreaFrom><tac:AreaTo>Area_2</tac:AreaTo>"
                f"<tac:EntityType>tdc:Door</tac:EntityType><tac:Entity>{ap.door}</tac:Entity>"
                f'<tac:Capabilities DisableAccessPoint="{disable}" Duress="true" AnonymousAccess="false" '
                'AccessTaken="false" ExternalAuthorization="false"/></tac:AccessPointInfo>')

    async def op_GetAccessPointInfoList(self, _r: web.Request, op: ET.Element) -> str:
        page, nxt = self._page(list(self.model.aps), op, TAC)
        ref = f"<tac:NextStartReference>{nxt}</tac:NextStartReference>" if nxt else ""
        return (f"<tac:GetAccessPointInfoListResponse>{ref}{''.join(map(self._ap_info, page))}"
                "</tac:GetAccessPointInfoListResponse>")

    async def op_GetAccessPointInfo(self, _r: web.Request, op: ET.Element) -> str:
        found = [t for t in self._tokens(op, TAC) if t in self.model.aps]
        return f"<tac:GetAccessPointInfoResponse>{''.join(map(self._ap_info, found))}</tac:GetAccessPointInfoResponse>"

    async def op_GetAccessPointState(self, _r: web.Request, op: ET.Element) -> str:
        ap = self.model.ap(op.findtext(f"{{{TAC}}}Token") or "")
        return (f"<tac:GetAccessPointStateResponse><tac:AccessPointState><tac:Enabled>{str(ap.enabled).lower()}"
                "</tac:Enabled></tac:AccessPointState></tac:GetAccessPointStateResponse>")

    async def op_EnableAccessPoint(self, _r: web.Request, op: ET.Element) -> str:
        self.model.enable(self.model.ap(op.findtext(f"{{{TAC}}}Token") or ""), True)
        return "<tac:EnableAccessPointResponse/>"

    async def op_DisableAccessPoint(self, _r: web.Request, op: ET.Element) -> str:
        self.model.enable(self.model.ap(op.findtext(f"{{{TAC}}}Token") or ""), False)
        return "<tac:DisableAccessPointResponse/>"

    AREAS = (("Area_1", "Street"), ("Area_2", "Lobby"))

    def _areas(self, tokens: list[str]) -> str:
        return "".join(f'<tac:AreaInfo token="{t}"><tac:Name>{n}</tac:Name></tac:AreaInfo>'
                       for t, n in self.AREAS if t in tokens)

    async def op_GetAreaInfoList(self, _r: web.Request, op: ET.Element) -> str:
        page, nxt = self._page([t for t, _ in self.AREAS], op, TAC)
        ref = f"<tac:NextStartReference>{nxt}</tac:NextStartReference>" if nxt else ""
        return f"<tac:GetAreaInfoListResponse>{ref}{self._areas(page)}</tac:GetAreaInfoListResponse>"

    async def op_GetAreaInfo(self, _r: web.Request, op: ET.Element) -> str:
        return f"<tac:GetAreaInfoResponse>{self._areas(self._tokens(op, TAC))}</tac:GetAreaInfoResponse>"


def _on(q: Any) -> bool:
    return str(q.get("on", "1")).lower() in ("1", "true", "on", "yes")


class PanelControl:
    """The unauthenticated control URLs: the physical world (doors, badges) and faults."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        self.model = panel.model

    def stats(self) -> dict[str, Any]:
        p = self.panel
        return {**p.stats, **p.events.hub.stats(), "ops": dict(p.ops), "door_commands": list(p.door_commands)}

    async def handle(self, request: web.Request) -> web.Response:
        what, q = request.match_info["what"], request.query
        try:
            result = self.act(what, q)
        except SoapFault as exc:
            return web.json_response({"error": exc.reason}, status=404)
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        if result is None:
            return web.json_response({"error": f"unknown control {what}"}, status=404)
        return web.json_response(result)

    def act(self, what: str, q: Any) -> dict[str, Any] | None:
        m, hub = self.model, self.panel.events.hub
        if what == "open":
            m.open(m.door(q["door"]))
        elif what == "close":
            m.close(m.door(q["door"]))
        elif what == "tamper":
            m.tamper(m.door(q["door"]), _on(q))
        elif what == "fault":
            m.fault(m.door(q["door"]), _on(q), q.get("reason", ""))
        elif what == "rename":
            m.rename(m.door(q["door"]), q["name"])
        elif what == "badge":
            result = q.get("result", "granted")
            if result not in BADGE_TOPICS:
                raise ValueError(f"result must be one of {', '.join(BADGE_TOPICS)}")
            m.badge(m.ap(q["ap"]), result, q.get("credential", ""), q.get("holder", ""), q.get("reason", ""))
        elif what == "delay":
            self.panel.delay = float(q.get("s", "0"))
        elif what == "forget":
            hub.forget()
        elif what == "drop-renew":
            hub.drop_renew = int(q.get("n", "1"))
        elif what == "fail":
            (self.panel.failing.add if _on(q) else self.panel.failing.discard)(q["op"])
        elif what == "state":
            return m.snapshot()
        elif what != "stats":
            return None
        return self.stats()


SERVICE_PATHS = ("/onvif/device_service", "/onvif/events_service", "/onvif/doorcontrol_service",
                 "/onvif/accesscontrol_service", "/onvif/subscription/{sid}")


def build_app(args: argparse.Namespace) -> web.Application:
    panel = Panel(args)
    app = web.Application()
    for path in SERVICE_PATHS:
        app.router.add_post(path, panel.soap)
    app.router.add_route("*", "/control/{what}", PanelControl(panel).handle)
    app["panel"] = panel
    return app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m drivers.access.sim", description="simulated ONVIF access panel")
    add_common_arguments(p, port=8898)
    p.add_argument("--serial", default="PNL0001")
    p.add_argument("--doors", type=int, default=2, help="number of doors (one access point each)")
    p.add_argument("--no-op", nargs="+", action="extend", default=[], metavar="OPERATION",
                   help="operations the panel lacks (answered ActionNotSupported; capabilities say so)")
    p.add_argument("--open-too-long", type=float, default=10.0, help="seconds an accessed door may stay open")
    p.add_argument("--access-time", type=float, default=3.0, help="seconds a door stays Accessed")
    p.add_argument("--state-file", default="", help="keep door and access point states here across restarts")
    return p


def _check(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    if not 1 <= args.doors <= 50:
        p.error("--doors must be between 1 and 50")
    known = {a[3:] for a in dir(Panel) if a.startswith("op_")} | {"CreatePullPointSubscription", "PullMessages",
                                                                   "Renew", "Unsubscribe", "SetSynchronizationPoint"}
    unknown = sorted(set(args.no_op) - known)
    if unknown:
        p.error(f"--no-op: unknown operation(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


async def _serve(args: argparse.Namespace) -> None:
    app = build_app(args)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"access-sim ready on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        app["panel"].events.hub.forget()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    _check(args, p)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
