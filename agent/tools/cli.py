"""Command line: ``edge-agent run|validate|status|plan|write|monitor`` and commands contributed by modules
listed in ``COMMAND_MODULES`` (each has ``register(subparsers)`` and sets ``func`` on its parser)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap
import traceback

from agent import __version__
from agent.tools.helptext import EXIT_CODES

# Modules that add sub-commands: each exposes register(subparsers: argparse._SubParsersAction) -> None.
COMMAND_MODULES: list[str] = ["agent.tools.commands", "agent.tools.diag", "drivers.bacnet.cli", "drivers.onvif.cli",
                              "drivers.motion.cli", "agent.tools.provision", "agent.tools.bundle", "agent.tools.bridge",
                              "agent.tools.keys", "agent.tools.remotecli", "agent.tools.configcli",
                              "agent.tools.doorcli"]

# Exit codes every command shares (docs/cli.md, "Exit codes"); a command may add its own (run: 78).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; the traceback only with --debug (or in the journal for `run`)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader (head, less) has gone

DESCRIPTION = """\
edge-agent reads the meters and controllers of a building (Modbus TCP/RTU, BACnet/IP), keeps every value
in a durable outbox and forwards it to the operator's MQTT broker. `run` is what systemd starts; the other
commands are for the technician on site. `edge-agent COMMAND --help` describes each command."""

EPILOG = "\n".join([
    "exit codes (all commands; each command's --help says which of them it uses):",
    *(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()),
    "",
    "files: /etc/edge-agent/site.yaml (site), /opt/edge-agent/profiles and /etc/edge-agent/profiles (profiles),",
    "       /etc/edge-agent/operators.json (operator keys trusted for signed remote operations)",
    "docs:  /usr/share/doc/edge-agent/ (cli.md, profiles.md, mqtt.md, modbus.md, bacnet.md, operations.md,",
    "       observability.md, remote.md),",
    "       man edge-agent",
])


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks (examples, exit-code tables)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, _columns()))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Prose paragraphs are wrapped to the terminal; indented blocks (examples, tables) are kept."""
        out = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(ln.startswith(" ") for ln in lines[1:]) or para.endswith(":"):
                out.append("\n".join(indent + ln for ln in lines))
            else:
                out.append(textwrap.fill(" ".join(ln.strip() for ln in lines), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)


def _columns() -> int:
    try:
        return max(60, os.get_terminal_size().columns)
    except OSError:
        return 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--debug", action="store_true", default=bool(os.environ.get("EDGE_AGENT_DEBUG")),
                        help="on an internal error, print the full traceback (also: EDGE_AGENT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class _SubParser(argparse.ArgumentParser):
    """Sub-command parsers format like the main one unless their module chose otherwise."""

    def __init__(self, *args: object, **kw: object) -> None:
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)  # type: ignore[arg-type]


def _leaf(exc: BaseException) -> BaseException:
    """The exception that matters inside task-group wrapping: a broken pipe or Ctrl-C wins over the rest."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_leaf(e) for e in exc.exceptions]
        for kind in (BrokenPipeError, KeyboardInterrupt):
            hit = next((e for e in leaves if isinstance(e, kind)), None)
            if hit is not None:
                return hit
        return leaves[0] if leaves else exc
    return exc


# Errors that describe the outside world (a peer, a file, the network), not a bug: one line, exit 1.
_PEER_ERROR_MODULES = ("aiomqtt", "paho", "bacpypes3", "pymodbus", "ssl", "yaml", "serial")


def _is_peer_error(exc: BaseException) -> bool:
    from agent.errors import EdgeAgentError

    if isinstance(exc, EdgeAgentError | OSError | TimeoutError):
        return True
    return any(type(c).__module__.split(".")[0] in _PEER_ERROR_MODULES for c in (exc, exc.__cause__) if c)


def _say(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr itself is closed or a broken pipe: nothing left to tell
        pass


def _flush_stdout() -> None:
    if sys.stdout is not None:  # None when started with stdout closed (>&-): print() then writes nothing
        sys.stdout.flush()


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """The entry point: every way out is a documented exit code and at most one line on stderr."""
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_usage(sys.stderr)
            _say("edge-agent: error: a COMMAND is needed; `edge-agent --help` lists them, `man edge-agent` "
                 "describes them")
            return EXIT_USAGE
        rc = int(args.func(args) or 0)
        _flush_stdout()  # inside the guard: a reader gone away shows up here at the latest
        return rc
    except SystemExit as done:  # argparse after --help, --version or a usage error; sys.exit() in a command
        try:
            _flush_stdout()
        except BrokenPipeError:
            _silence_stdout()
            raise SystemExit(EXIT_OUTPUT_CLOSED) from None
        raise done
    except BaseException as raised:  # the CLI boundary: one line for the user, never a traceback
        return _failed(raised, args, argv)


def _failed(raised: BaseException, args: argparse.Namespace | None, argv: list[str] | None) -> int:
    from agent.errors import ConfigError

    exc = _leaf(raised)
    if isinstance(exc, BrokenPipeError):
        _silence_stdout()
        return EXIT_OUTPUT_CLOSED
    words = [str(w) for w in (getattr(args, "command", None), getattr(args, "diag_command", None),
                              getattr(args, "bacnet_command", None), getattr(args, "onvif_command", None),
                              getattr(args, "motion_command", None)) if w]
    name = " ".join(["edge-agent", *words])
    if isinstance(exc, KeyboardInterrupt):
        _say(f"{name}: interrupted")
        return EXIT_INTERRUPTED
    debug = getattr(args, "debug", False) or "--debug" in (sys.argv[1:] if argv is None else argv)
    if debug:
        _say("".join(traceback.format_exception(raised)).rstrip())
    if words[:1] == ["run"]:
        logging.getLogger("edge_agent").error("fatal: %s: %s", type(exc).__name__, exc, exc_info=raised)
    if isinstance(exc, ConfigError):
        _say(f"{name}: {exc}")
        return EXIT_USAGE
    if _is_peer_error(exc):
        _say(f"{name}: error: {str(exc) or type(exc).__name__}")
        return EXIT_FAILED
    _say(f"{name}: internal error: {type(exc).__name__}: {exc} (a bug; `edge-agent --debug ...` shows where)")
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
