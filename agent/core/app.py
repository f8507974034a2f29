"""The agent: one task tree holding the outbox, the flusher, the uplink, one runner per device, the status
socket, the watchdog and the reloader. This module only wires them; each has its own type:

- ``Flusher`` (flusher.py): pipeline and events into the outbox, a failing store held in memory;
- ``CommandChannel`` (commanding.py): commands from upstream and their acks;
- ``Writer`` (writing.py): writes through the running agent, each one an audit event;
- ``Reloader`` (reload.py): configuration problems at start-up, SIGHUP;
- ``Liveness`` (liveness.py): READY, WATCHDOG and STATUS for systemd;
- ``snapshot`` (snapshot.py): what ``edge-agent status`` shows.

Start-up order: outbox open → status socket → uplink (connecting) → devices. READY=1 is sent when the uplink
is connected, or after ``READY_GRACE`` seconds without a broker: a box that boots while the fibre is down must
still collect into its outbox rather than be killed by systemd's start timeout and restarted in a loop.
Shutdown (SIGTERM/SIGINT): stop polling, move what the pipeline holds into the outbox, give the uplink
``SHUTDOWN_FLUSH`` seconds to drain, say offline, close the outbox. Exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

from agent.config import Site
from agent.contract.device import DeviceConfig
from agent.contract.driver import DriverContext
from agent.core.commanding import CommandChannel
from agent.core.configstore import BASE
from agent.core.doors import DoorGate
from agent.core.flusher import Flusher
from agent.core.liveness import Liveness
from agent.core.notify import Notifier
from agent.core.pipeline import Pipeline
from agent.core.pushing import Pusher
from agent.core.reload import Reloader
from agent.core.remoteops import Hooks, RemoteOps
from agent.core.snapshot import snapshot
from agent.core.status import StatusServer
from agent.core.supervisor import DeviceRunner
from agent.core.watching import Watcher
from agent.core.writing import Writer
from agent.errors import DriverError
from agent.model import DeviceHealth, Event, Sample, Severity, Value
from agent.obs.metrics import Metrics, config_version
from agent.obs.serve import MetricsServer
from agent.outbox import Kind, Outbox, Record
from agent.uplink import intake
from agent.uplink.codec import dumps
from agent.uplink.mqtt import Uplink
from agent.uplink.topics import Topics

log = logging.getLogger("edge_agent")

SHUTDOWN_FLUSH = 5.0
DEVICE_STOP = 3.0
SNAPSHOT_TIMEOUT = 30.0  # one snapshot command: fetch, downscale


class Agent:
    def __init__(self, site: Site, notifier: Notifier | None = None, *, version: str = BASE,
                 base_file: str | None = None) -> None:
        self.site = site
        self.notifier = notifier or Notifier()
        self.started = time.time()
        self.topics = Topics(site.model.uplink.topic_prefix, site.id)
        self.outbox = Outbox(site.state_dir / "outbox.sqlite", site.model.outbox.max_bytes, site.model.outbox.sync)
        self.pipeline = Pipeline(site.devices, site.model.pipeline.max_silence)
        self.ctx = DriverContext(site.id, site.state_dir, self.stats)
        self.health: dict[str, DeviceHealth] = {}
        self.runners: dict[str, DeviceRunner] = {}
        for d in site.devices:
            h = DeviceHealth()
            h.points = self.pipeline.channels[d.name].live
            self.health[d.name] = h
            if not d.model.enabled:
                h.state = "disabled"
                continue
            self.runners[d.name] = DeviceRunner(d, self.ctx, self, h)
        self.flusher = Flusher(site, self.outbox, self.pipeline, self.topics, self._report_store_incident)
        self.uplink = Uplink(site.model.uplink, site.secrets, self.topics, self.outbox, self._birth,
                             self.handle_command, on_reset=self.pipeline.forget)
        self.metrics = Metrics(self.snapshot, config_version(site.file))
        mc = site.model.metrics
        self.metrics_server = MetricsServer(self.metrics, mc.listen, mc.textfile, mc.textfile_interval)
        self.uplink.on_puback = self.metrics.on_puback
        for r in self.runners.values():
            r.on_cycle, r.on_failure = self.metrics.on_cycle, self.metrics.on_failure
        budget = min(site.model.uplink.max_message_bytes, site.model.outbox.max_bytes // 4) - 1024
        self.remote = RemoteOps(site, Hooks(self.write, self.retry, self._remote_reload, self.snapshot, self.event,
                                            self._push), budget)
        self.commands = CommandChannel(self.topics, self.uplink, self.pipeline, self.flusher.queue, self.started,
                                       self._snapshot_command, self.remote)
        self.pusher = Pusher(site, version, Path(base_file or site.file), self.health,
                             self.uplink.connected.is_set, self.commands.ack, self.event, self._apply_reload,
                             self.flush_now)
        self.uplink.status_extra = {"config": self.pusher.running, "config_hash": self.pusher.hash}
        self.commands.chunks = self.pusher.chunks
        self.remote.hooks.send = lambda doc: self.flusher.queue(self.topics.ack, dumps(doc), time.time())
        self.remote.hooks.config = self.pusher.info
        self.gate = self.commands.gate
        self.writer = Writer(site.devices, self.runners, self.health, self.event)
        self.doors = DoorGate(site.devices, self.runners, self.health, self.event, site.model.site.timezone)
        self.remote.hooks.door = lambda dev, door, cmd, by: self.doors.run(dev, door, cmd, by=by, via="remote")
        self.reloader = Reloader(site, self._running, self.event, self.notifier, self._apply_local_edit)
        self.reload_event = self.reloader.requested
        self.watcher = Watcher(site, self.reload_event.set)
        self.reloader.before_check = self.watcher.mark_checked
        self.liveness = Liveness(site, self.notifier, self.flusher, self.uplink, self.outbox, self.runners,
                                 self.health)
        self.stop_event = asyncio.Event()
        self.status_server = StatusServer(site.socket_path, self)
        self.abandoned: list[str] = []  # tasks that ignored cancellation at shutdown
        self.restart = False  # set when a valid new configuration asks for a re-exec

    # ------------------------------------------------------------------------------ Sink (drivers)

    def samples(self, device: str, samples: list[Sample] | Any) -> None:
        self.pipeline.offer(device, samples)

    def event(self, event: Event) -> None:
        self.metrics.on_event(event.kind)
        body = dumps({"ts": round(event.ts, 3), "src": event.source, "kind": event.kind,
                      "sev": event.severity.name.lower(), "data": event.data})
        self.flusher.queue(self.topics.event(event.source), body, event.ts)

    def picture(self, device: str, ref: str, jpeg: bytes, retain: bool = False) -> None:
        self.flusher.queue(self.topics.snapshot(device, ref), jpeg, time.time())
        if retain:  # the camera's last picture, kept by the broker for late subscribers (docs/mqtt.md)
            self.flusher.queue(self.topics.last_picture(device), jpeg, time.time())

    def points_changed(self, device: str) -> None:
        ch = self.pipeline.channels.get(device)
        if ch is not None and ch.refresh() and self.pipeline.regen():
            # A new generation (``gen`` covers units too): its map goes through the outbox ahead of the telemetry
            # encoded with it (events first), and is published retained at once for newcomers.
            self.flusher.queue(self.topics.birth, dumps(self.uplink.birth_doc()), time.time())
            self.uplink.rebirth(urgent=True)

    # ---------------------------------------------------------------- status socket (StatusBackend)

    async def handle_command(self, payload: bytes) -> None:
        await self.commands.handle(payload)

    async def write(self, device: str, point: str, value: Value) -> Value:
        return await self.writer.write(device, point, value)

    def device(self, name: str) -> DeviceConfig:
        return self.writer.device(name)

    async def retry(self, device: str) -> dict[str, Any]:
        """``edge-agent retry``: probe one device at once, others untouched."""
        if device not in self.health:
            raise DriverError(f"no device named {device!r} (devices: {', '.join(self.health) or 'none'})")
        runner = self.runners.get(device)
        if runner is None:
            raise DriverError(f"{device} is not polled (enabled: false in the site file)", device=device)
        finished = True
        try:
            await runner.retry()
        except TimeoutError:
            finished = False  # the probe is still running: answer with what is known now
        return {"ok": True, "finished": finished, "device": self.snapshot()["devices"][device]}

    async def door(self, device: str, door: str, command: str, by: str) -> dict[str, Any]:
        """``edge-agent door``: the same gate as the signed ``door`` command (policy, audit)."""
        return await self.doors.run(device, door, command, by=by, via="local")

    def plan(self, device: str) -> list[dict[str, Any]] | None:
        """The running driver's plan: the device's limits as it answered, splits learned at run time."""
        self.device(device)
        runner = self.runners.get(device)
        driver = runner.driver if runner is not None else None
        if driver is None:
            raise DriverError(f"{device} is not running (state {self.health[device].state})", device=device)
        return driver.plan()

    async def _snapshot_command(self, name: Any) -> dict[str, Any]:
        """A camera picture now, on its own topic; the ack says where (docs/mqtt.md)."""
        runner = self.runners.get(name) if isinstance(name, str) else None
        driver = runner.driver if runner is not None else None
        take = getattr(driver, "snapshot", None)
        if take is None:
            raise intake.CommandRefused(f"no running camera named {str(name)[:64]!r}", None, "snapshot")
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                ref, jpeg = await take()
        except (DriverError, TimeoutError) as exc:
            raise intake.CommandRefused(f"snapshot of {name}: {exc or 'no answer'}"[:200], None, "snapshot") from None
        self.picture(name, ref, jpeg, retain=bool(getattr(driver, "retain_pictures", False)))
        return {"device": name, "ref": ref, "bytes": len(jpeg), "topic": self.topics.snapshot(name, ref)}

    def snapshot(self) -> dict[str, Any]:
        return {**snapshot(self.site, self.started, self.health, self.uplink, self.outbox, self.flusher,
                           self.commands, self.pipeline), "config": self.pusher.info()}

    def _birth(self) -> dict[str, Any]:
        """The alias map, and the configuration version that runs (docs/remote.md)."""
        return {**self.pipeline.birth(), "config": self.pusher.running}

    async def _push(self, s: Any) -> dict[str, Any]:
        return await self.pusher.push(s)

    def stats(self) -> dict[str, Any]:
        return {"outbox": self.outbox.stats()}

    @property
    def store_error(self) -> str | None:
        return self.flusher.store_error

    def summary(self) -> str:
        return self.liveness.summary()

    def alive(self) -> tuple[bool, str]:
        return self.liveness.alive()

    async def flush_now(self) -> None:
        await self.flusher.flush_now()

    # ----------------------------------------------------------------------------------- running

    async def run(self) -> None:
        """Run until ``stop_event`` is set; then shut down in bounded time."""
        with contextlib.suppress(OSError):  # a full disk: the outbox says so below, clearly
            self.site.state_dir.mkdir(parents=True, exist_ok=True)
        await self.flusher.open_outbox()
        # The alias map of this run travels in the outbox too (events go first), so that telemetry queued now
        # stays decodable even if it is only delivered after a later run has published another birth.
        await self.flusher.append([Record(Kind.EVENT, self.topics.birth, dumps(self.uplink.birth_doc()),
                                          time.time())])
        self.reloader.announce_problems()
        if self.site.model.uplink.cleartext_credentials:
            log.warning("uplink: credentials are sent in cleartext to %s (uplink.allow_insecure: true)",
                        self.site.model.uplink.host)
        # Device tasks live outside the task group: a driver that swallows cancellation must not be able to
        # hold shutdown hostage (the watchdog reports it; shutdown abandons it after DEVICE_STOP seconds).
        devices = [asyncio.create_task(r.run(), name=f"device:{n}") for n, r in self.runners.items()]
        self.remote.attach_log()
        try:
            await self.status_server.start()
            await self.metrics_server.start()
            async with asyncio.TaskGroup() as tg:
                flusher = tg.create_task(self.flusher.run(), name="flusher")
                others = [
                    tg.create_task(self.uplink.run(), name="uplink"),
                    tg.create_task(self.liveness.watchdog(), name="watchdog"),
                    tg.create_task(self.liveness.ready(), name="ready"),
                    tg.create_task(self.reloader.run(), name="reloader"),
                    tg.create_task(self.pusher.resume(), name="config:gate"),
                    tg.create_task(self.watcher.run(), name="config:watch"),
                ]
                if self.metrics_server.textfile is not None:
                    others.append(tg.create_task(self.metrics_server.run_textfile(), name="metrics:textfile"))
                await self.stop_event.wait()
                log.info("stopping: %s", self.summary())
                if not self.restart:
                    # Not for a re-exec (reload, pushed version): the same PID goes on, and systemd would take
                    # STOPPING=1 as the service stopping and kill it 30 s later (TimeoutStopSec=).
                    self.notifier.stopping()
                await self._stop_devices(devices)
                flusher.cancel()
                await self.flusher.flush_now()
                await self._drain_before_exit()
                await self.uplink.goodbye()
                for t in others:
                    t.cancel()
        finally:
            self.remote.detach_log()
            await self._stop_devices(devices)
            await self.status_server.stop()
            await self.metrics_server.stop()
            if self.outbox.is_open:  # events that came during the drain (acks, logs) or a store left in flight
                await self.flusher.flush_now()
            if self.flusher.unstored:
                log.error("%d records held in memory could not be stored (%s) and are lost at exit",
                          len(self.flusher.unstored), self.flusher.store_error)
            await self.outbox.close()

    def _report_store_incident(self) -> None:
        """The outbox restarted its sequence space (new, emptied or damaged file...): say it upstream, with
        what is known of the loss (docs/mqtt.md, event kind ``store``)."""
        inc = self.outbox.incident
        if inc is not None:
            sev = Severity.WARNING if inc.result in ("fresh", "unproven") and inc.lost == 0 else Severity.ALARM
            self.event(Event("agent", "store", inc.doc(), sev))

    def _remote_reload(self) -> None:
        self.reload_event.set()

    def _running(self) -> set[str]:
        return {d.name for d in self.site.devices if d.name in self.runners}

    def _apply_reload(self) -> None:
        self.restart = True
        self.stop_event.set()

    def _apply_local_edit(self) -> None:
        """A reload (saved edit or SIGHUP) of the provisioned files: held to the push health gate, with what
        ran before kept as a version to fall back to (docs/remote.md)."""
        if self.pusher.running == BASE and self.pusher.store.read_json("trial.json") is None:
            try:
                if self.watcher.changed_since_start():
                    self.pusher.local_trial(self.watcher.before())
            except OSError as exc:
                log.error("config: cannot keep the configuration before the edit (%s): applied without a gate", exc)
        self._apply_reload()

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


def install_signal_handlers(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, agent.reload_event.set)
