"""16 simulated ONVIF cameras with events flowing: the agent's CPU and RSS, as a process.

Runs Mosquitto and N camera simulators (drivers/onvif/sim.py, each a process on loopback, motion toggling
every --every seconds, so N/every events per second), and `edge-agent run` with N cameras of the
generic-onvif-camera profile (facts, PullPoint events). Samples the agent's RSS and CPU time from /proc.
Baseline in the same run: the same agent with only the box's own health device (idle cost).

    python bench/onvif_cameras.py [--cameras 16] [--seconds 60] [--every 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def run_agent(work: Path, broker_port: int, devices: str, seconds: float, label: str) -> dict[str, float]:
    site = work / f"site-{label}.yaml"
    site.write_text(f"site: {{id: soak}}\nstate_dir: {work / ('state-' + label)}\n"
                    f"status: {{socket: {work / ('agent-' + label + '.sock')}}}\n"
                    f"uplink: {{broker: 'mqtt://127.0.0.1:{broker_port}'}}\n"
                    f"outbox: {{sync: full}}\ndevices:\n  - {{name: box, type: edge-box, interval: 5s}}\n{devices}")
    log = open(work / f"agent-{label}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent.tools.cli", "run", "--config", str(site)], cwd=ROOT,
                            stdout=log, stderr=log)
    try:
        time.sleep(5)  # start-up and first polls
        rss0, cpu0, t0 = rss_kib(proc.pid), cpu_s(proc.pid), time.monotonic()
        peak = rss0
        while time.monotonic() - t0 < seconds:
            time.sleep(2)
            if proc.poll() is not None:
                raise SystemExit(f"agent exited: {(work / f'agent-{label}.log').read_text()[-2000:]}")
            peak = max(peak, rss_kib(proc.pid))
        rss1, cpu1, t1 = rss_kib(proc.pid), cpu_s(proc.pid), time.monotonic()
        status = subprocess.run([sys.executable, "-m", "agent.tools.cli", "status", "--json", "--config", str(site)],
                                cwd=ROOT, capture_output=True, text=True, timeout=20)
        snap = json.loads(status.stdout)
        return {"rss0": rss0 / 1024, "rss1": rss1 / 1024, "peak": peak / 1024,
                "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "offered": snap["pipeline"]["offered"],
                "reported": snap["pipeline"]["reported"], "published": snap["uplink"]["published"],
                "depth": snap["outbox"]["depth"], "uptime": snap["agent"]["uptime"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--every", type=float, default=1.0, help="each camera toggles motion this often (s)")
    args = ap.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        try:
            bport = free_port()
            (work / "m.conf").write_text(f"listener {bport} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                         "set_tcp_nodelay true\n")
            procs.append(subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                                           str(work / "m.conf")], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            wait_port(bport)
            (work / "pw").write_text("bench-pw\n")
            ports = [free_port() for _ in range(args.cameras)]
            for i, port in enumerate(ports):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "drivers.onvif.sim", "--port", str(port), "--password", "bench-pw",
                     "--serial", f"B{i:03d}", "--motion-every", str(args.every)],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for port in ports:
                wait_port(port)
            devs = "".join(f"  - {{name: cam{i}, type: generic-onvif-camera, interval: 10s, slow_interval: 5m, "
                           f"timeout: 3s, connection: {{host: 127.0.0.1, port: {port}, password: "
                           f"{{file: {work / 'pw'}}}}}}}\n" for i, port in enumerate(ports))
            idle = run_agent(work, bport, "", args.seconds / 2, "idle")
            load = run_agent(work, bport, devs, args.seconds, "load")
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    rate = args.cameras / args.every
    print(f"onvif bench: {args.cameras} simulated cameras, motion toggling every {args.every:g} s "
          f"(~{rate:.0f} events/s), {args.seconds:g} s")
    print(f"  messages published {load['published']:.0f} ({load['published'] / load['uptime']:.1f}/s over the "
          f"agent's uptime), outbox depth at end {load['depth']:.0f}")
    print(f"  RSS: {load['rss0']:.1f} MiB after start-up -> {load['rss1']:.1f} MiB at end (peak {load['peak']:.1f}), "
          f"growth {load['rss1'] - load['rss0']:+.1f} MiB")
    print(f"  CPU: {load['cpu_pct']:.1f} % of one core")
    print(f"baseline (same run, box health only): RSS {idle['rss1']:.1f} MiB, CPU {idle['cpu_pct']:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
