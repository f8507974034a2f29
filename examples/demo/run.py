"""Demo site: Mosquitto + simulated devices + the agent + a monitor, all on loopback.

Everything runs on 127.0.0.1; the working files (site file, outbox, logs) go to .demo/ in the repository.
Each simulated device runs as its own process, so one can fail while the rest runs: stop it and start it
again from another terminal (`scripts/demo stop kitchen`, `scripts/demo start kitchen`, `scripts/demo
devices`), or schedule it (`scripts/demo --fail kitchen:20s:30s`: kitchen stops 20 s after the start and
comes back 30 s later). The agent reports the device offline, keeps polling the others, and reports it
online again when it answers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
sys.path.insert(0, str(ROOT))
CONTROL = "control.sock"  # in the work directory: how `demo stop|start|devices` talks to the running demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, work: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited early (code {proc.returncode}); see {work}/{what}.log")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"demo: {what} did not open port {port} within {timeout:.0f} s")


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration such as 20s, 500ms or 2m, got {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


@dataclass
class Failure:
    """``--fail NAME:AT:FOR``: stop NAME's simulator AT after the start, start it again FOR later."""

    device: str
    at: float
    duration: float
    stopped: bool = False
    done: bool = False


def failure(text: str) -> Failure:
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected DEVICE:AT:FOR such as kitchen:20s:30s, got {text!r}")
    return Failure(parts[0], seconds(parts[1]), seconds(parts[2]))


# ------------------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    name: str
    cmd: list[str]
    kw: dict[str, Any]
    popen: subprocess.Popen[bytes]
    devices: list[str] = field(default_factory=list)  # simulated devices this process serves
    stopped_on_purpose: bool = False
    reported: bool = False


class Processes:
    """Every process of the demo; simulators can be stopped and started again with the same command."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.all: list[Proc] = []

    def start(self, name: str, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        log: BinaryIO = open(self.work / f"{name}.log", "ab")  # lives as long as the process
        stdout = kw.pop("stdout", log)
        p = subprocess.Popen(cmd, stdout=stdout, stderr=log, cwd=ROOT, **kw)
        self.all.append(Proc(name, cmd, {**kw, "stdout": stdout}, p))
        return p

    def simulator_of(self, device: str) -> Proc | None:
        return next((p for p in self.all if device in p.devices), None)

    def stop(self, device: str) -> str:
        p = self.simulator_of(device)
        if p is None:
            return f"error: no simulated device {device!r} (devices: {', '.join(self.devices())})"
        if p.popen.poll() is not None:
            return f"{device}: already stopped"
        p.stopped_on_purpose = True
        p.popen.send_signal(signal.SIGTERM)
        try:
            p.popen.wait(5)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(5)
        others = [d for d in p.devices if d != device]
        return f"{device}: simulator stopped" + (f" (with {', '.join(others)}: same simulator)" if others else "")

    def restart(self, device: str) -> str:
        p = self.simulator_of(device)
        if p is None:
            return f"error: no simulated device {device!r} (devices: {', '.join(self.devices())})"
        if p.popen.poll() is None:
            return f"{device}: already running"
        kw = dict(p.kw)
        if kw.get("stdout") is subprocess.PIPE:
            kw["stdout"] = open(self.work / f"{p.name}.log", "ab")
        log = open(self.work / f"{p.name}.log", "ab")
        kw.pop("stderr", None)
        p.popen = subprocess.Popen(p.cmd, stderr=log, cwd=ROOT, **kw)
        p.stopped_on_purpose = p.reported = False
        return f"{device}: simulator started"

    def devices(self) -> list[str]:
        return [d for p in self.all for d in p.devices]

    def describe(self) -> str:
        lines = []
        for p in self.all:
            for d in p.devices:
                state = "running" if p.popen.poll() is None else "stopped"
                lines.append(f"{d:<16} {state:<8} {p.name} (pid {p.popen.pid})")
        return "\n".join(lines)

    def terminate_all(self) -> None:
        for p in reversed(self.all):
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in reversed(self.all):
            try:
                p.popen.wait(8)
            except subprocess.TimeoutExpired:
                p.popen.kill()


# --------------------------------------------------------------------------------------------- control


def open_control(work: Path) -> socket.socket:
    path = work / CONTROL
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.setblocking(False)
    return srv


def serve_control(srv: socket.socket, procs: Processes) -> None:
    """Answer the requests waiting on the control socket (never blocks the demo loop)."""
    while True:
        try:
            conn, _ = srv.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2)
            try:
                words = conn.recv(1024).decode(errors="replace").split()
            except OSError:
                continue
            if words[:1] == ["stop"] and len(words) == 2:
                answer = procs.stop(words[1])
            elif words[:1] == ["start"] and len(words) == 2:
                answer = procs.restart(words[1])
            elif words == ["devices"]:
                answer = procs.describe()
            else:
                answer = "error: expected stop DEVICE, start DEVICE or devices"
            print(f"demo: {answer.splitlines()[0] if answer else ''}", file=sys.stderr)
            with contextlib.suppress(OSError):
                conn.sendall(answer.encode() + b"\n")


def control(work: Path, words: list[str]) -> int:
    """`demo stop|start DEVICE`, `demo devices`: ask the running demo."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(15)
            s.connect(str(work / CONTROL))
            s.sendall(" ".join(words).encode())
            answer = s.makefile().read().strip()
    except OSError as exc:
        print(f"demo: no demo running in {work} ({exc.strerror or exc}); start one with scripts/demo",
              file=sys.stderr)
        return 3
    print(answer)
    return 1 if answer.startswith("error:") else 0


