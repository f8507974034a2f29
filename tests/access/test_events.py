"""Panel topics -> agent event kind and severity (the table of docs/access-control.md), no panel needed."""

from __future__ import annotations

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
