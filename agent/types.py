"""Reusable field types for configuration: durations, byte sizes, deadbands."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
MAX_DURATION = 366 * 86400.0  # one year: longer is a typo, and asyncio timers stay exact
MAX_SIZE = 1 << 50  # 1 PiB: beyond any disk of the box, and well inside SQLite's 64-bit integers
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3, None: 1,
}


def parse_duration(v: Any) -> float:
    """``10`` (seconds), ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"2d"`` → seconds."""
    if isinstance(v, bool):
        raise ValueError("expected a duration such as 10s, 500ms, 5m")
    secs: float | None = None
    if isinstance(v, int | float):
        if v < 0:
            raise ValueError("duration must not be negative")
        secs = float(v) if isinstance(v, float) or v <= MAX_DURATION else math.inf
    elif isinstance(v, str) and len(v) <= 64:
        m = _DUR.match(v)
        if m:
            secs = float(m.group(1)) * _DUR_UNITS[m.group(2)]
    if secs is None:
        raise ValueError(f"expected a duration such as 10s, 500ms, 5m, got {_short(v)}")
    if math.isnan(secs):
        raise ValueError("expected a duration such as 10s, got nan (not a number)")
    if math.isinf(secs) and isinstance(v, float):
        raise ValueError(f"duration {_short(v)} is infinite: give a finite duration, at most 366d")
    if not math.isfinite(secs) or secs > MAX_DURATION:
        raise ValueError(f"duration {_short(v)} is longer than the limit of 366d")
    return secs


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def parse_size(v: Any) -> int:
    """``1048576``, ``"64MiB"``, ``"500MB"`` → bytes."""
    if isinstance(v, bool):
        raise ValueError("expected a size such as 64MiB")
    size: float | None = None
    if isinstance(v, int):
        if v < 0:
            raise ValueError("size must not be negative")
        size = v if v <= MAX_SIZE else math.inf
    elif isinstance(v, str) and len(v) <= 64:
        m = _SIZE.match(v)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            size = float(m.group(1)) * _SIZE_UNITS[unit]
    if size is None:
        raise ValueError(f"expected a size such as 64MiB or 500MB, got {_short(v)}")
    if not math.isfinite(size) or size > MAX_SIZE:
        raise ValueError(f"size {_short(v)} is larger than the limit of 1 PiB")
    return int(size)


def parse_deadband(v: Any) -> tuple[float, bool] | None:
    """``0.5`` → absolute 0.5; ``"2%"`` → 2 % of the last reported value."""
    if v is None:
        return None
    if isinstance(v, tuple):
        return v
    if isinstance(v, bool):
        raise ValueError("expected a number or a percentage such as 1%")
    if isinstance(v, int | float):
        if not isinstance(v, float) and abs(v) > 1e300:
            raise ValueError("deadband is too large")
        if not math.isfinite(v):
            raise ValueError("deadband must be a finite number")
        if v < 0:
            raise ValueError("deadband must not be negative")
        return (float(v), False)
    if isinstance(v, str):
        s = v.strip()
        try:
            if s.endswith("%"):
                pct = float(s[:-1])
                if pct < 0 or not math.isfinite(pct):
                    raise ValueError
                return (pct, True)
            val = float(s)
            if val < 0 or not math.isfinite(val):
                raise ValueError
            return (val, False)
        except ValueError:
            pass
    raise ValueError(f"expected a number or a percentage such as 1%, got {_short(v)}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
Deadband = Annotated[tuple[float, bool] | None, BeforeValidator(parse_deadband)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


def parse_listen(v: str) -> tuple[str, int] | str:
    """``127.0.0.1:9464`` / ``[::1]:9464`` / ``localhost:9464`` → (host, port); ``unix:/path`` → the path.
    Only loopback: the metrics listener is not meant to be reachable from the building's network."""
    import ipaddress

    if v.startswith("unix:"):
        path = v[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {v!r}")
        return path
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464) or unix:/path, got {v!r}")
    host = host.strip("[]")
    if host != "localhost":
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{host} is not a loopback address: use 127.0.0.1, ::1 or a unix: socket "
                             "(scrape remote boxes through node exporter's textfile or an SSH tunnel)")
    return host, int(port)
