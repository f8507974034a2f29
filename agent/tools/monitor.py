"""``edge-agent monitor``: subscribe to a site's topics and print decoded messages (demo, field checks)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any
from urllib.parse import urlparse

import aiomqtt

from agent.uplink.codec import decode_telemetry


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
    except (ValueError, KeyError) as exc:
        out["error"] = f"undecodable: {exc}"
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


async def monitor(broker: str, prefix: str, site: str, count: int, as_json: bool) -> int:
    u = urlparse(broker)
    dec = Decoder()
    n = 0
    async with aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                              identifier=f"edge-agent-monitor-{time.time_ns()}") as client:
        await client.subscribe(f"{prefix}/{site}/#", qos=1)
        async for msg in client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload or "").encode()
            m = handle(dec, str(msg.topic), payload, prefix)
            print(json.dumps(m, default=str) if as_json else render(m), flush=True)
            n += 1
            if count and n >= count:
                break
    sys.stdout.flush()
    return 0
