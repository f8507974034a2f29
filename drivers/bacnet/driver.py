"""BACnet/IP runtime: one shared bacpypes3 Application per local interface, one driver per controller.

Polls are planned and read by ``polling.PollReads`` (ReadPropertyMultiple sized to the controller, framed by
the agent in ``fastrpm`` when it can); this module holds the device: start, writes, COV and restarts.
COV subscriptions are renewed at half their lifetime; each (re)subscription must be answered by a
notification, else the point goes back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from bacpypes3.apdu import AbortPDU, ErrorRejectAbortNack
from bacpypes3.app import Application
from bacpypes3.basetypes import PropertyIdentifier, Segmentation
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Null, ObjectIdentifier

from agent.contract.driver import Driver, DriverContext, Sink
from agent.contract.points import PointBase
from agent.errors import DeviceTimeout, DeviceUnreachable, ProtocolError, WriteRefused
from agent.model import Quality, Sample, Value

from . import BACnetConnection, BACnetDeviceQuirks, BACnetPoint, speedups, unit_symbol
from .cov import CovFollower
from .fastrpm import FastReads, FastSocket
from .localif import other_stack, resolve_local
from .polling import OWN_MAX_APDU, Batch, PollReads
from .restart import EdgeApplication, RestartWatch
from .values import err_text as _err_text

log = logging.getLogger(__name__)
T = TypeVar("T")
speedups.install()  # bacpypes3's decoding without its per-object getattr_static walk (issue 15)

BIND_TIMEOUT = 3.0


def _bus_args(conn: BACnetConnection, local: str) -> SimpleNamespace:
    return SimpleNamespace(
        name=f"edge-agent-{conn.local_instance}", instance=conn.local_instance,
        address=f"{local}:{conn.local_port}", network=0, vendoridentifier=999,
        foreign=conn.bbmd, ttl=int(conn.bbmd_ttl), bbmd=None,
    )


class BACnetBus:
    """The one bacpypes3 Application (one UDP socket) of a local interface, shared by its devices.

    bacpypes3 matches replies by invoke id, so requests to different devices run concurrently: a dead
    controller only costs its own requests their timeout. There is no bus-wide lock.
    """

    def __init__(self, conn: BACnetConnection, local: str) -> None:
        self.conn = conn
        self.local = local  # IP/prefix
        self.app: Application | None = None
        self.fast: FastSocket | None = None  # polls framed by the agent on the application's socket
        self.users = 0
        self._lock: asyncio.Lock | None = None

    async def acquire(self) -> Application:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.app is None:
                self.app = await open_application(self.conn, local=self.local)
                self.fast = FastSocket.attach(self.app)
            self.users += 1
            return self.app

    async def release(self) -> None:
        if self._lock is None:
            return
        async with self._lock:
            self.users = max(0, self.users - 1)
            if self.users == 0 and self.app is not None:
                if self.fast is not None:
                    self.fast.close()
                    self.fast = None
                with contextlib.suppress(Exception):
                    self.app.close()
                self.app = None


def _probe_bind(ip: str, port: int) -> None:
    """Fail at once, with the system's reason, when the address is not on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # as bacpypes3 binds: sharing the port is not an error here
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind((ip, port))
        except OSError as exc:
            raise DeviceUnreachable(f"cannot bind BACnet/IP to {ip}:{port}: {exc.strerror or exc}") from exc


