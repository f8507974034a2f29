"""BACnet/IP peers for tests: simulated bacpypes3 controllers on loopback, and a driver built from YAML.

Devices listen on 127.77.<run>.N port 47808; the client (the driver's shared application) uses another
address and port 47809 (bacpypes3 treats a unicast to 127.*:<its own port> as addressed to itself).
<run> differs per test process so that parallel runs do not collide. Nothing binds 0.0.0.0.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio

from agent.contract.driver import DriverContext
from agent.model import Event, Sample

_RUN = 20 + os.getpid() % 200
_hosts = itertools.count(10)


def next_host() -> str:
    """A fresh loopback address for one peer of this test process."""
    n = next(_hosts)
    return f"127.77.{_RUN}.{n % 250 + 2}" if n < 250 else f"127.78.{_RUN}.{n % 250 + 2}"


@dataclass
class CollectSink:
    """A Sink that keeps what it gets, with arrival times."""

    got: list[tuple[float, Sample]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def samples(self, device: str, samples: Sequence[Sample]) -> None:
        now = time.monotonic()
        self.got.extend((now, s) for s in samples)
        self.changed.set()

    def event(self, event: Event) -> None:
        self.events.append(event)

    async def wait_for(self, pred: Callable[[Sample], bool], timeout: float) -> tuple[float, Sample]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for t, s in self.got[seen:]:
                if pred(s):
                    return t, s
            seen = len(self.got)
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching sample")
            try:
                async with asyncio.timeout(left):
                    await self.changed.wait()
            except TimeoutError:
                raise TimeoutError("no matching sample") from None


SITE = """\
site: {{id: bacnet-test}}
uplink: {{broker: "mqtt://127.0.0.1:1"}}
profiles_dirs: [{profiles}]
devices:
{devices}
"""


def write_profile(path: Path, pid: str, points: str, device: str = "", extra: str = "") -> Path:
    text = f"driver: bacnet\nid: {pid}\n{extra}"
    if device:
        text += "device:\n" + textwrap.indent(textwrap.dedent(device).strip("\n"), "  ") + "\n"
    text += "points:\n" + textwrap.indent(textwrap.dedent(points).strip("\n"), "  ") + "\n"
    p = path / f"{pid}.yaml"
    p.write_text(text)
    return p


def device_entry(name: str, ptype: str, conn: dict[str, Any], **model: Any) -> str:
    import json

    lines = [f"  - name: {name}", f"    type: {ptype}", f"    connection: {json.dumps(conn)}"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in model.items()]
    return "\n".join(lines)


class BACnetLab:
    """Starts simulated controllers and drivers; stops everything at the end of the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sims: list[Any] = []
        self.drivers: list[Any] = []
        self.ctx = DriverContext("bacnet-test", tmp)
        self.client_host = next_host()
        self.client_port = 47809

    @property
    def local(self) -> dict[str, Any]:
        return {"local_address": f"{self.client_host}/8", "local_port": self.client_port}

    async def sim(self, **kw: Any) -> Any:
        from drivers.bacnet.sim import SimController

        kw.setdefault("move", False)
        sim = SimController(f"{next_host()}/8", kw.pop("instance", 1001), **kw)
        await sim.start()
        self.sims.append(sim)
        return sim

    def site(self, devices: list[str]) -> Path:
        site = self.tmp / "site.yaml"
        site.write_text(SITE.format(profiles=str(self.tmp), devices="\n".join(devices)))
        return site

    def load(self, devices: list[str]) -> Any:
        from agent.config import load_site

        return load_site(self.site(devices), strict=True)

    async def driver(self, pid: str, sim: Any | None, *, name: str = "ahu1", start: bool = True,
                     conn: dict[str, Any] | None = None, **model: Any) -> Any:
        """Build (and start) a BACnetDriver for one device of profile ``pid`` talking to ``sim``."""
        from drivers.bacnet.driver import BACnetDriver

        c = {"device_instance": sim.instance if sim else 9999, **self.local}
        if sim is not None:
            c["address"] = sim.host
        c.update(conn or {})
        model.setdefault("timeout", 1.0)
        model.setdefault("retries", 0)
        site = self.load([device_entry(name, pid, c, **model)])
        drv = BACnetDriver(site.devices[0], self.ctx)
        self.drivers.append(drv)
        if start:
            await drv.start()
        return drv

    async def close(self) -> None:
        for d in self.drivers:
            await d.stop()
        for s in self.sims:
            await s.stop()


@pytest_asyncio.fixture
async def bacnet_lab(tmp_path: Path) -> AsyncIterator[BACnetLab]:
    lab = BACnetLab(tmp_path)
    try:
        yield lab
    finally:
        await lab.close()


__all__ = ["BACnetLab", "CollectSink", "bacnet_lab", "device_entry", "next_host", "write_profile"]
