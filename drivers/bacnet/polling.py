"""BACnet polls: ReadPropertyMultiple batches sized to the device, and reading them (through the agent's own
framing in ``fastrpm`` when it applies, else through bacpypes3, with the fallbacks below). The driver owns the
device (start, writes, COV); this is its read path, kept apart so that each stays small."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from bacpypes3.apdu import ErrorPDU, ErrorRejectAbortNack
from bacpypes3.basetypes import PropertyIdentifier, PropertyReference
from bacpypes3.primitivedata import ObjectIdentifier

from agent.errors import DeviceTimeout, ProtocolError
from agent.model import Quality, Sample

from . import BACnetConnection, BACnetDeviceQuirks, BACnetPoint
from .values import err_text as _err_text
from .values import read_value

if TYPE_CHECKING:
    from bacpypes3.app import Application
    from bacpypes3.pdu import Address

    from .fastrpm import FastReads, FastRequest

log = logging.getLogger("drivers.bacnet.driver")  # one logger name for the driver, as cov.py
T = TypeVar("T")

OWN_MAX_APDU = 1476  # what this box accepts (BACnet/IP maximum)
# Abort / reject reasons that mean "too big for this device": split the request.
TOO_BIG = {"segmentation-not-supported", "buffer-overflow", "apdu-too-long", "window-size-out-of-range"}
NO_SERVICE = {"unrecognized-service"}
STRING_PROPS = {
    "object-name", "description", "model-name", "vendor-name", "firmware-revision", "location",
    "application-software-version", "profile-name", "inactive-text", "active-text", "device-type",
}


@dataclass
class Batch:
    """One request of a poll cycle."""

    service: str  # read-property-multiple | read-property
    points: list[BACnetPoint]
    request_bytes: int = 0
    reply_bytes: int = 0


@dataclass
class RpmRequest:
    """A ReadPropertyMultiple ready to send: bacpypes3's parameters, the points in reply order, the lookup key
    of each point (in the order of ``points``)."""

    points: list[BACnetPoint]  # kept: the ids in the cache key stay theirs
    params: list[Any]
    order: list[BACnetPoint]
    keys: list[tuple[str, str, int | None]]


def rpm_request(points: Sequence[BACnetPoint], cache: dict[tuple[int, ...], RpmRequest]) -> RpmRequest:
    """The parameters of a ReadPropertyMultiple for these points, built once per point set: bacpypes3 uses
    them as they are (it encodes them, never changes them), and building its objects was a tenth of the
    agent's CPU per poll."""
    key = tuple(map(id, points))
    req = cache.get(key)
    if req is not None:
        return req
    params: list[Any] = []
    groups: dict[str, list[Any]] = {}
    members: dict[str, list[BACnetPoint]] = {}
    for p in points:
        ref = PropertyReference(propertyIdentifier=PropertyIdentifier(p.property))
        if p.array_index is not None:
            ref.propertyArrayIndex = p.array_index
        if p.object_id not in groups:
            groups[p.object_id], members[p.object_id] = [], []
            params += [ObjectIdentifier(p.object_id), groups[p.object_id]]
        groups[p.object_id].append(ref)
        members[p.object_id].append(p)
    order = [p for ps in members.values() for p in ps]  # the order of the reply
    keys = [(p.object_id, str(p.property), p.array_index) for p in points]
    if len(cache) > 64:
        cache.clear()
    req = cache[key] = RpmRequest(list(points), params, order, keys)
    return req


def _prop_len(p: BACnetPoint) -> int:
    n = 2 if isinstance(p.property, str) or p.property < 256 else 4
    if p.array_index is not None:
        n += 2 if p.array_index < 256 else 3
    return n


def _value_len(p: BACnetPoint) -> int:
    if p.property in STRING_PROPS or p.object_type == "characterstring-value":
        return 80
    if p.property in ("priority-array", "state-text", "object-list") and p.array_index is None:
        return 400
    return 10


