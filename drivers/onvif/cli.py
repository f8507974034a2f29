"""``edge-agent onvif discover|scan``: commissioning aids. onvif-zeep-async is imported only when the command runs."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from agent.tools.args import json_arg
from agent.tools.helptext import epilog


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "onvif", help="ONVIF cameras commissioning: discover cameras, scan one into a site snippet and a profile",
        description="Commissioning of ONVIF IP cameras from this box: find the cameras on the site LAN "
                    "(WS-Discovery), then connect to one camera, read what it is and "
                    "offers (identity, clock, media profiles, events, PTZ) and write the site-file entry and a "
                    "device-type profile skeleton to review. Works without the agent.",
        epilog=epilog(["edge-agent onvif discover",
                       "edge-agent onvif scan 192.0.2.10 --password-file /etc/credstore/cam-hall-password"],
                      {0: "done", 1: "failed (the message says why)", 3: "no camera answered"}))
    sub = p.add_subparsers(dest="onvif_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(sys.stderr), 2)[1])
    d = sub.add_parser(
        "discover", help="WS-Discovery probe: list the cameras that answer",
        description="Send a WS-Discovery Probe for video transmitters to the multicast group 239.255.255.250:3702 on "
                    "the local network and list the cameras that answer: address, port, model, name and location "
                    "from their scopes. Accepts the answers of cameras that leave out the ProbeMatches wrapper.",
        epilog=epilog(["edge-agent onvif discover",
                       "edge-agent onvif discover --interface 192.0.2.5 --timeout 5 --json"],
                      {0: "cameras listed", 1: "failed (e.g. no multicast route)", 3: "no camera answered"}))
    d.add_argument("--interface", metavar="IP", help="send the probe from this local address (default: the route's)")
    d.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                   help="seconds to wait for answers (default 3)")
    json_arg(d, "machine-readable output on stdout")
    d.set_defaults(func=cmd_discover)
    s = sub.add_parser(
        "scan", help="connect to a camera; write a site-file snippet and a profile skeleton",
        description="Connect to the camera at HOST, read its device information, clock, media profiles (resolution, "
                    "codec, frame rate), stream URIs and services, and print a site-file device entry (password by "
                    "reference, never inline) and a device-type profile skeleton listing the facts it offers. "
                    "Progress goes to stderr. The password is read from --password-env, --password-file, or asked "
                    "for on a terminal; it is never written out.",
        epilog=epilog(["edge-agent onvif scan 192.0.2.10 --password-file /etc/credstore/cam-hall-password",
                       "edge-agent onvif scan 192.0.2.10 --port 8080 --user viewer --password-env PW --name hall",
                       "edge-agent onvif scan 192.0.2.10 --password-env CAM_PW -o /etc/edge-agent/profiles/cam.yaml",
                       "edge-agent onvif scan 192.0.2.10 --password-env CAM_PW --json"],
                      {0: "snippet and profile skeleton written", 1: "refused login, or not an ONVIF camera",
                       3: "the camera did not answer"}))
    s.add_argument("host", metavar="HOST", help="camera address (IP or name)")
    s.add_argument("--port", type=int, default=80, metavar="PORT", help="HTTP port of the ONVIF service (default 80)")
    s.add_argument("--user", default="admin", metavar="USER", help="ONVIF user (default admin)")
    s.add_argument("--password-env", metavar="NAME", help="environment variable holding the password")
    s.add_argument("--password-file", metavar="FILE", help="file holding the password (also used in the snippet)")
    s.add_argument("--name", metavar="NAME", help="device name in the snippet (default: from the model)")
    s.add_argument("--id", metavar="ID", help="profile id (default: from manufacturer and model)")
    s.add_argument("-o", "--output", metavar="FILE", help="write the profile skeleton to this file (default: "
                   "stdout after the snippet)")
    s.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="budget of one request (default 5)")
    json_arg(s, "machine-readable output on stdout")
    s.set_defaults(func=cmd_scan)


def cmd_discover(args: argparse.Namespace) -> int:
    from .discovery import discover

    try:
        found = asyncio.run(discover(args.timeout, args.interface))
    except OSError as exc:
        print(f"edge-agent onvif discover: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
        return 0 if found else 3
    if not found:
        print("no camera answered", file=sys.stderr)
        return 3
    print(f"{'address':<21} {'model':<20} {'name':<24} scopes")
    for c in found:
        print(f"{c['address'] + ':' + str(c['port']):<21} {(c['model'] or '')[:20]:<20} {(c['name'] or '')[:24]:<24} "
              + " ".join(c["scopes"]))
    return 0


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "camera"


def _password(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The password and how the site file refers to it."""
    if args.password_env:
        val = os.environ.get(args.password_env)
        if val is None:
            raise ValueError(f"environment variable {args.password_env} is not set")
        return val, {"env": args.password_env}
    if args.password_file:
        try:
            return Path(args.password_file).read_text().rstrip("\r\n"), {"file": args.password_file}
        except OSError as exc:
            raise ValueError(f"cannot read {args.password_file}: {exc.strerror or exc}") from None
    if sys.stdin.isatty():
        return getpass.getpass(f"password of {args.user}@{args.host}: ", stream=sys.stderr), {"credential": "CHANGE-ME"}
    return "", {"credential": "CHANGE-ME"}


