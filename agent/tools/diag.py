"""Field-tech diagnostics, offline on the site LAN: can I reach the broker, can I reach that device, what
does each of its points read right now and why does one fail.

``edge-agent diag broker`` walks the uplink step by step (name resolution, TCP, TLS + MQTT session with the
site's credentials) and says which step fails and why. ``edge-agent diag device NAME`` opens the device with
its real driver, shows the request plan, reads every point once and prints value, quality and error per
point, with timings. Neither needs the agent to run; both only read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.core.status import agent_listening
from agent.errors import ConfigError, EdgeAgentError
from agent.tools import tlsfiles
from agent.tools.args import default_site, json_arg, site_arg
from agent.tools.helptext import epilog

EXIT_REFUSED = 1  # docs/cli.md: 1 is "refused" for every command


@dataclass
class Step:
    name: str
    ok: bool
    ms: float
    detail: str = ""


@dataclass
class Report:
    target: str
    steps: list[Step] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def add(self, name: str, t0: float, ok: bool, detail: str = "") -> bool:
        self.steps.append(Step(name, ok, round((time.monotonic() - t0) * 1000, 1), detail))
        return ok


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diag", help="field diagnostics: reach the broker or a device, read its points once",
        description="Field checks with the site's own settings, without the agent: can this box reach the "
                    "broker, can it reach that device and what does each point read right now.",
        epilog=epilog(["edge-agent diag broker", "edge-agent diag device meter-main --json"],
                      {0: "every step passed", 1: "a step failed, or refused (see `diag device --help`)"}))
    dsub = p.add_subparsers(dest="diag_command", metavar="WHAT", required=True)
    texts = {
        "broker": ("resolve, connect and open an MQTT session with the site's settings",
                   "Walk the uplink step by step with the site file's settings: resolve the broker's name, TCP "
                   "connect, load the TLS files, open an MQTT session with the site's credentials, subscribe "
                   "the command topic. Says which step fails and why.",
                   epilog(["edge-agent diag broker", "edge-agent diag broker --timeout 5 --json"],
                          {0: "the broker accepted a session", 1: "a step failed (the report says which)"})),
        "device": ("connect to a device with its driver and read every point once",
                   "Open DEVICE with its real driver: TCP connect (TCP transports), the request plan, start, "
                   "one read of every point with value, unit, quality and error. Refused while the agent runs "
                   "(a second client could garble an RS-485 line or take BACnet replies): use `edge-agent "
                   "status --device NAME`, stop the agent, or --force.",
                   epilog(["edge-agent diag device meter-main", "edge-agent diag device ahu-1 --force --json"],
                          {0: "every point read good", 1: "a step failed or a point is not good; or refused "
                           "because the agent is running (without --force)",
                           2: "no such device, or the site file is invalid"})),
    }
    for name, (helptext, description, ep) in texts.items():
        q = dsub.add_parser(name, help=helptext, description=description, epilog=ep)
        site_arg(q, default=False)
        json_arg(q)
        q.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="budget of each step (default: %(default)s)")
        if name == "device":
            q.add_argument("device", metavar="DEVICE", help="device name in the site file")
            q.add_argument("--force", action="store_true",
                           help="run even though the agent is running (a second client on the device)")
        q.set_defaults(func=cmd_diag)


def cmd_diag(args: argparse.Namespace) -> int:

    from agent.config import load_site

    path = args.config or default_site()
    try:
        site = load_site(path, strict=False)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    if args.diag_command == "broker":
        report = asyncio.run(diag_broker(site, args.timeout))
    else:
        dev = next((d for d in site.devices if d.name == args.device), None)
        if dev is None:
            bad = [str(p) for p in site.problems if p.key.startswith("devices[")]
            print(f"no usable device named {args.device!r} in {path} (devices: "
                  f"{', '.join(d.name for d in site.devices) or 'none'})"
                  + (f"; problems: {'; '.join(bad)}" if bad else ""), file=sys.stderr)
            return 2
        if not args.force and agent_listening(site.client_socket_path()):
            print(f"the agent is running and talks to {dev.name}: a second client could garble an RS-485 line or "
                  "steal BACnet replies. Use `edge-agent status --device "
                  f"{dev.name}` (values, ages, last errors), or stop the agent, or pass --force.", file=sys.stderr)
            return EXIT_REFUSED
        report = asyncio.run(diag_device(site, dev, args.timeout))
    if args.json:
        print(json.dumps({"target": report.target, "ok": report.ok, "steps": [asdict(s) for s in report.steps],
                          "points": report.points}, indent=2, default=str))
    else:
        print(render(report))
    return 0 if report.ok else 1


def render(r: Report) -> str:
    lines = [r.target]
    for s in r.steps:
        lines.append(f"  {'ok  ' if s.ok else 'FAIL'} {s.name:<28} {s.ms:>8.1f} ms  {s.detail}")
    if r.points:
        lines.append("")
        for p in r.points:
            val = "-" if p["value"] is None else f"{p['value']}{(' ' + p['unit']) if p.get('unit') else ''}"
            err = f"  {p['error']}" if p.get("error") else ""
            lines.append(f"  {p['point']:<28} {val:<22} {p['quality']}{err}")
    bad = [p for p in r.points if p["quality"] != "good"]
    lines.append("")
    lines.append("result: " + ("OK" if r.ok and not bad else
                               "FAILED" if not r.ok else f"reachable, {len(bad)} point(s) not good"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ broker


def _oserr(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))


async def _tcp_step(r: Report, host: str, port: int, budget: float, silent_hint: str) -> bool:
    """One TCP connect as a report step; ``silent_hint`` explains a connect that gets no answer at all."""
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(budget):
            _, w = await asyncio.open_connection(host, port)
            w.close()
        return r.add("TCP connect", t0, True, f"{host}:{port}")
    except TimeoutError:
        return r.add("TCP connect", t0, False, f"no answer from {host}:{port} {silent_hint}")
    except OSError as exc:
        return r.add("TCP connect", t0, False, f"{host}:{port}: {_oserr(exc)}")


async def diag_broker(site: Any, budget: float) -> Report:
    import aiomqtt

    from agent.uplink.mqtt import build_tls_context

    up = site.model.uplink
    host, port = up.host, up.port
    r = Report(f"broker {up.broker} (site {site.id})")
    t0 = time.monotonic()
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                       budget)
        addrs = sorted({str(i[4][0]) for i in infos})
        r.add("resolve name", t0, True, ", ".join(addrs))
    except (OSError, TimeoutError) as exc:
        r.add("resolve name", t0, False, f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}")
        return r
    if not await _tcp_step(r, host, port, budget, f"within {budget:g} s (firewall? route?)"):
        return r
    t0 = time.monotonic()
    try:
        ctx = build_tls_context(up, site.secrets)
    except (OSError, ssl.SSLError, ValueError) as exc:
        r.add("TLS settings", t0, False, _tls_files_cause(up, site.secrets) or f"cannot load CA/certificate/key: {exc}")
        return r
    if ctx is not None:
        r.add("TLS settings", t0, True, "client certificate" if site.secrets.cert_file else "server check only")
    t0 = time.monotonic()
    client = aiomqtt.Client(host, port, identifier=f"edge-agent-{site.id}-diag", username=up.username,
                            password=site.secrets.password.get_secret_value() if site.secrets.password else None,
                            tls_context=ctx, timeout=budget, keepalive=max(5, int(budget)))
    try:
        async with asyncio.timeout(budget), client:
            r.add("MQTT session" + (" over TLS" if ctx else ""), t0, True, f"as {up.username or 'anonymous'}")
            t0 = time.monotonic()
            await client.subscribe(f"{up.topic_prefix}/{site.id}/cmd", qos=1, timeout=budget)
            r.add("subscribe command topic", t0, True, f"{up.topic_prefix}/{site.id}/cmd")
    except TimeoutError:
        hint = " (does the broker require a client certificate?)" if ctx and not site.secrets.cert_file else ""
        r.add("MQTT session", t0, False, f"no MQTT session within {budget:g} s{hint}")
    except aiomqtt.MqttError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError):
            r.add("MQTT session", t0, False, f"TLS failed: {tlsfiles.handshake_problem(cause)}")
        else:
            reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(exc)
            r.add("MQTT session", t0, False, f"refused: {reason}")
    except (OSError, ssl.SSLError) as exc:
        r.add("MQTT session", t0, False, f"{type(exc).__name__}: {exc}")
    return r


def _tls_files_cause(up: Any, secrets: Any) -> str | None:
    """What is wrong with the site's TLS files, in words (a swapped certificate and key, a CA that is a key)."""
    from pathlib import Path

    ca = up.tls.ca_file if up.tls else None
    problem = tlsfiles.ca_problem(Path(ca)) if ca else None
    if not problem and secrets.cert_file and secrets.key_file:
        problem = tlsfiles.pair_problem(Path(secrets.cert_file), Path(secrets.key_file))
    return problem


