"""``edge-agent cmd``: an operator signs a command for one site, publishes it on the site's command topic and
waits for its acknowledgement (docs/remote.md). Connects like ``monitor`` (the same TLS settings)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from agent.errors import ConfigError
from agent.remote.envelope import claims, sign
from agent.tools.args import json_arg
from agent.tools.helptext import epilog
from agent.tools.keys import load_private
from agent.tools.monitor import Target, _reason, target_for

# command -> (positional names, how many are required)
USAGE: dict[str, tuple[list[str], int]] = {
    "write": (["device", "point", "value"], 3), "retry": (["device"], 1), "reload": ([], 0), "status": ([], 0),
    "diag": (["device"], 1), "log-tail": (["lines"], 0), "log-level": (["level", "duration"], 1),
    "bundle": ([], 0), "door": (["device", "door", "command"], 3),
}


def register(sub: Any) -> None:
    register_cmd(sub)
    register_push(sub)


def _site_and_key(p: argparse.ArgumentParser, key_help: str) -> None:
    """Who signs, and which site to reach how (the same for ``cmd`` and ``push``)."""
    p.add_argument("--key", required=True, metavar="FILE", help=key_help)
    p.add_argument("--site", default=None, help="the site id (default: the site file's with --config)")
    p.add_argument("--config", "-c", default=None, help="a site file: connect with its broker, TLS and credentials")
    p.add_argument("--broker", default=None, help="mqtt://host:port or mqtts://host:port (default: the site file's)")
    p.add_argument("--prefix", default=None, help="topic prefix (default: the site file's, else ea/v1)")


def register_cmd(sub: Any) -> None:
    p = sub.add_parser(
        "cmd", help="send a signed command to a site and wait for its acknowledgement",
        description="Sign a command with an operator key (made by `edge-agent keys generate`), publish it on the "
                    "site's command topic and print the acknowledgement: the result, or why the box refused it. "
                    "Commands: write DEVICE POINT VALUE, retry DEVICE, reload, status, diag DEVICE|broker, "
                    "log-tail [LINES], log-level LEVEL [SECONDS], bundle -o FILE (a support bundle, tar.gz). "
                    "Connects like `monitor` (--config for the site's "
                    "TLS settings and credentials, or --broker).",
        epilog=epilog(["edge-agent cmd --broker mqtts://broker.example:8883 --site townhall --key alice.jwk "
                       "write boiler fallback_period 42",
                       "edge-agent cmd --config site.yaml --key alice.jwk status --json",
                       "edge-agent cmd --site townhall --key alice.jwk log-level debug 600"],
                      {0: "the box obeyed (ack ok)", 1: "the box refused (the ack's error is printed)",
                       2: "bad arguments, an unusable key file", 3: "no broker, or no acknowledgement in time"}))
    p.add_argument("command", choices=sorted(USAGE), help="the command to send")
    p.add_argument("words", nargs="*", metavar="ARG", help="the command's arguments (see above)")
    _site_and_key(p, "the operator's private key (keys generate)")
    p.add_argument("--timeout", type=float, default=40.0, metavar="SECONDS",
                   help="how long to wait for the acknowledgement (default 40; a write may take 30)")
    p.add_argument("--lifetime", type=float, default=300.0, metavar="SECONDS",
                   help="how long the signed message stays valid (default 300, at most 3600)")
    json_arg(p, "print the acknowledgement as JSON")
    p.add_argument("-o", "--out", metavar="FILE", help="bundle: where to write the support bundle (tar.gz, 0600)")
    p.set_defaults(func=cmd_cmd)


def _value(text: str) -> Any:
    """A VALUE as typed: JSON numbers, true/false and null keep their type; anything else is text."""
    try:
        v = json.loads(text)
    except ValueError:
        return text
    return v if v is None or isinstance(v, bool | int | float) else text


def build_args(command: str, words: list[str]) -> dict[str, Any]:
    names, required = USAGE[command]
    if not required <= len(words) <= len(names):
        shape = " ".join(n.upper() if i < required else f"[{n.upper()}]" for i, n in enumerate(names))
        raise ValueError(f"usage: {command} {shape}".rstrip())
    args: dict[str, Any] = dict(zip(names, words, strict=False))
    if command == "write":
        args["value"] = _value(args["value"])
    if command == "diag" and args["device"] == "broker":
        args = {"target": "broker"}
    for k in ("lines", "duration"):
        if k in args:
            try:
                args[k] = int(args[k])
            except ValueError:
                raise ValueError(f"{k.upper()} must be a whole number") from None
    return args


def cmd_cmd(args: argparse.Namespace) -> int:
    from agent.config import load_site

    try:
        cargs = build_args(args.command, args.words)
    except ValueError as exc:
        print(f"cmd: {exc}", file=sys.stderr)
        return 2
    try:
        op = load_private(Path(args.key))
    except ValueError as exc:
        print(f"cmd: {exc}", file=sys.stderr)
        return 2
    try:
        site = load_site(args.config, strict=False) if args.config else None
        target = target_for(args.broker, site, args.prefix, args.site)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"cmd: {exc}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as exc:
        print(f"cmd: cannot load the TLS CA/certificate/key: {exc}", file=sys.stderr)
        return 2
    if target.site in ("+", "#", ""):
        print("cmd: --site is needed (or --config with the site file)", file=sys.stderr)
        return 2
    mid = f"{op.name}-{uuid.uuid4().hex[:16]}"
    token = sign(op.key, op.name, claims(target.site, args.command, cargs, mid, lifetime=args.lifetime))
    payload = json.dumps({"id": mid, "cmd": args.command, "src": op.name, "jws": token}).encode()
    if args.command == "bundle":
        if not args.out:
            print("cmd: bundle needs -o FILE", file=sys.stderr)
            return 2
        return _bundle(target, payload, mid, args)
    ack = asyncio.run(send_and_wait(target, payload, mid, args.timeout))
    if ack is None:
        return 3
    if args.json:
        print(json.dumps(ack, indent=2))
    elif ack.get("ok"):
        print(f"ok: {json.dumps(ack.get('result'))}")
    else:
        print(f"refused: {ack.get('error')}", file=sys.stderr)
    return 0 if ack.get("ok") else 1


def _bundle_done(got: list[dict[str, Any]]) -> bool:
    summary = [d for d in got if not d.get("ok") or "parts" in (d.get("result") or {})]
    if not summary:
        return False
    if not summary[-1].get("ok"):
        return True
    return sum(1 for d in got if "part" in (d.get("result") or {})) >= int(summary[-1]["result"]["parts"])


def _bundle(target: Target, payload: bytes, mid: str, args: argparse.Namespace) -> int:
    import base64
    import hashlib
    import os

    got = asyncio.run(exchange(target, [payload], {mid}, args.timeout, _bundle_done))
    if not got or not _bundle_done(got):
        if got:
            print("cmd: the bundle did not arrive whole in time", file=sys.stderr)
        return 3
    summary = next(d for d in reversed(got) if not d.get("ok") or "parts" in (d.get("result") or {}))
    if not summary.get("ok"):
        print(f"refused: {summary.get('error')}", file=sys.stderr)
        return 1
    parts = {d["result"]["part"]: base64.b64decode(d["result"]["data"]) for d in got if "part" in d["result"]}
    data = b"".join(parts[i] for i in sorted(parts))
    if hashlib.sha256(data).hexdigest() != summary["result"]["sha256"]:
        print("cmd: the bundle's parts do not match its sha256", file=sys.stderr)
        return 1
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    print(f"support bundle written to {args.out} ({len(data)} bytes, {len(parts)} parts)")
    return 0


async def send_and_wait(t: Target, payload: bytes, mid: str, wait: float) -> dict[str, Any] | None:
    """Publish ``payload`` on the site's command topic and return the ack with id ``mid`` (None: told why)."""
    docs = await exchange(t, [payload], {mid}, wait, lambda got: bool(got))
    return docs[-1] if docs else None


