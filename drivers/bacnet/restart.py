"""Noticing that a BACnet controller restarted, which makes it forget every COV subscription.

Two signals, both cheap:

- an I-Am from the device (controllers announce themselves when they start; the shared application hands
  every I-Am to the drivers that listen), checked at once;
- the device object's ``time-of-device-restart``, read once per poll interval: a new value is a restart.

An I-Am alone is a restart only for devices without ``time-of-device-restart``: when the property exists, an
I-Am with an unchanged restart time is an answer to someone's Who-Is (a BMS front-end sends them every few
seconds) and is ignored. A device that stops answering the check and answers again is resubscribed too (its
subscriptions may have lapsed), without a ``restart`` event: the supervisor reports availability.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Any, Protocol

from bacpypes3.apdu import ErrorPDU, ErrorRejectAbortNack
from bacpypes3.app import Application
from bacpypes3.pdu import Address

from agent.errors import DriverError


class WatchedDevice(Protocol):
    """What the watch needs of a BACnet driver (kept as a protocol so this module does not import the driver)."""

    @property
    def name(self) -> str: ...

    @property
    def conn(self) -> Any: ...

    def _app(self) -> Application: ...

    async def _rp(self, objid: str, prop: str | int, index: int | None = None) -> Any: ...

    def heard_from(self, source: Address) -> None: ...

log = logging.getLogger(__name__)

RESTART_PROPERTY = "time-of-device-restart"
IAmListener = Callable[[int, Address], None]


class EdgeApplication(Application):
    """bacpypes3's application that also hands every I-Am to listeners (drivers of the devices it serves)."""

    i_am_listeners: list[IAmListener]

    def listen_i_am(self, fn: IAmListener) -> Callable[[], None]:
        if not hasattr(self, "i_am_listeners"):
            self.i_am_listeners = []
        self.i_am_listeners.append(fn)
        return lambda: self.i_am_listeners.remove(fn) if fn in self.i_am_listeners else None

    async def do_IAmRequest(self, apdu: Any) -> None:  # bacpypes3 dispatches by this name
        await super().do_IAmRequest(apdu)
        ident = getattr(apdu, "iAmDeviceIdentifier", None)
        if ident is None:
            return
        for fn in list(getattr(self, "i_am_listeners", [])):
            try:
                fn(int(ident[1]), apdu.pduSource)
            except Exception:  # a listener's bug must not break discovery for the others
                log.exception("I-Am listener failed")


class Marker(enum.Enum):
    UNSUPPORTED = "unsupported"  # the device has no time-of-device-restart
    NO_ANSWER = "no answer"


class RestartWatch:
    """Watches one controller; calls ``on_restart(reason, evident)`` when it restarted (evident) or answers
    again after a silence (not evident)."""

    def __init__(self, driver: WatchedDevice, interval: float,
                 on_restart: Callable[[str, bool], None]) -> None:
        self.driver = driver
        self.interval = max(0.2, interval)
        self.on_restart = on_restart
        self.checks = 0

    async def _marker(self) -> str | Marker:
        self.checks += 1
        dev = f"device,{self.driver.conn.device_instance}"
        try:
            value = await self.driver._rp(dev, RESTART_PROPERTY)
        except ErrorPDU:
            return Marker.UNSUPPORTED
        except (ErrorRejectAbortNack, DriverError, TimeoutError):
            return Marker.NO_ANSWER
        text = str(value)
        if "*" in text:  # a controller without a clock: an unspecified date/time never changes
            return Marker.UNSUPPORTED
        return text

    async def run(self) -> None:
        app = self.driver._app()
        heard: asyncio.Queue[Address] = asyncio.Queue()
        instance = self.driver.conn.device_instance

        def on_i_am(inst: int, source: Address) -> None:
            if inst == instance:
                heard.put_nowait(source)

        remove = app.listen_i_am(on_i_am) if isinstance(app, EdgeApplication) else (lambda: None)
        try:
            await self._watch(heard)
        finally:
            remove()

    async def _watch(self, heard: asyncio.Queue[Address]) -> None:
        known: str | None = None  # the last restart time read
        supported, silent, pending = True, False, False  # pending: an I-Am not judged yet
        first = await self._marker()
        if isinstance(first, str):
            known = first
        elif first is Marker.UNSUPPORTED:
            supported = False
        else:
            silent = True
        while True:
            wait = 0.5 if pending else (self.interval if supported or silent else None)
            source: Address | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    source = await heard.get()
            if source is not None:
                self.driver.heard_from(source)
                pending = True
            now = await self._marker()
            if now is Marker.NO_ANSWER:
                if not silent:
                    log.info("%s: no answer to the restart check", self.driver.name)
                silent = True
                continue
            if now is Marker.UNSUPPORTED:
                supported = False
                if pending:
                    self.on_restart("I-Am from the device (it has no time-of-device-restart)", True)
                elif silent:
                    self.on_restart("answering again after a silence", False)
            else:
                supported = True
                if known is not None and now != known:
                    self.on_restart(f"time-of-device-restart changed from {known} to {now}", True)
                elif silent:
                    self.on_restart("answering again after a silence", False)
                known = now
            silent = pending = False
