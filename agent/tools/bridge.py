"""``edge-agent bridge``: republish a site's ``ea1`` telemetry as plain JSON, one topic per device, for
consumers without a decoder (Telegraf ``mqtt_consumer`` with ``json_v2``, Node-RED, Home Assistant).

In: ``PREFIX/SITE/birth`` (alias maps, kept per site and generation as docs/mqtt.md requires) and
``PREFIX/SITE/t/DEVICE``. Out: ``OUT/SITE/DEVICE`` with ``{"ts": …, "point": value, …}`` (one message per
timestamp of the incoming message; ``"quality"``/``"error"`` objects only for points not good) and, retained,
``OUT/SITE/DEVICE/meta`` with the generation, device type and the unit of each point.

Duplicates (the agent is at-least-once) are dropped by ``(site, seq)``. Telemetry whose birth has not been
seen yet waits, bounded, for it. The subscription is a persistent session (fixed client id, clean session
off), so messages published while the bridge restarts are delivered when it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import aiomqtt

from agent.tools.helptext import epilog
from agent.tools.monitor import Decoder
from agent.uplink.codec import decode_telemetry, dumps

log = logging.getLogger("edge_agent.bridge")

SEEN_WINDOW = 100_000  # seqs remembered per site for duplicate detection
PENDING_MAX = 10_000  # telemetry messages waiting for their birth, per site
Out = tuple[str, bytes, bool]  # topic, payload, retain


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bridge", help="republish a site's telemetry as plain JSON per device (Telegraf, Node-RED, HA)",
        description="Subscribe to the agent's births and ea1 telemetry on a broker and republish every sample as "
                    "plain JSON on OUT/SITE/DEVICE ({\"ts\": ..., \"point\": value, ...}), with each point's unit "
                    "in a retained OUT/SITE/DEVICE/meta message. Duplicates are dropped by sequence number. Runs "
                    "until stopped; meant as a sidecar next to the operator's broker.",
        epilog=epilog(["edge-agent bridge --broker mqtt://127.0.0.1:1883 --site + --out-prefix ea-json",
                       "edge-agent bridge --broker mqtt://broker:1883 --site townhall-7 --out-prefix json "
                       "--out-broker mqtt://127.0.0.1:1883"],
                      {0: "stopped (Ctrl-C, SIGTERM or --count reached)",
                       1: "cannot reach or talk to the broker at start"}))
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="where the agent publishes (mqtt://host:port)")
    p.add_argument("--prefix", default="ea/v1", help="topic prefix of the agent (default: %(default)s)")
    p.add_argument("--site", default="+", help="site id, or + for every site (default: +)")
    p.add_argument("--out-prefix", default="ea-json", help="first levels of the JSON topics (default: %(default)s)")
    p.add_argument("--out-broker", help="publish the JSON to this broker instead (default: the same broker)")
    p.add_argument("--client-id", help="MQTT client id of the persistent session (default: edge-agent-bridge-HOST)")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N JSON messages (0: never)")
    p.set_defaults(func=cmd_bridge)


@dataclass
class Stats:
    received: int = 0
    published: int = 0
    duplicates: int = 0
    undecodable: int = 0
    pending_dropped: int = 0


@dataclass
class Bridge:
    """The translation, without I/O: MQTT message in, JSON messages out."""

    prefix: str
    out_prefix: str
    decoder: Decoder = field(default_factory=Decoder)
    stats: Stats = field(default_factory=Stats)
    seen: dict[str, OrderedDict[int, None]] = field(default_factory=lambda: defaultdict(OrderedDict))
    pending: dict[str, deque[tuple[str, bytes]]] = field(default_factory=lambda: defaultdict(deque))
    births: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> latest birth document
    waiting: set[tuple[str, int]] = field(default_factory=set)  # (site, gen) already said to be waiting

    def handle(self, topic: str, payload: bytes) -> list[Out]:
        self.stats.received += 1
        if not topic.startswith(self.prefix + "/"):
            return []
        parts = topic[len(self.prefix) + 1:].split("/")
        if len(parts) == 2 and parts[1] == "birth":
            return self._birth(parts[0], payload)
        if len(parts) == 3 and parts[1] == "t":
            return self._telemetry(parts[0], parts[2], payload)
        return []

    def _birth(self, site: str, payload: bytes) -> list[Out]:
        try:
            doc = json.loads(payload)
            self.decoder.birth(site, doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.stats.undecodable += 1
            log.warning("%s: undecodable birth: %s", site, exc)
            return []
        gen = int(doc["gen"])
        out: list[Out] = []
        last = self.births.get(site, {})
        # A birth of an older configuration replayed from the agent's outbox decodes its telemetry but does not
        # replace the newer units in the retained meta messages.
        if last.get("gen") != gen and float(doc.get("ts") or 0) >= float(last.get("ts") or 0):
            log.info("%s: birth gen %d, %d device(s)", site, gen, len(doc.get("devices", {})))
            self.births[site] = doc
            for dev, d in doc.get("devices", {}).items():
                meta = {"gen": gen, "type": d.get("type"), "units": {p["n"]: p.get("u") for p in d["points"]}}
                out.append((f"{self.out_prefix}/{site}/{dev}/meta", dumps(meta), True))
        waiting, self.pending[site] = self.pending[site], deque()
        for device, body in waiting:
            out += self._telemetry(site, device, body)
        return out

    def _telemetry(self, site: str, device: str, payload: bytes) -> list[Out]:
        try:
            d = decode_telemetry(payload)
        except ValueError as exc:
            self.stats.undecodable += 1
            log.warning("%s/%s: undecodable telemetry: %s", site, device, exc)
            return []
        seen = self.seen[site]
        if d.seq in seen:
            self.stats.duplicates += 1
            return []
        amap = self.decoder.maps.get((site, d.gen), {}).get(device)
        if amap is None:
            if (site, d.gen) not in self.waiting:
                self.waiting.add((site, d.gen))
                log.warning("%s: telemetry of generation %d before its birth: held until the birth arrives",
                            site, d.gen)
            q = self.pending[site]
            q.append((device, payload))
            if len(q) > PENDING_MAX:
                q.popleft()
                self.stats.pending_dropped += 1
                log.warning("%s: telemetry of an unknown generation dropped (no birth for it)", site)
            return []
        seen[d.seq] = None
        if len(seen) > SEEN_WINDOW:
            seen.popitem(last=False)
        return [(f"{self.out_prefix}/{site}/{device}", dumps(doc), False) for doc in _documents(d.samples, amap)]


def _documents(samples: Iterable[tuple[int, float, Any, Any, str | None]],
               amap: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON object per timestamp: ``{"ts", point: value, ..., "quality": {...}, "error": {...}}``."""
    docs: dict[float, dict[str, Any]] = {}
    for alias, ts, value, quality, err in samples:
        p = amap.get(alias)
        name = p["n"] if p else f"#{alias}"
        doc = docs.get(ts)
        if doc is None or name in doc:  # a second sample of a point at the same ts: its own message
            doc = docs[ts] = {"ts": ts} if doc is None else doc
        doc[name] = value
        q = quality.name.lower()
        if q != "good":
            doc.setdefault("quality", {})[name] = q
        if err:
            doc.setdefault("error", {})[name] = err
    return list(docs.values())


