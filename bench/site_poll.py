"""Whole-agent polling cost on a simulated site, as a process, against naive baselines in the same run.

    .venv/bin/python bench/site_poll.py                     # the five figures below, 3 runs each (~10 min)
    .venv/bin/python bench/site_poll.py --only modbus|bacnet [--devices 50] [--bacnet 20] [--seconds 20]

Modbus site (bench/site_sim.py): N Modbus TCP meters x 40 points (float32 and uint16; 4 points change at every
poll, 8 every ~10 s, 28 every ~5 min), one TCP port each, served by a minimal request-counting server in this
process. BACnet site: M bacpypes3 controllers (drivers/bacnet/sim.py, own processes, 127.0.0.10..) x 40 points
(present values of analog, binary and multi-state objects), each counting the requests it serves. A real
Mosquitto on loopback. Then, one after the other, in each of ``--runs`` rounds:

  * agent, defaults: ``edge-agent run`` (the whole agent process: supervisor, driver, pipeline, outbox,
    uplink), every meter polled every second, telemetry published to Mosquitto;
  * agent, ``max_outstanding: 4`` (the opt-in: several reads in flight on one connection);
  * naive Modbus baseline, bench/naive_poll.py: one request per point, one JSON message per device per poll,
    aiomqtt QoS 1;
  * agent on the BACnet controllers (ReadPropertyMultiple);
  * naive BACnet baseline, bench/naive_bacnet.py: one ReadProperty per point, one JSON message per device per
    poll, aiomqtt QoS 1.

For each, over a ``--seconds`` window after warm-up, from /proc and the servers' counters: CPU-seconds of the
process per 1,000 points polled, points polled per CPU-second, requests per cycle, RSS, and what reached the
broker (messages counted by a subscriber). Printed as min / median / max over the runs.

The goal of issue 15 is >= 100,000 points per CPU-second, i.e. <= 0.010 CPU-s per 1,000 points (the issue's
"<= 0.10 CPU-s per 1,000 points" is a unit slip: that is 10,000 per CPU-second), and BACnet within 2x of Modbus.

All traffic is on 127.0.0.0/8. Add ``--profile-agent FILE`` to run py-spy on the agent during the last window
of the first figure (py-spy must be installed; it is not a dependency); bench/spy_summary.py sums it up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from site_sim import Site, layout, profile  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
POINTS = len(layout())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Counter:
    """Subscribes to everything on the broker and counts messages per topic family."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.agent_telemetry = 0
        self.naive = 0
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="bench-counter") as c:
            await c.subscribe("#", qos=0)
            self.ready.set()
            async for m in c.messages:
                t = str(m.topic)
                if t.startswith("naive/"):
                    self.naive += 1
                elif "/t/" in t:
                    self.agent_telemetry += 1


async def agent_status(sock: Path) -> dict[str, Any]:
    """The agent's status snapshot, straight from its status socket (a few ms, so the window stays exact)."""
    reader, writer = await asyncio.open_unix_connection(str(sock), limit=2**24)
    try:
        writer.write(b'{"op": "status"}\n')
        await writer.drain()
        doc = json.loads(await reader.readline())
    finally:
        writer.close()
    return dict(doc["status"])


async def stop_proc(p: asyncio.subprocess.Process) -> None:
    if p.returncode is None:
        p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(p.wait(), 15)
        except TimeoutError:
            p.kill()
            await p.wait()


async def py_spy(pid: int, seconds: float, out: Path) -> None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    p = await asyncio.create_subprocess_exec(exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "1000",
                                             "-f", "raw", "-o", str(out), "--nonblocking",
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await p.wait()


def modbus_devices(site: Site, conn: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": f"meter{i}", "type": "bench-meter", "interval": "1s", "timeout": "1s",
             "connection": {"host": "127.0.0.1", "port": port, "unit": 1, **conn}} for i, port in enumerate(site.ports)]


