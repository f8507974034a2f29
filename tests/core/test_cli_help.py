"""Help that helps: every command's --help has a description for the technician (not a developer docstring),
every argument explained, examples and the exit codes it uses, all of them documented in docs/cli.md."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from agent.tools.cli import build_parser

from .test_cli_robustness import ROOT, documented_codes


def leaves() -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and prefix:
            out[" ".join(prefix)] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, [*prefix, name])

    walk(build_parser(), [])
    return out


LEAVES = leaves()


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_command_help_is_complete(name: str) -> None:
    p = LEAVES[name]
    desc = p.description or ""
    assert len(desc) > 60, f"{name}: no real description"
    assert "``" not in desc and "Returns" not in desc and "docstring" not in desc, f"{name}: developer text"
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 8, f"{name}: {action.option_strings or action.dest} undocumented"
    epilog = p.epilog or ""
    assert "examples:\n  edge-agent " + name.split()[0] in epilog, f"{name}: no example"
    codes = {int(c) for c in re.findall(r"^  (\d+) ", epilog.split("exit codes:", 1)[-1], re.M)}
    assert codes and codes <= documented_codes(), f"{name}: exit codes {codes} vs docs/cli.md"


def test_main_help_lists_exit_codes_and_no_docstring() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.tools.cli", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60).stdout
    assert "sub-commands" not in out and "COMMAND_MODULES" not in out, "developer docstring in --help"
    for code in documented_codes():
        assert re.search(rf"^  {code} ", out, re.M), f"exit code {code} missing from edge-agent --help"
    for name in {n.split()[0] for n in LEAVES}:
        assert f"    {name}" in out


def test_diag_help_says_what_the_refusal_returns() -> None:
    epilog = LEAVES["diag device"].epilog or ""
    assert re.search(r"^  1 .*refused because the agent is running", epilog, re.M | re.S), epilog
