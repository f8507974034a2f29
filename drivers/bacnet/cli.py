"""``edge-agent bacnet discover|scan``: commissioning aids. bacpypes3 is imported only when a command runs."""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import re
import sys
from typing import Any

from agent.tools.args import json_arg
from agent.tools.helptext import epilog

from . import BACnetConnection, unit_symbol

# Object types a profile skeleton lists: those with a present-value worth telemetry.
SCAN_TYPES = (
    "analog-input", "analog-output", "analog-value", "binary-input", "binary-output", "binary-value",
    "multi-state-input", "multi-state-output", "multi-state-value", "integer-value",
    "positive-integer-value", "large-analog-value", "accumulator", "pulse-converter", "loop",
)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", default="host", metavar="ADDRESS",
                   help="this box's interface: IP/prefix, IP, interface name (eth0), or host (default: the "
                   "interface of the default route)")
    p.add_argument("--port", type=int, default=47808, metavar="PORT", help="local UDP port (default 47808)")
    p.add_argument("--local-instance", type=int, default=4194000, metavar="N",
                   help="this box's own device instance (default: %(default)s)")
    p.add_argument("--bbmd", metavar="IP[:PORT]", help="register as foreign device with this BBMD (IP[:port])")
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                   help="seconds to wait for answers (default 3)")
    json_arg(p, "machine-readable output on stdout")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bacnet", help="BACnet/IP commissioning: discover devices, scan one into a profile",
        description="Commissioning of BACnet/IP devices from this box: find the devices on the site LAN, then "
                    "read one device's objects into a profile skeleton. Works without the agent (stop it "
                    "first if it uses UDP port 47808, or use --port 47809).",
        epilog=epilog(["edge-agent bacnet discover",
                       "edge-agent bacnet scan 1001 -o /etc/edge-agent/profiles/ahu.yaml"],
                      {0: "done", 1: "failed (the message says why)", 3: "no device answered"}))
    sub = p.add_subparsers(dest="bacnet_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(sys.stderr), 2)[1])

    d = sub.add_parser(
        "discover", help="Who-Is over an instance range; list the devices that answer",
        description="Send a Who-Is over an instance range (broadcast on the local network, to one broadcast "
                    "address, or unicast to one address) and list the devices that answer: instance, address, "
                    "vendor, model, max APDU and segmentation.",
        epilog=epilog(["edge-agent bacnet discover",
                       "edge-agent bacnet discover --low 1000 --high 1999 --timeout 5",
                       "edge-agent bacnet discover --address 192.0.2.20 --port 47809 --json"],
                      {0: "devices listed", 1: "failed (e.g. the local port is taken)",
                       3: "no device answered"}))
    _common(d)
    d.add_argument("--low", type=int, default=0, metavar="N", help="lowest device instance (default 0)")
    d.add_argument("--high", type=int, default=4194302, metavar="N",
                   help="highest device instance (default %(default)s)")
    d.add_argument("--address", metavar="IP[:PORT]", help="send the Who-Is to this IP[:port] only (unicast)")
    d.add_argument("--broadcast", metavar="IP[:PORT]",
                   help="send the Who-Is to this broadcast IP[:port] (default: the local "
                   "interface's broadcast on the local port)")
    d.set_defaults(func=cmd_discover)

    s = sub.add_parser(
        "scan", help="read a device's objects and write a device-type profile skeleton",
        description="Read device DEVICE's object list, and the name, description and units of its inputs, "
                    "outputs and values, and write a device-type profile skeleton to review (points, units, "
                    "writable objects marked).",
        epilog=epilog(["edge-agent bacnet scan 1001",
                       "edge-agent bacnet scan 1001 --address 192.0.2.20 -o /etc/edge-agent/profiles/ahu.yaml",
                       "edge-agent bacnet scan 1001 --json"],
                      {0: "profile skeleton written",
                       1: "the device did not answer, or has no device object DEVICE (wrong instance)"}))
    _common(s)
    s.add_argument("device", metavar="DEVICE", type=int, help="device instance")
    s.add_argument("--address", metavar="IP[:PORT]", help="IP[:port] of the device (default: found by Who-Is)")
    s.add_argument("-o", "--output", metavar="FILE", help="write the profile skeleton to this file (default: stdout "
                   "unless --json)")
    s.add_argument("--id", metavar="ID", help="profile id (default: from the model name)")
    s.add_argument("--all-types", action="store_true", help="list every object type, not only I/O and values")
    s.set_defaults(func=cmd_scan)


def _conn(args: argparse.Namespace, **kw: Any) -> BACnetConnection:
    from pydantic import ValidationError

    try:
        return BACnetConnection(device_instance=kw.get("device_instance", 0), address=kw.get("address"),
                                local_address=args.local, local_port=args.port,
                                local_instance=args.local_instance, bbmd=args.bbmd)
    except ValidationError as exc:  # one line per bad option, as the user typed it
        opts = {"local_address": "--local", "local_port": "--port", "local_instance": "--local-instance",
                "bbmd": "--bbmd", "address": "--address", "device_instance": "DEVICE"}
        raise ValueError("; ".join(f"{opts.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else ''}: "
                                   f"{e['msg'].removeprefix('Value error, ')}"
                                   for e in exc.errors(include_url=False))) from None


# ------------------------------------------------------------------------------------------------ discover


def cmd_discover(args: argparse.Namespace) -> int:
    from bacpypes3.apdu import ErrorRejectAbortNack

    try:
        devices = asyncio.run(discover(args))
    except (Exception, ErrorRejectAbortNack) as exc:  # the CLI boundary (bacpypes3's errors are BaseException)
        print(f"edge-agent bacnet discover: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(devices, indent=2))
    else:
        if not devices:
            print("no device answered", file=sys.stderr)
        print(f"{'instance':>9}  {'address':<21} {'vendor':<24} {'model':<20} {'max-apdu':>8}  segmentation")
        for dv in devices:
            vendor = dv["vendor_name"] or str(dv["vendor_id"])
            print(f"{dv['instance']:>9}  {dv['address']:<21} {vendor[:24]:<24} {(dv['model'] or '')[:20]:<20} "
                  f"{dv['max_apdu']:>8}  {dv['segmentation']}")
    return 0 if devices else 3


async def discover(args: argparse.Namespace) -> list[dict[str, Any]]:
    from bacpypes3.apdu import ErrorRejectAbortNack, WhoIsRequest
    from bacpypes3.pdu import Address

    from .driver import open_application
    from .localif import resolve_local

    conn = _conn(args)
    local = resolve_local(conn.local_address)
    if local.endswith("/32") and not (args.address or args.broadcast or args.bbmd):
        raise ValueError(f"--local {local} has no broadcast address, so a Who-Is reaches nobody: give the real "
                         "prefix, --address, --broadcast or --bbmd")
    app = await open_application(conn, local=local, shared_ok=True)
    try:
        _progress(f"Who-Is {args.low}-{args.high}, waiting {args.timeout:g}s for I-Am...")
        if args.address:
            i_ams = await app.who_is(args.low, args.high, address=Address(args.address), timeout=args.timeout)
        elif args.broadcast:
            fut = app.who_is(args.low, args.high, timeout=args.timeout)
            app.request(WhoIsRequest(deviceInstanceRangeLowLimit=args.low, deviceInstanceRangeHighLimit=args.high,
                                     destination=Address(args.broadcast)))
            i_ams = await fut
        else:
            i_ams = await app.who_is(args.low, args.high, timeout=args.timeout)
        seen: dict[int, Any] = {}
        for i_am in i_ams or []:
            seen.setdefault(int(i_am.iAmDeviceIdentifier[1]), i_am)
        _progress(f"{len(seen)} device(s) answered; reading vendor and model names...")

        async def details(inst: int, i_am: Any) -> dict[str, Any]:
            out: dict[str, Any] = {
                "instance": inst, "address": str(i_am.pduSource), "vendor_id": int(i_am.vendorID),
                "vendor_name": None, "model": None, "name": None,
                "max_apdu": int(i_am.maxAPDULengthAccepted), "segmentation": str(i_am.segmentationSupported),
            }
            for key, prop in (("vendor_name", "vendor-name"), ("model", "model-name"), ("name", "object-name")):
                try:
                    async with asyncio.timeout(args.timeout):
                        v = await app.read_property(i_am.pduSource, f"device,{inst}", prop)
                    out[key] = str(v)
                except (ErrorRejectAbortNack, TimeoutError):
                    pass
            return out

        return list(await asyncio.gather(*(details(i, seen[i]) for i in sorted(seen))))
    finally:
        app.close()


# ------------------------------------------------------------------------------------------------ scan


def cmd_scan(args: argparse.Namespace) -> int:
    from bacpypes3.apdu import ErrorRejectAbortNack

    try:
        result = asyncio.run(scan(args))
    except (Exception, ErrorRejectAbortNack) as exc:  # the CLI boundary (bacpypes3's errors are BaseException)
        print(f"edge-agent bacnet scan: {exc}", file=sys.stderr)
        return 1
    profile = result.pop("profile")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(profile)
        _progress(f"profile skeleton written to {args.output}: {len(result['points'])} points")
    if args.json:
        print(json.dumps(result, indent=2))
    elif not args.output:
        print(profile, end="")
    return 0


async def _read(app: Any, addr: Any, objid: str, prop: str, budget: float, index: int | None = None) -> Any:
    from bacpypes3.apdu import ErrorRejectAbortNack

    try:
        async with asyncio.timeout(budget):
            return await app.read_property(addr, objid, prop, index)
    except ErrorRejectAbortNack:
        return None


async def scan(args: argparse.Namespace) -> dict[str, Any]:
    from bacpypes3.apdu import ErrorRejectAbortNack
    from bacpypes3.pdu import Address

    from .driver import open_application
    from .scanner import Describer
    from .values import to_value

    app = await open_application(_conn(args), shared_ok=True)
    try:
        inst = args.device
        if args.address:
            addr = Address(args.address)
        else:
            _progress(f"Who-Is {inst}...")
            i_ams = await app.who_is(inst, inst, timeout=args.timeout)
            if not i_ams:
                raise RuntimeError(f"device {inst} did not answer a Who-Is within {args.timeout:g}s; give --address")
            addr = i_ams[0].pduSource
        dev = f"device,{inst}"
        try:
            async with asyncio.timeout(args.timeout):
                await app.read_property(addr, dev, "object-name")
        except TimeoutError:
            raise RuntimeError(f"device {inst} at {addr} does not answer") from None
        except ErrorRejectAbortNack as exc:
            # unknown-object: something answers at that address, but it is not device {inst}
            raise RuntimeError(f"{addr} answers but has no device object {inst} ({exc}); wrong instance? "
                               f"`edge-agent bacnet discover --address {addr}` shows the instance there") from None
        info = {k: await _read(app, addr, dev, p, args.timeout) for k, p in (
            ("name", "object-name"), ("vendor_name", "vendor-name"), ("model", "model-name"),
            ("max_apdu", "max-apdu-length-accepted"), ("segmentation", "segmentation-supported"))}
        info = {k: (to_value(v) if v is not None else None) for k, v in info.items()}
        services = await _read(app, addr, dev, "protocol-services-supported", args.timeout)
        info["rpm"] = services is None or "read-property-multiple" in str(services).split(";")
        _progress(f"device {inst} at {addr}: {info['name']} ({info['vendor_name']} {info['model']}), "
                  f"max APDU {info['max_apdu']}, {info['segmentation']}, "
                  f"{'ReadPropertyMultiple' if info['rpm'] else 'no ReadPropertyMultiple'}")
        # the object list: whole, or element by element for devices that cannot send it in one APDU
        objects: list[Any] | None
        try:
            async with asyncio.timeout(args.timeout):
                objects = list(await app.read_property(addr, dev, "object-list"))
        except ErrorRejectAbortNack as exc:
            _progress(f"object-list in one piece refused ({exc}); reading it element by element")
            objects = None
        if objects is None:
            count = int(await _read(app, addr, dev, "object-list", args.timeout, 0) or 0)
            objects = []
            for i in range(1, count + 1):
                objects.append(await _read(app, addr, dev, "object-list", args.timeout, i))
                if i % 20 == 0 or i == count:
                    _progress(f"object-list {i}/{count}")
        wanted = [o for o in objects if o is not None and (args.all_types or str(o[0]) in SCAN_TYPES)]
        _progress(f"{len(objects)} objects, {len(wanted)} to describe")
        describer = Describer(app, addr, args.timeout, int(info.get("max_apdu") or 480),
                              str(info.get("segmentation")) in ("segmented-both", "segmented-transmit"),
                              bool(info["rpm"]), _progress)
        described = await describer.describe(wanted)
        info["rpm"] = describer.rpm  # a device may list the service and still reject it
        points: list[dict[str, Any]] = []
        warnings: list[str] = []
        names: set[str] = set()
        for objid, d in zip(wanted, described, strict=True):
            pt = _point(objid, d, names)
            for prop, why in d.problems.items():
                msg = f"{pt['name']} ({d.objid}): could not read {prop}: {why}"
                warnings.append(msg)
                _progress(f"warning: {msg}")
            points.append(pt)
        pid = args.id or _point_name(str(info["model"] or f"bacnet-device-{inst}").lower(), set())
        profile = render_profile(pid, inst, str(addr), info, points, warnings)
        return {"device": {"instance": inst, "address": str(addr), **info}, "objects": len(objects),
                "points": [{k: v for k, v in p.items() if not k.startswith("_")} for p in points],
                "warnings": warnings, "profile": profile}
    finally:
        app.close()


def _point(objid: Any, d: Any, names: set[str]) -> dict[str, Any]:
    """A profile point from what the scan learned about one object."""
    otype, v = str(objid[0]), d.values
    name = _point_name(str(v.get("object-name") or f"{otype}-{objid[1]}"), names)
    pt: dict[str, Any] = {"name": name, "object_type": otype, "instance": int(objid[1])}
    if v.get("units") is not None:
        pt["unit"] = unit_symbol(str(v["units"]))
    if v.get("description"):
        pt["description"] = str(v["description"])
    for key, prop in (("min", "min-pres-value"), ("max", "max-pres-value")):
        if isinstance(v.get(prop), int | float) and not isinstance(v.get(prop), bool):
            pt[key] = v[prop]
    if v.get("state-text"):
        pt["states"] = list(v["state-text"])
    if "number-of-states" in v:
        pt["min"], pt["max"] = 1, int(v["number-of-states"])
    if d.commandable:
        pt["_commandable"] = True
    if d.problems:
        pt["_problems"] = dict(d.problems)
    return pt


def _point_name(raw: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", raw.strip()).strip("_.-") or "point"
    if not name[0].isalnum():
        name = "p" + name
    name = name[:60]
    base, i = name, 2
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


def render_profile(pid: str, inst: int, addr: str, info: dict[str, Any], points: list[dict[str, Any]],
                   warnings: list[str] | None = None) -> str:
    """YAML text of a profile: what the device said about itself as ``device:`` keys (max APDU, segmentation,
    ReadPropertyMultiple), one point per line with units, min/max and state texts; commandable objects get a
    comment on how to make them writable; properties that could not be read are listed as warnings."""
    today = _dt.date.today().isoformat()

    def q(v: Any) -> str:  # JSON scalars and lists are valid YAML; UTF-8 stays text
        return json.dumps(v, ensure_ascii=False)

    lines = [
        f"# Generated by `edge-agent bacnet scan {inst}` on {today} from device {inst} at {addr}.",
        "# Edit: remove points you do not need, set deadband / cov / poll, and make commandable points",
        "# read-write (with priority, and min/max checked) only where the operator agrees.",
    ]
    for w in warnings or []:
        lines.append(f"# warning: {w}")
    lines += [
        "driver: bacnet",
        f"id: {q(pid)}",
        f"description: {q(str(info.get('name') or pid))}",
        "metadata:",
        f"  manufacturer: {q(str(info.get('vendor_name') or 'unknown'))}",
        f"  model: {q(str(info.get('model') or 'unknown'))}",
        f"  notes: {q(f'scanned from device {inst} on {today}')}",
    ]
    device: list[str] = []
    if isinstance(info.get("max_apdu"), int):
        device.append(f"  max_apdu: {min(1476, max(50, int(info['max_apdu'])))}")
    if info.get("segmentation") in ("segmented-both", "segmented-transmit", "segmented-receive", "no-segmentation"):
        device.append(f"  segmentation: {info['segmentation']}")
    if info.get("rpm") is False:
        device.append("  read_property_multiple: never")
    if device:
        lines += ["device:", *device]
    lines.append("points:")
    for p in points:
        fields = [f"name: {q(p['name'])}", f"object_type: {p['object_type']}", f"instance: {p['instance']}"]
        for key in ("unit", "description", "min", "max", "states"):
            if p.get(key) is not None and p.get(key) != "":
                fields.append(f"{key}: {q(p[key])}")
        lines.append("  - {" + ", ".join(fields) + "}")
        if p.get("_commandable"):
            lines.append("    # commandable (priority array): to write it, add  access: read-write, priority: 8")
        for prop, why in (p.get("_problems") or {}).items():
            lines.append(f"    # warning: could not read {prop}: {why}")
    return "\n".join(lines) + "\n"