def push_done(got: list[dict[str, Any]]) -> bool:
    """A push is over with a refusal, a rollback or the health gate passed."""
    last = got[-1] if got else None
    if last is None:
        return False
    state = (last.get("result") or {}).get("state") if isinstance(last.get("result"), dict) else None
    return not last.get("ok") or state == "healthy"


async def exchange(t: Target, payloads: list[bytes], mids: set[str], wait: float,
                   done: Callable[[list[dict[str, Any]]], bool],
                   show: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Publish ``payloads``, collect the acknowledgements whose id is in ``mids`` until ``done`` or ``wait`` s."""
    client = aiomqtt.Client(t.host, t.port, identifier=f"edge-agent-cmd-{time.time_ns()}", username=t.username,
                            password=t.password, tls_context=t.tls, timeout=10)
    got: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        try:
            async with asyncio.timeout(10 + 0.25 * len(payloads)):
                await stack.enter_async_context(client)
                await client.subscribe(f"{t.prefix}/{t.site}/ack", qos=1)
                for i, p in enumerate(payloads):
                    if i >= 20:
                        await asyncio.sleep(0.25)  # under the box's rate limit for all sources (5 per second)
                    await client.publish(f"{t.prefix}/{t.site}/cmd", p, qos=1)
        except (TimeoutError, aiomqtt.MqttError) as exc:
            print(f"cmd: cannot reach {t.where}: {_reason(exc) if not isinstance(exc, TimeoutError) else 'timeout'}",
                  file=sys.stderr)
            return got
        try:
            async with asyncio.timeout(wait):
                async for msg in client.messages:
                    try:
                        doc = json.loads(msg.payload if isinstance(msg.payload, bytes) else b"")
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and doc.get("id") in mids:
                        got.append(doc)
                        if show is not None:
                            show(doc)
                        if done(got):
                            break
        except TimeoutError:
            if not got:
                print(f"cmd: no acknowledgement from site {t.site} within {wait:g} s (is the agent connected? "
                      "`edge-agent monitor` shows its messages)", file=sys.stderr)
        except aiomqtt.MqttError as exc:
            print(f"cmd: connection to {t.where} lost: {_reason(exc)}", file=sys.stderr)
    return got


# ------------------------------------------------------------------------------------------------ push


def register_push(sub: Any) -> None:
    p = sub.add_parser(
        "push", help="push a signed configuration (site file, profiles, keys) to a site; health-gated",
        description="Sign a configuration bundle with an operator key that has the role config and publish it to "
                    "one site. The box validates it with the checks of `edge-agent validate`, stores it as a new "
                    "version, runs it and holds it to a health gate: every device online before the push must be "
                    "online again and the uplink connected within the window, else the box rolls back by itself. "
                    "Prints each acknowledgement: accepted, applied (the new version runs), healthy, or refused / "
                    "rolled back with why. FILES: the site file (a YAML file with a top-level site: key), "
                    "profiles (other YAML files, stored under profiles/: name them in the site file's "
                    "profiles_dirs), and operators.json (replaces the box's trusted keys).",
        epilog=epilog(["edge-agent push --broker mqtts://broker.example:8883 --site townhall --key deploy.jwk "
                       "--version 2026-12-01 site.yaml profiles/acme-em100.yaml",
                       "edge-agent push --config site.yaml --key deploy.jwk --health-window 120 site.yaml"],
                      {0: "applied and the health gate passed", 1: "refused, or rolled back (why is printed)",
                       2: "bad arguments, an unreadable file or key", 3: "no broker, or no acknowledgement in time"}))
    p.add_argument("files", nargs="+", metavar="FILE", help="site file, profiles, operators.json")
    _site_and_key(p, "the operator's private key (role config)")
    p.add_argument("--version", dest="label", default=None, metavar="LABEL",
                   help="the version label (default: the date and time, UTC)")
    p.add_argument("--health-window", type=float, default=60.0, metavar="SECONDS",
                   help="how long the box waits for its devices and uplink before rolling back (default 60)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for the last acknowledgement (default: health window + 60)")
    json_arg(p, "print each acknowledgement as JSON")
    p.set_defaults(func=cmd_push)


def bundle_files(paths: list[Path]) -> dict[str, str]:
    """Bundle names: operators.json; the site file (top-level ``site:``) as site.yaml; profiles/NAME.yaml."""
    files: dict[str, str] = {}
    for path in paths:
        text = path.read_text()
        if path.name == "operators.json":
            name = "operators.json"
        elif path.suffix in (".yaml", ".yml") and any(ln.startswith("site:") for ln in text.splitlines()):
            name = "site.yaml"
        elif path.suffix in (".yaml", ".yml"):
            name = f"profiles/{path.stem}.yaml"
        else:
            raise ValueError(f"{path}: not a site file, a profile (.yaml) or operators.json")
        if name in files:
            raise ValueError(f"{path}: a second {name} in the bundle")
        files[name] = text
    return files


def push_payload(op: Any, site: str, files: dict[str, str], label: str, window: float,
                 mid: str | None = None) -> tuple[str, bytes]:
    from agent.core.configstore import bundle_hash

    mid = mid or f"{op.name}-push-{uuid.uuid4().hex[:12]}"
    args = {"version": label, "files": files, "hash": bundle_hash(files), "health_window": window}
    token = sign(op.key, op.name, claims(site, "push", args, mid, lifetime=600))
    return mid, json.dumps({"id": mid, "cmd": "push", "src": op.name, "jws": token}).encode()


CHUNK_CHARS = 24_000  # a part's text: with JSON escaping its message stays under the 64 KiB command limit
SINGLE_MAX = 60_000  # bytes of a push sent as one message


def push_messages(op: Any, site: str, files: dict[str, str], label: str, window: float) -> tuple[str, list[bytes]]:
    """One signed push, or (over SINGLE_MAX) the parts as ``push-chunk`` commands then the signed push naming
    their count and sha256."""
    import hashlib

    from agent.core.configstore import bundle_hash

    mid, payload = push_payload(op, site, files, label, window)
    if len(payload) <= SINGLE_MAX:
        return mid, [payload]
    text = json.dumps(files)
    parts = [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
    args = {"version": label, "hash": bundle_hash(files), "health_window": window, "chunks": len(parts),
            "chunks_hash": hashlib.sha256(text.encode()).hexdigest()}
    token = sign(op.key, op.name, claims(site, "push", args, mid, lifetime=600))
    msgs = [json.dumps({"cmd": "push-chunk", "src": f"{op.name}-{i}",
                        "args": {"push": mid, "n": i, "of": len(parts), "data": p}}).encode()
            for i, p in enumerate(parts)]
    return mid, [*msgs, json.dumps({"id": mid, "cmd": "push", "src": op.name, "jws": token}).encode()]


def _show_ack(as_json: bool) -> Callable[[dict[str, Any]], None]:
    def show(doc: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(doc), flush=True)
            return
        res = doc.get("result")
        r: dict[str, Any] = res if isinstance(res, dict) else {}
        state = r.get("state", "ok" if doc.get("ok") else "refused")
        if doc.get("ok"):
            print(f"{state}: version {r.get('version')} hash {str(r.get('hash'))[:12]}", flush=True)
        else:
            print(f"{state}: {doc.get('error')}", flush=True)
    return show


def cmd_push(args: argparse.Namespace) -> int:
    from agent.config import load_site

    try:
        files = bundle_files([Path(f) for f in args.files])
        op = load_private(Path(args.key))
        site = load_site(args.config, strict=False) if args.config else None
        target = target_for(args.broker, site, args.prefix, args.site)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"push: {exc}", file=sys.stderr)
        return 2
    if target.site in ("+", "#", ""):
        print("push: --site is needed (or --config with the site file)", file=sys.stderr)
        return 2
    label = args.label or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    mid, payloads = push_messages(op, target.site, files, label, args.health_window)
    wait = args.timeout if args.timeout is not None else args.health_window + 60
    got = asyncio.run(exchange(target, payloads, {mid}, wait, push_done, _show_ack(args.json)))
    if not got:
        return 3
    if not push_done(got):
        print(f"push: no final acknowledgement within {wait:g} s (last: {got[-1].get('result')})", file=sys.stderr)
        return 3
    return 0 if got[-1].get("ok") else 1
