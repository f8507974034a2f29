"""Panel topics -> agent event kind and severity (the table of docs/access-control.md), no panel needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.model import Severity
from drivers.access.events import classify


@pytest.mark.parametrize(("topic", "state", "kind", "what", "sev"), [
    ("tns1:Door/State/DoorAlarm", "DoorForcedOpen", "door", "alarm", Severity.ALARM),
    ("tns1:Door/State/DoorAlarm", "DoorOpenTooLong", "door", "alarm", Severity.ALARM),
    ("tns1:Door/State/DoorAlarm", "Normal", "door", "alarm", Severity.INFO),
    ("tns1:Door/State/DoorTamper", "TamperDetected", "door", "tamper", Severity.ALARM),
    ("tns1:Door/State/DoorFault", "FaultDetected", "door", "fault", Severity.WARNING),
    ("tns1:Door/State/DoorMode", "Unlocked", "door", "mode", Severity.INFO),
    ("tns1:Door/State/DoorPhysicalState", "Open", "door", "physical", Severity.INFO),
    ("tns1:Door/State/LockPhysicalState", "Unlocked", "door", "lock", Severity.INFO),
    ("tns1:Door/State/DoubleLockPhysicalState", "Locked", "door", "double_lock", Severity.INFO),
    ("tns1:AccessControl/AccessGranted/Credential", None, "access", "granted", Severity.INFO),
    ("tns1:AccessControl/Denied/Credential", None, "access", "denied", Severity.WARNING),
    ("tns1:AccessControl/Denied/CredentialNotFound/Card", None, "access", "denied", Severity.WARNING),
    ("tns1:AccessControl/Duress", None, "access", "duress", Severity.ALARM),
    ("tns1:AccessControl/Request/Timeout", None, "access", "timeout", Severity.INFO),
    ("tns1:AccessControl/AccessTaken/Credential", None, "access", "taken", Severity.INFO),
    ("tns1:AccessPoint/State/Enabled", "false", "access_point", "enabled", Severity.INFO),
    ("tns1:Configuration/Door/Changed", None, "panel_config", "Door/Changed", Severity.INFO),
    ("Door/State/DoorAlarm", "DoorForcedOpen", "door", "alarm", Severity.ALARM),  # no prefix
])
def test_topics(topic: str, state: str | None, kind: str, what: str, sev: Severity) -> None:
    data = {"State": state} if state is not None else {}
    assert classify(topic, data) == (kind, what, sev)


@pytest.mark.parametrize("topic", ["tns1:RuleEngine/CellMotionDetector/Motion", "tns1:Door/State/Unheard",
                                   "tns1:Monitoring/ProcessorUsage"])
def test_other_topics_are_ignored(topic: str) -> None:
    assert classify(topic, {"State": "x"}) is None


def test_config_events_and_odd_sources_keep_privacy(tmp_path: Path) -> None:
    """A credential changed on the panel names it in the source of a configuration event: pseudonymised too; a
    door event whose source item is not called DoorToken still names its door."""
    from drivers.access import Privacy
    from drivers.access.events import PanelFollower, PanelNotification
    from drivers.access.privacy import Redactor
    from drivers.onvif import OnvifEvents

    follower = PanelFollower("panel", None, OnvifEvents(), ["door", "panel_config"],  # type: ignore[arg-type]
                             Redactor(Privacy(), tmp_path), lambda per, t: (t, None), lambda *a: None, lambda: None)
    cfg = PanelNotification("panel_config", "Credential/Changed", "tns1:Configuration/Credential/Changed",
                            Severity.INFO, None, None, {"CredentialToken": "CRED-42", "CredentialHolderName": "Ann"})
    ev = follower.event(cfg)
    assert ev.data["source"]["CredentialToken"] != "CRED-42" and "CredentialHolderName" not in ev.data["source"]
    door = PanelNotification("door", "mode", "tns1:Door/State/DoorMode", Severity.INFO, "Changed", None,
                             {"Door": "D7"}, {"State": "Locked"})
    assert follower.event(door).data["token"] == "D7"
