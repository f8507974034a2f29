"""Prometheus metrics of the agent (docs/observability.md), built with ``prometheus_client``.

Two sources feed one registry: instruments updated as things happen (poll cycle durations, requests per cycle,
errors by kind, PUBACK latency, bytes sent, events by kind), and a collector that reads the agent's status
snapshot at scrape time (device states, points, outbox, uplink, configuration). Label sets are bounded: device
names, a fixed list of states, error kinds and drop kinds; never point names, so a device with 200 points costs
the same series as one with 2.
"""

from __future__ import annotations

import hashlib
import math
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from agent import __version__
from agent.model import Quality, Sample

STATES = ("starting", "online", "failing", "offline", "backoff", "disabled")
# Error kinds: the driver error codes (agent/errors.py) and what the supervisor adds; anything else is "other".
ERROR_KINDS = frozenset({"unreachable", "timeout", "protocol", "busy", "unavailable", "driver", "exception",
                         "internal", "crash", "no_value"})
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PUBACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EVENT_KINDS_MAX = 32  # event kinds are a small fixed vocabulary; past this many, further kinds count as "other"


def error_kind(text: str | None) -> str:
    """A bounded label for an error text: ``"timeout: no answer"`` → timeout, ``"exception 2"`` → exception,
    ``"internal error: ..."`` → internal; unknown words → other."""
    if not text:
        return "no_value"
    word = text.strip().split(":", 1)[0].split(" ", 1)[0].lower()
    return word if word in ERROR_KINDS else "other"


