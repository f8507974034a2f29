"""``edge-agent config history|rollback``: the versions pushed to this box, and going back to one locally
(docs/remote.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.tools.args import json_arg, site_arg
from agent.tools.helptext import epilog


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="pushed configuration versions: history, rollback",
                       description="Configuration versions pushed to this box by signed pushes, kept under the "
                                   "state directory: list them, or make the box run an earlier one.")
    cs = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    h = cs.add_parser(
        "history", help="list the stored configuration versions",
        description="List the configuration versions stored on this box, oldest first: name, label, content "
                    "hash, when it was pushed and by which push id; the running one is marked with *, and a "
                    "push still under its health gate is shown. `base` is the provisioned site file.",
        epilog=epilog(["edge-agent config history", "edge-agent config history --json"],
                      {0: "listed"}))
    site_arg(h, "the provisioned site file")
    json_arg(h)
    h.set_defaults(func=cmd_history)
    r = cs.add_parser(
        "rollback", help="make the box run an earlier configuration version",
        description="Switch the box to VERSION (default: the version before the running one; `base` is the "
                    "provisioned site file). The switch is atomic; the running agent takes it at its next reload "
                    "(systemctl reload edge-agent) or start.",
        epilog=epilog(["edge-agent config rollback", "edge-agent config rollback 0003-5f2a9c01b7de",
                       "edge-agent config rollback base"],
                      {0: "switched", 1: "no such version, or nothing to go back to"}))
    r.add_argument("version", nargs="?", metavar="VERSION", help="the version name (see config history) or base")
    site_arg(r, "the provisioned site file")
    r.set_defaults(func=cmd_rollback)


def _store(args: argparse.Namespace) -> Any:
    from agent.config import load_site
    from agent.core.configstore import ConfigStore

    site = load_site(args.config, strict=False)
    return ConfigStore(site.state_dir, Path(args.config))


def cmd_history(args: argparse.Namespace) -> int:
    try:
        store = _store(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    current = store.current()
    trial = store.read_json("trial.json")
    versions = store.history()
    if args.json:
        print(json.dumps({"current": current, "trial": trial, "versions": [v.doc for v in versions]}, indent=2))
        return 0
    print(f"{'*' if current == 'base' else ' '} base  (the provisioned site file {args.config})")
    for v in versions:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.ts)) if v.ts else "-"
        mark = "*" if v.name == current else " "
        print(f"{mark} {v.name}  {v.label:<20} {when} UTC  sha256 {v.hash[:16]}  push {v.push_id or '-'}")
    if trial is not None:
        print(f"under health gate: push {trial.get('id')} -> {trial.get('version')} "
              f"(previous {trial.get('previous')})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from agent.core.configstore import BASE

    try:
        store = _store(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    current = store.current()
    names = [v.name for v in store.history()]
    target = args.version
    if target is None:
        if current == BASE:
            print("config rollback: the box runs the provisioned site file (base): nothing to go back to",
                  file=sys.stderr)
            return 1
        i = names.index(current) if current in names else 0
        target = names[i - 1] if i > 0 else BASE
    if target != BASE and target not in names:
        print(f"config rollback: no version {target!r} (see `edge-agent config history`)", file=sys.stderr)
        return 1
    store.remove("trial.json")  # a local decision ends a pending health gate
    store.switch(target)
    print(f"switched from {current} to {target}; the agent runs it after `systemctl reload edge-agent` "
          "(or its next start)")
    return 0
