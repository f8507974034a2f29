"""Command line: ``edge-agent run|validate|status|plan|write|monitor`` and commands contributed by modules
listed in ``COMMAND_MODULES`` (each has ``register(subparsers)`` and sets ``func`` on its parser)."""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__

# Modules that add sub-commands: each exposes register(subparsers: argparse._SubParsersAction) -> None.
COMMAND_MODULES: list[str] = ["agent.tools.commands", "agent.tools.diag", "drivers.bacnet.cli", "agent.tools.provision"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
