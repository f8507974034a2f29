"""``bacnet`` driver: BACnet/IP controllers (bacpypes3).

This module holds the configuration schema only and never imports bacpypes3: validating a profile or a
site file must work (and be cheap) on a box where the library is missing. Names of object types and
properties are checked against static tables (``enums.py``) kept equal to bacpypes3's by a test.
"""

from __future__ import annotations

import builtins
import difflib
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.contract.points import PointBase
from agent.contract.registry import DriverSpec
from agent.contract.writes import (
    FLOAT32_MAX,
    bounds,
    check_generic,
    is_null,
    parse_generic,
    parse_number,
    show,
    to_bool,
    to_number,
    to_text,
)
from agent.types import PositiveDuration

from .enums import ENGINEERING_UNITS, OBJECT_TYPES, PROPERTY_IDENTIFIERS

MAX_INSTANCE = 4194302  # 2**22 - 2; 4194303 is the wildcard
COMMANDABLE = {
    "analog-output", "analog-value", "binary-output", "binary-value", "multi-state-output",
    "multi-state-value", "integer-value", "positive-integer-value", "large-analog-value",
    "characterstring-value", "lighting-output", "binary-lighting-output",
}
# Properties of type REAL and CharacterString that a write may set (others: generic checks only).
REAL_PROPERTIES = {
    "cov-increment", "high-limit", "low-limit", "deadband", "min-pres-value", "max-pres-value", "resolution",
}
TEXT_PROPERTIES = {"object-name", "description", "location", "active-text", "inactive-text", "profile-name"}
# What COV can follow: standard objects with a present-value COV criterion.
COV_OBJECTS = {
    "analog-input", "analog-output", "analog-value", "binary-input", "binary-output", "binary-value",
    "multi-state-input", "multi-state-output", "multi-state-value", "integer-value",
    "positive-integer-value", "large-analog-value", "loop", "pulse-converter", "lighting-output",
    "binary-lighting-output", "accumulator",
}

_IP = r"\d{1,3}(\.\d{1,3}){3}"
_ADDR = re.compile(rf"{_IP}(:\d{{1,5}})?|\d{{1,5}}:({_IP}(:\d+)?|0x[0-9a-fA-F]+|\d+)")
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _norm_name(v: str) -> str:
    """``analogInput`` / ``analog_input`` / ``Analog-Input`` → ``analog-input`` (BACnet's spelling)."""
    return _CAMEL.sub(r"-\1", v.strip()).replace("_", "-").replace(" ", "-").lower()