# ------------------------------------------------------------------------------------------------ device


async def diag_device(site: Any, dev: Any, budget: float) -> Report:
    from agent.contract.driver import DriverContext, driver_class

    r = Report(f"device {dev.name} ({dev.type}, driver {dev.driver})")
    conn = dev.connection
    host, port = getattr(conn, "host", None), getattr(conn, "port", None)
    if isinstance(host, str) and isinstance(port, int) and getattr(conn, "transport", "tcp") != "rtu":
        if not await _tcp_step(r, host, port, min(budget, dev.model.timeout * 2 + 1),
                               "(powered? cabled? right address?)"):
            return r
    t0 = time.monotonic()
    try:
        cls = driver_class(dev)
        driver = cls(dev, DriverContext(site.id, site.state_dir))
    except EdgeAgentError as exc:
        r.add("load driver", t0, False, str(exc))
        return r
    plan = driver.plan()
    if plan is not None:
        n_fast = sum(1 for row in plan if row.get("cycle", "fast") == "fast")
        slow = f" ({len(plan) - n_fast} on slow cycles)" if len(plan) > n_fast else ""
        r.add("plan", t0, True, f"{n_fast} request(s){slow} for {len(dev.enabled_points)} point(s)")
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(budget):
            await driver.start()
        r.add("start", t0, True)
        t0 = time.monotonic()
        async with asyncio.timeout(budget):
            samples = await driver.read(dev.enabled_points)
        good = sum(1 for s in samples if s.quality.name == "GOOD")
        r.add("read all points", t0, True, f"{good}/{len(samples)} good")
        units = {p.name: p.unit for p in dev.points}
        r.points = [{"point": s.point, "value": s.value, "unit": units.get(s.point),
                     "quality": s.quality.name.lower(), "error": s.error} for s in samples]
        extra = getattr(driver, "diag_steps", None)  # driver-specific checks (cameras: events, snapshot)
        if extra is not None:
            t0 = time.monotonic()
            async with asyncio.timeout(budget * 2):
                for name, ok, detail in await extra():
                    r.add(name, t0, ok, detail)
                    t0 = time.monotonic()
    except TimeoutError:
        r.add("read" if r.steps[-1].name == "start" else "start", t0, False, f"no answer within {budget:g} s")
    except EdgeAgentError as exc:
        r.add("read" if r.steps and r.steps[-1].name == "start" else "start", t0, False,
              f"{getattr(exc, 'code', 'error')}: {exc}")
    finally:
        await driver.stop()
    return r
