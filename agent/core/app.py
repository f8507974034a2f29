"""The agent: one task tree holding the outbox, the pipeline flusher, the uplink, one runner per device,
the status socket and the watchdog.

Start-up order: outbox open → status socket → uplink (connecting) → devices. READY=1 is sent when the uplink
is connected, or after ``READY_GRACE`` seconds without a broker: a box that boots while the fibre is down must
still collect into its outbox rather than be killed by systemd's start timeout and restarted in a loop.
Shutdown (SIGTERM/SIGINT): stop polling, move what the pipeline holds into the outbox, give the uplink
``SHUTDOWN_FLUSH`` seconds to drain, say offline, close the outbox. Exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

from agent import __version__
from agent.config import Site
from agent.contract.device import DeviceConfig
from agent.contract.driver import DriverContext, prepare_write
from agent.core.notify import Notifier
from agent.core.pipeline import Pipeline
from agent.core.status import StatusServer
from agent.core.supervisor import DeviceRunner
from agent.errors import DeviceTimeout, DriverError, EdgeAgentError, WriteRefused
from agent.model import DeviceHealth, Event, Quality, Sample, Severity, Value
from agent.outbox import Kind, Outbox, Record, row_size
from agent.uplink.codec import dumps
from agent.uplink.mqtt import Uplink
from agent.uplink.topics import Topics

log = logging.getLogger("edge_agent")

READY_GRACE = 15.0
SHUTDOWN_FLUSH = 5.0
DEVICE_STOP = 3.0
WRITE_TIMEOUT = 30.0  # one local or remote write, queue on the bus included
UNSTORED_MAX = 5000  # records held in memory while the outbox cannot be written
EVENT_QUEUE = 1000
SNAPSHOT_TIMEOUT = 30.0  # one snapshot command: fetch, downscale


class Agent:
    def __init__(self, site: Site, notifier: Notifier | None = None) -> None:
        self.site = site
        self.notifier = notifier or Notifier()
        self.topics = Topics(site.model.uplink.topic_prefix, site.id)
        self.outbox = Outbox(site.state_dir / "outbox.sqlite", site.model.outbox.max_bytes, site.model.outbox.sync)
        self.pipeline = Pipeline(site.devices, site.model.pipeline.max_silence)
        self.ctx = DriverContext(site.id, site.state_dir, self.stats)
        self.health: dict[str, DeviceHealth] = {}
        self.runners: dict[str, DeviceRunner] = {}
        for d in site.devices:
            h = DeviceHealth()
            ch = self.pipeline.channels[d.name]
            h.points = ch.live
            self.health[d.name] = h
            if not d.model.enabled:
                h.state = "disabled"
                continue
            self.runners[d.name] = DeviceRunner(d, self.ctx, self, h)
        self.uplink = Uplink(site.model.uplink, site.secrets, self.topics, self.outbox, self.pipeline.birth,
                             self.handle_command)
        self._events: asyncio.Queue[tuple[str, bytes, float]] = asyncio.Queue(EVENT_QUEUE)
        self.events_dropped = 0
        self.started = time.time()
        self.stop_event = asyncio.Event()
        self.flush_progress = time.monotonic()
        self.status_server = StatusServer(site.socket_path, self)
        self.store_error: str | None = None
        self.abandoned: list[str] = []  # tasks that ignored cancellation at shutdown
        self._unstored: list[Record] = []  # records the outbox refused (store error), retried next flush
        self.unstored_dropped = 0
        self.oversize_dropped = 0
        self.reload_event = asyncio.Event()
        self.restart = False  # set when a valid new configuration asks for a re-exec

    # ------------------------------------------------------------------------------ Sink (drivers)

    def samples(self, device: str, samples: list[Sample] | Any) -> None:
        self.pipeline.offer(device, samples)

    def event(self, event: Event) -> None:
        body = dumps({"ts": round(event.ts, 3), "src": event.source, "kind": event.kind,
                      "sev": event.severity.name.lower(), "data": event.data})
        self._queue_event(self.topics.event(event.source), body, event.ts)

    def picture(self, device: str, ref: str, jpeg: bytes) -> None:
        self._queue_event(self.topics.snapshot(device, ref), jpeg, time.time())

    def points_changed(self, device: str) -> None:
        ch = self.pipeline.channels.get(device)
        if ch is not None and ch.refresh():
            self.uplink.rebirth()

    def _queue_event(self, topic: str, body: bytes, ts: float) -> None:
        try:
            self._events.put_nowait((topic, body, ts))
        except asyncio.QueueFull:
            self.events_dropped += 1

    # ----------------------------------------------------------------------------------- commands

    async def handle_command(self, payload: bytes) -> None:
        """Commands from upstream (docs/mqtt.md). Every command with an id is answered on the ack topic."""
        try:
            msg = json.loads(payload)
            if not isinstance(msg, dict):
                raise ValueError("a command must be a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring malformed command: %s", exc)
            self._ack(None, False, error=f"malformed command: {exc}")
            return
        cid, cmd = msg.get("id"), msg.get("cmd")
        try:
            if cmd == "ping":
                uptime = round(time.time() - self.started, 1)
                result: dict[str, Any] = {"pong": True, "agent": __version__, "uptime": uptime}
            elif cmd == "rebirth":
                self.pipeline.forget()
                self.uplink.rebirth()
                result = {"gen": self.pipeline.gen}
            elif cmd == "snapshot":
                result = await self._snapshot_command(msg.get("device"))
            else:
                raise EdgeAgentError(f"unknown command {cmd!r}; known: ping, rebirth, snapshot")
        except EdgeAgentError as exc:
            self._ack(cid, False, error=str(exc), cmd=cmd)
        else:
            self._ack(cid, True, result=result, cmd=cmd)

    async def _snapshot_command(self, name: Any) -> dict[str, Any]:
        """A camera picture now, on its own topic; the ack says where (docs/mqtt.md)."""
        runner = self.runners.get(name) if isinstance(name, str) else None
        take = getattr(runner.driver, "snapshot", None) if runner is not None else None
        if take is None:
            raise EdgeAgentError(f"no running camera named {name!r}")
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                ref, jpeg = await take()
        except (DriverError, TimeoutError) as exc:
            raise EdgeAgentError(f"snapshot of {name}: {exc or 'no answer'}") from None
        self.picture(name, ref, jpeg)
        return {"device": name, "ref": ref, "bytes": len(jpeg), "topic": self.topics.snapshot(name, ref)}

    def _ack(self, cid: Any, ok: bool, *, cmd: Any = None, result: Any = None, error: str | None = None) -> None:
        doc: dict[str, Any] = {"id": cid, "cmd": cmd, "ok": ok, "ts": round(time.time(), 3)}
        if ok:
            doc["result"] = result
        else:
            doc["error"] = error
        self._queue_event(self.topics.ack, dumps(doc), time.time())

    # ------------------------------------------------------------------------------ local writes

    async def write(self, device: str, point: str, value: Value) -> Value:
        """One write through the running agent. Text is read by the point's type; the value is checked before
        any I/O. Every outcome is a ``write`` event: ``result`` ok, refused (nothing sent) or failed."""
        given = value
        try:
            dev = self.device(device)
            pt, value = prepare_write(dev, point, value, text=isinstance(value, str))
            runner = self.runners.get(device)
            if runner is None:
                raise DriverError(f"{device} is not running (state {self.health[device].state})", device=device)
        except (WriteRefused, DriverError) as exc:
            self._write_event(device, point, given, "refused", str(exc))
            raise
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                # the runner's lock: never write through a driver that is being stopped or restarted
                async with runner.lock:
                    driver = runner.driver
                    if driver is None:
                        raise WriteRefused(f"{device} is not running (state {self.health[device].state})")
                    written = await driver.write(pt, value)
        except WriteRefused as exc:
            self._write_event(device, point, given, "refused", str(exc))
            raise
        except TimeoutError:
            exc2 = DeviceTimeout(f"{device}.{point}: write not confirmed within {WRITE_TIMEOUT:g} s; outcome unknown",
                                 device=device)
            self._write_event(device, point, given, "failed", str(exc2))
            raise exc2 from None
        except EdgeAgentError as exc:
            self._write_event(device, point, given, "failed", str(exc))
            raise
        self._write_event(device, point, written, "ok")
        return written

    def _write_event(self, device: str, point: str, value: Any, result: str, reason: str | None = None) -> None:
        data: dict[str, Any] = {"point": point, "value": value, "result": result}
        if reason is not None:
            data["reason"] = reason
            log.warning("write %s.%s = %r %s: %s", device, point, value, result, reason)
        else:
            log.info("write %s.%s = %r", device, point, value)
        source = device if device in self.health else "agent"
        if source == "agent":
            data["device"] = device
        self.event(Event(source, "write", data, Severity.INFO if result == "ok" else Severity.WARNING))

    async def retry(self, device: str) -> dict[str, Any]:
        """``edge-agent retry``: probe one device at once, others untouched."""
        agent = self
        if device not in agent.health:
            raise DriverError(f"no device named {device!r} (devices: {', '.join(agent.health) or 'none'})")
        runner = agent.runners.get(device)
        if runner is None:
            raise DriverError(f"{device} is not polled (enabled: false in the site file)", device=device)
        finished = True
        try:
            await runner.retry()
        except TimeoutError:
            finished = False  # the probe is still running: answer with what is known now
        return {"ok": True, "finished": finished, "device": agent.snapshot()["devices"][device]}

    def device(self, name: str) -> DeviceConfig:
        for d in self.site.devices:
            if d.name == name:
                return d
        raise WriteRefused(f"no device named {name!r}")

    # ----------------------------------------------------------------------------------- running

    async def _flusher(self) -> None:
        interval = max(self.site.model.uplink.batch_interval, 0.05)
        next_flush = time.monotonic() + interval
        while True:
            self.flush_progress = time.monotonic()
            records: list[Record] = []
            try:
                async with asyncio.timeout(max(0.0, next_flush - time.monotonic())):
                    topic, body, ts = await self._events.get()
                    records.append(Record(Kind.EVENT, topic, body, ts))
            except TimeoutError:
                pass
            telemetry = time.monotonic() >= next_flush
            if telemetry:
                next_flush = time.monotonic() + interval
            records += self._pending(telemetry)
            if records or self._unstored:
                await self._append(records)

    def _pending(self, telemetry: bool) -> list[Record]:
        """Every queued event, and (when ``telemetry``) the pipeline's batches, as outbox records."""
        records = []
        while not self._events.empty():
            topic, body, ts = self._events.get_nowait()
            records.append(Record(Kind.EVENT, topic, body, ts))
        if telemetry:
            for device, body, ts in self.pipeline.drain():
                records.append(Record(Kind.TELEMETRY, self.topics.telemetry(device), body, ts))
        return records

    async def _append(self, records: list[Record]) -> None:
        """Commit to the outbox. If the store fails (disk full, I/O error), keep the records in memory, bounded
        (oldest telemetry dropped first, counted), and retry at the next flush."""
        batch = self._unstored + records
        self._unstored = []
        # A record that can never fit would make the outbox refuse the whole batch at every flush, and one
        # the broker refuses would be retried forever: both are dropped here, alone, and counted.
        limit = min(self.outbox.max_bytes // 4, self.site.model.uplink.max_message_bytes)
        fits = []
        for r in batch:
            if row_size(r.topic, r.body) <= limit:
                fits.append(r)
                continue
            self.oversize_dropped += 1
            log.error("dropping a %d-byte %s message to %s: larger than uplink.max_message_bytes or a "
                      "quarter of outbox.max_bytes", len(r.body), r.kind.name.lower(), r.topic)
        batch = fits
        if not batch:
            return
        try:
            await self.outbox.append(batch)
            if self.store_error:
                log.info("outbox writable again; %d held records stored", len(batch))
            self.store_error = None
        except EdgeAgentError as exc:
            # Keep running: devices keep their live state, status shows the problem.
            if self.store_error != str(exc):
                log.error("outbox: %s", exc)
            self.store_error = str(exc)
            while len(batch) > UNSTORED_MAX:
                victim = next((i for i, r in enumerate(batch) if r.kind == Kind.TELEMETRY), 0)
                batch.pop(victim)
                self.unstored_dropped += 1
            self._unstored = batch

    async def flush_now(self) -> None:
        """Move everything pending into the outbox (shutdown, tests)."""
        records = self._pending(telemetry=True)
        if records or self._unstored:
            await self._append(records)

    def summary(self) -> str:
        up = "uplink up" if self.uplink.state.connected else f"uplink {self.uplink.state.state}"
        online = sum(1 for h in self.health.values() if h.available)
        st = self.outbox.stats()
        return f"{up}; devices {online}/{len(self.health)} online; outbox {st.get('depth', 0)} queued"

    def alive(self) -> tuple[bool, str]:
        """Liveness for the watchdog: every part that should progress did so recently."""
        now = time.monotonic()
        flush_budget = max(self.site.model.uplink.batch_interval, 1.0) * 3 + 30.0
        if now - self.flush_progress > flush_budget:
            return False, "flusher stalled"
        publish_budget = self.site.model.uplink.publish_timeout * 3 + 30
        if self.uplink.connected.is_set() and now - self.uplink.progress > publish_budget:
            return False, "uplink publisher stalled"
        for name, r in self.runners.items():
            if now > r.deadline:
                return False, f"device loop {name} stalled"
        return True, ""

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        tick = interval / 2 if interval else 5.0
        last_status = ""
        while True:
            ok, why = self.alive()
            if ok:
                try:
                    async with asyncio.timeout(max(tick, 0.5)):
                        await self.outbox.ping()
                except TimeoutError:
                    ok, why = False, "outbox not responding"
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

    async def _ready(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_GRACE):
                await self.uplink.connected.wait()
        self.notifier.ready(self.summary())
        log.info("ready: %s", self.summary())

    def stats(self) -> dict[str, Any]:
        return {"outbox": self.outbox.stats()}

    async def run(self) -> None:
        """Run until ``stop_event`` is set; then shut down in bounded time."""
        self.site.state_dir.mkdir(parents=True, exist_ok=True)
        await self.outbox.open()
        # The alias map of this run travels in the outbox too (events go first), so that telemetry queued now
        # stays decodable even if it is only delivered after a later run has published another birth.
        await self._append([Record(Kind.EVENT, self.topics.birth, dumps(self.uplink.birth_doc()), time.time())])
        for p in self.site.problems:
            log.error("config: %s", p)
        # Device tasks live outside the task group: a driver that swallows cancellation must not be able to
        # hold shutdown hostage (the watchdog reports it; shutdown abandons it after DEVICE_STOP seconds).
        devices = [asyncio.create_task(r.run(), name=f"device:{n}") for n, r in self.runners.items()]
        try:
            await self.status_server.start()
            async with asyncio.TaskGroup() as tg:
                flusher = tg.create_task(self._flusher(), name="flusher")
                others = [
                    tg.create_task(self.uplink.run(), name="uplink"),
                    tg.create_task(self._watchdog(), name="watchdog"),
                    tg.create_task(self._ready(), name="ready"),
                    tg.create_task(self._reloader(), name="reloader"),
                ]
                await self.stop_event.wait()
                log.info("stopping: %s", self.summary())
                self.notifier.stopping()
                await self._stop_devices(devices)
                flusher.cancel()
                await self.flush_now()
                await self._drain_before_exit()
                await self.uplink.goodbye()
                for t in others:
                    t.cancel()
        finally:
            await self._stop_devices(devices)
            await self.status_server.stop()
            await self.outbox.close()

    async def _reloader(self) -> None:
        """SIGHUP: load the site file again. It is applied (clean stop, the caller re-execs) unless it would
        break something that works now: a problem in site/uplink/outbox, or a problem in the entry of a
        device that is running now. Otherwise the running configuration stays and the refusal is published
        with every located problem. Problems in entries of devices that are not running now don't block."""
        while True:
            await self.reload_event.wait()
            self.reload_event.clear()
            try:
                blocking, other = await asyncio.to_thread(self._check_reload)
            except EdgeAgentError as exc:
                blocking, other = [str(p) for p in getattr(exc, "problems", [])] or [str(exc)], []
            if blocking:
                for p in blocking:
                    log.error("reload refused: %s", p)
                self.event(Event("agent", "config", {"result": "refused", "problems": blocking[:50]},
                                 Severity.WARNING))
                continue
            for p in other:
                log.warning("reload: %s (that device stays off)", p)
            log.info("reload: configuration valid, restarting with it")
            self.notifier.send("RELOADING=1")
            self.restart = True
            self.stop_event.set()
            return

    def _check_reload(self) -> tuple[list[str], list[str]]:
        """(problems that block the reload, problems that only keep a not-running device off)."""
        from agent.config import load_site
        from agent.config.yamlloc import load_file

        new = load_site(self.site.file, strict=False)  # ConfigError for site-level problems
        entries = load_file(self.site.file).data.get("devices") or []
        running = {d.name for d in self.site.devices if d.name in self.runners}
        blocking: list[str] = []
        other: list[str] = []
        for p in new.problems:
            if p.file != str(self.site.file):  # a broken profile: devices using it show up as entries below
                other.append(str(p))
                continue
            name = None
            if p.key.startswith("devices[") and "]" in p.key:
                idx = int(p.key[len("devices["):p.key.index("]")])
                if 0 <= idx < len(entries) and isinstance(entries[idx], dict):
                    name = entries[idx].get("name")
            (blocking if name is None or name in running else other).append(str(p))
        return blocking, other

    async def _stop_devices(self, tasks: list[asyncio.Task[None]]) -> None:
        live = [t for t in tasks if not t.done()]
        for t in live:
            t.cancel()
        if live:
            _, pending = await asyncio.wait(live, timeout=DEVICE_STOP)
            for t in pending:
                if t.get_name() not in self.abandoned:
                    log.error("%s ignores cancellation; abandoned at shutdown", t.get_name())
                    self.abandoned.append(t.get_name())

    async def _drain_before_exit(self) -> None:
        if not self.uplink.connected.is_set():
            return
        deadline = time.monotonic() + SHUTDOWN_FLUSH
        while time.monotonic() < deadline:  # two conditions owned by other tasks: poll them
            if not self.outbox.stats().get("depth", 0) or not self.uplink.connected.is_set():
                break
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------------------------ status

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        up = self.uplink.state
        st = self.outbox.stats()
        oldest = st.get("oldest_ts")
        devices = {}
        for d in self.site.devices:
            h = self.health[d.name]
            pts = {}
            for name, ps in h.points.items():
                pts[name] = {
                    "value": ps.value, "unit": ps.unit, "quality": ps.quality.name.lower(),
                    "age": round(now - ps.ts, 1) if ps.ts else None,
                    "last_good_age": round(now - ps.last_good, 1) if ps.last_good else None,
                    "last_error": ps.last_error,
                    "last_error_age": round(now - ps.last_error_ts, 1) if ps.last_error_ts else None,
                }
            enabled = [p.name for p in d.enabled_points]
            good = sum(1 for n in enabled if n in h.points and h.points[n].quality == Quality.GOOD)
            devices[d.name] = {
                "type": d.type, "driver": d.driver, "state": h.state, "available": h.available,
                "enabled": d.model.enabled,
                "last_ok_age": round(now - h.last_ok, 1) if h.last_ok else None,
                "last_error": h.last_error, "consecutive_failures": h.consecutive_failures,
                "restarts": h.restarts, "cycle_ms": h.cycle_ms, "points_good": good, "points_total": len(enabled),
                "next_probe_in": round(max(0.0, h.next_probe - time.monotonic()), 1) if h.next_probe else None,
                "points": pts,
            }
        return {
            "agent": {"version": __version__, "pid": os.getpid(), "uptime": round(now - self.started, 1),
                      "site": self.site.id, "config": self.site.file,
                      "config_problems": [str(p) for p in self.site.problems]},
            "uplink": {"broker": f"{self.site.model.uplink.host}:{self.site.model.uplink.port}",
                       "state": up.state, "connected": up.connected, "since_age": round(now - up.since, 1),
                       "last_error": up.last_error, "connects": up.connects, "published": up.published,
                       "last_publish_age": round(now - up.last_publish, 1) if up.last_publish else None},
            "outbox": {**st, "oldest_age": round(now - oldest, 1) if oldest else None,
                       "store_error": self.store_error, "events_dropped_queue": self.events_dropped,
                       "held_in_memory": len(self._unstored), "dropped_unstored": self.unstored_dropped,
                       "dropped_oversize": self.oversize_dropped},
            "pipeline": {"offered": self.pipeline.offered, "reported": self.pipeline.reported,
                         "gen": self.pipeline.gen},
            "devices": devices,
        }


def install_signal_handlers(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, agent.reload_event.set)
