"""End to end: the real agent (supervisor, pipeline, outbox, uplink) with the simulated access panel (a real
process answering SOAP that zeep checks against the official WSDLs) and a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.core.agentkit import Collector, running_agent, write_site
from tests.peers.mosquitto import Broker
from tests.peers.panel import AccessPanel

HOLDER = "Jeanne Martin-Dupont"
CREDENTIAL = "CARD-7781-XYZ"


def values(col: Collector, device: str, point: str) -> list[Any]:
    return [s["value"] for m in col.of("t") if m.get("device") == device for s in m["samples"]
            if s["point"] == point]


def events(col: Collector, device: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [m["doc"] for m in col.of("e") if isinstance(m.get("doc"), dict) and m["doc"].get("src") == device
            and (kind is None or m["doc"].get("kind") == kind)]


def panel_entry(name: str, panel: AccessPanel, tmp: Path, doors: str | None = None) -> str:
    pw = tmp / f"{name}-password"
    pw.write_text(panel.password + "\n")
    doors = doors if doors is not None else (
        "        - {token: Door_1, name: main, label: Main entrance, commands: [access, lock, unlock]}\n"
        "        - {token: Door_2, name: staff, commands: [unlock]}\n"
    )
    return (f"  - name: {name}\n    type: generic-onvif-access-panel\n    interval: 2s\n    timeout: 2s\n"
            f"    connection:\n      host: 127.0.0.1\n      port: {panel.port}\n      user: admin\n"
            f"      password: {{file: {pw}}}\n      doors:\n{doors}"
            "      access_points:\n        - {token: AP_1, name: main-reader}\n")


def panel_site(tmp: Path, broker: Broker, panels: dict[str, AccessPanel], doors: str | None = None) -> Path:
    """The agent's files in their own folder: the panel's state file changing beside a site file would be taken
    for a local edit of the configuration (and reloaded)."""
    tmp = tmp / "agent"
    tmp.mkdir(exist_ok=True)
    devices = "".join(panel_entry(n, p, tmp, doors) for n, p in panels.items())
    site = write_site(tmp, broker.url, devices=devices)
    site.write_text(site.read_text().replace("site: {id: t1}", "site: {id: t1, timezone: UTC}"))
    return site


async def test_forced_door_is_an_alarm_at_the_broker_under_1s(access_panel: AccessPanel, broker: Broker,
                                                              tmp_path: Path) -> None:
    site = panel_site(tmp_path, broker, {"panel": access_panel})
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: values(col, "panel", "main.mode") == ["Locked"], 15, "door points")
        await col.wait(lambda: values(col, "panel", "model") == ["EA-PANEL-2"], 5, "slow points")
        assert values(col, "panel", "main.door") == ["Closed"]
        assert values(col, "panel", "main.alarm") == ["Normal"]
        assert values(col, "panel", "staff.lock") == ["Locked"]
        assert values(col, "panel", "main-reader.enabled") == [True]
        assert "Door_1=Main entrance" in values(col, "panel", "doors")[0]
        await col.wait(lambda: access_panel.stats()["subscriptions_live"] == 1, 10, "subscription")
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        access_panel.open("Door_1")  # the lock is locked: forced open
        await col.wait(lambda: any(e["data"]["state"] == "DoorForcedOpen" for e in events(col, "panel", "door")),
                       1.0, "forced-open alarm under 1 s")
        print(f"forced door to broker: {(time.monotonic() - t0) * 1000:.0f} ms")
        ev = next(e for e in events(col, "panel", "door") if e["data"]["state"] == "DoorForcedOpen")
        assert ev["sev"] == "alarm"
        assert ev["data"]["door"] == "main" and ev["data"]["token"] == "Door_1"
        assert ev["data"]["label"] == "Main entrance" and ev["data"]["property"] == "alarm"
        assert ev["data"]["topic"] == "tns1:Door/State/DoorAlarm"
        await col.wait(lambda: values(col, "panel", "main.alarm")[-1:] == ["DoorForcedOpen"], 2, "alarm point")
        assert values(col, "panel", "main.door")[-1] == "Open"
        access_panel.tamper("Door_2")
        await col.wait(lambda: any(e["data"]["state"] == "TamperDetected" for e in events(col, "panel", "door")), 2,
                       "tamper")
        assert next(e for e in events(col, "panel", "door") if e["data"]["state"] == "TamperDetected")["sev"] == \
            "alarm"
        access_panel.close("Door_1")
        await col.wait(lambda: values(col, "panel", "main.alarm")[-1:] == ["Normal"], 2, "alarm cleared")
        access_panel.fault("Door_1", reason="Lock motor stalled")
        await col.wait(lambda: any(e["data"]["state"] == "FaultDetected" for e in events(col, "panel", "door")), 2,
                       "fault")
        fault = next(e for e in events(col, "panel", "door") if e["data"]["state"] == "FaultDetected")
        assert fault["sev"] == "warning" and fault["data"]["reason"] == "Lock motor stalled"
        await col.wait(lambda: values(col, "panel", "main.fault")[-1:] == ["FaultDetected"], 2, "fault point")
        # no event repeats the states taken at subscription (Initialized) as if they had just happened
        assert not [e for e in events(col, "panel", "door") if e["data"]["operation"] == "Initialized"]
    for m in col.messages:
        assert access_panel.password.encode() not in m["raw"]


async def test_access_events_carry_pseudonyms_never_names(access_panel: AccessPanel, broker: Broker,
                                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    site = panel_site(tmp_path, broker, {"panel": access_panel})
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: access_panel.stats()["subscriptions_live"] == 1, 15, "subscription")
        access_panel.badge("AP_1", credential=CREDENTIAL, holder=HOLDER, result="denied", reason="CredentialExpired")
        access_panel.badge("AP_1", credential=CREDENTIAL, holder=HOLDER, result="granted")
        access_panel.badge("AP_1", credential=CREDENTIAL, holder=HOLDER, result="duress")
        access_panel.badge("AP_2", credential="CARD-2", holder="Paul Roux", result="timeout")
        await col.wait(lambda: {e["data"]["decision"] for e in events(col, "panel", "access")} >=
                       {"denied", "granted", "duress", "timeout"}, 5, "four access events")
    acc = {e["data"]["decision"]: e for e in events(col, "panel", "access")}
    denied = acc["denied"]
    assert denied["sev"] == "warning" and denied["data"]["reason"] == "CredentialExpired"
    assert denied["data"]["access_point"] == "main-reader" and denied["data"]["token"] == "AP_1"
    pseudonym = denied["data"]["credential"]
    assert isinstance(pseudonym, str) and len(pseudonym) == 16 and pseudonym != CREDENTIAL
    assert acc["granted"]["data"]["credential"] == pseudonym  # the same badge, the same pseudonym on this site
    assert acc["granted"]["sev"] == "info"
    assert acc["duress"]["sev"] == "alarm"
    assert acc["timeout"]["data"]["access_point"] == "AP_2"  # not listed in the site file: its token
    key = tmp_path / "agent" / "state" / "access-pseudonym.key"
    assert key.stat().st_mode & 0o777 == 0o600
    # every published payload and every log line: neither the holder's name nor the raw credential
    assert len(col.messages) > 10
    for secret in (HOLDER, "Jeanne", "Martin-Dupont", CREDENTIAL, "CARD-2", "Paul Roux"):
        for m in col.messages:
            assert secret.encode() not in m["raw"], (secret, m["topic"])
        assert secret not in caplog.text, secret
    for name in (HOLDER, CREDENTIAL):  # and not on the box's disk either, beyond the panel's own files
        assert name.encode() not in (tmp_path / "agent" / "state" / "outbox.sqlite").read_bytes()


async def test_states_right_within_15s_after_a_panel_restart(access_panel: AccessPanel, broker: Broker,
                                                              tmp_path: Path) -> None:
    site = panel_site(tmp_path, broker, {"panel": access_panel})
    state_file = tmp_path / "panel-state.json"
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: values(col, "panel", "main.mode") == ["Locked"], 15, "door points")
        await col.wait(lambda: access_panel.stats()["subscriptions_live"] == 1, 10, "subscription")
        access_panel.control("tamper", door="Door_1", on=0)  # saves the state file
        access_panel.stop()
        # while the panel is away its doors change (its own schedule, a technician at the panel)
        saved = json.loads(state_file.read_text())
        saved["doors"]["Door_1"]["mode"] = "Unlocked"
        saved["doors"]["Door_2"]["tamper"] = True
        saved["access_points"]["AP_1"] = False
        state_file.write_text(json.dumps(saved))
        await asyncio.sleep(3)
        access_panel.start()
        t0 = time.monotonic()
        await col.wait(lambda: values(col, "panel", "main.mode")[-1:] == ["Unlocked"]
                       and values(col, "panel", "main.lock")[-1:] == ["Unlocked"]
                       and values(col, "panel", "staff.tamper")[-1:] == ["TamperDetected"]
                       and values(col, "panel", "main-reader.enabled")[-1:] == [False], 15,
                       "states of the restarted panel")
        took = time.monotonic() - t0
        print(f"states right {took:.1f} s after the panel answered")
        await col.wait(lambda: access_panel.stats()["subscriptions_live"] >= 1, 15, "resubscribed")
        n = len(events(col, "panel", "door"))
        access_panel.open("Door_2")  # Door_2 is still locked: forced
        await col.wait(lambda: any(e["data"]["state"] == "DoorForcedOpen" for e in events(col, "panel", "door")[n:]),
                       3, "events flow after the restart")
    assert took < 15


async def test_a_read_the_panel_refuses_fails_its_points_only(broker: Broker, tmp_path: Path) -> None:
    """A panel lacking GetAccessPointState, then answering GetDoorState with a fault: those points are errors
    with the panel's reason; the panel stays online, its other points and its events go on."""
    from agent.model import Quality

    panel = AccessPanel(tmp_path, extra=["--access-time", "1", "--no-op", "GetAccessPointState"]).start()
    try:
        site = panel_site(tmp_path, broker, {"panel": panel})
        async with Collector(broker.port) as col, running_agent(site) as agent:
            await col.wait(lambda: values(col, "panel", "main.mode") == ["Locked"], 15, "door points")
            pts = agent.health["panel"].points
            # never polled again, the point follows the panel's events (its state at subscription, then changes)
            await col.wait(lambda: panel.stats()["ops"].get("GetDoorState", 0) >= 2, 8, "two polls")
            assert panel.stats()["ops"].get("GetAccessPointState") == 1
            assert values(col, "panel", "main-reader.enabled") == [True]
            assert pts["main-reader.enabled"].quality == Quality.GOOD
            panel.control("fail", op="GetDoorState")
            await col.wait(lambda: pts["main.mode"].quality == Quality.ERROR, 6, "door state refused")
            assert "panel fault" in str(pts["main.mode"].last_error)
            assert agent.health["panel"].available and pts["model"].quality == Quality.GOOD
            await col.wait(lambda: panel.stats()["subscriptions_live"] == 1, 10, "subscription")
            panel.open("Door_1")
            await col.wait(lambda: any(e["data"]["state"] == "DoorForcedOpen" for e in events(col, "panel", "door")),
                           5, "events go on")  # not a latency test (that one is above): room for a loaded machine
            panel.control("fail", op="GetDoorState", on=0)
            await col.wait(lambda: pts["main.mode"].quality == Quality.GOOD, 6, "door state read again")
            assert agent.health["panel"].available
    finally:
        panel.stop()