async def run_agent(work: Path, requests: Any, counter: Counter, broker: int, warm: float, seconds: float,
                    run: int, spy: Path | None, devices: list[dict[str, Any]]) -> dict[str, float]:
    state = work / f"state-{run}"
    doc = {"site": {"id": "bench"}, "state_dir": str(state), "profiles_dirs": [str(work / "profiles")],
           "status": {"socket": str(work / f"agent-{run}.sock")},
           "uplink": {"broker": f"mqtt://127.0.0.1:{broker}"}, "devices": devices}
    site_file = work / f"site-{run}.yaml"
    site_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    log = open(work / f"agent-{run}.log", "wb")
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.tools.cli", "run", "--config",
                                             str(site_file), cwd=ROOT, stdout=log, stderr=log)
    try:
        await asyncio.sleep(warm)
        if p.returncode is not None:
            raise SystemExit(f"agent exited: {(work / f'agent-{run}.log').read_text()[-3000:]}")
        sock = work / f"agent-{run}.sock"
        s0 = await agent_status(sock)
        r0, m0, c0, t0 = await requests(), counter.agent_telemetry, cpu_s(p.pid), time.monotonic()
        spy_task = asyncio.create_task(py_spy(p.pid, seconds, spy)) if spy else None
        await asyncio.sleep(seconds)
        c1, m1, t1 = cpu_s(p.pid), counter.agent_telemetry, time.monotonic()
        r1 = await requests()
        rss = rss_mib(p.pid)
        s1 = await agent_status(sock)
        if spy_task:
            await spy_task
        polled = s1["pipeline"]["offered"] - s0["pipeline"]["offered"]
        online = sum(1 for d in s1["devices"].values() if d["available"])
        return {"cpu": c1 - c0, "polled": polled, "requests": r1 - r0, "messages": m1 - m0, "rss": rss,
                "wall": t1 - t0, "reported": s1["pipeline"]["reported"] - s0["pipeline"]["reported"],
                "depth": s1["outbox"]["depth"], "online": online}
    finally:
        await stop_proc(p)
        log.close()


async def run_naive(work: Path, cmd: list[str], counter: Counter, warm: float, seconds: float, run: int,
                    requests: Any, points: int, devices: int) -> dict[str, float]:
    """A baseline process: one request per point, so points polled = requests served."""
    log = open(work / f"naive-{run}.log", "wb")
    p = await asyncio.create_subprocess_exec(sys.executable, *cmd, cwd=ROOT, stdout=log, stderr=log)
    try:
        await asyncio.sleep(warm)
        if p.returncode is not None:
            raise SystemExit(f"baseline exited: {(work / f'naive-{run}.log').read_text()[-3000:]}")
        r0, m0, c0, t0 = await requests(), counter.naive, cpu_s(p.pid), time.monotonic()
        await asyncio.sleep(seconds)
        c1, m1, t1 = cpu_s(p.pid), counter.naive, time.monotonic()
        r1 = await requests()
        rss = rss_mib(p.pid)
        polled = r1 - r0  # one request per point
        return {"cpu": c1 - c0, "polled": polled, "requests": r1 - r0, "messages": m1 - m0, "rss": rss,
                "wall": t1 - t0, "reported": (m1 - m0) * points, "depth": 0, "online": devices}
    finally:
        await stop_proc(p)
        log.close()


BACNET_POINTS = 40
BACNET_EXTRA = 31  # analog values 100.. of the simulator, besides its 9 standard objects


def bacnet_profile() -> dict[str, Any]:
    pts: list[dict[str, Any]] = [
        {"name": f"ai{i}", "object_type": "analog-input", "instance": i} for i in range(1, 6)]
    pts += [{"name": "av1", "object_type": "analog-value", "instance": 1},
            {"name": "bv1", "object_type": "binary-value", "instance": 1},
            {"name": "bi1", "object_type": "binary-input", "instance": 1},
            {"name": "msv1", "object_type": "multi-state-value", "instance": 1}]
    pts += [{"name": f"x{i}", "object_type": "analog-value", "instance": 100 + i} for i in range(BACNET_EXTRA)]
    assert len(pts) == BACNET_POINTS
    return {"driver": "bacnet", "description": "bench controller (drivers/bacnet/sim.py --extra 31)",
            "device": {"max_points_per_request": 64}, "points": pts}


async def start_bacnet(work: Path, n: int, sims: list[asyncio.subprocess.Process]) -> list[dict[str, Any]]:
    """N simulated controllers on 127.0.0.10.. port 47808; the agent on 127.0.0.3:47809 (see docs/bacnet.md)."""
    (work / "profiles" / "bench-ahu.yaml").write_text(yaml.safe_dump(bacnet_profile(), sort_keys=False))
    devices = []
    for i in range(n):
        host, instance = f"127.0.0.{10 + i}", 3000 + i
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "drivers.bacnet.sim", "--address", f"{host}/8", "--instance", str(instance),
            "--extra", str(BACNET_EXTRA), "--tick", "1", cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        sims.append(p)
        devices.append({"name": f"ahu{i}", "type": "bench-ahu", "interval": "1s", "timeout": "1s",
                        "connection": {"device_instance": instance, "address": f"{host}:47808",
                                       "local_address": "127.0.0.3/8", "local_port": 47809}})
    for p in sims:
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 60)
        if not line.startswith(b"ready"):
            raise SystemExit("a BACnet simulator did not start")
    return devices