async def open_application(conn: BACnetConnection, *, bind_timeout: float = BIND_TIMEOUT, local: str | None = None,
                           shared_ok: bool = False) -> Application:
    """Create the client application and wait until its socket is bound (bacpypes3 would retry forever).

    ``local``: the resolved IP/prefix (default: resolved from ``conn.local_address``). Another stack on the same
    address and port is refused, or only logged with ``shared_ok`` (commissioning commands beside the agent).
    """
    local = local or resolve_local(conn.local_address)
    ip = local.partition("/")[0]
    # a socket this process closed a moment ago is released on the next loop iterations: look again briefly
    busy = other_stack(ip, conn.local_port)
    for _ in range(5 if busy else 0):
        await asyncio.sleep(0.1)
        busy = other_stack(ip, conn.local_port)
        if not busy:
            break
    if busy:
        msg = (f"another BACnet/IP stack already uses {ip}:{conn.local_port} on this box (a second edge-agent, "
               "edge-agent bacnet discover/scan, a BMS tool?): the kernel would split the replies between the two")
        if not shared_ok:
            raise DeviceUnreachable(f"{msg}; stop it or give this one another local_port")
        log.warning("%s; unicast answers may go to the other one", msg)
    _probe_bind(ip, conn.local_port)
    try:
        app = EdgeApplication.from_args(_bus_args(conn, local))
    except (OSError, ValueError, RuntimeError) as exc:
        raise DeviceUnreachable(f"cannot open BACnet/IP on {conn.local_address}:{conn.local_port}: {exc}") from exc
    dev = app.device_object
    if dev is not None:
        dev.maxApduLengthAccepted = OWN_MAX_APDU
        dev.segmentationSupported = Segmentation.segmentedBoth
        # retries are the driver's (device.retries, each under device.timeout): bacpypes3 would otherwise
        # keep retransmitting to a dead controller after the driver gave up
        dev.numberOfApduRetries = 0
        dev.apduTimeout = 120_000  # ms; the driver's per-device timeout always fires first
    readies = [ll.server._local_transport_ready for ll in app.link_layers.values()
               if getattr(getattr(ll, "server", None), "_local_transport_ready", None) is not None]
    try:
        async with asyncio.timeout(bind_timeout):
            for ev in readies:
                await ev.wait()
    except TimeoutError as exc:
        app.close()
        raise DeviceUnreachable(
            f"cannot bind BACnet/IP to {conn.local_address}:{conn.local_port} (address not on this machine, "
            "or port in use?)"
        ) from exc
    return app


@dataclass
class DeviceFacts:
    max_apdu: int = OWN_MAX_APDU
    segmentation: str = "unknown"
    rpm: bool = True
    vendor_id: int | None = None
    name: str | None = None
    model: str | None = None
    requests: dict[str, int] = field(default_factory=dict)