def _client(url: str, identifier: str, clean: bool) -> aiomqtt.Client:
    u = urlparse(url)
    return aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883, identifier=identifier, clean_session=clean,
                          timeout=10)


async def run_bridge(args: argparse.Namespace) -> int:
    bridge = Bridge(args.prefix, args.out_prefix)
    ident = args.client_id or f"edge-agent-bridge-{socket.gethostname()}"
    first = True
    backoff = 1.0
    while True:
        try:
            async with _client(args.broker, ident, clean=False) as inp:
                out = _client(args.out_broker, ident + "-out", clean=True) if args.out_broker else None
                async with out if out is not None else contextlib.nullcontext():
                    pub = out or inp
                    base = f"{args.prefix}/{args.site}"
                    await inp.subscribe([(f"{base}/birth", 1), (f"{base}/t/+", 1)])
                    print(f"bridge: subscribed to {args.prefix}/{args.site}/{{birth,t/+}} on {args.broker}; "
                          f"publishing {args.out_prefix}/SITE/DEVICE", file=sys.stderr, flush=True)
                    first, backoff = False, 1.0
                    async for msg in inp.messages:
                        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload or "").encode()
                        for topic, body, retain in bridge.handle(str(msg.topic), payload):
                            await pub.publish(topic, body, qos=1, retain=retain)
                            if not retain:
                                bridge.stats.published += 1
                                if args.count and bridge.stats.published >= args.count:
                                    return 0
        except aiomqtt.MqttError as exc:
            if first:
                print(f"bridge: cannot reach {args.broker}: {exc}", file=sys.stderr)
                return 1
            log.warning("broker lost (%s); reconnecting", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


async def _main(args: argparse.Namespace) -> int:
    """SIGTERM and SIGINT end the bridge cleanly (exit 0), as systemd and Ctrl-C expect."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await run_bridge(args)
    except asyncio.CancelledError:
        return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="bridge: %(message)s", stream=sys.stderr)
    return asyncio.run(_main(args))
