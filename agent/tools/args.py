"""Arguments that many commands share, written once so that their names, defaults and help read the same
everywhere (the man page and ``--help`` are generated from the parsers)."""

from __future__ import annotations

import argparse
import os

DEFAULT_SITE = "/etc/edge-agent/site.yaml"
SITE_DEFAULT_HELP = f"$EDGE_AGENT_CONFIG or {DEFAULT_SITE}"


def default_site() -> str:
    """The site file a command uses when ``--config`` is not given."""
    return os.environ.get("EDGE_AGENT_CONFIG", DEFAULT_SITE)


def site_arg(p: argparse.ArgumentParser, what: str = "site file", *, default: bool = True) -> None:
    """``--config/-c FILE``. With ``default=False`` the option stays ``None`` when not given (the command then
    decides, e.g. ``diag`` falls back to :func:`default_site` itself)."""
    p.add_argument("--config", "-c", metavar="FILE", default=default_site() if default else None,
                   help=f"{what} (default: {SITE_DEFAULT_HELP})")


def socket_arg(p: argparse.ArgumentParser) -> None:
    """``--socket PATH``: the running agent's status socket."""
    p.add_argument("--socket", metavar="PATH", help="status socket path (default: from the site file)")


def json_arg(p: argparse.ArgumentParser, text: str = "machine-readable output") -> None:
    """``--json``; ``text`` says what the output is."""
    p.add_argument("--json", action="store_true", help=text)
