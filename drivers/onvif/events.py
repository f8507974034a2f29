"""PullPoint events that survive camera reboots, renewal failures and network cuts.

onvif-zeep-async's PullPointManager creates the subscription and renews it (at 80 % of its lifetime). We
pull in a loop beside it. Whatever breaks (a pull or a renew refused, the camera gone, its subscription
forgotten by a reboot) ends the loop; the subscription is dropped and created again with a short backoff
(1 s doubling to 4 s), and a SetSynchronizationPoint makes the camera repeat the current state of every
property. So events flow again within a few seconds of the camera answering. The library's own restart
after a failed renew waits 40 s; ours does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from onvif.managers import PullPointManager

from agent.contract.driver import Sink
from agent.errors import DriverError
from agent.model import Event, Severity

from . import OnvifEvents
from .session import CameraSession, DeviceAuthFailed, NoSuchService
from .topics import Notification, parse

log = logging.getLogger(__name__)
RETRY_FIRST, RETRY_MAX = 1.0, 4.0


class _Manager(PullPointManager):
    """The library's manager, renewing at 80 % of the lifetime we asked even when it is under a minute
    (the library would wait at least 48 s)."""

    def _calculate_next_renewal_call_at(self, result: Any) -> float:
        cur, term = getattr(result, "CurrentTime", None), getattr(result, "TerminationTime", None)
        delay = (term - cur).total_seconds() if cur and term else self._interval.total_seconds()
        delay = min(max(delay, 1.0), self._interval.total_seconds())
        return float(self._loop.time() + delay * 0.8)


class EventFollower:
    """Follows one camera's events into the sink until cancelled."""

    def __init__(self, device: str, session: CameraSession, cfg: OnvifEvents,
                 snapshot: Callable[[str, str], bool] | None = None) -> None:
        self.device, self.session, self.cfg = device, session, cfg
        self.snapshot = snapshot  # (kind, event id) -> a snapshot of this event is queued
        self.lost_reason: str | None = None
        self.lost_since: float | None = None
        self.subscriptions = 0
        self.received = 0

    def _lost(self) -> None:
        self.lost_reason = self.lost_reason or "subscription renewal failed"

    async def _subscribe(self) -> _Manager:
        cam = self.session.raw()
        interval = dt.timedelta(seconds=self.cfg.subscription)
        manager = _Manager(cam, interval, self._lost)
        try:
            await self.session.call("CreatePullPointSubscription", manager.start())
        except BaseException:
            manager._shutdown = True  # no renewal timer may outlive a failed start
            manager._cancel_renewals()
            raise
        self.subscriptions += 1
        with contextlib.suppress(DriverError):  # optional: cameras that lack it still send changes
            await self.session.call("SetSynchronizationPoint", manager._service.SetSynchronizationPoint())
        return manager

    async def _drop(self, manager: _Manager) -> None:
        manager._shutdown = True
        manager._cancel_renewals()
        task = manager._restart_or_renew_task
        if task is not None and not task.done():
            task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await asyncio.shield(manager.stop())

    async def run(self, sink: Sink) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                manager = await self._subscribe()
            except (DeviceAuthFailed, NoSuchService):
                raise  # the device's restart (with its backoff) reports it
            except DriverError as exc:
                self._mark_lost(sink, f"subscribe failed: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            if self.lost_since is not None:
                took = round(time.monotonic() - self.lost_since, 1)
                log.info("%s: events resubscribed after %.1f s (%s)", self.device, took, self.lost_reason)
                sink.event(Event(self.device, "availability", {
                    "state": "online", "events": "resubscribed", "reason": self.lost_reason, "lost_s": took}))
                self.lost_since = None
            self.lost_reason = None
            try:
                await self._pull(manager, sink)
            except DriverError as exc:
                self._mark_lost(sink, self.lost_reason or f"pull failed: {exc}")
            finally:
                await self._drop(manager)

    def _mark_lost(self, sink: Sink, reason: str) -> None:
        if self.lost_since is None:
            self.lost_since = time.monotonic()
            self.lost_reason = reason
            log.warning("%s: event subscription lost: %s", self.device, reason)
            sink.event(Event(self.device, "availability", {"state": "online", "events": "lost", "reason": reason},
                             Severity.WARNING))

    async def _pull(self, manager: _Manager, sink: Sink) -> None:
        req = {"MessageLimit": self.cfg.message_limit, "Timeout": dt.timedelta(seconds=self.cfg.pull_timeout)}
        budget = self.cfg.pull_timeout + self.session.timeout
        while True:
            service = manager.get_service()
            res = await self.session.call("PullMessages", service.PullMessages(req), budget)
            for msg in getattr(res, "NotificationMessage", None) or []:
                self.handle(sink, msg)

    def handle(self, sink: Sink, msg: Any) -> None:
        """One notification message as zeep parsed it (the access-panel driver reads its own topics)."""
        n = parse(msg, self.cfg.topics)
        if n is not None:
            self.publish(sink, n)

    def publish(self, sink: Sink, n: Notification) -> Event | None:
        self.received += 1
        if n.kind not in self.cfg.kinds:
            return None
        data: dict[str, Any] = {
            "id": secrets.token_hex(8), "topic": n.topic, "state": n.state, "operation": n.operation,
            "camera_time": n.utc, "source": n.source, "data": n.data,
        }
        if self.snapshot is not None and n.state is True and n.operation != "Initialized":
            data["snapshot"] = self.snapshot(n.kind, data["id"])
        ev = Event(self.device, n.kind, data, n.severity)
        sink.event(ev)
        return ev
