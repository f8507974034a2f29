"""Camera event topics -> agent event kind and severity; a parsed notification as plain data.

The built-in table covers the ONVIF core topics and the common vendor ones (the same ground as the
``onvif-parsers`` package, without its dependency); a profile adds vendor topics with ``device.events.topics``,
checked first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.model import Severity

from . import TopicRule

# (text the topic contains, kind, severity when active, data item holding the state or None)
BUILTIN: tuple[tuple[str, str, Severity, str | None], ...] = (
    ("RuleEngine/CellMotionDetector/Motion", "motion", Severity.WARNING, "IsMotion"),
    ("RuleEngine/MotionRegionDetector/Motion", "motion", Severity.WARNING, "State"),
    ("VideoSource/MotionAlarm", "motion", Severity.WARNING, "State"),
    ("VideoAnalytics/Motion", "motion", Severity.WARNING, None),
    ("RuleEngine/FieldDetector/ObjectsInside", "motion", Severity.WARNING, "IsInside"),
    ("RuleEngine/LineDetector/Crossed", "motion", Severity.WARNING, None),
    ("RuleEngine/TamperDetector/Tamper", "tamper", Severity.ALARM, "IsTamper"),
    ("VideoSource/GlobalSceneChange", "tamper", Severity.ALARM, "State"),
    ("VideoSource/ImageTooBlurry", "tamper", Severity.ALARM, "State"),
    ("VideoSource/ImageTooDark", "tamper", Severity.ALARM, "State"),
    ("VideoSource/ImageTooBright", "tamper", Severity.ALARM, "State"),
    ("VideoSource/SignalLoss", "tamper", Severity.ALARM, "State"),
    ("Device/Trigger/DigitalInput", "input", Severity.WARNING, "LogicalState"),
    ("Device/IO/VirtualPort", "input", Severity.WARNING, "State"),
    ("Device/HardwareFailure", "other", Severity.ALARM, None),
)
SEVERITY = {"info": Severity.INFO, "warning": Severity.WARNING, "alarm": Severity.ALARM}
TRUE = {"true", "1", "on", "active"}
FALSE = {"false", "0", "off", "inactive"}


@dataclass
class Notification:
    topic: str
    kind: str
    severity: Severity
    state: bool | str | None
    operation: str | None
    utc: str | None
    source: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)


def _items(group: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in getattr(group, "SimpleItem", None) or []:
        name, value = getattr(item, "Name", None), getattr(item, "Value", None)
        if name is not None:
            out[str(name)] = "" if value is None else str(value)
    return out


def _state(text: str | None) -> bool | str | None:
    if text is None:
        return None
    low = text.strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    return text


def classify(topic: str, rules: list[TopicRule]) -> tuple[str, Severity, str | None]:
    """Kind, severity when active, and the state item of a topic (profile rules first)."""
    for r in rules:
        if r.match in topic:
            return r.kind, SEVERITY[r.severity], r.item
    for match, kind, sev, item in BUILTIN:
        if match in topic:
            return kind, sev, item
    return "other", Severity.INFO, None


def parse(msg: Any, rules: list[TopicRule]) -> Notification | None:
    """One ``wsnt:NotificationMessage`` as zeep parsed it; None when it has no topic."""
    topic_el = getattr(msg, "Topic", None)
    topic = getattr(topic_el, "_value_1", None)
    if not topic:
        return None
    topic = str(topic).strip()
    body = getattr(getattr(msg, "Message", None), "_value_1", None)
    source = _items(getattr(body, "Source", None))
    data = _items(getattr(body, "Data", None))
    kind, sev, item = classify(topic, rules)
    raw_state = data.get(item) if item else next(iter(data.values()), None)
    state = _state(raw_state)
    if state is False:
        sev = Severity.INFO
    utc: Any = getattr(body, "UtcTime", None)
    when = utc.isoformat() if hasattr(utc, "isoformat") else (str(utc) if utc else None)
    return Notification(
        topic=topic, kind=kind, severity=sev, state=state,
        operation=getattr(body, "PropertyOperation", None),
        utc=when,
        source=source, data=data,
    )
