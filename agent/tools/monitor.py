"""``edge-agent monitor``: subscribe to a site's topics and print decoded messages (demo, field checks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiomqtt

from agent.config import Site
from agent.uplink.codec import decode_telemetry
from agent.uplink.mqtt import build_tls_context, client_tls_context

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
SCHEMES = ("mqtt", "mqtts", "tcp", "ssl")


class Decoder:
    """Keeps the alias maps of every birth seen, by site and generation."""

    def __init__(self) -> None:
        self.maps: dict[tuple[str, int], dict[str, dict[int, dict[str, Any]]]] = {}

    def birth(self, site: str, doc: dict[str, Any]) -> None:
        gen = int(doc["gen"])
        self.maps[(site, gen)] = {
            dev: {int(p["a"]): p for p in d["points"]} for dev, d in doc.get("devices", {}).items()
        }

    def telemetry(self, site: str, device: str, payload: bytes) -> dict[str, Any]:
        d = decode_telemetry(payload)
        amap = self.maps.get((site, d.gen), {}).get(device)
        samples = []
        for alias, ts, value, q, err in d.samples:
            p = amap.get(alias) if amap else None
            samples.append({"point": p["n"] if p else f"#{alias}", "value": value,
                            "unit": p.get("u") if p else None, "quality": q.name.lower(), "ts": ts,
                            **({"error": err} if err else {})})
        return {"seq": d.seq, "gen": d.gen, "known_gen": amap is not None, "samples": samples}


def handle(dec: Decoder, topic: str, payload: bytes, prefix: str) -> dict[str, Any]:
    rest = topic[len(prefix) + 1:].split("/") if topic.startswith(prefix + "/") else topic.split("/")
    site = rest[0]
    kind = rest[1] if len(rest) > 1 else ""
    out: dict[str, Any] = {"topic": topic, "site": site, "kind": kind, "bytes": len(payload)}
    try:
        if kind == "s" and len(rest) > 3:  # a camera picture: JPEG bytes, not JSON
            out["device"], out["ref"] = rest[2], rest[3]
        elif kind == "t" and len(rest) > 2:
            out["device"] = rest[2]
            out.update(dec.telemetry(site, rest[2], payload))
        else:
            doc = json.loads(payload) if payload else None
            if kind == "birth" and isinstance(doc, dict):
                dec.birth(site, doc)
            out["doc"] = doc
    except (ValueError, KeyError, RecursionError) as exc:
        out["error"] = f"undecodable: {str(exc)[:200]}"
    return out


HOLD_SECONDS = 5.0  # how long telemetry of a generation not seen yet waits for its birth


class Holder:
    """Telemetry that arrives before the birth of its generation (the broker may send a live message before the
    retained birth when the monitor subscribes) waits up to ``HOLD_SECONDS`` for that birth and is then printed
    decoded, instead of at once with ``#alias`` for every point name."""

    def __init__(self, dec: Decoder, prefix: str, hold: float = HOLD_SECONDS) -> None:
        self.dec, self.prefix, self.hold = dec, prefix, hold
        self.held: dict[tuple[str, int], list[tuple[float, str, bytes]]] = {}

    def take(self, topic: str, payload: bytes, now: float) -> list[dict[str, Any]]:
        """The messages to print now, in order: this one (unless held), then any it releases."""
        m = handle(self.dec, topic, payload, self.prefix)
        out: list[dict[str, Any]] = self.expired(now)
        if m.get("kind") == "t" and m.get("known_gen") is False and "gen" in m \
                and (m["site"], m["gen"]) not in self.dec.maps:
            self.held.setdefault((m["site"], m["gen"]), []).append((now, topic, payload))
            return out
        out.append(m)
        if m.get("kind") == "birth" and isinstance(m.get("doc"), dict) and "gen" in m["doc"]:
            for _, t, p in self.held.pop((m["site"], int(m["doc"]["gen"])), []):
                out.append(handle(self.dec, t, p, self.prefix))
        return out

    def expired(self, now: float, everything: bool = False) -> list[dict[str, Any]]:
        """Held messages whose birth did not come in time, decoded as well as they can be."""
        out: list[dict[str, Any]] = []
        for key in list(self.held):
            keep = [(t0, t, p) for t0, t, p in self.held[key] if not everything and now - t0 < self.hold]
            for t0, t, p in self.held[key]:
                if everything or now - t0 >= self.hold:
                    out.append(handle(self.dec, t, p, self.prefix))
            if keep:
                self.held[key] = keep
            else:
                del self.held[key]
        return out


