"""The simulated site of bench/site_poll.py: N Modbus TCP meters of 40 points each, one TCP port per meter.

A deliberately minimal asyncio Modbus TCP server (FC3/FC4 only, one unit per port) that counts requests, so
that the server side costs as little as possible on a shared machine and the count is exact. It is a bench
peer only; the tests use pymodbus's server.

The 40 points of a meter, in four blocks far apart (the planner needs four reads), mixed float32 and uint16:

    block A  holding 3000..3019  a0..a9  float32   a0-a3 change at every poll, a4-a9 every ~10 s
    block B  holding 3100..3119  b0..b9  float32   b0-b1 every ~10 s, b2-b9 every ~5 min
    block C  holding 200..209    c0..c9  uint16    every ~5 min
    block D  holding 400..409    d0..d9  uint16    every ~5 min

i.e. 4 points change every poll, 8 every ~10 s, 28 every ~5 min. Each meter has its own phase, so changes
are spread over time as on a real site.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import dataclass
from typing import Any

FAST, MEDIUM, SLOW = 0.25, 10.0, 300.0  # seconds between changes (fast: every poll of a 1 s interval)


@dataclass(frozen=True)
class BenchPoint:
    name: str
    address: int
    type: str  # float32 | uint16
    period: float

    @property
    def count(self) -> int:
        return 2 if self.type == "float32" else 1


def layout() -> list[BenchPoint]:
    pts = []
    for i in range(10):
        pts.append(BenchPoint(f"a{i}", 3000 + 2 * i, "float32", FAST if i < 4 else MEDIUM))
    for i in range(10):
        pts.append(BenchPoint(f"b{i}", 3100 + 2 * i, "float32", MEDIUM if i < 2 else SLOW))
    for i in range(10):
        pts.append(BenchPoint(f"c{i}", 200 + i, "uint16", SLOW))
    for i in range(10):
        pts.append(BenchPoint(f"d{i}", 400 + i, "uint16", SLOW))
    return pts


def profile() -> dict[str, Any]:
    """The device profile the agent uses for these meters."""
    return {
        "driver": "modbus", "description": "bench meter (bench/site_sim.py)", "defaults": {"table": "holding"},
        "points": [{"name": p.name, "address": p.address, "type": p.type, "unit": "W" if p.type == "float32"
                    else None} for p in layout()],
    }


REGS = 4096


class Meter:
    """Registers of one meter and the schedule that changes them."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.regs = bytearray(2 * REGS)
        self.valid = bytearray(REGS)  # 1 where a register exists (others answer exception 2)
        self.points = layout()
        self.values: list[float] = []
        self.next: list[float] = []
        now = time.monotonic()
        for p in self.points:
            for a in range(p.address, p.address + p.count):
                self.valid[a] = 1
            self.values.append(self.rnd.uniform(100, 1000) if p.type == "float32" else self.rnd.randrange(0, 500))
            self.next.append(now + self.rnd.uniform(0, p.period))
            self._store(p, self.values[-1])

    def _store(self, p: BenchPoint, v: float) -> None:
        if p.type == "float32":
            struct.pack_into(">f", self.regs, 2 * p.address, v)
        else:
            struct.pack_into(">H", self.regs, 2 * p.address, int(v) & 0xFFFF)

    def tick(self, now: float) -> None:
        for i, p in enumerate(self.points):
            if now >= self.next[i]:
                self.next[i] += p.period
                if self.next[i] < now:
                    self.next[i] = now + p.period
                v = self.values[i]
                v = v * self.rnd.uniform(0.99, 1.01) + 0.5 if p.type == "float32" else (int(v) + 1) % 60000
                self.values[i] = v
                self._store(p, v)


class Site:
    """All meters, their servers, and the request counter."""

    def __init__(self, n: int) -> None:
        self.meters = [Meter(i) for i in range(n)]
        self.requests = 0
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for m in self.meters:
            srv = await loop.create_server(lambda m=m: _Conn(self, m), "127.0.0.1", 0)  # type: ignore[misc]
            self.servers.append(srv)
            self.ports.append(srv.sockets[0].getsockname()[1])
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            now = time.monotonic()
            for m in self.meters:
                m.tick(now)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        for s in self.servers:
            s.close()


class _Conn(asyncio.Protocol):
    def __init__(self, site: Site, meter: Meter) -> None:
        self.site, self.meter = site, meter
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while len(self.buf) >= 6:
            length = int.from_bytes(self.buf[4:6], "big")
            if len(self.buf) < 6 + length:
                break
            frame, self.buf = self.buf[: 6 + length], self.buf[6 + length :]
            out.append(self._answer(frame))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _answer(self, frame: bytes) -> bytes:
        self.site.requests += 1
        tid, unit, fc = frame[0:2], frame[6], frame[7]
        if fc not in (3, 4) or len(frame) < 12:
            return tid + b"\x00\x00\x00\x03" + bytes((unit, fc | 0x80, 1))
        start, count = struct.unpack(">HH", frame[8:12])
        valid = self.meter.valid
        if not 1 <= count <= 125 or start + count > REGS or not all(valid[start : start + count]):
            return tid + b"\x00\x00\x00\x03" + bytes((unit, fc | 0x80, 2))
        body = self.meter.regs[2 * start : 2 * (start + count)]
        return tid + b"\x00\x00" + (3 + 2 * count).to_bytes(2, "big") + bytes((unit, fc, 2 * count)) + body