def plan_batches(points: Sequence[BACnetPoint], *, max_apdu: int, segmented_replies: bool,
                 max_points: int) -> list[Batch]:
    """Pack points into ReadPropertyMultiple requests.

    A request must fit in one APDU of the device (bacpypes3's client-side request segmentation miscounts,
    and many controllers do not take segmented requests). The reply must fit too unless the device can send
    segmented replies. Properties of the same object share one read-access specification.
    """
    budget = max_apdu - 8  # margin for the APDU header and estimation error
    batches: list[Batch] = []
    cur: list[BACnetPoint] = []
    req = rep = 0
    objs: set[str] = set()

    def flush() -> None:
        nonlocal cur, req, rep, objs
        if cur:
            batches.append(Batch("read-property-multiple", cur, req, rep))
        cur, req, rep, objs = [], 4, 3, set()

    flush()
    for p in points:
        new_obj = p.object_id not in objs
        add_req = _prop_len(p) + (7 if new_obj else 0)
        add_rep = _prop_len(p) + 2 + _value_len(p) + (7 if new_obj else 0)
        if cur and (req + add_req > budget or (not segmented_replies and rep + add_rep > budget)
                    or len(cur) >= max_points):
            flush()
            new_obj = True
            add_req = _prop_len(p) + 7
            add_rep = _prop_len(p) + 2 + _value_len(p) + 7
        cur.append(p)
        objs.add(p.object_id)
        req += add_req
        rep += add_rep
    flush()
    return batches


class PollHost(Protocol):
    """What ``PollReads`` needs of the BACnet driver (a protocol: this module does not import the driver)."""

    @property
    def name(self) -> str: ...

    @property
    def facts(self) -> Any: ...

    @property
    def quirks(self) -> BACnetDeviceQuirks: ...

    @property
    def conn(self) -> BACnetConnection: ...

    @property
    def address(self) -> Address | None: ...

    @property
    def fast(self) -> FastReads | None: ...

    def cycles(self) -> Any: ...

    def _app(self) -> Application: ...

    async def _call(self, service: str, fn: Callable[[], Awaitable[T]]) -> T: ...

    async def _rp(self, objid: str, prop: str | int, index: int | None = None) -> Any: ...