async def scan(args: argparse.Namespace, password: str) -> dict[str, Any]:
    from .session import CameraSession

    session = CameraSession(args.host, args.port, args.user, password, args.timeout, True)
    try:
        _progress(f"connecting to {args.host}:{args.port} as {args.user}...")
        await session.connect()
        info = await session.device_info()
        _progress(f"  {info.get('Manufacturer')} {info.get('Model')}, firmware {info.get('FirmwareVersion')}, "
                  f"serial {info.get('SerialNumber')}")
        offset = await session.clock_offset()
        _progress(f"  clock offset {offset:+.0f} s" + ("  (check the camera's NTP: evidence needs the right time)"
                                                       if abs(offset) > 5 else ""))
        streams = await session.streams()
        for st in streams:
            _progress(f"  media profile {st.summary()}  {st.uri or ''}")
        f = session.facts
        _progress(f"  events service: {'yes' if f.events else 'no'}, PTZ: {'yes' if f.ptz else 'no'}, "
                  f"snapshot: {'yes' if f.snapshot else 'no'}")
        return {"info": info, "clock_offset": offset, "streams": [vars(s) for s in streams],
                "events": f.events, "ptz": f.ptz, "snapshot": bool(f.snapshot)}
    finally:
        await session.close()


def skeleton(found: dict[str, Any], profile_id: str) -> dict[str, Any]:
    info = found["info"]
    pts: list[dict[str, Any]] = [
        {"name": "online", "fact": "online"},
        {"name": "clock_offset", "fact": "clock_offset", "unit": "s", "deadband": 1},
    ]
    pts += [{"name": n, "fact": n, "poll": "slow"} for n in ("manufacturer", "model", "firmware", "serial")]
    pts.append({"name": "profiles", "fact": "profiles", "poll": "slow"})
    streams = ["main", "sub"] if len(found["streams"]) > 1 else ["main"]
    for st in streams:
        pts += [{"name": f"{st}_stream_uri", "fact": "stream_uri", "stream": st, "poll": "slow"},
                {"name": f"{st}_resolution", "fact": "resolution", "stream": st, "poll": "slow"},
                {"name": f"{st}_codec", "fact": "codec", "stream": st, "poll": "slow"},
                {"name": f"{st}_fps", "fact": "fps", "stream": st, "unit": "fps", "poll": "slow"}]
    pts.append({"name": "snapshot_supported", "fact": "snapshot", "poll": "slow"})
    if found["ptz"]:
        pts.append({"name": "ptz", "fact": "ptz", "poll": "slow"})
    pts.append({"name": "events_supported", "fact": "events", "poll": "slow"})
    return {
        "driver": "onvif",
        "description": f"{info.get('Manufacturer')} {info.get('Model')} (scanned by edge-agent onvif scan)",
        "metadata": {"manufacturer": info.get("Manufacturer"), "model": info.get("Model"),
                     "notes": f"scanned with firmware {info.get('FirmwareVersion')}; review before use"},
        "device": {"events": {"enabled": bool(found["events"])}},
        "points": pts,
    }


def cmd_scan(args: argparse.Namespace) -> int:
    from agent.errors import DeviceTimeout, DeviceUnreachable, DriverError

    try:
        password, ref = _password(args)
    except ValueError as exc:
        print(f"edge-agent onvif scan: {exc}", file=sys.stderr)
        return 2
    try:
        found = asyncio.run(scan(args, password))
    except (DeviceUnreachable, DeviceTimeout) as exc:
        print(f"edge-agent onvif scan: {exc}", file=sys.stderr)
        return 3
    except DriverError as exc:
        print(f"edge-agent onvif scan: {exc.code}: {exc}", file=sys.stderr)
        return 1
    info = found["info"]
    profile_id = args.id or (Path(args.output).stem if args.output else
                             _slug(f"{info.get('Manufacturer') or ''} {info.get('Model') or 'onvif-camera'}"))
    name = args.name or _slug(str(info.get("Model") or "camera"))
    prof = skeleton(found, profile_id)
    site = {"name": name, "type": profile_id, "interval": "10s", "slow_interval": "5m",
            "connection": {"host": args.host, "port": args.port, "user": args.user, "password": ref}}
    if args.json:
        print(json.dumps({"found": found, "site_device": site, "profile_id": profile_id, "profile": prof}, indent=2,
                         default=str))
        return 0
    prof_text = (f"# {profile_id}.yaml: written by edge-agent onvif scan {args.host}; review before use\n"
                 + yaml.safe_dump(prof, sort_keys=False, allow_unicode=True, width=118))
    print("# site file: under devices:")
    print(yaml.safe_dump([site], sort_keys=False, default_flow_style=None, width=118).rstrip())
    if args.output:
        Path(args.output).write_text(prof_text)
        _progress(f"profile skeleton written to {args.output} (profile id: {profile_id})")
    else:
        print()
        print(prof_text.rstrip())
    return 0
