"""The man page is generated from the command line parser: every command, option and exit code of the CLI is
in it, and groff renders it without a warning."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.tools.cli import build_parser
from agent.tools.helptext import EXIT_CODES

REPO = Path(__file__).resolve().parents[2]


def page(tmp_path: Path) -> Path:
    out = tmp_path / "edge-agent.1"
    subprocess.run([sys.executable, str(REPO / "packaging" / "manpage.py"), str(out)], check=True, timeout=60,
                   env={"SOURCE_DATE_EPOCH": "1796000000", "PATH": "/usr/bin:/bin"})
    return out


def rendered(path: Path) -> str:
    if shutil.which("groff") is None:
        pytest.skip("groff not installed")
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rLL=100n", str(path)], capture_output=True,
                       text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr  # -ww: any roff warning is a failure
    return re.sub(r".\x08", "", r.stdout)  # no overstrike: plain text to search


def test_every_command_option_and_exit_code_is_in_the_man_page(tmp_path: Path) -> None:
    text = rendered(page(tmp_path))
    assert "EDGE-AGENT(1)" in text and "EXIT STATUS" in text and "FILES" in text

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for a in parser._actions:
            for opt in a.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in text, f"{' '.join(words)}: {opt} missing from the man page"
        for sub in subs:
            for name, child in sub.choices.items():
                if not [x for x in child._actions if isinstance(x, argparse._SubParsersAction)]:
                    assert f"edge-agent {' '.join([*words, name])} [-h]" in text, [*words, name]
                    assert (child.description or "")[:40].split()[0] in text
                walk(child, [*words, name])

    walk(build_parser(), [])
    for code, meaning in EXIT_CODES.items():
        assert f"{code}" in text and meaning.split()[0] in text


def test_the_page_is_reproducible(tmp_path: Path) -> None:
    a = page(tmp_path).read_bytes()
    (tmp_path / "b").mkdir()
    assert page(tmp_path / "b").read_bytes() == a
    assert b'"2026-' in a  # dated from SOURCE_DATE_EPOCH, not from the day of the build
