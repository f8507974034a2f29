"""Polling reads (ReadPropertyMultiple) without bacpypes3's per-request objects (issue 15).

``FastSocket`` sends pre-encoded requests on the bacpypes3 application's own UDP socket (the configured
local port: what a site's firewall and BBMD entries know) and takes the replies to them before bacpypes3
sees them; every other datagram goes to bacpypes3 unchanged. Invoke ids come from the application's own
counter and skip those bacpypes3 has outstanding to the same device. bacpypes3 does not know ours, so a reply
could only be mistaken if that shared counter went round all 256 ids while one of our requests waits, and
bacpypes3 then sent a ReadPropertyMultiple of its own, with the same id, to the same device (only replies
of that service, and Rejects or Aborts, are taken).

``FastReads`` is one device's side: the request octets per point set, built once, and the samples from the
reply (values decoded by ``rpmcodec``, or by bacpypes3 for what it does not handle). A point set whose
request gets anything but a ReadPropertyMultiple-ACK (an Error, Reject or Abort, e.g. a reply too big for one
APDU, or a malformed ACK) goes through bacpypes3's ``read_property_multiple`` from then on: the driver's
existing handling (splitting, property by property) takes over, with bacpypes3's errors. A timeout before
the point set was ever answered this way is asked again through bacpypes3 (``polling.PollReads``).

Used only for devices that are stations on this IP network (not behind a BACnet router) and not at this
box's own address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.model import Quality, Sample, Value

from . import rpmcodec as codec

if TYPE_CHECKING:
    from bacpypes3.app import Application
    from bacpypes3.pdu import Address

    from . import BACnetPoint

log = logging.getLogger(__name__)

Reply = tuple[int, bytes, int]  # PDU type, datagram, offset of the service data (-1: another service)


class FastSocket:
    """Pre-encoded confirmed requests on a bacpypes3 application's IPv4 socket, and their replies."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: Any, app: Application,
                 local: tuple[str, int]) -> None:
        self.app = app
        self.local = local
        self._transport = transport
        self._protocol = protocol
        self._pass_on: Callable[[bytes, tuple[str, int]], None] = protocol.datagram_received
        self._pending: dict[tuple[tuple[str, int], int], asyncio.Future[Reply]] = {}
        protocol.datagram_received = self._received  # this instance only; close() gives it back
        self.sent = 0

    @classmethod
    def attach(cls, app: Application) -> FastSocket | None:
        """On the application's unicast socket, or None when it has none that this module knows."""
        for ll in getattr(app, "link_layers", {}).values():
            server = getattr(ll, "server", None)
            transport = getattr(server, "local_transport", None)
            protocol = getattr(server, "local_protocol", None)
            local = getattr(server, "local_address", None)
            if transport is not None and protocol is not None and isinstance(local, tuple):
                return cls(transport, protocol, app, local)
        return None

    def close(self) -> None:
        if self._protocol.__dict__.get("datagram_received") == self._received:
            del self._protocol.datagram_received
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("BACnet/IP socket closed"))
        self._pending.clear()

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._pending:
            head = codec.reply_header(data)
            if head is not None:
                fut = self._pending.get((addr, head[1]))
                # an ACK of another service with the same invoke id is bacpypes3's
                if fut is not None and not fut.done() and head[2] != -1 and \
                        (head[0] != codec.PDU_ERROR or data[8] == codec.SERVICE_RPM):
                    fut.set_result((head[0], data, head[2]))
                    return
        self._pass_on(data, addr)

    def _invoke_id(self, dest: tuple[str, int], address: Address) -> int:
        used = {inv for d, inv in self._pending if d == dest}
        theirs = getattr(self.app, "_requests", None)  # bacpypes3's outstanding requests per address
        if isinstance(theirs, dict):
            used.update(pdu.apduInvokeID for pdu, _fut in theirs.get(address, ()))
        app: Any = self.app
        for _ in range(256):
            invoke = int(app.next_invoke_id)
            app.next_invoke_id = (invoke + 1) % 256
            if invoke not in used:
                return invoke
        raise ConnectionError(f"256 requests outstanding to {dest[0]}:{dest[1]}")

    async def request(self, dest: tuple[str, int], address: Address, service_data: bytes) -> Reply:
        """Send one ReadPropertyMultiple and wait for its reply (the caller bounds the wait)."""
        invoke = self._invoke_id(dest, address)
        key = (dest, invoke)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            self._transport.sendto(codec.frame_request(invoke, service_data), dest)
            self.sent += 1
            return await fut
        finally:
            if self._pending.get(key) is fut:
                del self._pending[key]


@dataclass
class FastRequest:
    """One point set's request: its octets, each point's key in the reply and value type."""

    service_data: bytes
    keys: list[tuple[int, int, int, int | None]]
    types: list[codec.ValueType]
    reply_pos: list[int]  # each point's place in the reply (grouped by object), for replies with other keys
    on: bool = True  # False: bacpypes3 reads this point set
    proven: bool = False  # the device has answered this request: a timeout is then the device's silence
    last: list[tuple[bytes, Value] | None] = field(default_factory=list)  # each point's last octets and value


