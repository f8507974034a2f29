"""Liveness for systemd: WATCHDOG=1 only while every part makes progress, READY=1, and the STATUS= line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agent.config import Site
from agent.core.flusher import Flusher
from agent.core.notify import Notifier
from agent.core.supervisor import DeviceRunner
from agent.errors import StoreError
from agent.model import DeviceHealth
from agent.outbox import Outbox
from agent.uplink.mqtt import Uplink

log = logging.getLogger("edge_agent")

READY_GRACE = 15.0


class Liveness:
    def __init__(self, site: Site, notifier: Notifier, flusher: Flusher, uplink: Uplink, outbox: Outbox,
                 runners: dict[str, DeviceRunner], health: dict[str, DeviceHealth]) -> None:
        self.site = site
        self.notifier = notifier
        self.flusher = flusher
        self.uplink = uplink
        self.outbox = outbox
        self.runners = runners
        self.health = health

    def summary(self) -> str:
        up = "uplink up" if self.uplink.state.connected else f"uplink {self.uplink.state.state}"
        online = sum(1 for h in self.health.values() if h.available)
        st = self.outbox.stats()
        text = f"{up}; devices {online}/{len(self.health)} online; outbox {st.get('depth', 0)} queued"
        dropped = st.get("dropped_total", 0) + self.flusher.dropped()
        if dropped:
            text += f", {dropped} dropped"
        if st.get("lost_unknown"):
            text += ", unknown loss after damage"
        err = self.flusher.store_error
        if err:
            text += ", store failing" + (" (disk full)" if "full" in err else "")
        return text

    def alive(self) -> tuple[bool, str]:
        """Every part that should progress did so recently."""
        now = time.monotonic()
        flush_budget = max(self.site.model.uplink.batch_interval, 1.0) * 3 + 30.0
        if now - self.flusher.progress > flush_budget:
            return False, "flusher stalled"
        publish_budget = self.site.model.uplink.publish_timeout * 3 + 30
        if self.uplink.connected.is_set() and now - self.uplink.progress > publish_budget:
            return False, "uplink publisher stalled"
        failing = self.outbox.ack_failing_since
        if self.uplink.connected.is_set() and failing is not None and now - failing > publish_budget:
            return False, f"outbox makes no progress: delivered rows cannot be deleted for {now - failing:.0f} s"
        for name, r in self.runners.items():
            if now > r.deadline:
                return False, f"device loop {name} stalled"
        return True, ""

    async def watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        tick = interval / 2 if interval else 5.0
        last_status = ""
        while True:
            ok, why = self.alive()
            if ok and self.outbox.is_open:  # a closed outbox (full disk at start) is retried, not a hang
                try:
                    async with asyncio.timeout(max(tick, 0.5)):
                        await self.outbox.ping()
                except TimeoutError:
                    ok, why = False, "outbox not responding"
                except StoreError as exc:
                    log.warning("outbox ping failed: %s", exc)
            if ok:
                if interval:
                    self.notifier.watchdog()
            else:
                log.error("watchdog withheld: %s", why)
            s = self.summary() if ok else f"unhealthy: {why}"
            if s != last_status:
                self.notifier.status(s)
                last_status = s
            await asyncio.sleep(tick)

    async def ready(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_GRACE):
                await self.uplink.connected.wait()
        self.notifier.ready(self.summary())
        log.info("ready: %s", self.summary())
