"""``access`` driver: access-control panels over ONVIF (Profile C: Door Control and Access Control services).

An access panel is not a camera: its points are doors and access points, its events concern people (badges),
and it takes door commands. So it is its own driver, reusing the camera driver's ONVIF session and PullPoint
follower by import (``drivers.onvif.session``/``events``).

This module holds the configuration schema only and never imports the ONVIF library. The set of doors is the
panel's, but a site lists the doors it reports and commands (``connection.doors``, by token): points are
stable and validated before anything runs. A profile's door facts (``door_mode``...) are templates expanded
once per listed door into ``<door name>.<point name>`` (access point facts likewise per listed access point).
A panel door the site does not list still has its events published (by token) and is named in the ``doors``
fact so the installer can add it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.contract.points import PointBase
from agent.contract.registry import DriverSpec
from agent.types import PositiveDuration
from drivers.onvif import OnvifLogin

PANEL_FACTS = ("online", "manufacturer", "model", "firmware", "serial", "doors", "access_points")
DOOR_FACTS = ("door_name", "door_mode", "door_physical", "lock_physical", "double_lock_physical", "door_alarm",
              "door_tamper", "door_fault")
AP_FACTS = ("ap_name", "ap_enabled")
FACTS = PANEL_FACTS + DOOR_FACTS + AP_FACTS
# door command (site file, CLI, signed command) -> Door Control operation, and the DoorInfo capability naming it
DOOR_COMMANDS: dict[str, tuple[str, str]] = {
    "access": ("AccessDoor", "Access"),
    "lock": ("LockDoor", "Lock"),
    "unlock": ("UnlockDoor", "Unlock"),
    "block": ("BlockDoor", "Block"),
    "lock_down": ("LockDownDoor", "LockDown"),
    "lock_down_release": ("LockDownReleaseDoor", "LockDown"),
    "double_lock": ("DoubleLockDoor", "DoubleLock"),
}
CommandName = Literal["access", "lock", "unlock", "block", "lock_down", "lock_down_release", "double_lock"]
EVENT_KINDS = ("door", "access", "access_point", "panel_config")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WINDOW_RE = re.compile(r"^(?:(?P<days>[a-z]{3}(?:-[a-z]{3})?(?:,[a-z]{3}(?:-[a-z]{3})?)*|daily)\s+)?"
                       r"(?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class AccessPanelPoint(PointBase):
    """One fact of the panel, or a template repeated for every door / access point the site lists."""

    fact: Literal[
        "online", "manufacturer", "model", "firmware", "serial", "doors", "access_points",
        "door_name", "door_mode", "door_physical", "lock_physical", "double_lock_physical", "door_alarm",
        "door_tamper", "door_fault", "ap_name", "ap_enabled",
    ] = Field(
        description="panel facts: online, manufacturer, model, firmware, serial, doors and access_points (the "
        "panel's tokens and names); per door (repeated for each door of connection.doors): door_name, door_mode "
        "(Locked, Unlocked, Accessed, Blocked, LockedDown, LockedOpen, DoubleLocked), door_physical (Open, "
        "Closed, Fault, Unknown), lock_physical, double_lock_physical (Locked, Unlocked, Fault, Unknown), "
        "door_alarm (Normal, DoorForcedOpen, DoorOpenTooLong), door_tamper (NotInTamper, TamperDetected), "
        "door_fault (NotInFault, FaultDetected); per access point (of connection.access_points): ap_name, "
        "ap_enabled"
    )
    token: str | None = Field(
        None, description="set by the agent when it repeats a door or access point fact; never in a profile"
    )

    @property
    def per(self) -> Literal["panel", "door", "access_point"]:
        if self.fact in DOOR_FACTS:
            return "door"
        if self.fact in AP_FACTS:
            return "access_point"
        return "panel"


def parse_window(text: str) -> tuple[frozenset[int], int, int]:
    """``mon-fri 07:00-19:00``, ``sat,sun 09:00-12:00``, ``daily 06:00-22:00`` or ``07:00-19:00``: weekdays
    (0 = Monday) and minutes of the day [start, end); an end before the start runs past midnight."""
    m = WINDOW_RE.match(text.strip().lower())
    if m is None:
        raise ValueError(f"window {text!r}: expected 'DAYS HH:MM-HH:MM' (days: mon-fri, sat,sun, daily; "
                         "e.g. 'mon-fri 07:00-19:00')")
    days: set[int] = set()
    for part in (m["days"] or "daily").split(","):
        if part == "daily":
            days.update(range(7))
            continue
        a, _, b = part.partition("-")
        for d in (a, b or a):
            if d not in DAYS:
                raise ValueError(f"window {text!r}: unknown day {d!r} (mon, tue, wed, thu, fri, sat, sun)")
        i, j = DAYS.index(a), DAYS.index(b or a)
        days.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])

    def minutes(hhmm: str) -> int:
        h, mi = int(hhmm[:2]), int(hhmm[3:])
        if h > 24 or mi > 59 or (h == 24 and mi):
            raise ValueError(f"window {text!r}: {hhmm} is not a time of day")
        return h * 60 + mi

    start, end = minutes(m["start"]), minutes(m["end"])
    if start == end:
        raise ValueError(f"window {text!r}: empty (start equals end)")
    return frozenset(days), start, end


def in_window(text: str, when: dt.datetime) -> bool:
    days, start, end = parse_window(text)
    minute = when.hour * 60 + when.minute
    if start < end:
        return when.weekday() in days and start <= minute < end
    # past midnight: the evening part belongs to the listed day, the morning part to the day before
    if minute >= start:
        return when.weekday() in days
    return minute < end and (when.weekday() - 1) % 7 in days


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=64, description="the panel's token of it (see the 'doors' fact)")
    name: str | None = Field(
        None, description="short name used in point names (<name>.<point>) and commands; default: the token"
    )
    label: str | None = Field(None, max_length=128, description="human label (e.g. 'Main entrance')")

    @model_validator(mode="after")
    def _name(self) -> _Entry:
        if self.name is None:
            if not NAME_RE.match(self.token):
                raise ValueError(f"token {self.token!r} cannot name points: give a name (letters, digits, _ . -, "
                                 "at most 32)")
            self.name = self.token
        elif not NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r}: letters, digits, _ . - only, at most 32, starting with a letter "
                             "or digit")
        return self

    @property
    def key(self) -> str:
        return self.name or self.token


class DoorEntry(_Entry):
    """A door of the panel this site reports, and the commands an operator may give it."""

    commands: list[CommandName] = Field(
        default_factory=list, description="door commands allowed (signed 'door' command, edge-agent door): "
        "access, lock, unlock, block, lock_down, lock_down_release, double_lock; default none"
    )
    windows: list[str] = Field(
        default_factory=list, description="times the commands are allowed, in the site's timezone "
        "(site.timezone), e.g. 'mon-fri 07:00-19:00'; default: any time"
    )

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        for w in v:
            parse_window(w)
        return v

    @field_validator("commands")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a command is listed twice")
        return v


class AccessPointEntry(_Entry):
    """An access point (a reader at a door) of the panel this site reports."""


class Privacy(BaseModel):
    """What access events may carry about people (docs/privacy.md)."""

    model_config = ConfigDict(extra="forbid")
    credential: Literal["pseudonym", "clear", "omit"] = Field(
        "pseudonym", description="credential tokens and card numbers in events: pseudonym (keyed hash per site, "
        "default), clear (as the panel sends them) or omit"
    )
    holder_name: Literal["omit", "clear"] = Field(
        "omit", description="credential holder names in events: omit (default: they never leave the box) or clear"
    )


class AccessConnection(OnvifLogin):
    """Where the panel answers, how to log in, and this building's doors: what it reports and who may do what."""

    doors: list[DoorEntry] = Field(default_factory=list, max_length=256,
                                   description="doors reported (points per door) and commanded, by token")
    access_points: list[AccessPointEntry] = Field(default_factory=list, max_length=256,
                                                  description="access points reported (points per access point)")
    privacy: Privacy = Field(default_factory=Privacy, description="what access events say about people")

    @model_validator(mode="after")
    def _unique(self) -> AccessConnection:
        for what, entries in (("doors", self.doors), ("access_points", self.access_points)):
            seen: set[str] = set()
            for e in entries:
                for k in {e.token, e.key}:
                    if k in seen:
                        raise ValueError(f"{what}: {k!r} is listed twice")
                    seen.add(k)
        return self

    @property
    def bus_key(self) -> str:
        return f"onvif:{self.host}:{self.port}"

    def door(self, name: str) -> DoorEntry | None:
        """A listed door by name or token."""
        return next((d for d in self.doors if name in (d.key, d.token)), None)

    def check_door(self, door: str, command: str, when: dt.datetime) -> str:
        """The panel token to command, or ValueError saying why the site file refuses it (nothing is sent)."""
        if command not in DOOR_COMMANDS:
            raise ValueError(f"unknown door command {command!r}; known: {', '.join(DOOR_COMMANDS)}")
        d = self.door(door)
        if d is None:
            known = ", ".join(x.key for x in self.doors) or "none"
            raise ValueError(f"unknown door {door!r}: not in the site file's doors (listed: {known})")
        if command not in d.commands:
            allowed = ", ".join(d.commands) or "none"
            raise ValueError(f"door {d.key}: {command} not allowed by the site file (allowed: {allowed})")
        if d.windows and not any(in_window(w, when) for w in d.windows):
            raise ValueError(f"door {d.key}: {command} allowed only {'; '.join(d.windows)} "
                             f"(now {when:%a %H:%M %Z})")
        return d.token


