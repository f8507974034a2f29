"""``edge-agent door DEVICE DOOR COMMAND``: a field tech's door command on site, through the running agent's
status socket (the same site-file policy and audit as the signed ``door`` command; docs/access-control.md).
Asks for confirmation unless ``--yes``. There is no direct mode: a door is only commanded by the agent."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.errors import ConfigError
from agent.tools.args import site_arg, socket_arg
from agent.tools.commands import _socket_for
from agent.tools.helptext import epilog

COMMANDS = ("access", "lock", "unlock", "block", "lock_down", "lock_down_release", "double_lock")
DOOR_TIMEOUT = 30.0  # the agent's budget for one door command; the CLI waits a bit longer


def register(sub: Any) -> None:
    p = sub.add_parser(
        "door", help="send a door command to an access panel (through the running agent; asks to confirm)",
        description="Send COMMAND to DOOR of the access panel DEVICE through the running agent: refused unless the "
                    "site file allows that command for that door now (connection.doors[].commands and windows). "
                    "The panel's answer is printed; every attempt is an audit event (door_command) naming the "
                    "local user. Asks for confirmation unless --yes.",
        epilog=epilog(["edge-agent door panel main access", "edge-agent door panel main lock --yes"],
                      {0: "the panel obeyed", 1: "refused by the site file, or the panel refused or failed "
                          "(the message says why), or not confirmed",
                       2: "bad arguments, or no permission to talk to the agent", 3: "no agent answered"}))
    site_arg(p)
    p.add_argument("device", metavar="DEVICE", help="access panel device name in the site file")
    p.add_argument("door", metavar="DOOR", help="door name (or token) in the device's connection.doors")
    p.add_argument("command", metavar="COMMAND", choices=COMMANDS, help="one of: " + ", ".join(COMMANDS))
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    socket_arg(p)
    p.set_defaults(func=cmd_door)


def _confirm(args: argparse.Namespace) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print("door: confirmation needed and no terminal to ask on: add --yes", file=sys.stderr)
        return False
    try:
        answer = input(f"send {args.command} to door {args.door} of {args.device}? [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def cmd_door(args: argparse.Namespace) -> int:
    from agent.core.status import request

    try:
        path = _socket_for(args)
    except ConfigError as exc:
        print(f"door: cannot read the site file: {exc}", file=sys.stderr)
        return 2
    if not _confirm(args):
        print("door: not sent", file=sys.stderr)
        return 1
    try:
        ans = request(path, {"op": "door", "device": args.device, "door": args.door, "command": args.command},
                      timeout=DOOR_TIMEOUT + 5)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"door: no agent answers on {path}: nothing sent (a door is only commanded through the agent)",
              file=sys.stderr)
        return 3
    except TimeoutError:
        print(f"door: the agent did not answer within {DOOR_TIMEOUT + 5:g} s: outcome unknown, not retried",
              file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"door: cannot talk to the running agent ({exc}); run as root or a member of the edge-agent group",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"door: cannot talk to the running agent: {exc}; nothing sent", file=sys.stderr)
        return 1
    if not ans.get("ok"):
        print(f"refused: {ans.get('error')}", file=sys.stderr)
        return 1
    res = ans.get("result") or {}
    state = res.get("state") or {}
    shown = ", ".join(f"{k}={v}" for k, v in state.items() if v is not None)
    print(f"{args.device} door {args.door}: {args.command} {res.get('panel', 'ok')}" + (f" ({shown})" if shown else ""))
    return 0
