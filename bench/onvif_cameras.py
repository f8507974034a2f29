"""16 simulated ONVIF cameras with events flowing: the agent's CPU and RSS, as a process.

Runs Mosquitto and N camera simulators (drivers/onvif/sim.py, each a process on loopback, motion toggling
every --every seconds, so N/every events per second), and `edge-agent run` with N cameras of the
generic-onvif-camera profile (facts, PullPoint events). Samples the agent's RSS and CPU time from /proc.
Baseline in the same run: the same agent with only the box's own health device (idle cost).

    python bench/onvif_cameras.py [--cameras 16] [--seconds 60] [--every 1]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from agent_soak import free_port, run_agent, wait_port  # noqa: E402  (the same measurement as the soak bench)


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
