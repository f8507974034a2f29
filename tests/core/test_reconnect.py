"""Reconnect after a broker outage: bounded added downtime, with jitter that spreads many sites."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from agent.config.loader import BackoffConfig
from agent.uplink.mqtt import reconnect_delay
from tests.peers.mosquitto import Broker

from .agentkit import running_agent, write_site


def _simulate(sites: int, outage: float, seed: int = 7) -> tuple[list[float], Counter[int]]:
    """Every site loses the broker at t=0 (a broker restart); it answers again at ``outage``. Returns each
    site's delay after that, and reconnects per second."""
    rnd = random.Random(seed)
    cfg = BackoffConfig()
    delays, per_second = [], Counter[int]()
    for _ in range(sites):
        t = 0.0
        while t < outage:
            t += reconnect_delay(cfg.initial, cfg.max, rnd)
        delays.append(t - outage)
        per_second[int(t)] += 1
    return delays, per_second


def test_policy_spreads_2000_sites_and_bounds_the_added_downtime() -> None:
    for outage in (2.0, 30.0, 600.0):
        delays, per_second = _simulate(2000, outage)
        med, worst, busiest = statistics.median(delays), max(delays), max(per_second.values())
        print(f"outage {outage:g} s: median {med:.1f} s, max {worst:.1f} s after the broker answers; "
              f"busiest second {busiest} of 2000 sites")
        assert med <= 10.0
        assert worst <= BackoffConfig().max
        assert busiest <= 0.15 * 2000, "2,000 sites must not reconnect in the same second"


def _site(tmp: Path, url: str, i: int) -> Path:
    d = tmp / f"s{i}"
    d.mkdir()
    path = write_site(d, url, site_id=f"r{i}", interval="5s")
    path.write_text(path.read_text().replace("  backoff: {initial: 0.2s, max: 1s}\n", ""))  # the defaults
    return path


async def test_reconnect_after_a_30s_outage_median_within_10s(tmp_path: Path) -> None:
    """Eight agents (default backoff) lose the broker for 30 s; each reconnects soon after it answers."""
    broker = Broker(tmp_path).start()
    try:
        sites = [_site(tmp_path, broker.url, i) for i in range(8)]
        async with contextlib.AsyncExitStack() as stack:
            agents = [await stack.enter_async_context(running_agent(s)) for s in sites]
            async with asyncio.timeout(20):
                for a in agents:
                    await a.uplink.connected.wait()
            broker.stop()
            await asyncio.sleep(30)
            assert not any(a.uplink.connected.is_set() for a in agents)
            broker.start()
            t0 = time.monotonic()
            back: dict[int, float] = {}
            async with asyncio.timeout(30):
                while len(back) < len(agents):
                    for i, a in enumerate(agents):
                        if i not in back and a.uplink.connected.is_set():
                            back[i] = time.monotonic() - t0
                    await asyncio.sleep(0.02)
        delays = sorted(back.values())
        print(f"reconnect after a 30 s outage: median {statistics.median(delays):.1f} s, "
              f"all {', '.join(f'{d:.1f}' for d in delays)} s")
        assert statistics.median(delays) <= 10.0
        assert delays[-1] <= BackoffConfig().max + 2.0
    finally:
        broker.stop()