# ------------------------------------------------------------------------------------------------ main


def monitor_subscribed(mon: subprocess.Popen[bytes], budget: float) -> bool:
    """Wait for the monitor's "subscribed to" line (its stderr is passed on, now and later)."""
    subscribed = threading.Event()

    def pass_on() -> None:
        assert mon.stderr is not None
        for raw in mon.stderr:
            line = raw.decode(errors="replace")
            sys.stderr.write(line)
            sys.stderr.flush()
            if "subscribed to" in line:
                subscribed.set()

    threading.Thread(target=pass_on, name="monitor-stderr", daemon=True).start()
    deadline = time.monotonic() + budget
    while not subscribed.wait(0.1):
        if mon.poll() is not None or time.monotonic() > deadline:
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  scripts/demo --seconds 120 --fail kitchen:20s:30s\n  scripts/demo stop boiler\n"
               "  scripts/demo start boiler\n  scripts/demo devices")
    ap.add_argument("action", nargs="?", choices=["run", "stop", "start", "devices"], default="run",
                    help="run the demo (default), or ask a running one to stop/start a simulated device, or list "
                         "its simulated devices")
    ap.add_argument("device", nargs="?", help="simulated device name for stop/start (e.g. kitchen, ahu-1)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)")
    ap.add_argument("--json", action="store_true", help="monitor prints JSON lines")
    ap.add_argument("--fail", type=failure, action="append", default=[], metavar="DEVICE:AT:FOR",
                    help="stop DEVICE's simulator AT after the start and restart it FOR later (repeat)")
    ap.add_argument("--interval", default="5s", help="poll interval of the simulated meters (default 5s)")
    ap.add_argument("--sims", default="modbus,bacnet,onvif,access",
                    help="simulators to run (default modbus,bacnet,onvif,access)")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".demo", help="working files (default .demo)")
    args = ap.parse_args()
    work: Path = args.workdir.resolve()
    if args.action != "run":
        if args.action in ("stop", "start") and not args.device:
            ap.error(f"{args.action} needs a DEVICE (scripts/demo devices lists them)")
        return control(work, [args.action, *([args.device] if args.device else [])])
    unknown = set(args.sims.split(",")) - set(SIMULATORS)
    if unknown:
        ap.error(f"unknown simulators {sorted(unknown)} (known: {', '.join(SIMULATORS)})")

    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, `timeout`: stop everything as Ctrl-C does
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    procs = Processes(work)
    essential: list[Proc] = []
    srv: socket.socket | None = None
    try:
        mport = free_port()
        (work / "mosquitto.conf").write_text(
            f"listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n")
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        b = procs.start("mosquitto", [mosq, "-c", str(work / "mosquitto.conf")])
        essential.append(procs.all[-1])
        wait_port(mport, b, "mosquitto", work)

        devices = ["  - {name: box, type: edge-box, interval: 5s}"]
        for name in args.sims.split(","):
            devices += SIMULATORS[name](work, procs, args.interval)
        for f in args.fail:
            if procs.simulator_of(f.device) is None:
                raise SystemExit(f"demo: --fail {f.device}: no such simulated device ({', '.join(procs.devices())})")
        site = work / "site.yaml"
        metrics_port = free_port()
        site.write_text(
            "# Generated by examples/demo/run.py\n"
            "site: {id: demo-townhall, name: Demo town hall}\n"
            f"state_dir: {work / 'state'}\n"
            f"status: {{socket: {work / 'agent.sock'}}}\n"
            f"uplink: {{broker: 'mqtt://127.0.0.1:{mport}', batch_interval: 1s}}\n"
            f"metrics: {{listen: '127.0.0.1:{metrics_port}'}}\n"
            "devices:\n" + "\n".join(devices) + "\n")
        srv = open_control(work)
        shown = site.relative_to(ROOT) if site.is_relative_to(ROOT) else site
        print(f"demo: broker mqtt://127.0.0.1:{mport}; site file {shown}", file=sys.stderr)
        print(f"demo: status: .venv/bin/edge-agent status --config {shown}", file=sys.stderr)
        print(f"demo: metrics: curl -s http://127.0.0.1:{metrics_port}/metrics (docs/observability.md)",
              file=sys.stderr)
        print(f"demo: simulated devices: {', '.join(procs.devices())}; practise a failure with "
              "`scripts/demo stop NAME` and `scripts/demo start NAME`", file=sys.stderr)
        mon = subprocess.Popen([PY, "-m", "agent.tools.cli", "monitor", "--broker", f"mqtt://127.0.0.1:{mport}"]
                               + (["--json"] if args.json else []), cwd=ROOT, stderr=subprocess.PIPE)
        procs.all.append(Proc("monitor", [], {}, mon))
        essential.append(procs.all[-1])
        if not monitor_subscribed(mon, 30.0):  # else the agent's first messages (not retained) pass it by
            print("demo: the monitor did not subscribe within 30 s", file=sys.stderr)
            return 1
        procs.start("agent", [PY, "-m", "agent.tools.cli", "run", "--config", str(site)])
        essential.append(procs.all[-1])
        print("demo: agent started; decoded messages follow (Ctrl-C to stop)", file=sys.stderr)
        t0 = time.monotonic()
        deadline = t0 + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            for p in essential:
                if p.popen.poll() is not None:
                    print(f"demo: {p.name} exited with {p.popen.returncode}; see {work}/{p.name}.log",
                          file=sys.stderr)
                    return 1
            for p in procs.all:
                if p.devices and p.popen.poll() is not None and not p.stopped_on_purpose and not p.reported:
                    p.reported = True  # a simulator that dies is a failure to practise on, not the end
                    print(f"demo: simulator {p.name} exited with {p.popen.returncode} ({', '.join(p.devices)}); "
                          f"`scripts/demo start {p.devices[0]}` starts it again", file=sys.stderr)
            run_schedule(args.fail, procs, time.monotonic() - t0)
            for tick in TICKERS:
                tick(time.monotonic() - t0)
            serve_control(srv, procs)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if srv is not None:
            srv.close()
            with contextlib.suppress(FileNotFoundError):
                (work / CONTROL).unlink()
        procs.terminate_all()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_schedule(failures: list[Failure], procs: Processes, elapsed: float) -> None:
    for f in failures:
        if not f.stopped and elapsed >= f.at:
            f.stopped = True
            print(f"demo: --fail: {procs.stop(f.device)}", file=sys.stderr)
        elif f.stopped and not f.done and elapsed >= f.at + f.duration:
            f.done = True
            print(f"demo: --fail: {procs.restart(f.device)}", file=sys.stderr)


