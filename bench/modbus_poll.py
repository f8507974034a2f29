"""Modbus polling bench: 50 simulated devices x 40 points over loopback.

    .venv/bin/python bench/modbus_poll.py [--devices 50] [--cycles 20]

Prints, for the same devices in the same process:
  * requests per poll cycle: what the driver sent, the planner optimum (dynamic programming, independent of the
    greedy planner), and the one-request-per-point baseline (ThingsBoard-style "one request per key");
  * wall time per cycle and points decoded per CPU-second of this process (the agent side only: the simulated
    meters run in a subprocess);
  * bus isolation: 10 devices on one shared bus (one TCP endpoint, as behind an RS-485 gateway), cycle time of
    nine of them when the tenth answers normally vs when it never answers (after its breaker opened).

All traffic is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import load_profile  # noqa: E402
from agent.contract.device import DeviceConfig, DeviceConfigModel  # noqa: E402
from agent.contract.driver import DriverContext  # noqa: E402
from agent.contract.registry import get_spec  # noqa: E402
from agent.errors import DriverError  # noqa: E402
from drivers.modbus.codec import Decoder  # noqa: E402
from drivers.modbus.driver import ModbusDriver  # noqa: E402
from drivers.modbus.planner import one_per_point  # noqa: E402
from tests.modbus.optimum import optimum  # noqa: E402


def bench_profile() -> dict[str, Any]:
    """40 points laid out like a real meter: measurements in one float block with small holes, energy
    counters further on, a few status words elsewhere."""
    pts: list[dict[str, Any]] = []
    addr = 3000
    for i in range(28):  # float32 measurements, a 2-register hole every 7 values
        pts.append({"name": f"m{i}", "address": addr, "type": "float32", "unit": "V" if i < 6 else "W"})
        addr += 2 + (2 if i % 7 == 6 else 0)
    for i in range(8):  # int64 energy counters
        pts.append({"name": f"e{i}", "address": 3200 + 4 * i, "type": "int64", "unit": "Wh"})
    for i in range(4):  # status and settings
        pts.append({"name": f"s{i}", "address": 100 + i, "type": "uint16"})
    return {"driver": "modbus", "description": "bench meter", "defaults": {"table": "holding"}, "points": pts}


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_ports(ports: list[int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    for p in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", p), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"simulator port {p} not open") from None
                time.sleep(0.05)


def start_sim(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "drivers.modbus.sim", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def make(profile_file: Path, conn: dict[str, Any], ctx: DriverContext, name: str, **model: Any) -> ModbusDriver:
    prof = load_profile(profile_file)
    spec = get_spec("modbus")
    dm = DeviceConfigModel(name=name, type=prof.id, connection=conn, **model)
    dev = DeviceConfig(name, prof.id, "modbus", spec, dm, prof, spec.connection_model.model_validate(conn),
                       list(prof.points))
    return ModbusDriver(dev, ctx)


async def run_cycles(drivers: list[ModbusDriver], cycles: int) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, requests, good points) for `cycles` concurrent poll cycles of all devices."""
    r0 = sum(d.stats["requests"] for d in drivers)
    good = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(cycles):
        results = await asyncio.gather(*(d.read(d.points) for d in drivers))
        good += sum(1 for samples in results for s in samples if s.value is not None)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return wall, cpu, sum(d.stats["requests"] for d in drivers) - r0, good


