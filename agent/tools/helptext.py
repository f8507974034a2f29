"""What ``--help`` shows for each command: a description for the technician, examples and exit codes.

Kept apart from the code so that ``--help`` never shows a developer docstring, and so that the man page
(packaging/manpage.py) and the tests read the same texts. Exit codes here must be the ones docs/cli.md lists.
"""

from __future__ import annotations

# Every exit code a command may return, with its meaning (docs/cli.md, "Exit codes").
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "a problem was found, a check failed, or the request was refused",
    2: "bad arguments or configuration (the message says which)",
    3: "nobody answered (no agent, no broker, no device)",
    70: "internal error (a bug): one line, the traceback with --debug",
    78: "the site file is invalid (run only: systemd does not restart)",
    130: "interrupted (Ctrl-C)",
    141: "the reader of the output went away (e.g. `| head -1`)",
}
# Codes any command can end with, whatever it does: listed once in `edge-agent --help`.
COMMON_CODES = (2, 70, 130, 141)


def epilog(examples: list[str], codes: dict[int, str]) -> str:
    """The text after a command's options: examples, then its own exit codes (common ones are implied)."""
    unknown = set(codes) - set(EXIT_CODES)
    assert not unknown, f"exit codes {unknown} are not documented in EXIT_CODES"
    lines = ["examples:"]
    lines += [f"  {e}" for e in examples]
    lines += ["", "exit codes:"]
    lines += [f"  {c:<4} {meaning}" for c, meaning in sorted(codes.items())]
    common = [str(c) for c in COMMON_CODES if c not in codes]
    lines.append(f"  (and {', '.join(common)} as for every command: see `edge-agent --help`)")
    return "\n".join(lines)
