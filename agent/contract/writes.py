"""What a write may carry: the value checks every point type builds on.

A write value arrives typed (JSON from the status socket, Python from a test) or as the text a person typed
(``edge-agent write DEV POINT TEXT``). Each point model turns text into a value of its own kind
(``PointBase.parse_write``) and checks a typed value (``PointBase.check_write``): both raise ``ValueError``
with a message for the user, before any I/O, and return the value the driver puts on the wire. The helpers
here are the shared pieces: booleans only in their documented spellings, numbers finite, of the right
kind, within a range, never a boolean.
"""

from __future__ import annotations

import math
from typing import Any

from agent.model import Value

TRUE_WORDS = ("true", "1", "on", "active")
FALSE_WORDS = ("false", "0", "off", "inactive")
BOOL_FORMS = "true/false, 1/0, on/off or active/inactive"
NULL_WORDS = ("null", "relinquish")
FLOAT32_MAX = 3.4028234663852886e38


def show(value: Any) -> str:
    """How a refused value is quoted in a message: ``'actve'``, ``0.5``, ``True``, ``nan``."""
    return repr(value) if isinstance(value, str) else str(value)


def to_bool(value: Value) -> bool:
    """A boolean from true/false, 1/0, on/off, active/inactive (text, any case) or a bool; nothing else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"expects {BOOL_FORMS}; got {show(value)}")


def parse_number(text: str) -> int | float:
    """A number typed by a person: ``21.5``, ``-3``, ``1e3``, ``0x10``; ValueError for anything else."""
    s = text.strip()
    try:
        return int(s, 0)
    except ValueError:
        pass
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"expects a number; got {show(text)}") from None
    if not math.isfinite(v):
        raise ValueError(f"value must be finite; got {show(text)}")
    return v


def to_number(value: Value, *, integer: bool = False, lo: float | None = None, hi: float | None = None,
              kind: str = "") -> int | float:
    """A finite number (never a boolean, never text); whole when ``integer``; within ``lo..hi`` (the type's
    range: ``kind`` names it in the message)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        want = "a whole number" if integer else "a number"
        raise ValueError(f"expects {want}; got {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"value must be finite; got {show(value)}")
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"expects a whole number; got {show(value)}")
            value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{show(value)} is outside {kind or 'the range'} ({_fmt(lo)}..{_fmt(hi)})")
    return value


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{int(v)}" if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def to_text(value: Value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expects text; got {show(value)}")
    return value


def bounds(value: int | float, vmin: float | None, vmax: float | None) -> int | float:
    """The profile's min/max."""
    if vmin is not None and value < vmin:
        raise ValueError(f"{show(value)} is below the minimum {_fmt(vmin)}")
    if vmax is not None and value > vmax:
        raise ValueError(f"{show(value)} is above the maximum {_fmt(vmax)}")
    return value


def is_null(text: str) -> bool:
    return text.strip().lower() in NULL_WORDS


def parse_generic(text: str) -> Value:
    """Text for a point whose driver knows no types: a boolean word, null, a number, else the text."""
    s = text.strip()
    low = s.lower()
    if low in ("true", "on"):
        return True
    if low in ("false", "off"):
        return False
    if low in NULL_WORDS:
        return None
    try:
        return parse_number(s)
    except ValueError:
        return text


def check_generic(value: Value, vmin: float | None, vmax: float | None) -> Value:
    """A typed value for a point whose driver knows no types: a point with min/max is numeric."""
    if value is None:
        raise ValueError("null (relinquish) applies to BACnet commandable points only")
    if isinstance(value, bool | str):
        if vmin is not None or vmax is not None:
            raise ValueError(f"expects a number; got {show(value)}")
        return value
    if isinstance(value, int | float):
        return bounds(to_number(value), vmin, vmax)
    raise ValueError(f"unsupported value {show(value)}")