async def throughput(n_devices: int, cycles: int, profile_file: Path, tmp: Path) -> None:
    ports = free_ports(n_devices)
    sim = start_sim(["--profile", str(profile_file), "--unit", "1", "--update", "5",
                     *[a for p in ports for a in ("--port", str(p))]])
    try:
        wait_ports(ports)
        ctx = DriverContext("bench", tmp)
        drivers = [make(profile_file, {"host": "127.0.0.1", "port": p, "unit": 1}, ctx, f"meter{i}")
                   for i, p in enumerate(ports)]
        for d in drivers:
            await d.start()
        points = drivers[0].points
        quirks = drivers[0].quirks
        npts = len(points) * n_devices
        await run_cycles(drivers, 3)  # warm up: connections, learned plans
        wall, cpu, reqs, good = await run_cycles(drivers, cycles)
        assert good == npts * cycles, f"only {good} of {npts * cycles} points read"
        opt = optimum(list(points), quirks) * n_devices
        # baseline in the same process: the same driver, one request per configured point
        for d in drivers:
            for key in list(d._plans):
                base = one_per_point([p for p in d.points if p.name in key], d.unit)
                for r in base:
                    r.decoders = [Decoder(p, r.start) for p in r.points]
                d._plans[key] = base
        base_cycles = max(2, cycles // 4)
        await run_cycles(drivers, 1)
        bwall, bcpu, breqs, bgood = await run_cycles(drivers, base_cycles)
        assert bgood == npts * base_cycles
        for d in drivers:
            await d.stop()
    finally:
        stop(sim)
    print(f"devices: {n_devices} x {len(points)} points = {npts} points per cycle, each device on its own "
          "TCP endpoint, polled concurrently")
    print(f"{'':34}{'planned':>12}{'baseline':>12}")
    print(f"{'requests per cycle':34}{reqs / cycles:>12.0f}{breqs / base_cycles:>12.0f}"
          f"   (planner optimum {opt}, one-per-point {npts})")
    print(f"{'wall time per cycle (ms)':34}{wall / cycles * 1000:>12.1f}{bwall / base_cycles * 1000:>12.1f}")
    print(f"{'CPU per cycle (ms, this process)':34}{cpu / cycles * 1000:>12.1f}{bcpu / base_cycles * 1000:>12.1f}")
    print(f"{'points decoded per CPU-second':34}{good / cpu:>12,.0f}{bgood / bcpu:>12,.0f}   (goal >= 50,000)")


async def _isolation_phase(profile_file: Path, tmp: Path, units: list[int], polled: list[int], extra: list[str],
                           seconds: float) -> tuple[list[float], list[float], float]:
    """Cycle times of units 1-9 over `seconds` (after unit 10's breaker opened if it is silent), the cycle times
    before that, and how long the breaker took to open."""
    dev_args = [a for u in units for a in ("--device", f"{profile_file}:{u}")]
    port = free_ports(1)[0]
    sim = start_sim([*dev_args, "--port", str(port), "--update", "5", *extra])
    try:
        wait_ports([port])
        ctx = DriverContext("bench", tmp)
        drivers = [make(profile_file, {"host": "127.0.0.1", "port": port, "unit": u, "breaker_threshold": 3},
                        ctx, f"m{u}", timeout=0.2, retries=1)
                   for u in polled]
        for d in drivers:
            await d.start()
        stop_ev = asyncio.Event()
        cycles: dict[int, list[tuple[float, float]]] = {u: [] for u in polled}

        async def loop(d: ModbusDriver, out: list[tuple[float, float]]) -> None:
            while not stop_ev.is_set():
                t0 = time.monotonic()
                try:
                    await d.read(d.points)
                except DriverError:
                    pass
                out.append((t0, time.monotonic() - t0))
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(loop(d, cycles[u])) for u, d in zip(polled, drivers, strict=True)]
        t_start = time.monotonic()
        if extra:
            while not drivers[-1].breaker.is_open:
                await asyncio.sleep(0.01)
        else:
            await asyncio.sleep(0.3)
        opened = time.monotonic() - t_start
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        t1 = time.monotonic()
        stop_ev.set()
        await asyncio.gather(*tasks)
        for d in drivers:
            await d.stop()
        others = [u for u in polled if u != 10]
        during = [dur for u in others for t, dur in cycles[u] if t0 <= t < t1]
        before = [dur for u in others for t, dur in cycles[u] if t_start <= t < t0]
        return during, before, opened
    finally:
        stop(sim)


async def isolation(profile_file: Path, tmp: Path, seconds: float, rounds: int = 5) -> None:
    """Phases interleaved over several rounds, so that load from other processes hits all of them alike."""
    units = list(range(1, 11))
    phases: list[tuple[str, list[str], list[int]]] = [
        ("normal", [], units),  # all ten answer
        ("unit 10 absent", [], units[:-1]),  # a bus without unit 10: what a dead unit should cost at best
        ("unit 10 silent", ["--silent", "10"], units),  # unit 10 configured and polled, never answers
    ]
    results: dict[str, list[float]] = {name: [] for name, _, _ in phases}
    before: list[float] = []
    opened: list[float] = []
    for _ in range(rounds):
        for name, extra, polled in phases:
            during, pre, t_open = await _isolation_phase(profile_file, tmp, units, polled, extra, seconds / rounds)
            results[name] += during
            if extra:
                before += pre
                opened.append(t_open)

    def change(a: str, b: str) -> str:
        ma, mb = statistics.median(results[a]), statistics.median(results[b])
        return f"{100 * (mb - ma) / ma:+.1f} %"

    print("\nbus isolation: 10 devices on one shared TCP bus (one lock), cycle time of units 1-9 "
          f"(timeout 0.2 s, 1 retry, breaker after 3 failures; {rounds} interleaved rounds)")
    for phase, vals in results.items():
        q = statistics.quantiles(vals, n=20)
        print(f"  {phase:16} mean {statistics.mean(vals) * 1000:6.2f} ms  median {statistics.median(vals) * 1000:6.2f}"
              f" ms  p95 {q[18] * 1000:6.2f} ms  ({len(vals)} cycles)")
    print(f"  unit 10 silent, median cycle vs normal: {change('normal', 'unit 10 silent')}, vs absent: "
          f"{change('unit 10 absent', 'unit 10 silent')}")
    print(f"  (measured once its breaker was open, {statistics.mean(opened):.2f} s after it went silent; "
          "no probe falls in the window: a probe costs one timeout per breaker_probe, default 60 s)")
    if before:
        print(f"  before the breaker opened: mean {statistics.mean(before) * 1000:.1f} ms, "
              f"max {max(before) * 1000:.1f} ms ({len(before)} cycles): each failed cycle of unit 10 holds "
              "the bus for its timeouts")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--isolation-seconds", type=float, default=5.0, help="per phase, split over 5 rounds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        prof = tmp / "bench-meter.yaml"
        prof.write_text(yaml.safe_dump(bench_profile(), sort_keys=False))
        asyncio.run(throughput(args.devices, args.cycles, prof, tmp))
        asyncio.run(isolation(prof, tmp, args.isolation_seconds))
    print(f"\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