def config_version(path: str | Path) -> str:
    """The first 12 hex digits of the site file's SHA-256: which configuration a box runs, comparable across
    a fleet; "unreadable" if the file cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "unreadable"


class Metrics:
    """The agent's metric registry. The agent calls the ``on_*`` hooks; a scrape reads ``snapshot()``."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], config_version: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.cycle = Histogram("edge_agent_device_cycle_duration_seconds",
                               "Duration of one poll cycle of a device (all its requests)", ["device"],
                               buckets=CYCLE_BUCKETS, registry=r)
        self.requests = Histogram("edge_agent_device_requests_per_cycle",
                                  "Protocol requests sent in one poll cycle", ["device"],
                                  buckets=REQUEST_BUCKETS, registry=r)
        self.errors = Counter("edge_agent_device_errors", "Failed cycles and point read errors, by kind",
                              ["device", "kind"], registry=r)
        self.puback = Histogram("edge_agent_uplink_puback_latency_seconds",
                                "Time from handing a QoS 1 publish to the client until the broker's PUBACK",
                                buckets=PUBACK_BUCKETS, registry=r)
        self.sent = Counter("edge_agent_uplink_sent_bytes", "Payload bytes acknowledged by the broker",
                            registry=r)
        self.events = Counter("edge_agent_events", "Events raised, by kind", ["kind"], registry=r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(SnapshotCollector(snapshot, config_version))
        self._event_kinds: set[str] = set()
        self._per_device: dict[str, tuple[Any, Any]] = {}  # device -> (cycle, requests) histogram children

    # ---------------------------------------------------------------------------------------------- hooks

    def on_cycle(self, device: str, seconds: float, requests: int | None, samples: Sequence[Sample]) -> None:
        children = self._per_device.get(device)
        if children is None:  # labels() per cycle was ~2 % of the agent's CPU (bench/site_poll.py)
            children = self._per_device[device] = (self.cycle.labels(device), self.requests.labels(device))
        children[0].observe(seconds)
        if requests is not None:
            children[1].observe(requests)
        error = Quality.ERROR
        for s in samples:
            if s.quality == error:
                self.errors.labels(device, error_kind(s.error)).inc()

    def on_failure(self, device: str, reason: str) -> None:
        self.errors.labels(device, error_kind(reason)).inc()

    def on_puback(self, seconds: float, nbytes: int) -> None:
        self.puback.observe(seconds)
        self.sent.inc(nbytes)

    def on_event(self, kind: str) -> None:
        if kind not in self._event_kinds:
            if len(self._event_kinds) >= EVENT_KINDS_MAX:
                kind = "other"
            self._event_kinds.add(kind)
        self.events.labels(kind).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format, as served on /metrics and written to the textfile."""
        return generate_latest(self.registry)


def _age(v: Any) -> float:
    return float(v) if isinstance(v, int | float) else math.nan


class SnapshotCollector(Collector):
    """Reads the status snapshot (the same figures as ``edge-agent status --json``) at each scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], config_version: str) -> None:
        self.snapshot = snapshot
        self.config_version = config_version

    def describe(self) -> Iterable[Metric]:
        return []  # the agent may not be complete when the registry is built: nothing is read before a scrape

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        yield from self._agent(snap)
        yield from self._devices(snap.get("devices", {}))
        yield from self._outbox(snap.get("outbox", {}))
        yield from self._uplink(snap.get("uplink", {}))

    def _agent(self, snap: dict[str, Any]) -> Iterable[Metric]:
        a = snap.get("agent", {})
        info = InfoMetricFamily("edge_agent_build", "Agent and Python versions")
        info.add_metric([], {"version": __version__, "python": platform.python_version(),
                             "implementation": sys.implementation.name})
        yield info
        cfg = InfoMetricFamily("edge_agent_config", "Configuration in use: site id and site file hash")
        cfg.add_metric([], {"site": str(a.get("site", "")), "version": self.config_version})
        yield cfg
        p = snap.get("pipeline", {})
        yield GaugeMetricFamily("edge_agent_config_generation",
                                "Alias map generation announced in the birth message", value=p.get("gen", 0))
        yield GaugeMetricFamily("edge_agent_config_problems", "Problems found in the configuration (devices "
                                "skipped, broken profiles)", value=len(a.get("config_problems", [])))
        yield GaugeMetricFamily("edge_agent_uptime_seconds", "Seconds since the agent started",
                                value=a.get("uptime", 0.0))
        yield CounterMetricFamily("edge_agent_samples_offered", "Samples read from devices",
                                  value=p.get("offered", 0))
        yield CounterMetricFamily("edge_agent_samples_reported", "Samples reported upstream after report-by-"
                                  "exception", value=p.get("reported", 0))

    def _devices(self, devices: dict[str, Any]) -> Iterable[Metric]:
        state = GaugeMetricFamily("edge_agent_device_state", "1 for the state the device is in",
                                  labels=["device", "state"])
        up = GaugeMetricFamily("edge_agent_device_up", "1 when the device is online", labels=["device"])
        good = GaugeMetricFamily("edge_agent_device_points_good", "Enabled points whose latest value is good",
                                 labels=["device"])
        total = GaugeMetricFamily("edge_agent_device_points", "Enabled points", labels=["device"])
        age = GaugeMetricFamily("edge_agent_device_last_success_age_seconds",
                                "Seconds since the last answered cycle (NaN: never)", labels=["device"])
        fails = GaugeMetricFamily("edge_agent_device_consecutive_failures",
                                  "Failed attempts since the last success", labels=["device"])
        restarts = CounterMetricFamily("edge_agent_device_restarts", "Driver crashes (restart budget spent)",
                                       labels=["device"])
        for name, d in devices.items():
            for s in STATES:
                state.add_metric([name, s], 1.0 if d.get("state") == s else 0.0)
            up.add_metric([name], 1.0 if d.get("available") else 0.0)
            good.add_metric([name], d.get("points_good", 0))
            total.add_metric([name], d.get("points_total", 0))
            age.add_metric([name], _age(d.get("last_ok_age")))
            fails.add_metric([name], d.get("consecutive_failures", 0))
            restarts.add_metric([name], d.get("restarts", 0))
        yield from (state, up, good, total, age, fails, restarts)

    def _outbox(self, o: dict[str, Any]) -> Iterable[Metric]:
        yield GaugeMetricFamily("edge_agent_outbox_backlog_messages", "Messages waiting for a PUBACK",
                                value=o.get("depth", 0))
        yield GaugeMetricFamily("edge_agent_outbox_backlog_bytes", "Bytes of the waiting messages",
                                value=o.get("bytes", 0))
        yield GaugeMetricFamily("edge_agent_outbox_max_bytes", "Disk budget of the outbox (outbox.max_bytes)",
                                value=o.get("max_bytes", 0))
        yield GaugeMetricFamily("edge_agent_outbox_oldest_age_seconds",
                                "Age of the oldest waiting message (0: empty)", value=o.get("oldest_age") or 0.0)
        yield GaugeMetricFamily("edge_agent_outbox_held_in_memory_messages",
                                "Messages held in memory while the outbox cannot be written",
                                value=o.get("held_in_memory", 0))
        yield GaugeMetricFamily("edge_agent_outbox_store_ok", "0 while the outbox file cannot be written",
                                value=0.0 if o.get("store_error") else 1.0)
        drops = CounterMetricFamily("edge_agent_outbox_dropped_messages",
                                    "Messages dropped, by kind: telemetry/event (outbox full), unstored (store "
                                    "failing), oversize, event_queue (events faster than the flusher)",
                                    labels=["kind"])
        for kind, key in (("telemetry", "dropped_telemetry"), ("event", "dropped_events"),
                          ("unstored", "dropped_unstored"), ("oversize", "dropped_oversize"),
                          ("event_queue", "events_dropped_queue")):
            drops.add_metric([kind], o.get(key, 0))
        yield drops

    def _uplink(self, u: dict[str, Any]) -> Iterable[Metric]:
        yield GaugeMetricFamily("edge_agent_uplink_connected", "1 while connected to the broker",
                                value=1.0 if u.get("connected") else 0.0)
        connects = int(u.get("connects", 0))
        yield CounterMetricFamily("edge_agent_uplink_connects", "Successful connections", value=connects)
        yield CounterMetricFamily("edge_agent_uplink_reconnects", "Connections after the first",
                                  value=max(0, connects - 1))
        yield CounterMetricFamily("edge_agent_uplink_published_messages", "Messages acknowledged by the broker",
                                  value=u.get("published", 0))
        yield GaugeMetricFamily("edge_agent_uplink_last_publish_age_seconds",
                                "Seconds since the last PUBACK (NaN: none yet)", value=_age(u.get("last_publish_age")))
