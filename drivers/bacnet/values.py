"""bacpypes3 values and errors in the agent's terms (shared by the driver, COV following, scan and the CLI)."""

from __future__ import annotations

import json
from typing import Any

from bacpypes3.apdu import AbortPDU, ErrorPDU, RejectPDU
from bacpypes3.primitivedata import Null

from agent.model import Value


def err_text(exc: BaseException) -> str:
    """A short, stable reason: ``unknown-object``, ``unknown-property``, ``segmentation-not-supported``."""
    if isinstance(exc, ErrorPDU):
        return str(getattr(exc, "errorCode", None) or exc.reason)
    if isinstance(exc, RejectPDU | AbortPDU):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def read_value(v: Any) -> tuple[Value, str | None]:
    """What bacpypes3 returned for a read, in the agent's terms: (value, None), or (None, why) when bacpypes3
    could not decode it (for a proprietary type it returns the text ``-no ...``)."""
    if isinstance(v, str) and v.startswith("-no "):
        return None, v.strip("-")
    return to_value(v), None


def to_value(v: Any) -> Value:
    """bacpypes3 value → what a Sample carries: float, int, bool (binary PVs), str, None."""
    from bacpypes3.basetypes import BinaryPV
    from bacpypes3.constructeddata import Choice
    from bacpypes3.primitivedata import Boolean, CharacterString, Double, Enumerated, Real

    if v is None or isinstance(v, Null):
        return None
    if isinstance(v, list):  # an array or list read whole (priority-array, state-text): its values as JSON
        return json.dumps([to_value(x) for x in v], ensure_ascii=False)
    if isinstance(v, Choice):  # e.g. a priority-array slot: the one element that is set
        for name in getattr(v, "_elements", {}):
            element = getattr(v, name, None)
            if element is not None:
                return to_value(element)
        return None
    if isinstance(v, BinaryPV):
        return int(v) == 1
    if isinstance(v, Boolean):
        return bool(v)
    if isinstance(v, Enumerated):
        return str(v)
    if isinstance(v, bool):
        return v
    if isinstance(v, Double):  # bacpypes3's Double is a Real: keep its precision
        return float(v)
    if isinstance(v, Real):  # single precision: 17.14, not 17.139999389648438
        return float(f"{float(v):.7g}")
    if isinstance(v, float):
        return float(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, CharacterString | str):
        return str(v)
    return str(v)
