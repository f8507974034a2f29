"""Core sub-commands: run, validate, status, plan, write, monitor."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, EdgeAgentError, Problem

DEFAULT_SITE = "/etc/edge-agent/site.yaml"
WRITE_TIMEOUT = 30.0  # the agent's budget for one write (bus queue + retries); the CLI waits a bit longer


def _site_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=os.environ.get("EDGE_AGENT_CONFIG", DEFAULT_SITE),
                   help=f"site file (default: $EDGE_AGENT_CONFIG or {DEFAULT_SITE})")


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the agent (what systemd starts)")
    _site_arg(p)
    p.add_argument("--log-level", default=os.environ.get("EDGE_AGENT_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check site files and profiles; one line per problem")
    p.add_argument("paths", nargs="*", help="site files or profiles (default: the site file and shipped profiles)")
    _site_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("status", help="ask the running agent: uplink, outbox, devices, points")
    _site_arg(p)
    p.add_argument("--socket", help="status socket path (default: from the site file)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", help="only this device, with all its points")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("plan", help="print the requests one poll cycle of a device makes")
    _site_arg(p)
    p.add_argument("device", help="device name in the site file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("write", help="write a value to a writable point (through the running agent if any)")
    _site_arg(p)
    p.add_argument("device")
    p.add_argument("point")
    p.add_argument("value", help="number, true/false, or 'null' to relinquish (BACnet)")
    p.add_argument("--direct", action="store_true", help="talk to the device directly even if the agent runs")
    p.add_argument("--socket", help="status socket path (default: from the site file)")
    p.set_defaults(func=cmd_write)

    p = sub.add_parser("monitor", help="subscribe to a broker and print decoded messages of a site")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    p.add_argument("--prefix", default="ea/v1", help="topic prefix")
    p.add_argument("--site", default="+", help="site id (default: all)")
    p.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.set_defaults(func=cmd_monitor)


# --------------------------------------------------------------------------------------------- run


def setup_logging(level: str) -> None:
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)
    logging.getLogger("edge_agent.uplink.paho").setLevel(logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("bacpypes3").setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    from .app import Agent, install_signal_handlers
    from .config import load_site

    setup_logging(args.log_level)
    log = logging.getLogger("edge_agent")
    try:
        site = load_site(args.config, strict=False)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 78  # EX_CONFIG: systemd will not restart in a tight loop thanks to the start limit

    async def main() -> None:
        agent = Agent(site)
        install_signal_handlers(agent)
        await agent.run()
        if agent.restart:
            # Same PID for systemd; a fresh interpreter for the new configuration (drivers, profiles).
            logging.shutdown()
            os.execv(sys.executable, [sys.executable, "-m", "agent.cli", "run", "--config", args.config,
                                      "--log-level", args.log_level])
        if agent.abandoned:
            # asyncio.run() would wait forever for tasks that ignore cancellation; the outbox is closed.
            logging.shutdown()
            os._exit(0)

    try:
        asyncio.run(main())
    except EdgeAgentError as exc:
        log.error("fatal: %s", exc)
        return 1
    return 0


# ---------------------------------------------------------------------------------------- validate


def _kind(path: Path) -> str:
    from .yamlloc import load_file

    doc = load_file(path)
    if isinstance(doc.data, dict) and "driver" in doc.data and "site" not in doc.data:
        return "profile"
    return "site"


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import default_profile_dirs, load_profile, load_profiles, load_site

    problems: list[Problem] = []
    checked: list[str] = []
    paths = [Path(p) for p in args.paths]
    if not paths:
        _, shipped = load_profiles(default_profile_dirs())
        problems.extend(shipped)
        checked.append("profiles")
        if Path(args.config).exists():
            paths = [Path(args.config)]
    for path in paths:
        try:
            if path.is_dir():
                _, probs = load_profiles([path])
                problems.extend(probs)
            elif _kind(path) == "profile":
                load_profile(path)
            else:
                load_site(path, strict=True)
            checked.append(str(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if args.json:
        print(json.dumps({"ok": not problems, "checked": checked,
                          "problems": [{"file": p.file, "line": p.line, "key": p.key, "message": p.message}
                                       for p in problems]}, indent=2))
    else:
        for p in problems:
            print(p)
        if not problems:
            print(f"ok: {', '.join(checked) or 'nothing to check'}", file=sys.stderr)
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------ status


def _socket_for(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    from .config import load_site

    try:
        return load_site(args.config, strict=False).client_socket_path()
    except ConfigError:
        for cand in (Path("/run/edge-agent/agent.sock"), Path("/var/lib/edge-agent/agent.sock")):
            if cand.exists():
                return cand
        raise


def _age(v: float | None) -> str:
    if v is None:
        return "never"
    if v < 120:
        return f"{v:.0f}s"
    if v < 7200:
        return f"{v / 60:.0f}m"
    return f"{v / 3600:.1f}h"


def render_status(st: dict[str, Any], only: str | None = None) -> str:
    a, u, o = st["agent"], st["uplink"], st["outbox"]
    lines = [
        f"edge-agent {a['version']}  site {a['site']}  pid {a['pid']}  up {_age(a['uptime'])}",
        f"uplink   {u['state']} {u['broker']}  since {_age(u['since_age'])}  published {u['published']}"
        + (f"  last error: {u['last_error']}" if u.get("last_error") else ""),
        f"outbox   {o.get('depth', 0)} queued ({o.get('bytes', 0)} B of {o.get('max_bytes', 0)} B), oldest "
        f"{_age(o.get('oldest_age'))}, dropped {o.get('dropped_total', 0)} "
        f"(telemetry {o.get('dropped_telemetry', 0)}, events {o.get('dropped_events', 0)}, "
        f"refused {o.get('dropped_refused', 0)})"
        + (f", plus an unknown number lost to {o['lost_unknown']} damaged/emptied file(s) (last: seqs "
           f"{(o.get('lost_seqs') or ['?', '?'])[0] or '?'}-{(o.get('lost_seqs') or ['?', '?'])[1]})"
           if o.get("lost_unknown") else "")
        + (f"  STORE ERROR: {o['store_error']}" if o.get("store_error") else ""),
    ]
    for p in a.get("config_problems") or []:
        lines.append(f"config   {p}")
    lines.append("")
    for name, d in st["devices"].items():
        if only and name != only:
            continue
        err = f"  error: {d['last_error']}" if d.get("last_error") and not d["available"] else ""
        cyc = f"  cycle {d['cycle_ms']} ms" if d.get("cycle_ms") is not None else ""
        lines.append(f"{name:<20} {d['state']:<9} {d['type']} ({d['driver']})  last ok {_age(d['last_ok_age'])}"
                     f"{cyc}{err}")
        if only or len(st["devices"]) <= 5:
            for pname, p in d["points"].items():
                val = "-" if p["value"] is None else f"{p['value']}{(' ' + p['unit']) if p.get('unit') else ''}"
                extra = f"  ({p['last_error']}, {_age(p['last_error_age'])} ago)" if p.get("last_error") else ""
                lines.append(f"    {pname:<24} {val:<20} {p['quality']:<6} age {_age(p['age'])}{extra}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from .status import request

    try:
        path = _socket_for(args)
        ans = request(path, {"op": "status"})
    except ConfigError as exc:
        print(f"cannot find the status socket: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"no agent answering on {path}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    if not ans.get("ok"):
        print(f"agent error: {ans.get('error')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(ans["status"], indent=2, default=str))
    else:
        print(render_status(ans["status"], args.device))
    return 0


# -------------------------------------------------------------------------------------- plan/write


def _build_driver(args: argparse.Namespace) -> Any:
    from .config import load_site
    from .driver import DriverContext

    site = load_site(args.config, strict=False)
    dev = next((d for d in site.devices if d.name == args.device), None)
    if dev is None:
        names = ", ".join(d.name for d in site.devices)
        bad = [str(p) for p in site.problems if "devices[" in p.key]
        hint = f"; problems: {'; '.join(bad)}" if bad else ""
        raise ConfigError(f"no usable device named {args.device!r} in {args.config} (devices: {names}){hint}")
    cls = dev.spec.load_class()
    return dev, cls(dev, DriverContext(site.id, site.state_dir))


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        dev, driver = _build_driver(args)
    except EdgeAgentError as exc:
        print(exc, file=sys.stderr)
        return 2
    plan = driver.plan()
    if plan is None:
        print(f"driver {dev.driver!r} has no request plan", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan, indent=2, default=str))
        return 0
    print(f"{dev.name}: {len(plan)} request(s) per cycle for {len(dev.enabled_points)} point(s)")
    for i, req in enumerate(plan, 1):
        pts = req.get("points", [])
        head = "  ".join(f"{k}={v}" for k, v in req.items() if k != "points")
        print(f"{i:>3}. {head}  [{len(pts)} points] {', '.join(map(str, pts))}")
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    from .driver import check_write, coerce_cli_value
    from .status import request

    value = coerce_cli_value(args.value)
    if not args.direct:
        ans = None
        try:
            path = _socket_for(args)
            ans = request(path, {"op": "write", "device": args.device, "point": args.point, "value": value},
                          timeout=WRITE_TIMEOUT + 5)
        except (FileNotFoundError, ConnectionRefusedError, ConfigError):
            pass  # no agent running: write directly
        except TimeoutError:
            print(f"the agent did not answer within {WRITE_TIMEOUT + 5:g} s: outcome unknown, not retried "
                  "(check with `edge-agent status`)", file=sys.stderr)
            return 1
        except PermissionError as exc:
            print(f"cannot talk to the running agent ({exc}); run as root or a member of the edge-agent group "
                  "(a direct write beside a running agent is refused)", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"cannot talk to the running agent: {exc}; nothing written", file=sys.stderr)
            return 1
        if ans is not None:
            if ans.get("ok"):
                print(f"{args.device}.{args.point} = {ans.get('written')!r} (through the running agent)")
                return 0
            print(f"refused: {ans.get('error')}", file=sys.stderr)
            return 1

    async def direct() -> Any:
        dev, driver = _build_driver(args)
        pt = check_write(dev, args.point, value)
        await driver.start()
        try:
            return await driver.write(pt, value)
        finally:
            await driver.stop()

    try:
        written = asyncio.run(direct())
    except EdgeAgentError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"{args.device}.{args.point} = {written!r}")
    return 0


# ----------------------------------------------------------------------------------------- monitor


def cmd_monitor(args: argparse.Namespace) -> int:
    from .uplink.monitor import monitor

    try:
        return asyncio.run(monitor(args.broker, args.prefix, args.site, args.count, args.json))
    except KeyboardInterrupt:
        return 0
