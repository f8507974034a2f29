"""One task per device: start, poll on schedule, follow changes, restart with backoff, never stop others.

States: ``starting`` → ``online`` (at least one point reads good), ``failing`` (the device answers but not one
point reads good, e.g. a meter at the wrong unit id refusing every read with exception 4), ``offline`` /
``backoff`` (the device does not answer; it is probed again after a backoff that doubles up to ``BACKOFF_MAX``
= 30 s), ``disabled``. Availability is logged on transitions only (warning once when a device goes offline or
failing, info once when it comes back) and published as an event. ``retry()`` (``edge-agent retry DEVICE``)
probes one device at once. A device whose driver keeps crashing with *unexpected* exceptions (bugs, not device
failures) spends a restart budget; once spent, that device alone is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

from agent.contract.device import DeviceConfig
from agent.contract.driver import Driver, DriverContext, Sink, driver_class
from agent.contract.points import PointBase
from agent.errors import DriverError, DriverUnavailable
from agent.model import DeviceHealth, Event, PointState, Quality, Sample, Severity

log = logging.getLogger("edge_agent.supervisor")

RESTART_BUDGET = 5  # unexpected crashes ...
RESTART_WINDOW = 600.0  # ... within this many seconds disable the device
BACKOFF_MAX = 30.0  # a device that comes back is polled again within this many seconds
RETRY_WAIT = 50.0  # retry(): the longest the caller waits for the outcome of the probe
PROGRESS_SLACK = 10.0  # watchdog: how late a device loop may be beyond its own cycle budget


def _first(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (TaskGroup wraps what the poll or follow task raised)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _requests(driver: Driver) -> int | None:
    """The driver's count of protocol requests sent so far, if it keeps one: ``stats["requests"]`` (Modbus) or
    per service in ``facts.requests`` (BACnet)."""
    stats = getattr(driver, "stats", None)
    n = stats.get("requests") if isinstance(stats, dict) else None
    if isinstance(n, int):
        return n
    per_service = getattr(getattr(driver, "facts", None), "requests", None)
    if isinstance(per_service, dict) and all(isinstance(v, int) for v in per_service.values()):
        return sum(per_service.values())
    return None


def _settle(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class PointSets:
    """The point lists of the fast, slow and combined cycles, kept while the driver's polled points stay the
    same objects: one list comparison per cycle instead of building three lists, and the very same list
    objects for the driver (which caches its plan per list)."""

    __slots__ = ("polled", "sets")

    def __init__(self) -> None:
        self.polled: list[PointBase] | None = None
        self.sets: tuple[list[PointBase], list[PointBase], list[PointBase], list[PointBase]] = ([], [], [], [])

    def of(self, polled: list[PointBase], fast: bool, slow: bool) -> list[PointBase]:
        if polled != self.polled:  # element identity first: C speed when nothing changed
            f = [p for p in polled if p.poll == "fast"]
            s = [p for p in polled if p.poll == "slow"]
            self.polled, self.sets = list(polled), ([], f, s, f + s)
        return self.sets[fast + 2 * slow]


class DeviceRunner:
    def __init__(self, device: DeviceConfig, ctx: DriverContext, sink: Sink, health: DeviceHealth) -> None:
        self.device = device
        self.ctx = ctx
        self.sink = sink
        self.health = health
        self.driver: Driver | None = None
        self.deadline = time.monotonic() + 60.0  # watchdog: next progress expected before this
        self._crashes: deque[float] = deque()
        self.lock = asyncio.Lock()  # serialises reads, writes and driver stop/restart of this device
        dm = device.model
        self._initial_backoff = min(max(dm.interval, 1.0), 10.0)
        self._backoff = self._initial_backoff
        self.cycle_timeout = max(dm.interval, (dm.retries + 1) * dm.timeout) * 4 + 1.0
        self._wake = asyncio.Event()  # retry(): end the current backoff or poll wait now
        self._waker: asyncio.Future[bool] | None = None  # the current _nap's future
        self._done = asyncio.Event()  # set whenever an attempt (a restart or a poll cycle) has an outcome
        self._attempts = 0  # attempts begun
        self._urgent = False  # the current start was asked for by retry(): poll at once, no stagger
        self._finished = 0  # attempts with an outcome
        # Observability hooks (agent.obs), set by the Agent: (device, seconds, requests or None, samples) after
        # each answered cycle; (device, reason) after each failed attempt.
        self.on_cycle: Callable[[str, float, int | None, Sequence[Sample]], None] | None = None
        self.on_failure: Callable[[str, str], None] | None = None

    # ----------------------------------------------------------------------------------- availability

    def _answered(self, samples: Sequence[Sample]) -> None:
        """The device answered a poll cycle: online if at least one point now reads good, else failing."""
        if self.health.state == "online":
            for s in samples:  # a point read good in this cycle: no need to count them all
                if s.quality == Quality.GOOD:
                    self._online()
                    return
        good, total = self.point_counts()
        if total and not good:
            errors = Counter(s.error or "no value" for s in samples if s.quality != Quality.GOOD)
            common = errors.most_common(1)[0][0] if errors else "no value"
            self._failing(f"no point readable ({total} of {total} fail): {common}")
        else:
            self._online()

    def point_counts(self) -> tuple[int, int]:
        """(points whose latest value is good, enabled points)."""
        names = [p.name for p in self.device.enabled_points]
        good = 0
        for n in names:
            st = self.health.points.get(n)
            good += st is not None and st.quality == Quality.GOOD
        return good, len(names)

    def _online(self) -> None:
        h = self.health
        h.last_ok = time.time()
        h.consecutive_failures = 0
        self._backoff = self._initial_backoff
        if h.state != "online":
            was = h.state
            h.available, h.state = True, "online"
            if was != "starting":
                log.info("%s: back online", self.device.name)
            self.sink.event(Event(self.device.name, "availability", {"state": "online"}))

    def _failing(self, reason: str) -> None:
        h = self.health
        h.consecutive_failures = 0  # it answers: no backoff, keep polling at its interval
        self._backoff = self._initial_backoff
        h.last_error, h.last_error_ts = reason, time.time()
        if h.state != "failing":
            log.warning("%s: failing: %s", self.device.name, reason)
            h.available, h.state = False, "failing"
            self.sink.event(Event(self.device.name, "availability", {"state": "failing", "reason": reason},
                                  Severity.WARNING))

    def _failed(self, reason: str) -> None:
        if self.on_failure is not None:
            self.on_failure(self.device.name, reason)
        h = self.health
        h.consecutive_failures += 1
        h.last_error, h.last_error_ts = reason, time.time()
        if h.state not in ("offline", "backoff"):
            log.warning("%s: unavailable: %s", self.device.name, reason)
            h.available, h.state = False, "offline"
            self.sink.event(Event(self.device.name, "availability", {"state": "offline", "reason": reason},
                                  Severity.WARNING))
            self._stale(reason)
        h.state = "offline"

    def _stale(self, reason: str) -> None:
        """Every point keeps its last value with quality STALE (ERROR if it never had one)."""
        now = time.time()
        out = []
        for p in self.device.enabled_points:
            st = self.health.points.get(p.name) or PointState()
            if st.last_good is not None:
                out.append(Sample(self.device.name, p.name, st.value, Quality.STALE, now, reason))
            else:
                out.append(Sample(self.device.name, p.name, None, Quality.ERROR, now, reason))
        if out:
            self.sink.samples(self.device.name, out)

    # ------------------------------------------------------------------------------------------ retry

    def _begin(self) -> None:
        self._attempts += 1

    def _end(self) -> None:
        self._finished = self._attempts
        self._done.set()

    async def _nap(self, seconds: float) -> bool:
        """Sleep, or less if retry() asks for a probe now; True when woken. One future and one timer (this runs
        at every poll of every device: an ``Event.wait`` under ``asyncio.timeout`` cost twice as much)."""
        if self._wake.is_set():
            self._wake.clear()
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waker = fut
        timer = loop.call_later(seconds, _settle, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()
            self._waker = None
            self._wake.clear()

    async def retry(self) -> None:
        """Probe the device now (end its backoff, or poll it at once) and wait for the outcome, bounded."""
        if self.health.state == "disabled":
            raise DriverError(f"{self.device.name} is disabled ({self.health.last_error}); fix the cause, then "
                              "reload or restart the agent", device=self.device.name)
        target = self._attempts + 1
        self._wake.set()
        if self._waker is not None:
            _settle(self._waker, True)
        async with asyncio.timeout(min(RETRY_WAIT, 2 * self.cycle_timeout + 5.0)):
            while self._finished < target:
                self._done.clear()
                await self._done.wait()

    # ---------------------------------------------------------------------------------------- running

    def _progress(self, expect_within: float) -> None:
        self.health.last_progress = time.monotonic()
        self.deadline = self.health.last_progress + expect_within + PROGRESS_SLACK

    async def run(self) -> None:
        name = self.device.name
        delay = 0.0
        while True:
            if delay:
                self.health.state = "backoff" if self.health.state == "offline" else self.health.state
                self._progress(delay)
                self.health.next_probe = time.monotonic() + delay
                try:
                    self._urgent = await self._nap(delay)
                finally:
                    self.health.next_probe = None
            self._begin()
            try:
                cls = driver_class(self.device)
            except DriverUnavailable as exc:
                self._disable(str(exc))
                return
            try:
                driver = cls(self.device, self.ctx)
            except Exception as exc:  # a driver rejecting its config disables only itself
                self._disable(f"driver refused the configuration: {exc}")
                return
            self.driver = driver
            try:
                if delay:
                    driver.probe_now()  # this restart is the probe: no fail-fast state may skip it
                self._progress(self.cycle_timeout)
                units = [p.unit for p in self.device.points]
                async with asyncio.timeout(self.cycle_timeout):
                    await driver.start()
                if [p.unit for p in self.device.points] != units:
                    self.sink.points_changed(self.device.name)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._follow(driver), name=f"{name}:follow")
                    await self._poll(driver)
            except asyncio.CancelledError:
                await self._stop_driver(driver)
                raise
            except BaseException as raw:  # only the supervisor catches broad exceptions
                await self._stop_driver(driver)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # cancelled while the driver failed (its follower's connection broke as it was torn
                    # down): the driver's error took the CancelledError's place; stop, do not restart
                    raise asyncio.CancelledError() from raw
                leaf = _first(raw)
                if not isinstance(leaf, Exception):
                    raise
                if isinstance(leaf, DriverError):
                    self._failed(f"{leaf.code}: {leaf}")
                elif isinstance(leaf, TimeoutError):
                    self._failed(f"timeout: no answer within {self.cycle_timeout:.0f} s")
                elif self._crashed(leaf):
                    return
                self._end()
                cap = getattr(cls, "backoff_max", None) or BACKOFF_MAX
                delay = min(self._backoff * random.uniform(0.8, 1.2), cap)
                self._backoff = min(self._backoff * 2, cap)
                delay = max(delay, getattr(leaf, "retry_after", None) or 0.0)  # e.g. a refused login

    def _crashed(self, exc: Exception) -> bool:
        """Count an unexpected crash against the budget; True when the device is now disabled."""
        log.error("%s: driver crashed: %r", self.device.name, exc, exc_info=exc)
        self._failed(f"internal error: {type(exc).__name__}: {exc}")
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > RESTART_WINDOW:
            self._crashes.popleft()
        self.health.restarts += 1
        if len(self._crashes) >= RESTART_BUDGET:
            self._disable(f"{RESTART_BUDGET} crashes within {RESTART_WINDOW:.0f} s; last: {exc!r}")
            return True
        return False

    async def _stop_driver(self, driver: Driver) -> None:
        self.driver = None  # no new write picks this driver up
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                async with self.lock:  # a write in progress finishes first (bounded by its own timeout)
                    await asyncio.shield(driver.stop())

    def _disable(self, reason: str) -> None:
        h = self.health
        h.available, h.state, h.last_error, h.last_error_ts = False, "disabled", reason, time.time()
        log.error("%s: disabled: %s", self.device.name, reason)
        self.sink.event(Event(self.device.name, "availability", {"state": "disabled", "reason": reason},
                              Severity.ALARM))
        self.deadline = float("inf")
        self._end()

    async def _follow(self, driver: Driver) -> None:
        await driver.follow(self.sink)

    async def _poll(self, driver: Driver) -> None:
        dm = self.device.model
        # Polls are aligned on one grid (the monotonic clock, in steps of the interval, at most 1 s): devices
        # with the same interval poll in the same event-loop wake-up, so N devices cost one wake-up instead
        # of N (bench/site_poll.py: 43k -> 69k points per CPU-second on 50 meters). Devices of one bus still
        # take turns on its lock. retry() polls at once.
        now = time.monotonic()
        first = 0.0 if self._urgent or self._wake.is_set() else (-now) % min(dm.interval, 1.0)
        self._urgent = False
        self._wake.clear()
        sets = PointSets()
        next_fast = now + first
        next_slow = next_fast
        while True:
            now = time.monotonic()
            due = min(next_fast, next_slow)
            wait = max(0.0, due - now)
            self._progress(wait + self.cycle_timeout)
            if wait and await self._nap(wait):
                next_fast = next_slow = due = time.monotonic()  # retry: poll every point now
            # the nap's timer may fire a little before the monotonic clock reaches its time (uvloop: up to ~1 ms):
            # the time it was set for has come all the same
            now = max(time.monotonic(), due)
            fast_due, slow_due = now >= next_fast, now >= next_slow
            pts = sets.of(driver.polled_points(), fast_due, slow_due)
            if pts:
                self._begin()
                await self._cycle(driver, pts)
            elif self.health.state != "online":
                # Every point is followed (BACnet COV): the driver started and its follow task is alive,
                # which is what availability means for it.
                self._online()
                self._end()
            # No overlapping cycles, no burst to catch up: schedule from the planned time, skipping misses. Only
            # a set this cycle polled moves on (a clock read now could pass a time the cycle did not poll for).
            done = time.monotonic()
            if fast_due:
                next_fast += dm.interval * max(1, int((done - next_fast) // dm.interval) + 1)
            if slow_due:
                next_slow += dm.slow_interval * max(1, int((done - next_slow) // dm.slow_interval) + 1)

    async def _cycle(self, driver: Driver, pts: Sequence[PointBase]) -> None:
        t0 = time.monotonic()
        sent = _requests(driver)
        async with self.lock, asyncio.timeout(self.cycle_timeout):
            samples = await driver.read(pts)
        took = time.monotonic() - t0
        self.health.cycle_ms = round(took * 1000.0, 2)
        if self.on_cycle is not None:
            after = _requests(driver)
            self.on_cycle(self.device.name, took, None if sent is None or after is None else after - sent, samples)
        self.sink.samples(self.device.name, samples)  # updates the live point states first
        self._answered(samples)
        self._end()