class FastHost(Protocol):
    """What ``FastReads`` needs of the BACnet driver (a protocol: this module does not import the driver)."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> Address | None: ...

    async def _call(self, service: str, fn: Callable[[], Any]) -> Any: ...


_ERROR_CODES: dict[int, str] = {}


def _error_text(code: int) -> str:
    text = _ERROR_CODES.get(code)
    if text is None:
        from bacpypes3.basetypes import ErrorCode

        text = _ERROR_CODES[code] = str(ErrorCode(code))
    return text


class FastReads:
    """One device's ReadPropertyMultiple polls on a ``FastSocket``."""

    def __init__(self, host: FastHost, sock: FastSocket | None, vendor_info: Any) -> None:
        self.host = host
        self.sock = sock
        self.vendor_info = vendor_info
        self._requests: dict[tuple[int, ...], FastRequest | None] = {}
        self._seen: Any = None  # the driver's address that ``_dest`` was computed for
        self._dest: tuple[str, int] | None = None

    @property
    def dest(self) -> tuple[str, int] | None:
        """Where the device is, as a UDP address, or None when only bacpypes3 can reach it (behind a router,
        at this box's own address). Follows the driver's address (an I-Am from a new one, DHCP)."""
        address = self.host.address
        if address is not self._seen:
            self._seen = address
            tup = getattr(address, "addrTuple", None)
            local_station = address is not None and address.addrType == address.localStationAddr
            ok = self.sock is not None and local_station and isinstance(tup, tuple) and tup != self.sock.local
            self._dest = tup if ok else None
        return self._dest

    def request_for(self, points: Sequence[BACnetPoint]) -> FastRequest | None:
        """The prepared request of this point set, None when bacpypes3 must read it."""
        if self.dest is None:
            return None
        key = tuple(map(id, points))
        if key in self._requests:
            got = self._requests[key]
            return got if got is not None and got.on else None
        got = self._prepare(points)
        if len(self._requests) > 64:
            self._requests.clear()
        self._requests[key] = got
        return got

    def _prepare(self, points: Sequence[BACnetPoint]) -> FastRequest | None:
        from bacpypes3.basetypes import PropertyIdentifier
        from bacpypes3.primitivedata import ObjectIdentifier

        specs: dict[tuple[int, int], list[tuple[int, int | None]]] = {}
        members: dict[tuple[int, int], list[int]] = {}
        keys: list[tuple[int, int, int, int | None]] = []
        types: list[codec.ValueType] = []
        try:
            for p in points:
                obj_type, instance = ObjectIdentifier(p.object_id)
                prop = int(PropertyIdentifier(p.property))
                cls = self.vendor_info.get_object_class(obj_type)
                if cls is None:  # an object type bacpypes3 does not know for this vendor
                    return None
                types.append(codec.value_type(cls.get_property_type(PropertyIdentifier(p.property)),
                                              p.array_index))
                keys.append((int(obj_type), instance, prop, p.array_index))
                specs.setdefault((int(obj_type), instance), []).append((prop, p.array_index))
                members.setdefault((int(obj_type), instance), []).append(len(keys) - 1)
            data = codec.encode_request([(t, i, props) for (t, i), props in specs.items()])
        except (ValueError, TypeError) as exc:
            log.info("%s: ReadPropertyMultiple through bacpypes3 for these points: %s", self.host.name, exc)
            return None
        reply_pos = [0] * len(keys)
        for pos, i in enumerate(i for idxs in members.values() for i in idxs):
            reply_pos[i] = pos
        return FastRequest(data, keys, types, reply_pos, last=[None] * len(keys))

    async def read(self, points: Sequence[BACnetPoint], req: FastRequest) -> list[Sample] | None:
        """The samples of one poll, or None (and the point set goes to bacpypes3) when the reply is not a
        ReadPropertyMultiple-ACK that parses."""
        sock, dest, address = self.sock, self.dest, self.host.address
        if sock is None or dest is None or address is None:
            return None  # the device moved where only bacpypes3 reaches it
        name = self.host.name
        now = time.time()
        kind, data, start = await self.host._call(
            "read-property-multiple", lambda: sock.request(dest, address, req.service_data))
        if kind != codec.PDU_COMPLEX_ACK:
            req.on = False
            log.info("%s: %s to a ReadPropertyMultiple of %d properties; asking through bacpypes3 from now on",
                     name, {codec.PDU_ERROR: "Error", codec.PDU_REJECT: "Reject"}.get(kind, "Abort"), len(points))
            return None
        req.proven = True
        try:
            results = codec.decode_ack(data, start)
        except codec.Malformed as exc:
            req.on = False
            log.warning("%s: ReadPropertyMultiple-ACK not understood (%s); asking through bacpypes3 from now on",
                        name, exc)
            return None
        positional: list[Any] | None = None  # the reply in order, built only if a key is missing
        out: list[Sample] = []
        keys, types, last = req.keys, req.types, req.last
        for i, p in enumerate(points):
            got = results.get(keys[i])
            if got is None:
                if len(results) != len(points):
                    out.append(Sample(name, p.name, None, Quality.ERROR, now, "missing-in-reply"))
                    continue
                if positional is None:
                    positional = list(results.values())
                got = positional[req.reply_pos[i]]
            raw, error = got
            if error is not None:
                out.append(Sample(name, p.name, None, Quality.ERROR, now, _error_text(error[1])))
                continue
            assert raw is not None
            prev = last[i]
            if prev is not None and prev[0] == raw:  # the same octets as last time: the same value
                out.append(Sample(name, p.name, prev[1], Quality.GOOD, now))
                continue
            value, why = codec.decode_value(raw, types[i])
            if why is None:
                last[i] = (raw, value)
                out.append(Sample(name, p.name, value, Quality.GOOD, now))
            else:
                last[i] = None
                out.append(Sample(name, p.name, None, Quality.ERROR, now, why))
        return out