def _modbus(work: Path, procs: Processes, interval: str) -> list[str]:
    """One simulated Modbus TCP meter per shipped Modbus profile, each its own process and port (like meters
    with their own TCP gateway), so that one can be stopped while the others answer."""
    from drivers.modbus.sim import DEMO_DEVICES

    lines = []
    for prof, unit, name in DEMO_DEVICES:
        port = free_port()
        p = procs.start(f"sim-{name}", [PY, "-m", "drivers.modbus.sim", "--host", "127.0.0.1", "--port", str(port),
                                        "--device", f"{ROOT / 'profiles' / prof}.yaml:{unit}"])
        procs.all[-1].devices.append(name)
        wait_port(port, p, f"sim-{name}", work)
        lines.append(f"  - {{name: {name}, type: {prof}, interval: {interval}, timeout: 1s, "
                     f"connection: {{transport: tcp, host: 127.0.0.1, port: {port}, unit: {unit}}}}}")
    return lines


def _bacnet(work: Path, procs: Processes, interval: str) -> list[str]:
    """A simulated air-handler controller on BACnet/IP (127.0.0.2), followed by COV and polling."""
    from drivers.bacnet.sim import demo_devices

    before = len(procs.all)
    lines = demo_devices(work, procs.start)
    names = [m.group(1) for line in lines for m in [re.search(r"name: ([\w.-]+)", line)] if m]
    for p in procs.all[before:]:
        p.devices += names
    return lines