def _hint(name: str, table: dict[str, int]) -> str:
    close = difflib.get_close_matches(name, table, n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def normalize_object_type(v: Any) -> str | int:
    """A standard object type name, or a number (proprietary types 128-1023 only)."""
    if isinstance(v, bool):
        raise ValueError("object_type must be a name such as analog-input")
    if isinstance(v, int):
        if v in OBJECT_TYPES.values():
            return next(k for k, n in OBJECT_TYPES.items() if n == v)
        if 128 <= v <= 1023:
            return v
        raise ValueError(f"object type number {v} is neither standard nor proprietary (128-1023)")
    if not isinstance(v, str):
        raise ValueError("object_type must be a name such as analog-input")
    name = _norm_name(v)
    if name not in OBJECT_TYPES:
        raise ValueError(f"unknown BACnet object type {v!r}{_hint(name, OBJECT_TYPES)}")
    return name


def normalize_property(v: Any) -> str | int:
    """A standard property identifier name, or a number (proprietary properties 512 and up)."""
    if isinstance(v, bool):
        raise ValueError("property must be a name such as present-value")
    if isinstance(v, int):
        if v in PROPERTY_IDENTIFIERS.values():
            return next(k for k, n in PROPERTY_IDENTIFIERS.items() if n == v)
        if 512 <= v <= 4194303:
            return v
        raise ValueError(f"property number {v} is neither standard nor proprietary (512 and up)")
    if not isinstance(v, str):
        raise ValueError("property must be a name such as present-value")
    name = _norm_name(v)
    if name not in PROPERTY_IDENTIFIERS:
        raise ValueError(f"unknown BACnet property {v!r}{_hint(name, PROPERTY_IDENTIFIERS)}")
    return name


# Short unit names for the common BACnet engineering units; others keep BACnet's name.
UNIT_SYMBOLS: dict[str, str | None] = {
    "degrees-celsius": "degC", "degrees-fahrenheit": "degF", "degrees-kelvin": "K", "delta-degrees-kelvin": "K",
    "percent": "%", "percent-relative-humidity": "%RH", "pascals": "Pa", "kilopascals": "kPa", "bars": "bar",
    "watts": "W", "kilowatts": "kW", "megawatts": "MW", "watt-hours": "Wh", "kilowatt-hours": "kWh",
    "megawatt-hours": "MWh", "volts": "V", "kilovolts": "kV", "amperes": "A", "milliamperes": "mA",
    "hertz": "Hz", "seconds": "s", "minutes": "min", "hours": "h", "days": "d",
    "liters-per-second": "l/s", "liters-per-hour": "l/h", "cubic-meters-per-hour": "m3/h",
    "cubic-meters-per-second": "m3/s", "cubic-meters": "m3", "liters": "l", "parts-per-million": "ppm",
    "luxes": "lx", "meters-per-second": "m/s", "no-units": None, "revolutions-per-minute": "rpm",
    "kilovolt-amperes": "kVA", "kilovolt-amperes-reactive": "kvar", "power-factor": None,
}


def unit_symbol(bacnet_unit: str) -> str | None:
    name = _norm_name(bacnet_unit)
    if name in UNIT_SYMBOLS:
        return UNIT_SYMBOLS[name]
    return name


class BACnetPoint(PointBase):
    """One property of one object of the controller."""

    object_type: str | int = Field(
        description="BACnet object type: analog-input, analog-value, binary-input, multi-state-value... "
        "(camelCase accepted); a number 128-1023 for a proprietary type"
    )
    instance: int = Field(ge=0, le=MAX_INSTANCE, description="object instance number")
    property: str | int = Field(
        "present-value", description="property identifier (default present-value); a number for proprietary"
    )
    array_index: int | None = Field(None, ge=0, description="element of an array property (0 = its length)")
    priority: int = Field(
        16, ge=1, le=16, description="write priority 1-16 (8 = manual operator, 16 = lowest); "
        "a null write (relinquish) releases this priority"
    )
    cov: bool = Field(False, description="follow changes by COV subscription instead of polling")
    cov_increment: float | None = Field(
        None, gt=0, description="written to the object's cov-increment before subscribing (analog objects; "
        "this changes the controller's setting for every subscriber). Empty: keep the device's"
    )
    cov_lifetime: PositiveDuration = Field(
        300.0, description="subscription lifetime; renewed at half of it (a restarted device is resubscribed)"
    )
    cov_confirmed: bool = Field(False, description="ask for confirmed COV notifications")
    states: list[str] | None = Field(
        None, description="state texts of a multi-state object, state 1 first (written by `bacnet scan`); "
        "a write may name a state instead of its number"
    )

    @field_validator("object_type", mode="before")
    @classmethod
    def _otype(cls, v: Any) -> str | int:
        return normalize_object_type(v)

    @field_validator("property", mode="before")
    @classmethod
    def _prop(cls, v: Any) -> str | int:
        return normalize_property(v)

    @model_validator(mode="after")
    def _checks(self) -> BACnetPoint:
        if self.object_type == "device" and self.property == "present-value":
            raise ValueError("a device object has no present-value; name a property such as system-status")
        if self.cov and self.property != "present-value":
            raise ValueError("cov: only present-value can be followed by COV")
        if self.cov and isinstance(self.object_type, str) and self.object_type not in COV_OBJECTS:
            raise ValueError(f"cov: {self.object_type} objects have no COV criterion")
        if self.states is not None and not (isinstance(self.object_type, str)
                                            and self.object_type.startswith("multi-state")):
            raise ValueError("states: only multi-state objects have state texts")
        if self.writable and self.property == "present-value" and isinstance(self.object_type, str) \
                and self.object_type.endswith("-input"):
            raise ValueError(f"access: present-value of an {self.object_type} is not writable")
        return self

    def write_kind(self) -> str:
        """What a write of this property carries: binary, state, real, double, int32, uint32, boolean, text
        or other (a property whose type is not known here: only the generic checks apply)."""
        ot = self.object_type if isinstance(self.object_type, str) else ""
        if self.property in ("present-value", "relinquish-default"):
            if ot in ("binary-input", "binary-output", "binary-value"):
                return "binary"
            if ot.startswith("multi-state"):
                return "state"
            if ot in ("analog-input", "analog-output", "analog-value", "lighting-output"):
                return "real"
            return {"large-analog-value": "double", "integer-value": "int32", "positive-integer-value": "uint32",
                    "characterstring-value": "text"}.get(ot, "other")
        if self.property in REAL_PROPERTIES:
            return "real"
        if self.property in TEXT_PROPERTIES:
            return "text"
        if self.property == "out-of-service":
            return "boolean"
        return "other"

    @builtins.property
    def relinquishable(self) -> bool:
        return self.property == "present-value" and self.object_type in COMMANDABLE

    def parse_write(self, text: str) -> Any:
        if is_null(text):
            return None
        kind = self.write_kind()
        if kind in ("binary", "boolean"):
            return to_bool(text)
        if kind == "text":
            return text
        if kind == "other":
            return parse_generic(text)
        if kind == "state":
            number = self._state_number(text)
            if number is not None:
                return number
            try:
                return parse_number(text)
            except ValueError:
                return text  # check_write refuses it, naming the states
        return parse_number(text)

    def _state_number(self, text: str) -> int | None:
        names = [t.strip().lower() for t in self.states or []]
        return names.index(text.strip().lower()) + 1 if text.strip().lower() in names else None

    def check_write(self, value: Any) -> Any:
        """Binary: true/false, 1/0, on/off, active/inactive only. Analog: a finite number (never a boolean)
        that a REAL holds. Multi-state: a state number 1, 2, 3... Integer objects: whole numbers in their
        range. Then the profile's min/max. ``None`` relinquishes, for a commandable present-value only."""
        if value is None:
            if self.relinquishable:
                return None
            raise ValueError("null (relinquish) needs the present-value of a commandable object")
        kind = self.write_kind()
        if kind in ("binary", "boolean"):
            return to_bool(value)
        if kind == "text":
            return to_text(value)
        if kind == "other":
            return check_generic(value, self.min, self.max)
        if kind == "state":
            if isinstance(value, str) and self._state_number(value) is not None:
                value = self._state_number(value)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or not float(value).is_integer() or not 1 <= value <= 0xFFFFFFFF:
                named = f" or one of {', '.join(self.states)}" if self.states else ""
                raise ValueError(f"a multi-state value is a state number 1, 2, 3...{named}; got {show(value)}")
            return bounds(int(value), self.min, self.max)
        limits = {"real": (-FLOAT32_MAX, FLOAT32_MAX, "a REAL"), "double": (None, None, "a Double"),
                  "int32": (-(2**31), 2**31 - 1, "an INTEGER"), "uint32": (0, 2**32 - 1, "an Unsigned")}
        lo, hi, what = limits[kind]
        v = to_number(value, integer=kind in ("int32", "uint32"), lo=lo, hi=hi, kind=what)
        v = bounds(v, self.min, self.max)
        return float(v) if kind in ("real", "double") else int(v)

    @builtins.property
    def object_id(self) -> str:
        """``analog-input,3`` as bacpypes3 parses it."""
        return f"{self.object_type},{self.instance}"


class BACnetConnection(BaseModel):
    """Where one controller is and how this box talks BACnet/IP (site file ``connection:``)."""

    model_config = ConfigDict(extra="forbid")

    device_instance: int = Field(ge=0, le=MAX_INSTANCE, description="the controller's device object instance")
    address: str | None = Field(
        None, description="IP[:port] of the controller (default port 47808), or NET:MAC behind a router; "
        "empty: found by a Who-Is for device_instance"
    )
    local_address: str = Field(
        "host", description="this box's BACnet/IP interface: IP/prefix (192.168.10.5/24), an IP (the prefix is "
        "taken from the interface holding it), an interface name (eth0), or 'host' = the interface of the "
        "default route. Devices with the same local address and port share one socket"
    )
    local_port: int = Field(47808, ge=1, le=65535, description="local UDP port (BACnet/IP: 47808 = 0xBAC0)")
    local_instance: int = Field(
        4194000, ge=0, le=MAX_INSTANCE, description="device instance of this box on the BACnet network (unique)"
    )
    bbmd: str | None = Field(
        None, description="register as a foreign device with this BBMD (IP[:port]) to reach another subnet"
    )
    bbmd_ttl: PositiveDuration = Field(300.0, description="foreign device registration time-to-live")
    discover_timeout: PositiveDuration = Field(3.0, description="how long to wait for an I-Am when no address")

    @field_validator("address", "bbmd")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _ADDR.fullmatch(v):
            raise ValueError("expected IP, IP:port, or NETWORK:MAC (e.g. 192.168.1.20:47808 or 5:12)")
        return v

    @field_validator("local_address")
    @classmethod
    def _local(cls, v: str) -> str:
        m = re.fullmatch(r"(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?", v)
        if m:
            if any(int(o) > 255 for o in m.group(1).split(".")) or (m.group(2) and int(m.group(2)) > 32):
                raise ValueError(f"{v!r} is not an IPv4 address with a prefix 0-32")
            return v
        if v == "host" or re.fullmatch(r"[A-Za-z][A-Za-z0-9_.@-]{0,14}", v):
            return v
        raise ValueError("expected 'host' or IP/prefix such as 192.168.10.5/24, an IP, or an interface name "
                         "such as eth0 (the port goes in local_port)")

    @property
    def bus_key(self) -> str:
        return f"bacnet:{self.local_address}:{self.local_port}"


class BACnetDeviceQuirks(BaseModel):
    """Profile ``device:`` section: what this controller model needs."""

    model_config = ConfigDict(extra="forbid")

    max_apdu: int | None = Field(
        None, ge=50, le=1476, description="override the max APDU length the device reports (smaller is safer)"
    )
    max_points_per_request: int = Field(
        64, ge=1, le=500, description="cap of properties in one ReadPropertyMultiple"
    )
    read_property_multiple: Literal["auto", "never"] = Field(
        "auto", description="auto: use RPM when the device lists it; never: ReadProperty one by one"
    )
    rpm_codec: Literal["agent", "bacpypes3"] = Field(
        "agent", description="agent: polls are framed and parsed by the agent (common value types; bacpypes3 "
        "decodes the rest); bacpypes3: every request through bacpypes3 (slower; for a device that needs it)"
    )
    max_concurrent_requests: int = Field(1, ge=1, le=8, description="requests in flight to this device")
    segmentation: Literal["segmented-both", "segmented-transmit", "segmented-receive", "no-segmentation"] | None = \
        Field(None, description="what the device reported when scanned; `plan` uses it before the device "
              "answers (once started, the device's own answer is used)")


def check_profile(points: Sequence[PointBase], device: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-point checks: the same object property named twice."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[tuple[Any, ...], int] = {}
    for i, p in enumerate(points):
        if not isinstance(p, BACnetPoint):
            continue
        key = (p.object_type, p.instance, p.property, p.array_index)
        if key in seen:
            out.append(((i, "instance"), f"same object and property as points[{seen[key]}]"))
        else:
            seen[key] = i
    return out


SPEC = DriverSpec(
    name="bacnet",
    point_model=BACnetPoint,
    connection_model=BACnetConnection,
    device_model=BACnetDeviceQuirks,
    check_profile=check_profile,
    driver_class="drivers.bacnet.driver:BACnetDriver",
    description="BACnet/IP controllers: ReadPropertyMultiple sized to the device, COV, prioritised writes",
)

__all__ = [
    "ENGINEERING_UNITS", "SPEC", "BACnetConnection", "BACnetDeviceQuirks", "BACnetPoint",
    "normalize_object_type", "normalize_property", "unit_symbol",
]
