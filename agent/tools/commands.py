"""Core sub-commands: run, validate, status, plan, write, monitor."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from agent.errors import ConfigError, EdgeAgentError, Problem
from agent.tools.args import json_arg, site_arg, socket_arg
from agent.tools.helptext import EXIT_CODES, epilog

EX_CONFIG = 78  # `run` (and `validate`): the site file is invalid, the agent refuses to start with it
WRITE_TIMEOUT = 30.0  # the agent's budget for one write (bus queue + retries); the CLI waits a bit longer


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run the agent (what systemd starts)",
        description="Run the agent in the foreground: poll the site's devices, queue every value in the outbox, "
                    "publish to the broker. systemd starts it (edge-agent.service); run it by hand only with the "
                    "service stopped. SIGTERM/SIGINT stop it cleanly, SIGHUP reloads the site file.",
        epilog=epilog(["edge-agent run --config /etc/edge-agent/site.yaml",
                       "edge-agent run --config site.yaml --log-level debug"],
                      {0: "stopped cleanly", 1: "fatal error at run time (see the log)",
                       78: EXIT_CODES[78]}))
    site_arg(p)
    p.add_argument("--log-level", default=os.environ.get("EDGE_AGENT_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"],
                   help="log detail (default: $EDGE_AGENT_LOG_LEVEL or info)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "validate", help="check site files and profiles; one line per problem",
        description="Check site files, profiles or profile folders with the agent's own loader, without "
                    "starting anything. Every problem is one line FILE:LINE: key.path: message. Without "
                    "paths: the shipped and site-local profiles, and the site file if it exists.",
        epilog=epilog(["edge-agent validate", "edge-agent validate /etc/edge-agent/site.yaml",
                       "edge-agent validate /etc/edge-agent/profiles/acme-em100.yaml --json"],
                      {0: "no problem", 1: "problems the agent would run with (a device or profile skipped; "
                          "listed on stdout)", 78: "a site file the agent would refuse to start with"}))
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="site file, profile or profile folder (default: the site file and all profiles)")
    site_arg(p)
    json_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "status", help="ask the running agent: uplink, outbox, devices, points",
        description="Ask the running agent, through its status socket, how it is doing: uplink state and last "
                    "error, outbox depth and drops, each device's state, last success and last error, and each "
                    "point's value, unit, quality and age. Reads nothing from the devices itself.",
        epilog=epilog(["edge-agent status", "edge-agent status --device meter-main",
                       "edge-agent status --json | jq .outbox"],
                      {0: "healthy: uplink connected, every enabled device online, no store error",
                       1: "unhealthy (the reasons are printed), or the agent answered with an error",
                       2: "unknown --device, or no site file to find the socket in",
                       3: "no agent answering on the socket"}))
    site_arg(p)
    socket_arg(p)
    json_arg(p)
    p.add_argument("--device", metavar="NAME", help="only this device, with all its points")
    p.add_argument("--points", action="store_true", help="list every point of every device")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "retry", help="probe one device of the running agent now (ends its backoff)",
        description="Ask the running agent to probe one device at once: a device in backoff is tried now "
                    "instead of at its next probe, a polled one is polled now. Waits for the outcome and prints "
                    "the device's state. No other device is touched.",
        epilog=epilog(["edge-agent retry meter-main", "edge-agent retry meter-main --json"],
                      {0: "the device is online after the probe", 1: "it is not (its error is printed)",
                       2: "no such device, or it is not polled (enabled: false)", 3: "no agent answering"}))
    site_arg(p)
    p.add_argument("device", metavar="DEVICE", help="device name in the site file")
    socket_arg(p)
    json_arg(p)
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser(
        "plan", help="print the requests one poll cycle of a device makes",
        description="Print the requests one poll cycle of DEVICE makes (Modbus: unit, table, start, count and "
                    "the points each request carries; the slow cycle, where fast and slow points are read "
                    "together; splits learned from exception 2). Asks the running agent first (the device's own "
                    "limits, learned splits); without one, or with --offline, plans from the files. Talks to no "
                    "device.",
        epilog=epilog(["edge-agent plan meter-main", "edge-agent plan meter-main --json",
                       "edge-agent plan meter-main --offline"],
                      {0: "plan printed", 1: "this driver has no request plan",
                       2: "no such device, or the site file is invalid"}))
    site_arg(p)
    p.add_argument("device", metavar="DEVICE", help="device name in the site file")
    json_arg(p)
    p.add_argument("--offline", action="store_true", help="plan from the files even if the agent runs")
    socket_arg(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "write", help="write a value to a writable point (through the running agent if any)",
        description="Write VALUE to a read-write point of DEVICE. Goes through the running agent (queued on the "
                    "bus between polls) or, when no agent runs or with --direct, straight to the device. "
                    "Refused before any I/O for unknown or read-only points and values outside min/max.",
        epilog=epilog(["edge-agent write ahu-1 room_setpoint 21.5", "edge-agent write ahu-1 room_setpoint null",
                       "edge-agent write boiler fallback_period 30 --direct"],
                      {0: "written", 1: "refused or failed (the message says why)",
                       2: "no such device, or no permission to talk to the agent"}))
    site_arg(p)
    p.add_argument("device", metavar="DEVICE", help="device name in the site file")
    p.add_argument("point", metavar="POINT", help="point name in the device's profile")
    p.add_argument("value", metavar="VALUE", help="number, true/false (1/0, on/off, active/inactive), text, or "
                   "'null' to relinquish (BACnet)")
    p.add_argument("--direct", action="store_true", help="talk to the device directly even if the agent runs")
    socket_arg(p)
    p.set_defaults(func=cmd_write)

    p = sub.add_parser(
        "monitor", help="subscribe to a broker and print decoded messages of a site",
        description="Subscribe to a broker and print every message of a site decoded: births, telemetry with "
                    "point names and units, events, command acknowledgements. With --config it connects as the "
                    "agent does (TLS, client certificate, credentials, server name), under its own client id. "
                    "Ctrl-C stops it.",
        epilog=epilog(["edge-agent monitor --config /etc/edge-agent/site.yaml",
                       "edge-agent monitor --broker mqtt://127.0.0.1:1883",
                       "edge-agent monitor --site townhall-7 --count 10 --json"],
                      {0: "stopped (Ctrl-C or --count reached)",
                       1: "cannot reach or talk to the broker (timeout, refused, TLS failure: one line)",
                       2: "bad arguments (a broker URL without mqtt:// or mqtts://, an unreadable site file)"}))
    p.add_argument("--config", "-c", default=None,
                   help="site file: connect as the agent does (broker, TLS, client certificate, credentials, "
                        "server name, prefix, site id)")
    p.add_argument("--broker", default=None,
                   help="mqtt://host:port (TCP) or mqtts://host:port (TLS) (default: the site file's, else "
                        "mqtt://127.0.0.1:1883)")
    p.add_argument("--prefix", default=None, help="topic prefix (default: the site file's, else ea/v1)")
    p.add_argument("--site", default=None, help="site id (default: the site file's, else + for all)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="budget to connect, seconds")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N messages (0: never)")
    json_arg(p, "one JSON object per message")
    p.set_defaults(func=cmd_monitor)


# --------------------------------------------------------------------------------------------- run


# syslog priorities (sd-daemon(3)): a "<N>" line prefix tells journald the priority of that stderr line
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    return next((prio for level, prio in _PRIORITY if levelno >= level), 7)


def journal_stream() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=DEV:INODE of that stream)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """Every line (tracebacks too: journald splits the stream at newlines) starts with its ``<N>`` priority,
    so that ``journalctl -p warning`` shows warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if journal_stream():
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    logging.getLogger("edge_agent.uplink.paho").setLevel(logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("bacpypes3").setLevel(logging.WARNING)


def loop_factory(choice: str, log: logging.Logger) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The site's ``event_loop``: uvloop's, or None for asyncio's own. A missing uvloop (a box installed
    without it) costs a warning and CPU, never the start."""
    if choice != "uvloop":
        return None
    try:
        import uvloop
    except ImportError as exc:
        log.warning("event_loop uvloop: %s; running on asyncio's own event loop", exc)
        return None
    log.info("event loop: uvloop %s", getattr(uvloop, "__version__", "?"))
    return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.core.app import Agent, install_signal_handlers
    from agent.core.configstore import BASE, fail_version, resolve
    from agent.core.sitechecks import load_site_checked

    setup_logging(args.log_level)
    log = logging.getLogger("edge_agent")
    version = BASE
    try:
        site = load_site_checked(args.config, strict=False)
        try:
            path, version = resolve(site.state_dir, Path(args.config))  # a pushed version (docs/remote.md)
        except OSError as exc:
            log.error("config store unusable (%s); running the provisioned site file", exc)
        while version != BASE:
            try:
                site = load_site_checked(path, strict=False)
                break
            except ConfigError as exc:  # validated before the switch: only a changed environment gets here
                log.error("config version %s does not load: %s", version, exc)
                path, version = fail_version(site.state_dir, Path(args.config), version, str(exc))
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return EX_CONFIG  # the unit does not restart on it (RestartPreventExitStatus=78)
    except Exception as exc:  # a file must never cost a traceback and a restart loop
        print(f"{args.config}: cannot load the configuration: {type(exc).__name__}: {exc}"[:1000], file=sys.stderr)
        return EX_CONFIG

    async def main() -> None:
        agent = Agent(site, version=version, base_file=args.config)
        install_signal_handlers(agent)
        await agent.run()
        if agent.restart:
            # Same PID for systemd; a fresh interpreter for the new configuration (drivers, profiles).
            logging.shutdown()
            os.execv(sys.executable, [sys.executable, "-m", "agent.tools.cli", "run", "--config", args.config,
                                      "--log-level", args.log_level])
        if agent.abandoned:
            # asyncio.run() would wait forever for tasks that ignore cancellation; the outbox is closed.
            logging.shutdown()
            os._exit(0)

    try:
        with asyncio.Runner(loop_factory=loop_factory(site.model.event_loop, log)) as runner:
            runner.run(main())
    except EdgeAgentError as exc:
        log.error("fatal: %s", exc)
        return 1
    return 0


# ---------------------------------------------------------------------------------------- validate


def _check_path(path: Path) -> tuple[list[Problem], bool]:
    """(problems, whether `run` would refuse this file as its site file)."""
    from agent.config import load_profiles, parse_profile
    from agent.config.yamlloc import load_file
    from agent.core.sitechecks import load_site_checked as load_site

    if path.is_dir():
        return load_profiles([path])[1], False
    try:
        doc = load_file(path)
    except ConfigError as exc:
        return exc.problems, True
    if isinstance(doc.data, dict) and "driver" in doc.data and "site" not in doc.data:
        try:
            parse_profile(doc, path.stem)
        except ConfigError as exc:
            return exc.problems, False
        return [], False
    try:
        load_site(path, strict=True)
    except ConfigError as exc:
        try:
            load_site(path, strict=False)
        except ConfigError:
            return exc.problems, True
        return exc.problems, False
    return [], False


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0: fine; 1: problems the agent would run with (a device or a profile skipped); 78: a site file
    that `run` would refuse."""
    from agent.config import default_profile_dirs, load_profiles

    problems: list[Problem] = []
    checked: list[str] = []
    refused: list[str] = []
    paths = [Path(p) for p in args.paths]
    if not paths:
        _, shipped = load_profiles(default_profile_dirs())
        problems.extend(shipped)
        checked.append("profiles")
        if Path(args.config).exists():
            paths = [Path(args.config)]
    for path in paths:
        try:
            probs, refuse = _check_path(path)
        except Exception as exc:  # one located line, never a traceback
            probs, refuse = [Problem(str(path), None, "", f"cannot check: {type(exc).__name__}: {exc}"[:1000])], True
        problems.extend(probs)
        if refuse:
            refused.append(str(path))
        checked.append(str(path))
    if args.json:
        print(json.dumps({"ok": not problems, "checked": checked, "refused": refused,
                          "problems": [{"file": p.file, "line": p.line, "key": p.key, "message": p.message}
                                       for p in problems]}, indent=2))
    else:
        for p in problems:
            print(p)
        for r in refused:
            print(f"{r}: the agent would refuse to start with this site file (exit {EX_CONFIG})", file=sys.stderr)
        if problems and not refused:
            print("the agent would start, without the devices or profiles above", file=sys.stderr)
        if not problems:
            print(f"ok: {', '.join(checked) or 'nothing to check'}", file=sys.stderr)
    if refused:
        return EX_CONFIG
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------ status