def render(m: dict[str, Any]) -> str:
    clock = time.strftime("%H:%M:%S")
    if m.get("error"):
        return f"{clock} {m['topic']} ({m['bytes']} B) {m['error']}"
    if m["kind"] == "t":
        vals = ", ".join(
            f"{s['point']}={s['value']}{(' ' + s['unit']) if s.get('unit') else ''}"
            + ("" if s["quality"] == "good" else f" [{s['quality']}{(': ' + s['error']) if s.get('error') else ''}]")
            for s in m["samples"]
        )
        return f"{clock} {m['site']}/{m['device']} seq={m['seq']} ({m['bytes']} B, {len(m['samples'])} samples) {vals}"
    if m["kind"] == "birth":
        doc = m.get("doc") or {}
        devs = doc.get("devices", {})
        return (f"{clock} {m['site']} birth gen={doc.get('gen')} ({m['bytes']} B): "
                + ", ".join(f"{k}[{len(v.get('points', []))}]" for k, v in devs.items()))
    if m["kind"] == "s":
        return f"{clock} {m['site']}/{m['device']} snapshot ref={m.get('ref')} ({m['bytes']} B JPEG)"
    return f"{clock} {m['topic']} ({m['bytes']} B) {json.dumps(m.get('doc'), ensure_ascii=False)}"


@dataclass
class Target:
    """Where the monitor connects and what it subscribes to."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    username: str | None
    password: str | None
    prefix: str
    site: str

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def check_url(broker: str) -> tuple[str, int | None, bool]:
    """(host, port or None, TLS) of a broker URL; ``ValueError`` with a one-line reason otherwise."""
    u = urlparse(broker)
    if u.scheme not in SCHEMES or not u.hostname:
        raise ValueError(f"broker {broker!r}: give a URL with its scheme: mqtt://HOST:PORT (TCP) or "
                         "mqtts://HOST:PORT (TLS)")
    try:
        port = u.port
    except ValueError as exc:
        raise ValueError(f"broker {broker!r}: {exc}") from None
    return u.hostname, port, u.scheme in ("mqtts", "ssl")


def target_for(broker: str | None, site: Site | None, prefix: str | None, site_id: str | None) -> Target:
    """From ``--broker`` and/or the site file (``--config``): the site's uplink settings (TLS, client
    certificate, server name, credentials, prefix, site id) are used as the agent uses them; ``--broker``
    replaces only the URL. ``ValueError``/``OSError``/``ssl.SSLError`` with a one-line reason."""
    if site is not None:
        cfg = site.model.uplink
        if broker is not None:
            check_url(broker)
            cfg = cfg.model_copy(update={"broker": broker})
        return Target(cfg.host, cfg.port, build_tls_context(cfg, site.secrets), cfg.username,
                      site.secrets.password.get_secret_value() if site.secrets.password else None,
                      prefix or cfg.topic_prefix, site_id or site.id)
    host, port, tls = check_url(broker or DEFAULT_BROKER)
    return Target(host, port or (8883 if tls else 1883), client_tls_context() if tls else None, None, None,
                  prefix or "ea/v1", site_id or "+")


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    for e in (cause, exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {e.verify_message}"
        if isinstance(e, ssl.SSLError):
            return f"TLS: {e.reason or e}"
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return str(exc)


async def monitor(t: Target, count: int, as_json: bool, connect_budget: float = 10.0) -> int:
    """Print decoded messages until ``count`` (0: forever). Connection problems are one line on stderr, exit 1."""
    dec = Decoder()
    holder = Holder(dec, t.prefix)
    n = 0
    client = aiomqtt.Client(t.host, t.port, identifier=f"edge-agent-monitor-{time.time_ns()}",
                            username=t.username, password=t.password, tls_context=t.tls, timeout=connect_budget + 1)
    async with contextlib.AsyncExitStack() as stack:
        try:
            async with asyncio.timeout(connect_budget):
                await stack.enter_async_context(client)
                await client.subscribe(f"{t.prefix}/{t.site}/#", qos=1, timeout=connect_budget)
        except (TimeoutError, aiomqtt.MqttError) as exc:
            if isinstance(exc, TimeoutError) or "timed out" in str(exc):
                hint = " (a TLS port? a client certificate required?)" if t.tls is None else \
                    " (does the broker require a client certificate?)"
                print(f"monitor: no MQTT session with {t.where} within {connect_budget:g} s{hint}", file=sys.stderr)
            else:
                print(f"monitor: cannot connect to {t.where}: {_reason(exc)}", file=sys.stderr)
            return 1
        print(f"monitor: connected to {t.where}, subscribed to {t.prefix}/{t.site}/#", file=sys.stderr)
        try:
            async for msg in client.messages:
                payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload or "").encode()
                for m in holder.take(str(msg.topic), payload, time.monotonic()):
                    print(json.dumps(m, default=str) if as_json else render(m), flush=True)
                    n += 1
                    if count and n >= count:
                        return 0
        except aiomqtt.MqttError as exc:
            print(f"monitor: connection to {t.where} lost: {_reason(exc)}", file=sys.stderr)
            return 1
        finally:
            if not count or n < count:
                for m in holder.expired(time.monotonic(), everything=True):  # a birth that never came
                    print(json.dumps(m, default=str) if as_json else render(m), flush=True)
            sys.stdout.flush()
    sys.stdout.flush()
    return 0
