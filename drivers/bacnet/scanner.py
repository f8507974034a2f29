"""What ``edge-agent bacnet scan`` learns about each object, as profile keys.

Per object: name, description, units, min/max (``min-pres-value`` / ``max-pres-value``), state texts of
multi-state objects, and whether the present-value is commandable (it has a ``relinquish-default``, hence a
priority array). ReadPropertyMultiple over several objects when the device segments its replies, one object
per request otherwise; a request the device aborts (too big) is read property by property, and a device
that rejects the service is read property by property from then on. A property the device does not have
(``unknown-property``) is simply absent; any other failure (abort, timeout, access denied) is a warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bacpypes3.apdu import AbortPDU, ErrorPDU, ErrorRejectAbortNack, RejectPDU

ANALOG = ("analog-input", "analog-output", "analog-value", "large-analog-value", "integer-value",
          "positive-integer-value")
COMMANDABLE_TYPES = ("analog-output", "analog-value", "binary-output", "binary-value", "multi-state-output",
                     "multi-state-value", "integer-value", "positive-integer-value", "large-analog-value")
ABSENT = ("unknown-property",)


def wanted(otype: str) -> list[str]:
    props = ["object-name", "description"]
    if otype in ANALOG or otype in ("accumulator", "pulse-converter", "loop"):
        props.append("units")
    if otype in ANALOG:
        props += ["min-pres-value", "max-pres-value"]
    if otype.startswith("multi-state"):
        props.append("number-of-states")
    if otype in COMMANDABLE_TYPES:
        props.append("relinquish-default")
    return props


@dataclass
class Described:
    objid: str
    values: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # property -> why it could not be read

    @property
    def commandable(self) -> bool:
        return "relinquish-default" in self.values


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ErrorPDU):
        return str(getattr(exc, "errorCode", None) or exc.reason)
    if isinstance(exc, RejectPDU | AbortPDU):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class Describer:
    """Reads what a profile needs from each object of one device."""

    def __init__(self, app: Any, addr: Any, budget: float, max_apdu: int, segmented: bool, rpm: bool,
                 progress: Callable[[str], None]) -> None:
        self.app, self.addr, self.budget = app, addr, budget
        self.max_apdu, self.segmented, self.rpm = max_apdu, segmented, rpm
        self.progress = progress

    async def read(self, objid: str, prop: str, index: int | None = None) -> tuple[Any, str | None]:
        """(value, None), (None, None) when the object has no such property, or (None, reason)."""
        from .values import read_value, to_value

        try:
            async with asyncio.timeout(self.budget):
                v = await self.app.read_property(self.addr, objid, prop, index)
        except ErrorRejectAbortNack as exc:
            reason = _reason(exc)
            return None, None if reason in ABSENT else reason
        except TimeoutError:
            return None, f"no answer within {self.budget:g} s"
        if isinstance(v, list):  # an array read whole (state-text)
            return [str(to_value(x)) for x in v], None
        return read_value(v)

    async def describe(self, objects: list[Any]) -> list[Described]:
        from .values import to_value

        per_request = max(1, min(20, (self.max_apdu - 16) // 24)) if self.segmented else 1
        out: list[Described] = []
        for start in range(0, len(objects), per_request):
            chunk = [Described(f"{o[0]},{o[1]}") for o in objects[start:start + per_request]]
            done: set[str] = set()
            if self.rpm:
                params: list[Any] = []
                for o in objects[start:start + per_request]:
                    params += [o, wanted(str(o[0]))]
                try:
                    async with asyncio.timeout(self.budget):
                        results = await self.app.read_property_multiple(self.addr, params) or []
                    by_obj = {d.objid: d for d in chunk}
                    for objid, prop, _idx, value in results:
                        d = by_obj[str(objid)]
                        if value is not None and type(value).__name__ == "ErrorType":
                            reason = str(value.errorCode)
                            if reason not in ABSENT:
                                d.problems[str(prop)] = reason
                        elif value is not None:
                            d.values[str(prop)] = to_value(value)
                    done = set(by_obj)
                except RejectPDU as exc:
                    self.progress(f"ReadPropertyMultiple rejected ({_reason(exc)}); reading property by property")
                    self.rpm = False
                except (ErrorRejectAbortNack, TimeoutError) as exc:  # too big, or one bad object: one by one
                    reason = _reason(exc) if not isinstance(exc, TimeoutError) else "no answer"
                    self.progress(f"ReadPropertyMultiple for {len(chunk)} object(s) failed ({reason}); reading "
                                  "them property by property")
            for d in chunk:
                if d.objid not in done:
                    for prop in wanted(d.objid.split(",")[0]):
                        v, problem = await self.read(d.objid, prop)
                        if problem is not None:
                            d.problems[prop] = problem
                        elif v is not None:
                            d.values[prop] = v
                if "number-of-states" in d.values:
                    await self._state_texts(d)
                out.append(d)
            n = len(out)
            if n % 20 < len(chunk) or n == len(objects):
                self.progress(f"described {n}/{len(objects)} objects")
        return out

    async def _state_texts(self, d: Described) -> None:
        """state-text whole, or element by element when it does not fit one reply."""
        count = int(d.values["number-of-states"])
        whole, problem = await self.read(d.objid, "state-text")
        if isinstance(whole, list) and len(whole) == count:
            d.values["state-text"] = [str(t) for t in whole]
            return
        if problem is None and whole is None:
            return  # no state texts on this object
        texts: list[str] = []
        for i in range(1, count + 1):
            t, problem = await self.read(d.objid, "state-text", i)
            if problem is not None or t is None:
                d.problems["state-text"] = problem or f"element {i} missing"
                return
            texts.append(str(t))
        d.values["state-text"] = texts
