"""Configuration push latency and health-gate outcome, the agent as a process against Mosquitto on loopback.

Each push is signed, published, stored, switched to and run (the agent re-execs), then held to its health gate.
Printed: push to `applied` (the new version runs) and push to `healthy` (gate passed), median and p95, and the
gate outcomes; baseline in the same run: a signed `status` command's round trip (verify, run, ack).

    python bench/push_latency.py [--pushes 50] [--window 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
from joserfc.jwk import OKPKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.remote.envelope import claims, sign  # noqa: E402
from agent.tools.remotecli import push_payload  # noqa: E402
from tests.core.agentkit import start_agent_process, write_site  # noqa: E402
from tests.peers.mosquitto import Broker  # noqa: E402


class Op:
    def __init__(self, key: OKPKey) -> None:
        self.name, self.key = "deploy", key


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run(pushes: int, window: float, tmp: Path) -> None:
    broker = Broker(tmp).start()
    key = OKPKey.generate_key("Ed25519")
    (tmp / "operators.json").write_text(json.dumps(
        {"keys": [{**key.as_dict(private=False), "kid": "deploy", "roles": ["config", "ops"]}]}))
    site = write_site(tmp, broker.url, site_id="bench")
    text = site.read_text()
    op = Op(key)
    proc = start_agent_process(site, tmp / "agent.log")
    acks: dict[str, list[tuple[float, dict]]] = {}  # type: ignore[type-arg]
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.subscribe("ea/v1/bench/ack", qos=1)
            await c.subscribe("ea/v1/bench/status", qos=1)

            async def reader() -> None:
                async for m in c.messages:
                    if str(m.topic).endswith("/ack") and isinstance(m.payload, bytes):
                        doc = json.loads(m.payload)
                        acks.setdefault(str(doc.get("id")), []).append((time.monotonic(), doc))

            task = asyncio.create_task(reader())

            async def wait_for(mid: str, pred, timeout: float) -> tuple[float, dict] | None:  # type: ignore[no-untyped-def,type-arg]
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    for t, d in acks.get(mid, []):
                        if pred(d):
                            return t, d
                    await asyncio.sleep(0.005)
                return None

            baseline: list[float] = []
            for i in range(60):  # first ones wait for the agent to be connected
                mid = f"st-{i}"
                body = {"id": mid, "cmd": "status", "jws": sign(key, "deploy", claims("bench", "status", {}, mid))}
                t0 = time.monotonic()
                await c.publish("ea/v1/bench/cmd", json.dumps(body).encode(), qos=1)
                got = await wait_for(mid, lambda d: True, 5 if baseline else 30)
                if got is not None:
                    baseline.append(got[0] - t0)
                if len(baseline) >= 20:
                    break
                await asyncio.sleep(0.3)  # under the per-source rate limit
            applied: list[float] = []
            healthy: list[float] = []
            outcomes: dict[str, int] = {}
            for i in range(pushes):
                files = {"site.yaml": text.replace("interval: 0.1s", f"interval: 0.{i % 9 + 1}s")}
                mid, payload = push_payload(op, "bench", files, f"b{i}", window)
                t0 = time.monotonic()
                await c.publish("ea/v1/bench/cmd", payload, qos=1)
                a = await wait_for(mid, lambda d: (d.get("result") or {}).get("state") == "applied" or not d["ok"], 30)
                h = await wait_for(mid, lambda d: (d.get("result") or {}).get("state") == "healthy" or not d["ok"],
                                   window + 30)
                state = "no answer" if h is None else (h[1].get("result") or {}).get("state", "refused")
                outcomes[state] = outcomes.get(state, 0) + 1
                if a is not None and a[1]["ok"]:
                    applied.append(a[0] - t0)
                if h is not None and h[1]["ok"]:
                    healthy.append(h[0] - t0)
            task.cancel()
    finally:
        proc.terminate()
        proc.wait(10)
        broker.stop()
    ms = 1000.0
    print(f"baseline signed status round trip: median {statistics.median(baseline) * ms:.0f} ms, "
          f"p95 {pct(baseline, 95) * ms:.0f} ms ({len(baseline)} commands)")
    if applied:
        print(f"push -> applied (new version runs): median {statistics.median(applied) * ms:.0f} ms, "
              f"p95 {pct(applied, 95) * ms:.0f} ms ({len(applied)} pushes)")
    if healthy:
        print(f"push -> healthy (gate passed):      median {statistics.median(healthy) * ms:.0f} ms, "
              f"p95 {pct(healthy, 95) * ms:.0f} ms")
    print(f"health gate outcomes: {outcomes}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=50)
    ap.add_argument("--window", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="push-bench-") as d:
        asyncio.run(run(args.pushes, args.window, Path(d)))


if __name__ == "__main__":
    main()
