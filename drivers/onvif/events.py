"""PullPoint events that survive camera reboots, renewal failures and network cuts.

onvif-zeep-async's PullPointManager creates the subscription and renews it (at 80 % of its lifetime). We
pull in a loop beside it. Whatever breaks (a pull or a renew refused, the camera gone, its subscription
forgotten by a reboot) ends the loop; the subscription is dropped and created again with a short backoff
(1 s doubling to 4 s), and a SetSynchronizationPoint makes the camera repeat the current state of every
property. So events flow again within a few seconds of the camera answering. The library's own restart
after a failed renew waits 40 s; ours does not wait for it.

Cameras that get termination times wrong are still renewed in time (``renewal_delay``): a TerminationTime
without CurrentTime is read against the camera's clock (the box's plus the measured offset), one without a
time zone is taken as UTC, one not after CurrentTime falls back to half the lifetime asked. A camera that
refuses relative durations (PT60S) is switched to absolute times, the library's own mode for broken
cameras. A camera with push notifications only (no PullPoint) is reported once and not followed: the
library's NotificationManager would need an HTTP listener on the box that cameras can reach, and the agent
opens no listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from onvif.managers import PullPointManager

from agent.contract.driver import Sink
from agent.errors import DriverError, ProtocolError
from agent.model import Event, Severity

from . import OnvifEvents
from .session import CameraSession, DeviceAuthFailed, NoSuchService
from .topics import Notification, parse

log = logging.getLogger(__name__)
RETRY_FIRST, RETRY_MAX = 1.0, 4.0
PUSH_ONLY = "camera offers only push notifications, not followed"


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)  # no zone given: cameras mean UTC


def renewal_delay(result: Any, asked: float, camera_offset: float | None) -> float:
    """Seconds until the subscription must be renewed: 80 % of what the camera granted, never more than the
    lifetime asked. ``camera_offset``: camera clock minus the box's (s), for answers without CurrentTime."""
    cur, term = getattr(result, "CurrentTime", None), getattr(result, "TerminationTime", None)
    if not isinstance(term, dt.datetime):
        return asked * 0.8
    if isinstance(cur, dt.datetime):
        now, margin = _utc(cur), 1.0  # cameras write times to the second
    else:  # an absolute TerminationTime alone: compare it with the camera's clock, not the box's
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=camera_offset or 0.0)
        margin = 2.0  # and that clock offset is known to the second only
    granted = (_utc(term) - now).total_seconds()
    if granted <= 0:  # broken (equal to CurrentTime, in the past): trust neither, renew early
        return asked / 2
    return max(0.5, min(min(granted, asked) * 0.8, granted - margin))


class _Manager(PullPointManager):
    """The library's manager, renewing at 80 % of the lifetime we asked even when it is under a minute
    (the library would wait at least 48 s), and in time whatever termination times the camera writes."""

    def __init__(self, *args: Any, camera_offset: Callable[[], float | None] = lambda: None) -> None:
        super().__init__(*args)
        self.camera_offset = camera_offset

    def _calculate_next_renewal_call_at(self, result: Any) -> float:
        delay = renewal_delay(result, self._interval.total_seconds(), self.camera_offset())
        log.debug("%s: renew the subscription in %.1f s", self._device.host, delay)
        return float(self._loop.time() + delay)


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
        self.mode: Literal["pull", "push-only"] = "pull"

    def _lost(self) -> None:
        self.lost_reason = self.lost_reason or "subscription renewal failed"

    def _camera_offset(self) -> float | None:
        diff = getattr(self.session.raw(), "dt_diff", None)  # measured by the library when adjust_time is on
        return diff.total_seconds() if isinstance(diff, dt.timedelta) else self.session.facts.clock_offset

    async def _start(self) -> _Manager:
        cam = self.session.raw()
        interval = dt.timedelta(seconds=self.cfg.subscription)
        manager = _Manager(cam, interval, self._lost, camera_offset=self._camera_offset)
        try:
            await self.session.call("CreatePullPointSubscription", manager.start())
        except BaseException:
            manager._shutdown = True  # no renewal timer may outlive a failed start
            manager._cancel_renewals()
            raise
        return manager

    async def _pullpoint_offered(self) -> bool | None:
        """What the camera's capabilities say of PullPoint (None: they do not say)."""
        try:
            caps = await self.session.call("GetCapabilities", self.session.raw().get_capabilities())
        except DriverError:
            return None
        value = ((caps or {}).get("Events") or {}).get("WSPullPointSupport")
        return value if isinstance(value, bool) else None

    async def _subscribe(self) -> _Manager:
        cam = self.session.raw()
        try:
            manager = await self._start()
        except NoSuchService:
            if await self._pullpoint_offered() is not True:
                self.mode = "push-only"
            raise
        except ProtocolError as exc:
            if getattr(cam, "_has_broken_relative_timestamps", True):
                if await self._pullpoint_offered() is False:
                    self.mode = "push-only"
                    raise NoSuchService(f"CreatePullPointSubscription: {exc}") from exc
                raise
            # some cameras refuse relative durations (PT60S): the library's absolute mode, once
            log.info("%s: %s; asking again with an absolute termination time", self.device, exc)
            cam._has_broken_relative_timestamps = True
            manager = await self._start()
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
            except NoSuchService as exc:
                if self.mode != "push-only":
                    raise  # the device's restart (with its backoff) reports it
                # not a failure of the camera: say it once, keep its facts, no retry loop
                log.warning("%s: events: %s (%s)", self.device, PUSH_ONLY, exc)
                sink.event(Event(self.device, "availability", {
                    "state": "online", "events": "push-only", "reason": f"events: {PUSH_ONLY}"}, Severity.WARNING))
                return
            except DeviceAuthFailed:
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