class AccessEvents(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="subscribe to the panel's events (PullPoint)")
    subscription: PositiveDuration = Field(60.0, description="subscription lifetime; renewed at 80 % of it")
    pull_timeout: PositiveDuration = Field(5.0, description="long-poll time of one PullMessages request")
    message_limit: int = Field(100, ge=1, le=1000, description="messages fetched by one PullMessages")
    kinds: list[Literal["door", "access", "access_point", "panel_config"]] = Field(
        ["door", "access", "access_point", "panel_config"], description="event kinds published upstream"
    )


class AccessDeviceQuirks(BaseModel):
    """Profile ``device:`` section: what this panel model needs."""

    model_config = ConfigDict(extra="forbid")
    events: AccessEvents = Field(default_factory=AccessEvents, description="event subscription settings")
    adjust_time: bool = Field(True, description="sign requests with the panel's clock")
    access_time: PositiveDuration | None = Field(
        None, description="AccessTime asked with 'access' (momentary release); default: the panel's"
    )


def check_profile(points: Sequence[PointBase], device: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    return [((i, "token"), "set by the agent for each door of the site file; not in a profile")
            for i, p in enumerate(points) if isinstance(p, AccessPanelPoint) and p.token is not None]


def expand_points(points: Sequence[PointBase], conn: BaseModel) -> tuple[list[PointBase],
                                                                          list[tuple[tuple[str | int, ...], str]]]:
    """Door facts once per listed door (``<door>.<point>``), access point facts once per listed access point."""
    assert isinstance(conn, AccessConnection)
    out: list[PointBase] = []
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for p in points:
        if not isinstance(p, AccessPanelPoint) or p.per == "panel":
            out.append(p)
            continue
        entries: Sequence[_Entry] = conn.doors if p.per == "door" else conn.access_points
        key = "doors" if p.per == "door" else "access_points"
        for i, e in enumerate(entries):
            name = f"{e.key}.{p.name}"
            if len(name) > 64:
                problems.append(((key, i, "name"), f"point name {name!r} longer than 64 characters: shorten the name"))
                continue
            desc = f"{e.label or e.key}: {p.description or p.fact}"
            out.append(p.model_copy(update={"name": name, "token": e.token, "description": desc}))
    return out, problems


SPEC = DriverSpec(
    name="access",
    point_model=AccessPanelPoint,
    connection_model=AccessConnection,
    device_model=AccessDeviceQuirks,
    driver_class="drivers.access.driver:AccessDriver",
    check_profile=check_profile,
    expand_points=expand_points,
    description="ONVIF access-control panels (Profile C): doors, access points, alarms, signed door commands",
)


__all__ = [
    "DOOR_COMMANDS", "EVENT_KINDS", "FACTS", "SPEC", "AccessConnection", "AccessDeviceQuirks", "AccessPanelPoint",
    "DoorEntry", "Privacy", "in_window", "parse_window",
]
