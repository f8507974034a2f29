"""The simulated access panel judged by the client: onvif-zeep-async and zeep against the shipped 1.0 WSDLs."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from onvif import ONVIFCamera, ONVIFService
from zeep.exceptions import Fault

from tests.peers.panel import FAST, AccessPanel

TDC = "http://www.onvif.org/ver10/doorcontrol/wsdl"
TAC = "http://www.onvif.org/ver10/accesscontrol/wsdl"
TEV = "http://www.onvif.org/ver10/events/wsdl"
WSTOP = "http://docs.oasis-open.org/wsn/t-1"


@dataclass
class Clients:
    cam: ONVIFCamera
    doors: ONVIFService
    access: ONVIFService

    def service(self, address: str, wsdl: str, binding: str) -> ONVIFService:
        return ONVIFService(address, self.cam.user, self.cam.passwd, os.path.join(self.cam.wsdl_dir, wsdl),
                            binding_name=binding, dt_diff=self.cam.dt_diff, no_cache=True)


@asynccontextmanager
async def clients(panel: AccessPanel, password: str | None = None) -> AsyncIterator[Clients]:
    """What a Profile C client does: device service, then the door and access services from GetServices."""
    cam = ONVIFCamera("127.0.0.1", panel.port, panel.user, password or panel.password, no_cache=True,
                      adjust_time=True)
    opened: list[ONVIFService] = []
    try:
        await cam.update_xaddrs()
        c = Clients(cam, None, None)  # type: ignore[arg-type]
        c.doors = c.service(cam.xaddrs[TDC], "doorcontrol.wsdl", f"{{{TDC}}}DoorControlBinding")
        c.access = c.service(cam.xaddrs[TAC], "accesscontrol.wsdl", f"{{{TAC}}}PACSBinding")
        for svc in (c.doors, c.access):
            opened.append(svc)
            await svc.setup()
        yield c
    finally:
        for svc in opened:
            await svc.close()
        await cam.close()


def _subcodes(fault: Fault) -> list[str]:
    return [q.localname for q in fault.subcodes or []]


def _items(msg: Any, part: str) -> dict[str, str]:
    return {i.Name: i.Value for i in getattr(msg.Message._value_1, part).SimpleItem}


async def _pull(pp: ONVIFService, want: int = 1, within: float = 5.0) -> list[Any]:
    """Pull until at least ``want`` messages came (long polls of 1 s)."""
    out: list[Any] = []
    deadline = time.monotonic() + within
    while len(out) < want and time.monotonic() < deadline:
        res = await pp.PullMessages({"MessageLimit": 100, "Timeout": dt.timedelta(seconds=1)})
        out += res.NotificationMessage
    return out


def _states(msgs: list[Any], topic: str) -> list[tuple[str, str]]:
    """(source token, State) of the messages on that topic, in order."""
    return [(next(iter(_items(m, "Source").values())), _items(m, "Data")["State"]) for m in msgs
            if m.Topic._value_1 == topic]


async def test_client_parses_doors_access_points_and_states(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        assert {TDC, TAC, TEV} <= set(c.cam.xaddrs)
        caps = await c.doors.GetServiceCapabilities()
        assert caps.MaxLimit == 10
        doors = await c.doors.GetDoorInfoList({})
        assert [(d.token, d.Name) for d in doors.DoorInfo] == [("Door_1", "Main entrance"),
                                                                ("Door_2", "Staff entrance")]
        assert doors.DoorInfo[0].Capabilities.Access and doors.DoorInfo[0].Capabilities.LockDown
        page = await c.doors.GetDoorInfoList({"Limit": 1})
        assert [d.token for d in page.DoorInfo] == ["Door_1"] and page.NextStartReference == "Door_2"
        rest = await c.doors.GetDoorInfoList({"Limit": 1, "StartReference": page.NextStartReference})
        assert [d.token for d in rest.DoorInfo] == ["Door_2"] and rest.NextStartReference is None
        info = await c.doors.GetDoorInfo({"Token": ["Door_2", "nope"]})
        assert [d.token for d in info] == ["Door_2"]  # unknown tokens are ignored, as the spec says
        state = await c.doors.GetDoorState({"Token": "Door_1"})
        assert (state.DoorMode, state.DoorPhysicalState, state.LockPhysicalState, state.Alarm,
                state.Tamper.State, state.Fault.State) == ("Locked", "Closed", "Locked", "Normal", "NotInTamper",
                                                           "NotInFault")
        with pytest.raises(Fault) as err:
            await c.doors.GetDoorState({"Token": "Door_9"})
        assert _subcodes(err.value) == ["InvalidArgVal", "NotFound"]
        aps = await c.access.GetAccessPointInfoList({})
        assert [(a.token, a.Entity, a.Capabilities.DisableAccessPoint) for a in aps.AccessPointInfo] == [
            ("AP_1", "Door_1", True), ("AP_2", "Door_2", True)]
        assert (await c.access.GetAccessPointState({"Token": "AP_1"})).Enabled is True
        areas = await c.access.GetAreaInfoList({})
        assert [a.Name for a in areas.AreaInfo] == ["Street", "Lobby"]
        assert (await c.access.GetServiceCapabilities()).MaxLimit == 10


async def test_event_properties_list_every_topic(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        props = await (await c.cam.create_events_service()).GetEventProperties()
    topics = []
    types: set[str] = set()

    def walk(el: Any, path: list[str]) -> None:
        here = [*path, el.tag.rpartition("}")[2]]
        if el.get(f"{{{WSTOP}}}topic") == "true":
            topics.append("tns1:" + "/".join(here))
        for child in el:
            if not child.tag.endswith("MessageDescription"):
                walk(child, here)
                continue
            for item in child.iter("{http://www.onvif.org/ver10/schema}SimpleItemDescription"):
                prefix, _, name = item.get("Type").partition(":")
                types.add(f"{{{item.nsmap[prefix]}}}{name}")  # every type's prefix is declared

    for top in props.TopicSet._value_1:
        walk(top, [])
    for want in ("Door/State/DoorMode", "Door/State/DoorPhysicalState", "Door/State/LockPhysicalState",
                 "Door/State/DoorAlarm", "Door/State/DoorTamper", "Door/State/DoorFault", "AccessPoint/State/Enabled",
                 "AccessControl/AccessGranted/Credential", "AccessControl/Denied/Credential", "AccessControl/Duress",
                 "AccessControl/Request/Timeout", "Configuration/Door/Changed"):
        assert f"tns1:{want}" in topics
    assert {f"{{{TDC}}}DoorMode", "{http://www.w3.org/2001/XMLSchema}string",
            "{http://www.onvif.org/ver10/pacs}ReferenceToken"} <= types


async def test_forced_open_raises_door_alarm_through_pullpoint(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        manager = await c.cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        pp = manager.get_service()
        initial = await _pull(pp, want=14)  # 6 states x 2 doors + 2 access points
        assert {m.Message._value_1.PropertyOperation for m in initial} == {"Initialized"}
        assert ("Door_1", "Normal") in _states(initial, "tns1:Door/State/DoorAlarm")
        assert ("AP_2", "true") in _states(initial, "tns1:AccessPoint/State/Enabled")
        access_panel.open("Door_1")
        msgs = await _pull(pp, want=2)
        assert _states(msgs, "tns1:Door/State/DoorPhysicalState") == [("Door_1", "Open")]
        assert _states(msgs, "tns1:Door/State/DoorAlarm") == [("Door_1", "DoorForcedOpen")]
        assert {m.Message._value_1.PropertyOperation for m in msgs} == {"Changed"}
        state = await c.doors.GetDoorState({"Token": "Door_1"})
        assert (state.DoorPhysicalState, state.Alarm, state.DoorMode) == ("Open", "DoorForcedOpen", "Locked")
        access_panel.close("Door_1")
        msgs = await _pull(pp, want=2)
        assert _states(msgs, "tns1:Door/State/DoorAlarm") == [("Door_1", "Normal")]
        await manager.set_synchronization_point()
        again = await _pull(pp, want=14)
        assert len(again) == 14 and {m.Message._value_1.PropertyOperation for m in again} == {"Initialized"}
        await manager.shutdown()
    assert access_panel.stats()["sync_points"] == 1


async def test_access_door_changes_mode_relocks_and_open_too_long(access_panel: AccessPanel) -> None:
    # the fixture's panel: --access-time 1 --open-too-long 2
    async with clients(access_panel) as c:
        manager = await c.cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        pp = manager.get_service()
        await _pull(pp, want=14)
        await c.doors.AccessDoor({"Token": "Door_1"})
        state = await c.doors.GetDoorState({"Token": "Door_1"})
        assert (state.DoorMode, state.LockPhysicalState) == ("Accessed", "Unlocked")
        access_panel.open("Door_1")  # opened while accessed: not forced
        msgs = await _pull(pp, want=5, within=4)  # Accessed, Unlocked, Open, relock after 1 s: Locked, Locked
        assert _states(msgs, "tns1:Door/State/DoorMode") == [("Door_1", "Accessed"), ("Door_1", "Locked")]
        assert _states(msgs, "tns1:Door/State/LockPhysicalState") == [("Door_1", "Unlocked"), ("Door_1", "Locked")]
        assert _states(msgs, "tns1:Door/State/DoorAlarm") == []
        msgs = await _pull(pp, want=1, within=4)  # held open past 2 s
        assert _states(msgs, "tns1:Door/State/DoorAlarm") == [("Door_1", "DoorOpenTooLong")]
        assert access_panel.state()["doors"]["Door_1"]["alarm"] == "DoorOpenTooLong"
        await manager.shutdown()


async def test_door_mode_rules_and_faults(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        await c.doors.LockDownDoor({"Token": "Door_2"})
        for op in ("UnlockDoor", "AccessDoor", "LockOpenDoor", "LockOpenReleaseDoor"):
            with pytest.raises(Fault) as err:
                await getattr(c.doors, op)({"Token": "Door_2"})
            assert _subcodes(err.value) == ["Action", "Failure"] and err.value.code.endswith("Receiver"), op
        assert access_panel.state()["doors"]["Door_2"]["mode"] == "LockedDown"
        await c.doors.LockDownReleaseDoor({"Token": "Door_2"})
        with pytest.raises(Fault):  # only from LockedDown
            await c.doors.LockDownReleaseDoor({"Token": "Door_2"})
        await c.doors.BlockDoor({"Token": "Door_2"})
        with pytest.raises(Fault):  # Blocked prevents momentary access
            await c.doors.AccessDoor({"Token": "Door_2"})
        await c.doors.UnlockDoor({"Token": "Door_2"})
        assert (await c.doors.GetDoorState({"Token": "Door_2"})).LockPhysicalState == "Unlocked"
        with pytest.raises(Fault) as err:
            await c.doors.LockDoor({"Token": "Door_7"})
        assert _subcodes(err.value) == ["InvalidArgVal", "NotFound"]
        access_panel.control("fail", op="LockDoor")
        with pytest.raises(Fault) as err:
            await c.doors.LockDoor({"Token": "Door_2"})
        assert _subcodes(err.value) == ["Action", "Failure"]
        access_panel.control("fail", op="LockDoor", on=0)
        await c.doors.LockDoor({"Token": "Door_2"})
    stats = access_panel.stats()
    results = [(d["op"], d["result"]) for d in stats["door_commands"] if d["door"] == "Door_2"]
    assert results[:5] == [("LockDownDoor", "ok"), ("UnlockDoor", "Failure"), ("AccessDoor", "Failure"),
                           ("LockOpenDoor", "Failure"), ("LockOpenReleaseDoor", "Failure")]
    assert results[-2:] == [("LockDoor", "Failure"), ("LockDoor", "ok")]
    assert stats["ops"]["LockDoor"] == 3 and stats["ops"]["GetDoorState"] == 1


async def test_badges_tamper_fault_and_access_point_events(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        manager = await c.cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        pp = manager.get_service()
        await _pull(pp, want=14)
        access_panel.badge("AP_2", credential="CARD-42", holder="Jane Doe & Co", result="denied",
                           reason="InvalidPIN")
        access_panel.badge("AP_1", credential="CARD-7", holder="", result="duress")
        access_panel.badge("AP_1", credential="CARD-8", result="timeout")
        msgs = await _pull(pp, want=5)  # denied, duress, Accessed + Unlocked (duress opens the door), timeout
        denied = [m for m in msgs if m.Topic._value_1 == "tns1:AccessControl/Denied/Credential"]
        assert _items(denied[0], "Source") == {"AccessPointToken": "AP_2"}
        assert _items(denied[0], "Data") == {"CredentialToken": "CARD-42", "CredentialHolderName": "Jane Doe & Co",
                                             "Reason": "InvalidPIN"}
        assert denied[0].Message._value_1.PropertyOperation is None  # not a property event
        duress = [m for m in msgs if m.Topic._value_1 == "tns1:AccessControl/Duress"]
        assert "CredentialHolderName" not in _items(duress[0], "Data")  # no holder name given: item left out
        assert _states(msgs, "tns1:Door/State/DoorMode") == [("Door_1", "Accessed")]
        assert [m.Topic._value_1 for m in msgs].count("tns1:AccessControl/Request/Timeout") == 1
        await c.access.DisableAccessPoint({"Token": "AP_2"})
        assert (await c.access.GetAccessPointState({"Token": "AP_2"})).Enabled is False
        access_panel.tamper("Door_2")
        access_panel.fault("Door_2", reason="lock motor")
        access_panel.control("rename", door="Door_2", name="Staff door")
        msgs = await _pull(pp, want=6)
        assert _states(msgs, "tns1:AccessPoint/State/Enabled") == [("AP_2", "false")]
        assert _states(msgs, "tns1:Door/State/DoorTamper") == [("Door_2", "TamperDetected")]
        assert _states(msgs, "tns1:Door/State/DoorFault") == [("Door_2", "FaultDetected")]
        assert _states(msgs, "tns1:Door/State/DoorPhysicalState") == [("Door_2", "Fault")]
        fault = next(m for m in msgs if m.Topic._value_1 == "tns1:Door/State/DoorFault")
        assert _items(fault, "Data")["Reason"] == "lock motor"
        assert "tns1:Configuration/Door/Changed" in [m.Topic._value_1 for m in msgs]
        state = await c.doors.GetDoorState({"Token": "Door_2"})
        assert (state.Tamper.State, state.Fault.State, state.Fault.Reason) == ("TamperDetected", "FaultDetected",
                                                                               "lock motor")
        assert (await c.doors.GetDoorInfo({"Token": ["Door_2"]}))[0].Name == "Staff door"
        await manager.shutdown()


async def test_topic_filter(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        events = await c.cam.create_events_service()
        expr = etree.Element("{http://docs.oasis-open.org/wsn/b-2}TopicExpression",
                             Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet",
                             nsmap={"tns1": "http://www.onvif.org/ver10/topics"})
        expr.text = "tns1:AccessControl//.|tns1:AccessPoint/State/*"
        sub = await events.CreatePullPointSubscription({"Filter": {"_value_1": [expr]},
                                                        "InitialTerminationTime": dt.timedelta(seconds=30)})
        pp = c.service(sub.SubscriptionReference.Address._value_1, "events.wsdl",
                       f"{{{TEV}}}PullPointSubscriptionBinding")
        await pp.setup()
        try:
            access_panel.open("Door_1")
            access_panel.badge("AP_1", credential="CARD-1", result="denied")
            msgs = await _pull(pp, want=3)  # the access points' initial states, then the badge
            assert [m.Topic._value_1 for m in msgs] == ["tns1:AccessPoint/State/Enabled"] * 2 + [
                "tns1:AccessControl/Denied/Credential"]
        finally:
            await pp.close()


async def test_wrong_password_is_refused(access_panel: AccessPanel) -> None:
    with pytest.raises(Fault) as err:
        async with clients(access_panel, password="wrong"):
            pass
    assert "NotAuthorized" in _subcodes(err.value)
    assert access_panel.stats()["auth_failures"] >= 1


async def test_unauthenticated_command_never_acts(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        intruder = c.service(c.cam.xaddrs[TDC], "doorcontrol.wsdl", f"{{{TDC}}}DoorControlBinding")
        intruder.passwd = "wrong"
        await intruder.setup()
        try:
            with pytest.raises(Fault):
                await intruder.UnlockDoor({"Token": "Door_1"})
        finally:
            await intruder.close()
    stats = access_panel.stats()
    assert stats["ops"]["UnlockDoor"] == 1  # received...
    assert stats["door_commands"] == [{"op": "UnlockDoor", "door": "Door_1", "result": "NotAuthorized"}]
    assert access_panel.state()["doors"]["Door_1"]["mode"] == "Locked"  # ...and refused


async def test_restart_forgets_subscriptions_and_keeps_door_states(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        manager = await c.cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        pp = manager.get_service()
        await _pull(pp, want=14)
        await c.doors.LockDownDoor({"Token": "Door_1"})
        access_panel.restart()
        with pytest.raises(Fault):
            await pp.PullMessages({"MessageLimit": 10, "Timeout": dt.timedelta(seconds=1)})
        assert access_panel.stats()["subscriptions_live"] == 0
        state = await c.doors.GetDoorState({"Token": "Door_1"})  # the state file kept the door's mode
        assert state.DoorMode == "LockedDown"


async def test_no_op_gives_action_not_supported(tmp_path: Path) -> None:
    panel = AccessPanel(tmp_path, extra=[*FAST, "--no-op", "LockDoor", "DisableAccessPoint"]).start()
    try:
        async with clients(panel) as c:
            door = (await c.doors.GetDoorInfo({"Token": ["Door_1"]}))[0]
            assert (door.Capabilities.Lock, door.Capabilities.Unlock) == (False, True)
            ap = (await c.access.GetAccessPointInfo({"Token": ["AP_1"]}))[0]
            assert ap.Capabilities.DisableAccessPoint is False
            with pytest.raises(Fault) as err:
                await c.doors.LockDoor({"Token": "Door_1"})
            assert _subcodes(err.value) == ["ActionNotSupported", "NotSupported"]
            await c.doors.UnlockDoor({"Token": "Door_1"})  # the others still work
        stats = panel.stats()
        assert stats["ops"]["LockDoor"] == 1
        assert [d["result"] for d in stats["door_commands"]] == ["NotSupported", "ok"]
    finally:
        panel.stop()


async def test_bad_no_op_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "drivers.access.sim", "--port", "1", "--no-op", "LockTheDoor",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"unknown operation(s) LockTheDoor" in err and b"Traceback" not in err


async def test_services_with_capabilities_drop_renew_and_delay(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        services = await (await c.cam.create_devicemgmt_service()).GetServices({"IncludeCapability": True})
        caps = {s.Namespace: s.Capabilities for s in services}
        tdc_caps = caps[TDC]._value_1  # the service's Capabilities element, as the spec places it
        assert tdc_caps.tag == f"{{{TDC}}}Capabilities" and tdc_caps.get("MaxLimit") == "10"
        manager = await c.cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        address = manager.get_service().xaddr
        renewer = c.service(address, "events.wsdl", f"{{{TEV}}}SubscriptionManagerBinding")
        await renewer.setup()
        try:
            await renewer.Renew({"TerminationTime": dt.timedelta(seconds=60)})
            access_panel.control("drop-renew", n=1)
            with pytest.raises(Fault):  # refused, and the subscription is gone
                await renewer.Renew({"TerminationTime": dt.timedelta(seconds=60)})
            with pytest.raises(Fault):
                await manager.get_service().PullMessages({"MessageLimit": 10, "Timeout": dt.timedelta(seconds=1)})
        finally:
            await renewer.close()
        stats = access_panel.stats()
        assert (stats["renews"], stats["dropped_renews"], stats["subscriptions_live"]) == (1, 1, 0)
        access_panel.control("delay", s=0.6)
        t0 = time.monotonic()
        await c.doors.GetDoorState({"Token": "Door_1"})
        assert time.monotonic() - t0 >= 0.6
        access_panel.control("delay", s=0)


async def test_disabled_access_point_refuses_credentials(access_panel: AccessPanel) -> None:
    async with clients(access_panel) as c:
        await c.access.DisableAccessPoint({"Token": "AP_1"})
        manager = await c.cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        pp = manager.get_service()
        await _pull(pp, want=14)
        access_panel.badge("AP_1", credential="CARD-3", holder="A. Person", result="granted")
        msgs = await _pull(pp, want=1)
        assert [m.Topic._value_1 for m in msgs] == ["tns1:AccessControl/Denied/Credential"]
        assert _items(msgs[0], "Data")["Reason"] == "AccessPointDisabled"
        assert access_panel.state()["doors"]["Door_1"]["mode"] == "Locked"
        await c.access.EnableAccessPoint({"Token": "AP_1"})
        access_panel.badge("AP_1", credential="CARD-3", result="granted")
        msgs = await _pull(pp, want=4)  # Enabled true, granted, Accessed, Unlocked
        assert "tns1:AccessControl/AccessGranted/Credential" in [m.Topic._value_1 for m in msgs]
        assert _states(msgs, "tns1:Door/State/DoorMode") == [("Door_1", "Accessed")]
        await manager.shutdown()


async def test_unreadable_state_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "state.json"
    bad.write_text("{not json")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "drivers.access.sim", "--port", "1", "--state-file", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert f"--state-file {bad}: unreadable".encode() in err and b"Traceback" not in err
