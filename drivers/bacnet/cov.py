"""Following BACnet points by SubscribeCOV: one subscription per point, renewed at half its lifetime, expected
to answer every (re)subscription with a notification; refused or lost subscriptions fall back to polling
until they are made again; a controller restart makes every subscription again at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from bacpypes3.apdu import ErrorPDU, ErrorRejectAbortNack, RejectPDU
from bacpypes3.app import Application
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier
from bacpypes3.service.cov import SubscriptionContextManager

from agent.contract.driver import Sink
from agent.errors import DeviceTimeout, DeviceUnreachable, ProtocolError
from agent.model import Event, Quality, Sample, Severity

from . import BACnetPoint
from .values import err_text, to_value

log = logging.getLogger("drivers.bacnet.driver")
T = TypeVar("T")


class CovHost(Protocol):
    """What COV following needs of the BACnet driver (a protocol, so this module does not import the driver)."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> Address | None: ...

    @property
    def timeout(self) -> float: ...

    def _app(self) -> Application: ...

    async def _call(self, service: str, fn: Callable[[], Awaitable[T]]) -> T: ...


class _Subscription(SubscriptionContextManager):
    """bacpypes3's subscription, with renewal driven by the driver (its own timer swallows failures)."""

    def create_refresh_task(self) -> None:
        return None


class _Resubscribe(Exception):
    """The controller restarted: every subscription is made again."""


async def _raise_when(flag: asyncio.Event) -> None:
    await flag.wait()
    raise _Resubscribe


class CovFollower:
    def __init__(self, host: CovHost) -> None:
        self.host = host
        self.subscribed: set[str] = set()  # points whose values arrive by COV (not polled meanwhile)
        self.restarts = 0  # controller restarts noticed (each resubscribes every COV point at once)
        self._resubscribe = asyncio.Event()
        self._forgotten = False  # the controller forgot the subscriptions: do not unsubscribe

    @property
    def name(self) -> str:
        return self.host.name

    async def run(self, cov: list[BACnetPoint], sink: Sink) -> None:
        while True:
            self._resubscribe = flag = asyncio.Event()
            self._forgotten = False
            try:
                async with asyncio.TaskGroup() as tg:
                    for p in cov:
                        tg.create_task(self._follow_point(p, sink), name=f"{self.name}.{p.name}.cov")
                    tg.create_task(_raise_when(flag), name=f"{self.name}.resubscribe")
            except* _Resubscribe:
                pass  # every point task was cancelled: subscribe them all again

    def on_restart(self, reason: str, evident: bool, cov: list[BACnetPoint], sink: Sink) -> None:
        names = [p.name for p in cov]
        if evident:
            self.restarts += 1
            log.warning("%s: controller restarted (%s); resubscribing %d COV point(s)", self.name, reason, len(cov))
            sink.event(Event(self.name, "restart", {"reason": reason, "resubscribed": names}, Severity.WARNING))
        else:
            log.info("%s: %s; resubscribing %d COV point(s)", self.name, reason, len(cov))
        self._forgotten = True
        self._resubscribe.set()

    async def _follow_point(self, p: BACnetPoint, sink: Sink) -> None:
        backoff = 1.0
        while True:
            try:
                await self._subscription(p, sink)
                backoff = 1.0
            except (ErrorRejectAbortNack, TimeoutError, DeviceTimeout, DeviceUnreachable, ProtocolError) as exc:
                reason = err_text(exc)
                refused = isinstance(exc, ErrorPDU | RejectPDU)
                log.info("%s.%s: COV %s (%s); polled until retry", self.name, p.name,
                         "refused" if refused else "lost", reason)
                self.subscribed.discard(p.name)
                wait = max(p.cov_lifetime, 60.0) if refused else backoff
                backoff = min(backoff * 2, p.cov_lifetime)
                await asyncio.sleep(wait)

    async def _subscription(self, p: BACnetPoint, sink: Sink) -> None:
        """Hold one subscription: (re)subscribe, expect a notification each time, renew at half lifetime."""
        app, addr = self.host._app(), self.host.address
        assert addr is not None
        lifetime = max(2, int(p.cov_lifetime))
        base = app.change_of_value(addr, ObjectIdentifier(p.object_id), None, p.cov_confirmed, lifetime)
        scm = _Subscription(app, addr, base.monitored_object_identifier, base.subscriber_process_identifier,
                            p.cov_confirmed, lifetime)
        key = (addr, scm.subscriber_process_identifier)
        if p.cov_increment is not None:
            await self._set_cov_increment(p)
        app._cov_contexts[key] = scm  # before subscribing: the first notification may beat the ack
        try:
            while True:
                await self.host._call("subscribe-cov", scm.refresh_subscription)
                if scm.refresh_subscription_handle is not None:
                    scm.refresh_subscription_handle.cancel()
                # every (re)subscription is answered by a notification: silence means it did not take
                async with asyncio.timeout(self.host.timeout):
                    await self._next_value(scm, p, sink)
                self.subscribed.add(p.name)
                renew_at = asyncio.get_running_loop().time() + lifetime / 2
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(renew_at):
                        while True:
                            await self._next_value(scm, p, sink)
        except asyncio.CancelledError:
            self.subscribed.discard(p.name)
            if not self._forgotten:
                with contextlib.suppress(BaseException):
                    async with asyncio.timeout(1.0):
                        await scm.__aexit__(None, None, None)  # unsubscribe, best effort
            raise
        finally:
            app._cov_contexts.pop(key, None)

    async def _set_cov_increment(self, p: BACnetPoint) -> None:
        app, addr = self.host._app(), self.host.address
        assert addr is not None and p.cov_increment is not None
        inc = float(p.cov_increment)
        try:
            await self.host._call("write-property",
                                  lambda: app.write_property(addr, p.object_id, "cov-increment", inc))
        except ErrorRejectAbortNack as exc:
            log.warning("%s.%s: cannot set cov-increment %g: %s (the device's own increment applies)",
                        self.name, p.name, inc, err_text(exc))

    async def _next_value(self, scm: _Subscription, p: BACnetPoint, sink: Sink) -> None:
        """Wait for the next present-value of this subscription and hand it to the sink."""
        while True:
            prop, value = await scm.get_value()
            if str(prop) == "present-value":
                sink.samples(self.name, [Sample(self.name, p.name, to_value(value), Quality.GOOD, time.time())])
                return