def _onvif(work: Path, procs: Processes, interval: str) -> list[str]:
    """A simulated ONVIF camera (facts, motion every 15 s with a snapshot of each), password from a file."""
    port = free_port()
    pw = work / "cam-hall-password"
    pw.write_text("demo-camera-pw\n")
    pw.chmod(0o600)
    p = procs.start("sim-cam-hall", [PY, "-m", "drivers.onvif.sim", "--host", "127.0.0.1", "--port", str(port),
                                     "--password", "demo-camera-pw", "--motion-every", "15"])
    procs.all[-1].devices.append("cam-hall")
    wait_port(port, p, "sim-cam-hall", work)
    return [f"  - {{name: cam-hall, type: generic-onvif-camera, interval: 10s, slow_interval: 5m, timeout: 3s, "
            f"connection: {{host: 127.0.0.1, port: {port}, user: admin, password: {{file: {pw}}}}}}}"]


class Badges:
    """Now and then at the demo panel: a badge granted, one denied, a door forced open (and closed again).
    The holder names given to the panel never reach the monitor (docs/privacy.md)."""

    STEPS = (("badge", {"ap": "AP_1", "credential": "CARD-0001", "holder": "Demo Person A", "result": "granted"}),
             ("badge", {"ap": "AP_2", "credential": "CARD-0666", "holder": "Demo Person B", "result": "denied",
                        "reason": "CredentialExpired"}),
             ("open", {"door": "Door_2"}), ("close", {"door": "Door_2"}))

    def __init__(self, port: int, first: float = 8.0, every: float = 10.0) -> None:
        self.port, self.next_at, self.every, self.i = port, first, every, 0

    def __call__(self, elapsed: float) -> None:
        import urllib.parse
        import urllib.request

        if elapsed < self.next_at:
            return
        what, query = self.STEPS[self.i % len(self.STEPS)]
        self.i += 1
        self.next_at = elapsed + (3.0 if what == "open" else self.every)
        url = f"http://127.0.0.1:{self.port}/control/{what}?{urllib.parse.urlencode(query)}"
        with contextlib.suppress(OSError):  # the panel stopped on purpose (scripts/demo stop panel)
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=2).close()


TICKERS: list[Callable[[float], None]] = []


def _access(work: Path, procs: Processes, interval: str) -> list[str]:
    """A simulated access panel with two doors (main: access/lock/unlock allowed; staff: read only), badges now
    and then, password from a file."""
    port = free_port()
    pw = work / "panel-password"
    pw.write_text("demo-panel-pw\n")
    pw.chmod(0o600)
    p = procs.start("sim-panel", [PY, "-m", "drivers.access.sim", "--host", "127.0.0.1", "--port", str(port),
                                  "--password", "demo-panel-pw", "--doors", "2"])
    procs.all[-1].devices.append("panel")
    wait_port(port, p, "sim-panel", work)
    TICKERS.append(Badges(port))
    return ["  - name: panel\n    type: generic-onvif-access-panel\n    interval: 5s\n    timeout: 3s\n"
            f"    connection:\n      host: 127.0.0.1\n      port: {port}\n      user: admin\n"
            f"      password: {{file: {pw}}}\n      doors:\n"
            "        - {token: Door_1, name: main, label: Main entrance, commands: [access, lock, unlock]}\n"
            "        - {token: Door_2, name: staff, label: Staff entrance}\n"
            "      access_points:\n        - {token: AP_1, name: main-reader}\n"
            "        - {token: AP_2, name: staff-reader}"]


SIMULATORS: dict[str, Callable[[Path, Processes, str], list[str]]] = {
    "modbus": _modbus, "bacnet": _bacnet, "onvif": _onvif, "access": _access,
}

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
