"""Panel events: the camera driver's PullPoint follower (subscription, renewal, resubscription after a panel
restart, synchronisation point) reading the Profile C topics.

- ``tns1:Door/State/*``: a ``door`` event (alarms and tamper have severity ``alarm``, faults ``warning``), and
  the door's point follows at once;
- ``tns1:AccessControl/*``: an ``access`` event (granted, denied with the reason: ``warning``, duress:
  ``alarm``, request timeout...), credential and holder items as the site's privacy settings say;
- ``tns1:AccessPoint/State/Enabled``: an ``access_point`` event, and the point follows;
- ``tns1:Configuration/*``: a ``panel_config`` event, and the panel's door and access point lists are read again.

Messages with ``PropertyOperation="Initialized"`` (the panel's answer to the synchronisation point made at
each subscription) update the points only: they are the current state, not something that happened.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.contract.driver import Sink
from agent.model import Event, Severity
from drivers.onvif import OnvifEvents
from drivers.onvif.events import EventFollower
from drivers.onvif.session import CameraSession
from drivers.onvif.topics import _items

from .privacy import CREDENTIAL_ITEMS, Redactor

log = logging.getLogger(__name__)

DOOR_TOPICS = {"DoorMode": "mode", "DoorPhysicalState": "physical", "LockPhysicalState": "lock",
               "DoubleLockPhysicalState": "double_lock", "DoorAlarm": "alarm", "DoorTamper": "tamper",
               "DoorFault": "fault"}
ALARM_STATES = {"DoorForcedOpen", "DoorOpenTooLong", "TamperDetected"}
WARNING_STATES = {"FaultDetected"}
# AccessControl/<first level> -> decision
DECISIONS = {"AccessGranted": "granted", "AccessTaken": "taken", "AccessNotTaken": "not_taken", "Denied": "denied",
             "Duress": "duress", "Request": "request"}


@dataclass
class PanelNotification:
    kind: str  # door, access, access_point, panel_config
    what: str  # door: property; access: decision; access_point: enabled; panel_config: the rest of the topic
    topic: str
    severity: Severity
    operation: str | None
    utc: str | None
    source: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> str | None:
        return self.data.get("State")

    @property
    def token(self) -> str:
        """The door's or access point's token (the spec's item name, else the first source item)."""
        key = "DoorToken" if self.kind == "door" else "AccessPointToken"
        return self.source.get(key) or next(iter(self.source.values()), "")


def _bare(topic: str) -> str:
    """``tns1:Door/State/DoorMode`` -> ``Door/State/DoorMode`` (any prefix)."""
    return topic.split(":", 1)[1] if ":" in topic.split("/", 1)[0] else topic


def classify(topic: str, data: dict[str, str]) -> tuple[str, str, Severity] | None:
    parts = _bare(topic).split("/")
    head = parts[0]
    if head == "Door" and len(parts) >= 3 and parts[1] == "State":
        prop = DOOR_TOPICS.get(parts[2])
        if prop is None:
            return None
        state = data.get("State", "")
        sev = (Severity.ALARM if state in ALARM_STATES else Severity.WARNING if state in WARNING_STATES
               else Severity.INFO)
        return "door", prop, sev
    if head == "AccessControl" and len(parts) >= 2:
        decision = DECISIONS.get(parts[1], parts[1].lower())
        if decision == "request" and len(parts) >= 3 and parts[2] == "Timeout":
            decision = "timeout"
        sev = {"duress": Severity.ALARM, "denied": Severity.WARNING}.get(decision, Severity.INFO)
        return "access", decision, sev
    if head == "AccessPoint" and len(parts) >= 3 and parts[1] == "State":
        return "access_point", parts[2][0].lower() + parts[2][1:], Severity.INFO
    if head == "Configuration" and len(parts) >= 2:
        return "panel_config", "/".join(parts[1:]), Severity.INFO
    return None


def parse(msg: Any) -> PanelNotification | None:
    topic = getattr(getattr(msg, "Topic", None), "_value_1", None)
    if not topic:
        return None
    topic = str(topic).strip()
    body = getattr(getattr(msg, "Message", None), "_value_1", None)
    source, data = _items(getattr(body, "Source", None)), _items(getattr(body, "Data", None))
    found = classify(topic, data)
    if found is None:
        return None
    kind, what, sev = found
    utc: Any = getattr(body, "UtcTime", None)
    when = utc.isoformat() if hasattr(utc, "isoformat") else (str(utc) if utc else None)
    return PanelNotification(kind, what, topic, sev, getattr(body, "PropertyOperation", None), when, source, data)


# (kind, token, what, value) -> the driver's points follow; token: the door or access point token
StateHook = Callable[[str, str, str, Any], None]


class PanelFollower(EventFollower):
    """The camera's follower with the panel's topics; ``names`` gives a token's site name and label."""

    def __init__(self, device: str, session: CameraSession, cfg: OnvifEvents, kinds: list[str], redactor: Redactor,
                 names: Callable[[str, str], tuple[str, str | None]], on_state: StateHook,
                 on_config: Callable[[], None]) -> None:
        super().__init__(device, session, cfg)
        self.kinds, self.redactor, self.names = kinds, redactor, names
        self.on_state, self.on_config = on_state, on_config
        self.ignored = 0

    def handle(self, sink: Sink, msg: Any) -> None:
        n = parse(msg)
        if n is None:
            self.ignored += 1
            return
        self.received += 1
        if n.kind in ("door", "access_point"):
            self.on_state(n.kind, n.token, n.what, n.state)
        elif n.kind == "panel_config":
            self.on_config()
        if n.operation == "Initialized" or n.kind not in self.kinds:
            return
        sink.event(self.event(n))

    def event(self, n: PanelNotification) -> Event:
        data: dict[str, Any] = {"id": secrets.token_hex(8), "topic": n.topic, "operation": n.operation,
                                "panel_time": n.utc}
        token = n.token
        if n.kind == "door":
            name, label = self.names("door", token)
            data.update({"door": name, "token": token, "label": label, "property": n.what, "state": n.state})
            if n.data.get("Reason"):  # a fault's or a tamper's cause, as the panel words it
                data["reason"] = n.data["Reason"]
        elif n.kind == "access_point":
            name, label = self.names("access_point", token)
            raw = n.state
            state: Any = raw.strip().lower() in ("true", "1") if raw is not None else None
            data.update({"access_point": name, "token": token, "label": label, n.what: state})
        elif n.kind == "access":
            name, label = self.names("access_point", token)
            items = self.redactor.items(n.data)
            data.update({"decision": n.what, "access_point": name, "token": token, "label": label,
                         "reason": items.pop("Reason", None)})
            cred = next((items[k] for k in ("CredentialToken", *sorted(CREDENTIAL_ITEMS)) if k in items), None)
            data["credential"] = cred
            data["data"] = items
        else:
            # a credential changed on the panel names it in its source: the privacy settings apply there too
            data.update({"change": n.what, "source": self.redactor.items(n.source)})
        return Event(self.device, n.kind, data, n.severity)