def _socket_for(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    from agent.config import load_site

    try:
        return load_site(args.config, strict=False).client_socket_path()
    except ConfigError:
        for cand in (Path("/run/edge-agent/agent.sock"), Path("/var/lib/edge-agent/agent.sock")):
            if cand.exists():
                return cand
        raise


def _age(v: float | None) -> str:
    """A duration for people: 42 s, 13 min, 5.2 h, 3.1 d."""
    if v is None:
        return "never"
    if v < 120:
        return f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    if v < 172800:
        return f"{v / 3600:.1f} h"
    return f"{v / 86400:.1f} d"


def _bytes(n: float | None) -> str:
    """A size for people: 512 B, 1.5 KiB, 64 MiB."""
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            if unit == "B" or n == int(n):
                return f"{n:.0f} {unit}"
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _value(p: dict[str, Any]) -> str:
    v, unit = p["value"], p.get("unit")
    if v is None:
        return "-"
    if unit == "B" and isinstance(v, int | float) and not isinstance(v, bool):
        return _bytes(v)
    if isinstance(v, float):
        text = f"{v:.0f}" if abs(v) >= 1e7 else f"{v:.7g}"
    else:
        text = str(v)
    return f"{text} {unit}" if unit else text


def _table(rows: list[list[str]], indent: str = "") -> list[str]:
    """Rows of cells, every column but the last padded to its widest cell."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def device_summary(d: dict[str, Any]) -> str:
    """One device in one line: state, good/total points, last success, next probe, error."""
    parts = [d["state"], f"{d.get('points_good', 0)}/{d.get('points_total', 0)} points good",
             f"last ok {_age(d.get('last_ok_age'))}"]
    if d.get("next_probe_in") is not None:
        parts.append(f"next probe in {_age(d['next_probe_in'])}")
    if d.get("last_error") and d["state"] != "online":
        parts.append(f"error: {d['last_error']}")
    return ", ".join(parts)


def health_problems(st: dict[str, Any], only: str | None = None) -> list[str]:
    """What makes ``status`` exit 1: the uplink down, the outbox failing, config problems, any device (or the
    one asked for) not online, except devices switched off with ``enabled: false``."""
    problems = []
    if only is None:
        u, o = st["uplink"], st["outbox"]
        if not u.get("connected"):
            problems.append(f"uplink {u['state']}" + (f" ({u['last_error']})" if u.get("last_error") else ""))
        if o.get("store_error"):
            problems.append(f"outbox: {o['store_error']}")
        if st["agent"].get("config_problems"):
            problems.append(f"{len(st['agent']['config_problems'])} configuration problem(s)")
    for name, d in st["devices"].items():
        if only is not None and name != only:
            continue
        if d["state"] == "online" or (d["state"] == "disabled" and d.get("enabled") is False):
            continue
        problems.append(f"{name} {d['state']}")
    return problems


def _point_lines(d: dict[str, Any]) -> list[str]:
    points = d["points"]
    errors = Counter(p["last_error"] for p in points.values() if p.get("last_error") and p["quality"] != "good")
    shared = {e for e, n in errors.items() if n >= 2 or (d.get("last_error") and e in d["last_error"])}
    lines = [f"    {errors[e]} point(s): {e}" for e in sorted(shared, key=lambda e: -errors[e])]
    rows = []
    for pname, p in points.items():
        err = p.get("last_error") if p["quality"] != "good" else None
        extra = f"({err}, {_age(p['last_error_age'])} ago)" if err and err not in shared else ""
        rows.append([pname, _value(p), p["quality"], f"age {_age(p['age'])}", extra])
    return lines + _table(rows, "    ")


def render_status(st: dict[str, Any], only: str | None = None, points: bool = False) -> str:
    a, u, o = st["agent"], st["uplink"], st["outbox"]
    lines = [
        f"edge-agent {a['version']}  site {a['site']}  pid {a['pid']}  up {_age(a['uptime'])}",
        f"uplink   {u['state']} {u['broker']}  since {_age(u['since_age'])}  published {u['published']}"
        + (f"  last error: {u['last_error']}" if u.get("last_error") else "")
        + ("  INSECURE: credentials in cleartext (allow_insecure)" if u.get("cleartext_credentials") else ""),
        f"outbox   {o.get('depth', 0)} queued ({_bytes(o.get('bytes', 0))} of {_bytes(o.get('max_bytes', 0))}), "
        f"oldest {_age(o.get('oldest_age'))}, dropped {o.get('dropped_total', 0)} "
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
    shown = {n: d for n, d in st["devices"].items() if only is None or n == only}
    rows = []
    for name, d in shown.items():
        extra = []
        if d.get("next_probe_in") is not None:
            extra.append(f"next probe in {_age(d['next_probe_in'])}")
        if d.get("last_error") and d["state"] != "online":
            extra.append(f"error: {d['last_error']}")
        rows.append([name, d["state"], f"{d.get('points_good', 0)}/{d.get('points_total', 0)} good",
                     f"last ok {_age(d['last_ok_age'])}",
                     f"cycle {d['cycle_ms']} ms" if d.get("cycle_ms") is not None else "",
                     f"{d['type']} ({d['driver']})", "  ".join(extra)])
    table = _table(rows)
    for line, d in zip(table, shown.values(), strict=True):
        lines.append(line)
        if only or points:
            lines.extend(_point_lines(d))
    problems = health_problems(st, only)
    lines.append("")
    lines.append("health   " + ("ok" if not problems else "UNHEALTHY: " + "; ".join(problems)))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0: healthy; 1: something unhealthy (see health_problems) or the agent refused; 2: usage (unknown
    device, no site file); 3: no agent answering."""
    from agent.core.status import request

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
    st = ans["status"]
    if args.device is not None and args.device not in st["devices"]:
        print(f"no device named {args.device!r} (devices: {', '.join(st['devices']) or 'none'})", file=sys.stderr)
        return 2
    problems = health_problems(st, args.device)
    if args.json:
        print(json.dumps({**st, "health": {"ok": not problems, "problems": problems}}, indent=2, default=str))
    else:
        print(render_status(st, args.device, args.points))
    return 1 if problems else 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Exit 0: the device is online after the probe; 1: it is not (or the probe is still running); 2: no such
    device or not polled; 3: no agent answering."""
    from agent.core.status import request

    try:
        path = _socket_for(args)
        ans = request(path, {"op": "retry", "device": args.device}, timeout=60.0)
    except ConfigError as exc:
        print(f"cannot find the status socket: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"no agent answering on {path}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    if not ans.get("ok"):
        print(f"refused: {ans.get('error')}", file=sys.stderr)
        return 2
    d = ans["device"]
    if args.json:
        print(json.dumps(ans, indent=2, default=str))
    else:
        print(f"{args.device}: {device_summary(d)}" + ("" if ans.get("finished") else " (probe still running)"))
    return 0 if d["state"] == "online" else 1


# -------------------------------------------------------------------------------------- plan/write


def _build_driver(args: argparse.Namespace) -> Any:
    from agent.config import load_site
    from agent.contract.driver import DriverContext, driver_class

    site = load_site(args.config, strict=False)
    dev = next((d for d in site.devices if d.name == args.device), None)
    if dev is None:
        names = ", ".join(d.name for d in site.devices)
        bad = [str(p) for p in site.problems if "devices[" in p.key]
        hint = f"; problems: {'; '.join(bad)}" if bad else ""
        raise ConfigError(f"no usable device named {args.device!r} in {args.config} (devices: {names}){hint}")
    cls = driver_class(dev)
    return dev, cls(dev, DriverContext(site.id, site.state_dir))


def _agent_plan(args: argparse.Namespace) -> tuple[list[dict[str, Any]] | None, str]:
    """The running agent's plan of the device (live device limits, learned splits), or None and why not."""
    from agent.core.status import request

    try:
        ans = request(_socket_for(args), {"op": "plan", "device": args.device}, timeout=10)
    except (OSError, ConfigError) as exc:
        return None, f"no agent answering ({getattr(exc, 'strerror', None) or exc})"
    if not ans.get("ok"):
        return None, f"the agent says: {ans.get('error')}"
    return ans.get("plan"), "from the running agent"


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        dev, driver = _build_driver(args)
    except EdgeAgentError as exc:
        print(exc, file=sys.stderr)
        return 2
    plan, source = (None, "--offline") if args.offline else _agent_plan(args)
    if plan is None:
        source = f"from the files ({source}): the device's own limits and learned splits are not known"
        plan = driver.plan()
    if plan is None:
        print(f"driver {dev.driver!r} has no request plan", file=sys.stderr)
        return 1
    if args.json:
        print(f"plan of {dev.name} {source}", file=sys.stderr)
        print(json.dumps(plan, indent=2, default=str))
        return 0
    n_fast = sum(1 for r in plan if r.get("cycle", "fast") == "fast")
    n_slow = len(plan) - n_fast
    if n_fast and n_slow:
        head = (f"{n_fast} request(s) per fast cycle, {n_slow} per slow cycle (fast and slow points read "
                "together)")
    else:
        head = f"{len(plan)} request(s) per cycle"
    print(f"{dev.name}: {head} for {len(dev.enabled_points)} point(s)")
    print(f"  {source}")
    for i, req in enumerate(plan, 1):
        pts = req.get("points", [])
        head = "  ".join(f"{k}={v}" for k, v in req.items() if k not in ("points", "hints"))
        print(f"{i:>3}. {head}  [{len(pts)} points] {', '.join(map(str, pts))}")
        for hint in req.get("hints", []):
            print(f"     hint: {hint}")
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    from agent.contract.driver import prepare_write
    from agent.core.status import request

    if not args.direct:
        ans = None
        try:
            path = _socket_for(args)
            # the text as typed: the agent reads it by the point's type (actve for a binary point is refused)
            ans = request(path, {"op": "write", "device": args.device, "point": args.point, "value": args.value},
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
        pt, value = prepare_write(dev, args.point, args.value, text=True)  # refused here: nothing sent
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
    import ssl

    from agent.config import load_site
    from agent.tools.monitor import monitor, target_for

    try:
        site = load_site(args.config, strict=False) if args.config else None
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    try:
        target = target_for(args.broker, site, args.prefix, args.site)
    except ValueError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as exc:
        print(f"monitor: cannot load the TLS CA/certificate/key: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(monitor(target, args.count, args.json, args.timeout))
    except KeyboardInterrupt:
        return 0