async def bacnet_requests(sims: list[asyncio.subprocess.Process]) -> int:
    """Confirmed requests the controllers served so far (each prints its count on SIGUSR1)."""
    for p in sims:
        p.send_signal(signal.SIGUSR1)
    total = 0
    for p in sims:
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 10)
        total += int(line.split()[1])
    return total


def figures(r: dict[str, float], devices: int, points: int) -> dict[str, float]:
    cycles = r["polled"] / (devices * points) if r["polled"] else 0.0
    return {
        "CPU-s per 1,000 points": 1000 * r["cpu"] / max(r["polled"], 1),
        "points per CPU-second": r["polled"] / max(r["cpu"], 1e-9),
        "CPU % of one core": 100 * r["cpu"] / r["wall"],
        "points polled per second": r["polled"] / r["wall"],
        "requests per cycle": r["requests"] / cycles if cycles else 0.0,
        "messages at broker / s": r["messages"] / r["wall"],
        "samples sent / s": r["reported"] / r["wall"],
        "RSS MiB (end)": r["rss"],
        "outbox depth (end)": r["depth"],
        "devices online": r["online"],
    }


def show(name: str, runs: list[dict[str, float]]) -> None:
    print(f"{name}")
    for key in runs[0]:
        vals = [r[key] for r in runs]
        fmt = (lambda v: f"{v:,.4f}") if key.startswith("CPU-s") else (lambda v: f"{v:,.1f}")
        print(f"  {key:28}{fmt(min(vals)):>12}{fmt(statistics.median(vals)):>12}{fmt(max(vals)):>12}")


def median(runs: list[dict[str, float]], key: str = "CPU-s per 1,000 points") -> float:
    return statistics.median(r[key] for r in runs)


