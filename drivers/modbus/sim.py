"""Simulated meters: a pymodbus server populated from shipped profiles, with values that move plausibly.

    python -m drivers.modbus.sim --profile profiles/schneider-iem3155.yaml --host 127.0.0.1 --port 5020 \
        --unit 1 --unit 2
    python -m drivers.modbus.sim --device profiles/carlo-gavazzi-em340.yaml:1 \
        --device profiles/remeha-gtw08.yaml:7 --port 5020

Energy counters increase with the simulated power, power fluctuates around a per-unit base, voltages and
frequency wander a little, temperatures follow the outside temperature. Writable points keep what is written.
Each register a profile does not define is readable as 0 between the lowest and highest address of the
profile's points (so gap filling works) and refused (exception 2) outside.

Importable: ``await run_sim([(profile, unit), ...], port=5020)`` (runs until cancelled) or ``SimServer``.
This module is a test and demo tool: it imports ``pymodbus.server``, which the agent itself never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.config import load_profile

from . import BIT_TABLES, ModbusPoint
from .codec import decode, encode

FC = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}
TABLES = ("coil", "discrete_input", "holding", "input")
ENERGY_UNITS = {"wh": 1.0, "kwh": 1e-3, "mwh": 1e-6, "varh": 1.0, "kvarh": 1e-3, "vah": 1.0, "kvah": 1e-3}
POWER_UNITS = {"w": 1.0, "kw": 1e-3, "mw": 1e-6, "var": 1.0, "kvar": 1e-3, "va": 1.0, "kva": 1e-3}


@dataclass
class SimPoint:
    point: ModbusPoint
    kind: str  # energy, power, voltage, current, frequency, pf, temperature, hours, const
    factor: float = 1.0  # unit conversion from W / Wh
    value: float = 0.0


@dataclass
class SimMeter:
    """One simulated device: its registers and the physics that moves them."""

    unit: int
    points: list[SimPoint]
    base_power: float  # W
    power: float = 0.0
    outside: float = 8.0
    last: float = field(default_factory=time.monotonic)

    @classmethod
    def from_profile(cls, profile: str | Path, unit: int, seed: int | None = None) -> SimMeter:
        prof = load_profile(profile)
        rnd = random.Random(seed if seed is not None else unit)
        base = rnd.uniform(4_000, 25_000)
        pts: list[SimPoint] = []
        for p in prof.points:
            mp = p if isinstance(p, ModbusPoint) else None
            if mp is None:
                continue
            pts.append(_classify(mp, rnd, base))
        m = cls(unit, pts, base, base)
        return m

    def step(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        dt = max(0.0, now - self.last)
        self.last = now
        # power: slow sine + noise around the base, never negative
        t = time.time()
        wave = self.base_power * (1 + 0.15 * math.sin(t / 60.0))
        self.power = max(0.0, wave + random.gauss(0, self.base_power * 0.03))
        self.outside += random.gauss(0, 0.02)
        for sp in self.points:
            if sp.point.writable:
                continue
            if sp.kind == "energy":
                sp.value += self.power * dt / 3600.0 * sp.factor
            elif sp.kind == "power":
                share = 1 / 3 if any(s in sp.point.name for s in ("_l1", "_l2", "_l3")) else 1.0
                u = (sp.point.unit or "").lower()
                kind = 0.38 if u in ("var", "kvar") else (1 / 0.93 if u in ("va", "kva") else 1.0)
                sp.value = self.power * share * kind * sp.factor
            elif sp.kind == "current":
                neutral = 0.08 if "neutral" in sp.point.name else 1.0
                sp.value = self.power / 3 / 230.0 * neutral * (1 + random.gauss(0, 0.01))
            elif sp.kind == "voltage":
                nominal = 400.0 if _line_to_line(sp.point.name) else 230.0
                sp.value = nominal * (1 + random.gauss(0, 0.004))
            elif sp.kind == "frequency":
                sp.value = 50.0 + random.gauss(0, 0.02)
            elif sp.kind == "pf":
                sp.value = min(1.0, 0.93 + random.gauss(0, 0.01))
            elif sp.kind == "hours":
                sp.value += dt / 3600.0
            elif sp.kind == "temperature":
                n = sp.point.name
                if "outside" in n or "outdoor" in n:
                    sp.value = self.outside
                elif "exhaust" in n:
                    sp.value = 60.0 + self.power / self.base_power * 10
                elif "return" in n:
                    sp.value = 40.0 + (15 - self.outside) * 0.5
                else:
                    sp.value = 50.0 + (15 - self.outside) * 1.0

    def registers(self) -> dict[str, dict[int, int | bool]]:
        """Current contents of every point, encoded as the device would hold them."""
        out: dict[str, dict[int, int | bool]] = {t: {} for t in TABLES}
        for sp in self.points:
            p = sp.point
            if p.table in BIT_TABLES:
                out[p.table][p.address] = bool(sp.value)
                continue
            if p.type == "bool":
                reg = int(out[p.table].get(p.address, 0))
                bit = p.bit or 0
                out[p.table][p.address] = (reg | (1 << bit)) if sp.value else reg
                continue
            try:
                words = encode(p, _typed(p, sp.value))
            except Exception:  # a value the type cannot hold: leave the old one
                continue
            for i, w in enumerate(words):
                out[p.table][p.address + i] = int(w)
        return out


def _line_to_line(name: str) -> bool:
    n = name.lower()
    return any(k in n for k in ("l1_l2", "l2_l3", "l3_l1", "u12", "u23", "u31", "_ll"))


def _typed(p: ModbusPoint, v: float) -> Any:
    if p.type == "string":
        return str(v)
    if p.type in ("float32", "float64") or p.scale != 1.0 or p.offset != 0.0:
        return float(v)
    return round(v)


def _classify(p: ModbusPoint, rnd: random.Random, base: float) -> SimPoint:
    u = (p.unit or "").lower()
    n = p.name.lower()
    if p.type == "string":
        return SimPoint(p, "const", value=0.0)
    if u in ENERGY_UNITS:
        start = rnd.uniform(1e6, 5e7)  # Wh already counted
        if "partial" in n or "rate" in n:
            start /= 4
        return SimPoint(p, "energy", ENERGY_UNITS[u], start * ENERGY_UNITS[u])
    if u in POWER_UNITS:
        return SimPoint(p, "power", POWER_UNITS[u], base * POWER_UNITS[u])
    if u == "v":
        return SimPoint(p, "voltage", value=400.0 if _line_to_line(n) else 230.0)
    if u == "a":
        return SimPoint(p, "current", value=base / 3 / 230)
    if u == "hz":
        return SimPoint(p, "frequency", value=50.0)
    if u == "h":
        return SimPoint(p, "hours", value=rnd.uniform(1000, 30000))
    if u in ("degc", "°c", "c"):
        return SimPoint(p, "temperature", value=20.0)
    if "power_factor" in n or n in ("pf", "cos_phi"):
        return SimPoint(p, "pf", value=0.93)
    if p.writable and p.min is not None:
        return SimPoint(p, "const", value=p.min)
    if "order_id" in n:
        return SimPoint(p, "const", value=100)
    return SimPoint(p, "const", value=0.0)


def _device(meter: SimMeter) -> SimDevice:
    regs = meter.registers()
    blocks: list[list[SimData]] = []
    for t in TABLES:
        cells = regs[t]
        pts = [sp.point for sp in meter.points if sp.point.table == t]
        if t in BIT_TABLES:
            words: dict[int, int] = {}
            for a, v in cells.items():
                words.setdefault(a // 16, 0)
                if v:
                    words[a // 16] |= 1 << (a % 16)
            if not pts:
                blocks.append([SimData(address=65535, values=[0], datatype=DataType.BITS)])
                continue
            lo = min(p.address for p in pts) // 16
            hi = max(p.end for p in pts) // 16 + 1
            vals = [words.get(a, 0) for a in range(lo, hi)]
            blocks.append([SimData(address=lo, values=vals, datatype=DataType.BITS)])
        else:
            if not pts:
                blocks.append([SimData(address=65535, values=[0], datatype=DataType.REGISTERS)])
                continue
            lo = min(p.address for p in pts)
            hi = max(p.end for p in pts)
            blocks.append([SimData(address=lo, values=[int(cells.get(a, 0)) for a in range(lo, hi)],
                                   datatype=DataType.REGISTERS)])
    return SimDevice(id=meter.unit, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]))


class SimServer:
    """A running simulated bus (one TCP port or one serial port) with one or more meters."""

    def __init__(self, meters: Sequence[SimMeter], *, host: str = "127.0.0.1", port: int = 5020,
                 serial_port: str | None = None, update_every: float = 1.0,
                 silent: Sequence[int] = ()) -> None:
        self.meters = list(meters)
        self.silent = set(silent)  # fault injection: unit ids that never answer (a dead device on the bus)
        self.host, self.port, self.serial_port = host, port, serial_port
        self.update_every = update_every
        self.server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> SimServer:
        for m in self.meters:
            m.step()
        devs = [_device(m) for m in self.meters]
        if self.serial_port:
            self.server = ModbusSerialServer(devs, framer=FramerType.RTU, port=self.serial_port,
                                             trace_packet=self._trace)
        else:
            self.server = ModbusTcpServer(devs, address=(self.host, self.port), trace_packet=self._trace)
        await self.server.serve_forever(background=True)
        self._written: dict[int, dict[str, dict[int, int | bool]]] = {m.unit: m.registers() for m in self.meters}
        self._task = asyncio.create_task(self._update_loop(), name="modbus-sim-update")
        return self

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending and data and self.silent:
            unit = data[0] if self.serial_port else data[6]
            if unit in self.silent:
                return b""  # swallow the reply
        return data

    async def _update_loop(self) -> None:
        while True:
            await asyncio.sleep(self.update_every)
            await self.update()

    async def update(self) -> None:
        """Move every meter one step and push the changed registers into the server."""
        ctx = self.server.context
        for m in self.meters:
            # keep what a client wrote into writable points
            for sp in m.points:
                if sp.point.writable and sp.point.table not in BIT_TABLES and sp.point.type not in ("bool", "string"):
                    regs = await ctx.async_getValues(m.unit, FC[sp.point.table], sp.point.address,
                                                     sp.point.register_count)
                    if isinstance(regs, list):
                        v = decode(sp.point, regs)
                        if isinstance(v, int | float):
                            sp.value = float(v)
            m.step()
            new = m.registers()
            old = self._written[m.unit]
            for t in ("holding", "input"):
                for a, v in new[t].items():
                    if old[t].get(a) != v:
                        await ctx.async_setValues(m.unit, FC[t], a, [int(v)])
            self._written[m.unit] = new

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.server is not None:
            await self.server.shutdown()


async def run_sim(devices: Sequence[tuple[str | Path, int]], *, host: str = "127.0.0.1", port: int = 5020,
                  serial_port: str | None = None, update_every: float = 1.0,
                  ready: asyncio.Event | None = None, silent: Sequence[int] = ()) -> None:
    """Serve simulated meters until cancelled (the demo runs this beside the agent)."""
    meters = [SimMeter.from_profile(prof, unit) for prof, unit in devices]
    sim = await SimServer(meters, host=host, port=port, serial_port=serial_port, update_every=update_every,
                          silent=silent).start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


DEMO_DEVICES = [
    ("carlo-gavazzi-em340", 1, "tgbt-main"),
    ("schneider-iem3155", 2, "tgbt-lighting"),
    ("socomec-countis-e34", 3, "kitchen"),
    ("remeha-gtw08", 4, "boiler"),
]


def demo_site_devices(work: Path, start: Any, interval: str = "5s") -> list[str]:
    """For the demo (examples/demo/run.py): start one simulated bus with one device of each shipped Modbus
    profile and return the site-file lines of the devices that poll it. ``start(name, cmd)`` launches and
    tracks a process (the demo's helper); everything binds 127.0.0.1."""
    import socket
    import sys

    root = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [sys.executable, "-m", "drivers.modbus.sim", "--host", "127.0.0.1", "--port", str(port)]
    for prof, unit, _name in DEMO_DEVICES:
        cmd += ["--device", f"{root / 'profiles' / prof}.yaml:{unit}"]
    proc = start("modbus-sim", cmd)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("demo: modbus simulator exited early; see .demo/modbus-sim.log")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return [
        f"  - {{name: {name}, type: {prof}, interval: {interval}, timeout: 1s, "
        f"connection: {{transport: tcp, host: 127.0.0.1, port: {port}, unit: {unit}}}}}"
        for prof, unit, name in DEMO_DEVICES
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drivers.modbus.sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="profile YAML the meters follow (with --unit)")
    ap.add_argument("--unit", type=int, action="append", help="unit id to simulate (repeat); default 1")
    ap.add_argument("--device", action="append", default=[], metavar="PROFILE:UNIT",
                    help="one simulated device (repeat), e.g. profiles/remeha-gtw08.yaml:7")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, action="append", help="TCP port (repeat for several identical buses)")
    ap.add_argument("--serial", help="serve RTU on this serial port instead of TCP (e.g. one end of a socat pty pair)")
    ap.add_argument("--update", type=float, default=1.0, help="seconds between value updates")
    ap.add_argument("--silent", type=int, action="append", default=[],
                    help="fault injection: never answer this unit id (repeat), like a dead device on the bus")
    args = ap.parse_args(argv)
    devices: list[tuple[str | Path, int]] = []
    if args.profile:
        devices += [(args.profile, u) for u in (args.unit or [1])]
    for d in args.device:
        prof, _, unit = d.rpartition(":")
        devices.append((prof, int(unit)))
    if not devices:
        ap.error("give --profile (with --unit) or --device PROFILE:UNIT")
    ports = args.port or [5020]

    async def serve() -> None:
        async with asyncio.TaskGroup() as tg:
            ready = [asyncio.Event() for _ in ports]
            for i, port in enumerate(ports):
                tg.create_task(run_sim(devices, host=args.host, port=port, ready=ready[i],
                                       serial_port=args.serial if i == 0 else None, update_every=args.update,
                                       silent=args.silent))
            for ev in ready:
                await ev.wait()
            where = args.serial or ", ".join(f"{args.host}:{p}" for p in ports)
            print(f"simulating {len(devices)} device(s) on {where}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