class PollReads:
    """One device's polls: batches per point set (cached), then each batch read with its fallbacks."""

    def __init__(self, host: PollHost) -> None:
        self.host = host
        self.max_points = host.quirks.max_points_per_request  # lowered when the device aborts a batch
        self._batches: dict[tuple[Any, ...], list[Batch]] = {}  # batches() per point set and device limits
        self._rpm_requests: dict[tuple[int, ...], RpmRequest] = {}  # rpm_request() per point set

    def batches(self, points: Sequence[BACnetPoint]) -> list[Batch]:
        if not self.host.facts.rpm:
            return [Batch("read-property", [p]) for p in points]
        max_apdu = min(self.host.facts.max_apdu, self.host.quirks.max_apdu or OWN_MAX_APDU, OWN_MAX_APDU)
        segmented = self.host.facts.segmentation in ("segmented-both", "segmented-transmit")
        # planned once per point set and device limits (this runs at every poll)
        key = (tuple(map(id, points)), max_apdu, segmented, self.max_points)
        got = self._batches.get(key)
        if got is None:
            if len(self._batches) > 16:
                self._batches.clear()
            got = self._batches[key] = plan_batches(points, max_apdu=max_apdu, segmented_replies=segmented,
                                                    max_points=self.max_points)
        return got

    def plan(self) -> list[dict[str, Any]]:
        """Requests of one cycle. Before start() the device's limits are unknown: 1476 bytes (or the profile's
        ``max_apdu``) and unsegmented replies are assumed, so the printed plan may have more requests."""
        out = []
        max_apdu = min(self.host.facts.max_apdu, self.host.quirks.max_apdu or OWN_MAX_APDU, OWN_MAX_APDU)
        for cycle, pts in self.host.cycles():
            for b in self.batches([cast(BACnetPoint, p) for p in pts]):
                out.append({
                    "cycle": cycle, "service": b.service, "address": str(self.host.address or self.host.conn.address),
                    "max_apdu": max_apdu,
                    "properties": len(b.points), "objects": len({p.object_id for p in b.points}),
                    "request_bytes": b.request_bytes, "reply_bytes": b.reply_bytes,
                    "points": [p.name for p in b.points],
                })
        return out

    async def read(self, points: Sequence[BACnetPoint]) -> list[Sample]:
        out: list[Sample] = []
        # the agent's own requests do not accept a segmented reply: they are for batches whose reply fits
        one_apdu = min(self.host.facts.max_apdu, self.host.quirks.max_apdu or OWN_MAX_APDU, OWN_MAX_APDU) - 8
        for b in self.batches(points):
            if b.service == "read-property":
                out.extend(await self._read_single(b.points))
            else:
                out.extend(await self._read_rpm(b.points, fast=b.reply_bytes <= one_apdu))
        return out

    async def _read_single(self, points: Sequence[BACnetPoint]) -> list[Sample]:
        out = []
        for p in points:
            now = time.time()
            try:
                v = await self.host._rp(p.object_id, p.property, p.array_index)
            except ErrorRejectAbortNack as exc:
                out.append(Sample(self.host.name, p.name, None, Quality.ERROR, now, _err_text(exc)))
                continue
            out.append(self._sample(p, v, now))
        return out

    def _sample(self, p: BACnetPoint, v: Any, now: float) -> Sample:
        value, why = read_value(v)
        if why is not None:
            return Sample(self.host.name, p.name, None, Quality.ERROR, now, why)
        return Sample(self.host.name, p.name, value, Quality.GOOD, now)

    async def _read_rpm(self, points: Sequence[BACnetPoint], fast: bool = False) -> list[Sample]:
        app, addr = self.host._app(), self.host.address
        assert addr is not None
        reader = self.host.fast
        prepared = reader.request_for(points) if reader is not None and fast else None
        unproven = None  # the agent's framing timed out before ever being answered: bacpypes3 is asked
        if reader is not None and prepared is not None:
            try:
                got = await reader.read(points, prepared)
            except DeviceTimeout:
                if prepared.proven:
                    raise  # it answered before: the device is silent, not the framing refused
                got, unproven = None, prepared
            if got is not None:
                return got  # else: not an ACK; this point set is read through bacpypes3 from now on
        req = rpm_request(points, self._rpm_requests)
        params, order = req.params, req.order
        now = time.time()
        try:
            results = await self.host._call("read-property-multiple",
                                            lambda: app.read_property_multiple(addr, params))
        except ErrorRejectAbortNack as exc:
            self._framing_unanswered(unproven, len(points))  # bacpypes3 got an answer, even a refusal
            reason = _err_text(exc)
            if reason in NO_SERVICE:
                log.warning("%s: device rejects ReadPropertyMultiple; reading property by property", self.host.name)
                self.host.facts.rpm = False
                return await self._read_single(points)
            if reason in TOO_BIG and len(points) > 1:
                half = len(points) // 2
                self.max_points = max(1, min(self.max_points, half))
                log.info("%s: %s for %d properties; now at most %d per request",
                         self.host.name, reason, len(points), self.max_points)
                return [*await self._read_rpm(points[:half]), *await self._read_rpm(points[half:])]
            if isinstance(exc, ErrorPDU):
                # e.g. every object unknown: ask one by one to tell the points apart
                return await self._read_single(points)
            return [Sample(self.host.name, p.name, None, Quality.ERROR, now, reason) for p in points]
        if results is None:
            raise ProtocolError(f"{self.host.name}: unexpected reply to ReadPropertyMultiple", device=self.host.name)
        self._framing_unanswered(unproven, len(points))
        by_key: dict[tuple[str, str, int | None], Any] = {}
        for objid, prop, idx, value in results:
            by_key[(str(objid), str(prop), idx)] = value
        positional = {p.name: r[3] for p, r in zip(order, results, strict=False)} \
            if len(results) == len(order) else {}
        out = []
        for p, key in zip(points, req.keys, strict=True):
            if key in by_key:
                v = by_key[key]
            elif p.name in positional:
                v = positional[p.name]
            else:
                out.append(Sample(self.host.name, p.name, None, Quality.ERROR, now, "missing-in-reply"))
                continue
            if v is not None and type(v).__name__ == "ErrorType":
                out.append(Sample(self.host.name, p.name, None, Quality.ERROR, now, str(v.errorCode)))
            else:
                out.append(self._sample(p, v, now))
        return out

    def _framing_unanswered(self, unproven: FastRequest | None, n: int) -> None:
        """bacpypes3 was answered where the agent's framing never was: that point set stays with bacpypes3."""
        if unproven is not None and unproven.on:
            unproven.on = False
            log.warning("%s: no answer to the agent's own ReadPropertyMultiple, but an answer through bacpypes3: "
                        "these %d points are read through bacpypes3 from now on", self.host.name, n)