async def main_async(args: argparse.Namespace) -> int:
    modbus, bacnet = args.only in (None, "modbus"), args.only in (None, "bacnet") and args.bacnet > 0
    results: dict[str, list[dict[str, float]]] = {}
    names = {
        "agent": "edge-agent, defaults (whole process)",
        "agent-mo": f"edge-agent, max_outstanding {args.max_outstanding}",
        "naive": "naive Modbus baseline (1 request per point, 1 JSON message per device per poll, aiomqtt QoS 1)",
        "bacnet": "edge-agent on BACnet/IP, defaults (ReadPropertyMultiple)",
        "bacnet-naive": "naive BACnet baseline (1 ReadProperty per point, 1 JSON message per device per poll)",
    }
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "profiles").mkdir()
        (work / "profiles" / "bench-meter.yaml").write_text(yaml.safe_dump(profile(), sort_keys=False))
        broker = free_port()
        (work / "m.conf").write_text(f"listener {broker} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                     "set_tcp_nodelay true\nmax_queued_messages 100000\n")
        mosq = await asyncio.create_subprocess_exec(shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                                                    str(work / "m.conf"), stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
        site = Site(args.devices if modbus else 0)
        await site.start()
        sims: list[asyncio.subprocess.Process] = []
        counter = Counter(broker)
        ctask: asyncio.Task[None] | None = None

        async def site_requests() -> int:
            return site.requests

        async def sim_requests() -> int:
            return await bacnet_requests(sims)

        try:
            for _ in range(100):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", broker), 0.2).close()
                    break
                await asyncio.sleep(0.05)
            ctask = asyncio.create_task(counter.run())
            await asyncio.wait_for(counter.ready.wait(), 10)
            plan: list[tuple[str, Any]] = []
            if modbus:
                conn: dict[str, Any] = {"tcp_client": args.tcp_client}
                plan.append(("agent", modbus_devices(site, conn)))
                if not args.agent_only:
                    plan.append(("agent-mo", modbus_devices(site, {**conn, "max_outstanding": args.max_outstanding})))
                    plan.append(("naive", ["bench/naive_poll.py", "--broker-port", str(broker),
                                           *[a for port in site.ports for a in ("--port", str(port))]]))
            if bacnet:
                bdevs = await start_bacnet(work, args.bacnet, sims)
                plan.append(("bacnet", bdevs))
                if not args.agent_only:
                    plan.append(("bacnet-naive", ["bench/naive_bacnet.py", "--broker-port", str(broker),
                                                  *[a for dv in bdevs for a in (
                                                      "--device",
                                                      f"{dv['connection']['device_instance']}@"
                                                      f"{dv['connection']['address']}")]]))
            for run in range(args.runs):
                line = []
                for key, what in plan:
                    is_bacnet = key.startswith("bacnet")
                    req = sim_requests if is_bacnet else site_requests
                    n_dev, pts = (args.bacnet, BACNET_POINTS) if is_bacnet else (args.devices, POINTS)
                    spy = work / "agent.spy" if args.profile_agent and run == args.runs - 1 and key == plan[0][0] \
                        else None
                    if key.endswith("naive"):
                        r = await run_naive(work, what, counter, args.warm, args.seconds, run, req, pts, n_dev)
                    else:
                        r = await run_agent(work, req, counter, broker, args.warm, args.seconds, run, spy, what)
                    results.setdefault(key, []).append(figures(r, n_dev, pts))
                    line.append(f"{key} {results[key][-1]['CPU-s per 1,000 points']:.4f}")
                print(f"run {run + 1} (load {os.getloadavg()[0]:.1f}), CPU-s per 1,000 points: " + ", ".join(line),
                      flush=True)
            if args.profile_agent and (work / "agent.spy").exists():
                shutil.copy(work / "agent.spy", args.profile_agent)
        finally:
            if ctask:
                ctask.cancel()
            await site.stop()
            for sim in sims:
                await stop_proc(sim)
            await stop_proc(mosq)
    print(f"\nsites: {args.devices} Modbus TCP meters x {POINTS} points" if modbus else "\nsites:", end="")
    if bacnet:
        print(f"{'; ' if modbus else ' '}{args.bacnet} BACnet/IP controllers (bacpypes3) x {BACNET_POINTS} points",
              end="")
    print(f"; every device polled every 1 s; {args.seconds:g} s windows after {args.warm:g} s warm-up, "
          f"{args.runs} runs; python {sys.version.split()[0]}, {os.cpu_count()} CPUs, shared (load average now "
          f"{os.getloadavg()[0]:.1f})")
    print(f"{'':30}{'min':>12}{'median':>12}{'max':>12}")
    for key, runs in results.items():
        show(names[key], runs)
    print("\nratios of the medians (CPU per point):")
    if "agent" in results and "naive" in results:
        print(f"  Modbus: agent defaults {median(results['naive']) / median(results['agent']):.1f}x cheaper than "
              "the naive baseline")
    if "agent-mo" in results and "naive" in results:
        print(f"  Modbus: agent max_outstanding {median(results['naive']) / median(results['agent-mo']):.1f}x "
              "cheaper than the naive baseline")
    if "bacnet" in results and "bacnet-naive" in results:
        print(f"  BACnet: agent {median(results['bacnet-naive']) / median(results['bacnet']):.1f}x cheaper than "
              "the naive baseline")
    if "bacnet" in results and "agent" in results:
        print(f"  BACnet agent costs {median(results['bacnet']) / median(results['agent']):.1f}x the Modbus agent "
              "per point (goal: within 2x)")
    print("goal (issue 15): >= 100,000 points per CPU-second with defaults, i.e. <= 0.010 CPU-s per 1,000 points "
          "(the issue's '<= 0.10 CPU-s per 1,000' is a unit slip: that is 10,000 per CPU-second; 100k is the "
          "target here)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["modbus", "bacnet"], help="only the Modbus or only the BACnet figures")
    ap.add_argument("--devices", type=int, default=50, help="Modbus meters (default 50)")
    ap.add_argument("--bacnet", type=int, default=20, metavar="N", help="BACnet controllers (default 20; 0: none)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    ap.add_argument("--warm", type=float, default=8.0, help="warm-up before each window")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--agent-only", action="store_true", help="skip the baselines and the max_outstanding figure")
    ap.add_argument("--tcp-client", choices=["native", "pymodbus"], default="native",
                    help="the agent's Modbus TCP client (connection.tcp_client)")
    ap.add_argument("--max-outstanding", type=int, default=4,
                    help="connection.max_outstanding of the second figure (default 4)")
    ap.add_argument("--profile-agent", metavar="FILE", help="py-spy raw (collapsed) profile of the last window of "
                    "the first figure")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
