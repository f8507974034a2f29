"""Write the edge-agent(1) man page, in roff, from the command line parser itself.

    python packaging/manpage.py [OUTPUT]        (default: stdout)

The texts are the ones `edge-agent COMMAND --help` shows (descriptions, options, examples, exit codes), so
the page cannot drift from the program. packaging/build-deb runs it with the package's own interpreter.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import __version__
from agent.tools.cli import DESCRIPTION, build_parser
from agent.tools.helptext import EXIT_CODES

ENVIRONMENT = {
    "EDGE_AGENT_CONFIG": "site file used when --config is not given (default /etc/edge-agent/site.yaml)",
    "EDGE_AGENT_LOG_LEVEL": "log level of run when --log-level is not given (default info)",
    "EDGE_AGENT_PROFILES": "colon-separated profile folders searched before /etc/edge-agent/profiles and the "
                           "shipped ones",
    "EDGE_AGENT_DEBUG": "when set, an internal error prints its full traceback (as --debug)",
    "CREDENTIALS_DIRECTORY": "where {credential: NAME} secrets are read (set by systemd's LoadCredential=)",
}
FILES = {
    "/etc/edge-agent/site.yaml": "this building's site file (edge-agent provision writes it)",
    "/etc/edge-agent/profiles/": "site-local device profiles; they win over shipped ones with the same id",
    "/opt/edge-agent/profiles/": "shipped device profiles",
    "/etc/credstore/mqtt-key, /etc/credstore/mqtt-password": "client key and MQTT password (root only), "
                                                            "given to the service as systemd credentials",
    "/etc/edge-agent/operators.json": "operator keys (Ed25519 JWK Set with roles) this box trusts for signed "
                                      "remote operations (remote.md)",
    "/var/lib/edge-agent/": "the outbox (values not yet acknowledged by the broker), the pushed configuration "
                            "versions (config/) and the replay record of signed messages (remote/)",
    "/run/edge-agent/agent.sock": "status socket of the running agent (edge-agent status)",
    "/usr/share/doc/edge-agent/": "the full documentation: cli.md, profiles.md, mqtt.md, modbus.md, bacnet.md, "
                                  "install.md, operations.md, remote.md",
}


def esc(text: str) -> str:
    """Plain text to roff: backslashes, hyphens of options, and lines that would read as requests."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln for ln in text.splitlines())


def para(text: str) -> list[str]:
    """Prose paragraphs of a help text, joined (roff fills them); indented blocks are kept as they are."""
    out: list[str] = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if any(ln.startswith(" ") for ln in lines):
            out += [".PP", ".nf", *(esc(ln.strip()) for ln in lines), ".fi"]
        else:
            out += [".PP", esc(" ".join(ln.strip() for ln in lines))]
    return out


def _leaves(parser: argparse.ArgumentParser, prefix: list[str]) -> list[tuple[list[str], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(prefix, parser)] if prefix else []
    out = []
    for sub in subs:
        for name, child in sub.choices.items():
            out += _leaves(child, [*prefix, name])
    return out


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def _epilog_parts(epilog: str) -> tuple[list[str], list[tuple[str, str]]]:
    examples = [ln.strip() for ln in epilog.split("exit codes:", 1)[0].splitlines()[1:] if ln.strip()]
    codes = re.findall(r"^  (\d+)\s+(.*)$", epilog.split("exit codes:", 1)[-1], re.M)
    return examples, codes


def options(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if a.option_strings:
            metavar = "" if a.nargs == 0 else " " + (a.metavar or a.dest.upper())
            head = ", ".join(f"\\fB{esc(o)}\\fR" + (f" \\fI{esc(metavar.strip())}\\fR" if metavar else "")
                             for o in a.option_strings)
        else:
            head = f"\\fI{esc(str(a.metavar or a.dest))}\\fR"
        helptext = (a.help or "") % {"default": a.default, "prog": parser.prog} if a.help else ""
        out += [".TP", head, esc(helptext)]
    return out


def render(today: _dt.date | None = None) -> str:
    parser = build_parser()
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    day = today or (_dt.datetime.fromtimestamp(int(epoch), _dt.UTC).date() if epoch else _dt.date.today())
    lines = [
        '.\\" Generated by packaging/manpage.py from the edge-agent command line parser. Do not edit.',
        f'.TH EDGE\\-AGENT 1 "{day.isoformat()}" "edge-agent {esc(__version__)}" "User Commands"',
        ".SH NAME",
        "edge\\-agent \\- site agent for connected public buildings (Modbus, BACnet/IP to MQTT)",
        ".SH SYNOPSIS",
        ".B edge\\-agent",
        "[\\fB\\-\\-debug\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".br",
        ".B edge\\-agent",
        "\\fICOMMAND\\fR \\fB\\-\\-help\\fR",
        ".SH DESCRIPTION",
        *para(DESCRIPTION),
        ".SH OPTIONS",
        *options(parser),
        ".SH COMMANDS",
    ]
    for words, p in _leaves(parser, []):
        lines += [".SS " + esc(" ".join(words)), ".PP", ".nf", esc(_usage(p)), ".fi"]
        lines += para(p.description or "")
        lines += options(p)
        examples, codes = _epilog_parts(p.epilog or "")
        if examples:
            lines += [".PP", "Examples:", ".RS", ".nf", *(esc(e) for e in examples), ".fi", ".RE"]
        if codes:
            lines += [".PP", "Exit codes:", ".RS", ".PD 0"]
            for code, meaning in codes:
                lines += [".TP 6", code, esc(meaning)]
            lines += [".PD", ".RE"]
    lines += [".SH EXIT STATUS", ".PD 0"]
    for code, meaning in EXIT_CODES.items():
        lines += [".TP 6", str(code), esc(meaning)]
    lines += [".PD"]
    lines += [".SH ENVIRONMENT"]
    for name, meaning in ENVIRONMENT.items():
        lines += [".TP", f"\\fB{esc(name)}\\fR", esc(meaning)]
    lines += [".SH FILES"]
    for path, meaning in FILES.items():
        lines += [".TP", f"\\fI{esc(path)}\\fR", esc(meaning)]
    lines += [
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsystemd.exec\\fR(5);",
        "the edge\\-agent.service unit; /usr/share/doc/edge\\-agent/",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args:
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