class BACnetDriver(Driver):
    def __init__(self, device: Any, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        self.conn = cast(BACnetConnection, self.device.connection)
        self.quirks = BACnetDeviceQuirks.model_validate(self.device.profile.device)
        self.timeout = float(self.device.model.timeout)
        self.retries = int(self.device.model.retries)
        # until the device answers (and for `plan` without a running agent): what the profile says, from a scan
        self.facts = DeviceFacts(segmentation=self.quirks.segmentation or "unknown",
                                 rpm=self.quirks.read_property_multiple != "never")
        self.address: Address | None = None
        self.app: Application | None = None
        self._bus: BACnetBus | None = None
        self._sem: asyncio.Semaphore | None = None
        self.local = ""  # this box's IP/prefix, resolved at start
        self.reads = PollReads(self)  # the poll path: batches, ReadPropertyMultiple, fallbacks
        self.units: dict[str, str | None] = {}
        self.cov = CovFollower(self)
        self.fast: FastReads | None = None  # set at start unless the profile says rpm_codec: bacpypes3
        self._polled: list[PointBase] | None = None
        self._polled_without: set[str] = set()  # the COV-followed points when _polled was built

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._sem = asyncio.Semaphore(self.quirks.max_concurrent_requests)
        self.local = resolve_local(self.conn.local_address)  # IP/prefix: one clear line when there is none
        key = f"bacnet:{self.local.partition('/')[0]}:{self.conn.local_port}"  # one socket per address and port
        self._bus = self.ctx.bus(key, lambda: BACnetBus(self.conn, self.local))
        self.app = await self._bus.acquire()
        try:
            self.address = Address(self.conn.address) if self.conn.address else await self._discover()
            await self._read_device_object()
            await self._read_units()
            if self.quirks.rpm_codec == "agent":
                vendor = await self.app.get_vendor_info(device_address=self.address)
                self.fast = FastReads(self, self._bus.fast, vendor)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self.cov.subscribed.clear()
        self.fast = None
        bus, self._bus = self._bus, None
        self.app = None
        if bus is not None:
            await bus.release()

    async def _discover(self) -> Address:
        app = self._app()
        inst = self.conn.device_instance
        if self.local.endswith("/32") and not self.conn.bbmd:
            raise DeviceUnreachable(f"{self.name}: {self.local} has no broadcast address, so no Who-Is can find "
                                    f"device {inst}: give its address, a BBMD, or the real prefix", device=self.name)
        try:
            i_ams = await app.who_is(inst, inst, timeout=self.conn.discover_timeout)
        except OSError as exc:
            raise DeviceUnreachable(f"{self.name}: Who-Is failed: {exc}", device=self.name) from exc
        for i_am in i_ams or []:
            if i_am.iAmDeviceIdentifier[1] == inst:
                return cast(Address, i_am.pduSource)
        raise DeviceUnreachable(
            f"{self.name}: no I-Am from device {inst} within {self.conn.discover_timeout:g}s "
            "(wrong instance, other subnet without BBMD, or offline)", device=self.name,
        )

    async def _read_device_object(self) -> None:
        dev = f"device,{self.conn.device_instance}"
        self.facts.max_apdu = int(await self._rp_checked(dev, "max-apdu-length-accepted"))
        seg = await self._rp_soft(dev, "segmentation-supported")
        self.facts.segmentation = str(seg) if seg is not None else "no-segmentation"
        services = await self._rp_soft(dev, "protocol-services-supported")
        if self.quirks.read_property_multiple == "never":
            self.facts.rpm = False
        elif services is not None:
            self.facts.rpm = "read-property-multiple" in str(services).split(";")
        vendor = await self._rp_soft(dev, "vendor-identifier")
        self.facts.vendor_id = int(vendor) if vendor is not None else None
        name = await self._rp_soft(dev, "object-name")
        self.facts.name = str(name) if name is not None else None
        model = await self._rp_soft(dev, "model-name")
        self.facts.model = str(model) if model is not None else None
        log.info("%s: device %s at %s max-apdu %d %s rpm=%s", self.name, self.conn.device_instance,
                 self.address, self.facts.max_apdu, self.facts.segmentation, self.facts.rpm)

    async def _read_units(self) -> None:
        """Take the unit from the device for analog present-values that do not name one in the profile."""
        want = [p for p in self._points() if p.unit is None and p.property == "present-value"
                and isinstance(p.object_type, str) and p.object_type.startswith(("analog", "large-analog"))]
        if not want:
            return
        unit_pts = [p.model_copy(update={"property": "units", "name": p.name}) for p in want]
        samples = await self.reads.read(unit_pts)
        for s in samples:
            if s.quality == Quality.GOOD and isinstance(s.value, str):
                self.units[s.point] = unit_symbol(s.value)
        pts = self.device.points
        for i, p in enumerate(pts):
            if p.name in self.units and p.unit is None:
                pts[i] = p.model_copy(update={"unit": self.units[p.name]})

    # ------------------------------------------------------------------------------------- requests

    def _app(self) -> Application:
        if self.app is None:
            raise ProtocolError(f"{self.name}: driver not started", device=self.name)
        return self.app

    def _count(self, service: str) -> None:
        self.facts.requests[service] = self.facts.requests.get(service, 0) + 1

    async def _call(self, service: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One confirmed request under the device's timeout, retried; errors mapped to the core's tree.

        bacpypes3 raises Error/Reject/Abort PDUs (BaseException subclasses): they pass through untouched for
        the caller to judge per point.
        """
        assert self._sem is not None
        last: Exception | None = None
        for _attempt in range(self.retries + 1):
            self._count(service)
            try:
                async with self._sem:  # the timeout counts from the send, not from the queue
                    async with asyncio.timeout(self.timeout):
                        return await fn()
            except TimeoutError as exc:
                last = exc
            except AbortPDU as exc:
                if str(exc.reason) != "no-response":
                    raise
                last = TimeoutError(f"bacpypes3 gave up: {exc.reason}")
            except OSError as exc:
                raise DeviceUnreachable(f"{self.name}: {exc}", device=self.name) from exc
        raise DeviceTimeout(
            f"{self.name}: no reply from {self.address} within {self.timeout:g}s "
            f"({self.retries + 1} attempts)", device=self.name,
        ) from last

    async def _rp(self, objid: str, prop: str | int, index: int | None = None) -> Any:
        app, addr = self._app(), self.address
        assert addr is not None
        oid, pid = ObjectIdentifier(objid), PropertyIdentifier(prop)
        return await self._call("read-property", lambda: app.read_property(addr, oid, pid, index))

    async def _rp_checked(self, objid: str, prop: str) -> Any:
        try:
            return await self._rp(objid, prop)
        except ErrorRejectAbortNack as exc:
            raise ProtocolError(f"{self.name}: reading {objid} {prop}: {_err_text(exc)}",
                                device=self.name) from exc

    async def _rp_soft(self, objid: str, prop: str) -> Any:
        try:
            return await self._rp(objid, prop)
        except ErrorRejectAbortNack:
            return None

    # ------------------------------------------------------------------------------------- reads

    def _points(self) -> list[BACnetPoint]:
        return [cast(BACnetPoint, p) for p in self.device.enabled_points]

    def batches(self, points: Sequence[BACnetPoint]) -> list[Batch]:
        return self.reads.batches(points)

    def plan(self) -> list[dict[str, Any]]:
        return self.reads.plan()

    async def read(self, points: Sequence[PointBase]) -> list[Sample]:
        return await self.reads.read(cast("Sequence[BACnetPoint]", points))

    # ------------------------------------------------------------------------------------- writes

    async def write(self, point: PointBase, value: Value) -> Value:
        p = cast(BACnetPoint, point)
        value = self.checked(p, value)  # the point type's checks: nothing unchecked reaches the wire
        app, addr = self._app(), self.address
        assert addr is not None
        priority = p.priority if p.relinquishable else None
        wire: Any
        if value is None:
            wire = Null(())
        elif p.write_kind() == "binary":
            wire = "active" if value else "inactive"
        else:
            wire = value
        oid, pid = ObjectIdentifier(p.object_id), PropertyIdentifier(p.property)
        try:
            result = await self._call("write-property", lambda: app.write_property(
                addr, oid, pid, wire, p.array_index, priority))
        except ErrorRejectAbortNack as exc:
            raise ProtocolError(f"{self.name}.{p.name}: device refused the write: {_err_text(exc)}",
                                device=self.name) from exc
        except (TypeError, ValueError) as exc:
            raise WriteRefused(f"{self.name}.{p.name}: cannot encode {value!r}: {exc}") from exc
        if isinstance(result, str):  # bacpypes3 does not know the property's type (proprietary)
            raise WriteRefused(f"{self.name}.{p.name}: cannot encode {value!r}: {result.strip('-')}")
        return value

    # ------------------------------------------------------------------------------------- COV

    def polled_points(self) -> list[PointBase]:
        # the same list while the COV subscriptions stay the same: the supervisor and the batch plans key
        # their caches on it
        subscribed = self.cov.subscribed
        if self._polled is None or self._polled_without != subscribed:
            self._polled_without = set(subscribed)
            self._polled = [p for p in self.device.enabled_points if p.name not in subscribed]
        return self._polled

    @property
    def subscribed(self) -> set[str]:
        return set(self.cov.subscribed)

    @property
    def restarts(self) -> int:
        """Controller restarts noticed (each resubscribes every COV point at once)."""
        return self.cov.restarts

    async def follow(self, sink: Sink) -> None:
        """Hold the COV subscriptions and watch for controller restarts, which resubscribe them at once."""
        cov = [p for p in self._points() if p.cov]
        if not cov:
            return
        watch = RestartWatch(self, float(self.device.model.interval),
                             lambda reason, evident: self.cov.on_restart(reason, evident, cov, sink))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(watch.run(), name=f"{self.name}.restart-watch")
            tg.create_task(self.cov.run(cov, sink), name=f"{self.name}.cov")

    def heard_from(self, source: Address) -> None:
        """An I-Am from this device: follow it to a new address when the site names none (DHCP)."""
        if self.conn.address is None and self.address is not None and str(source) != str(self.address):
            log.warning("%s: device %s now answers from %s (was %s)", self.name, self.conn.device_instance,
                        source, self.address)
            self.address = source
