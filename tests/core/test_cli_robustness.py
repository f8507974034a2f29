"""No tracebacks for users: every command, with bad arguments, with its output closed early (`| head -1`), and
against dead or wrong peers, ends with at most a one-line message and an exit code that docs/cli.md lists.

Commands run as real processes (`python -m agent.tools.cli`), against a real agent process, a real BACnet simulator
and real closed ports, all on loopback. "Output closed early" is done two ways: a pipe whose reading end is
already closed (every write fails with EPIPE: deterministic), and a real `| head -1` in bash.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.tools.cli import build_parser
from agent.tools.helptext import EXIT_CODES
from tests.peers.bacnet import next_host
from tests.peers.common import free_port, stop_process
from tests.peers.mosquitto import Broker

from .agentkit import ROOT, start_agent_process, write_site

DOCS = ROOT / "docs" / "cli.md"


def documented_codes() -> set[int]:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m) for m in re.findall(r"^\| `?(\d+)`? \|", section, re.M)}


@dataclass
class Run:
    rc: int
    out: str
    err: str


def env() -> dict[str, str]:
    e = {**os.environ, "PYTHONUNBUFFERED": "0", "COLUMNS": "100"}
    for k in ("EDGE_AGENT_DEBUG", "NOTIFY_SOCKET", "EDGE_AGENT_CONFIG"):
        e.pop(k, None)
    e["EDGE_AGENT_CONFIG"] = "/nonexistent/site.yaml"  # never the machine's real site file
    return e


def cli(*args: str, timeout: float = 60) -> Run:
    p = subprocess.run([sys.executable, "-m", "agent.tools.cli", *args], capture_output=True, text=True, cwd=ROOT,
                       env=env(), timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(p.returncode, p.stdout, p.stderr)


def cli_closed_stdout(*args: str, timeout: float = 60) -> Run:
    """The reader has gone before the first write: what `status | head -1` becomes once head exits."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "agent.tools.cli", *args], stdout=w, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT, env=env(), timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        os.close(w)
    return Run(p.returncode, "", p.stderr)


def cli_head(*args: str, timeout: float = 60) -> Run:
    script = 'set -o pipefail; "$@" | head -1; exit "${PIPESTATUS[0]}"'
    p = subprocess.run(["bash", "-c", script, "sh", sys.executable, "-m", "agent.tools.cli", *args],
                       capture_output=True, text=True, cwd=ROOT, env=env(), timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(p.returncode, p.stdout, p.stderr)


def clean(r: Run, what: str) -> None:
    assert "Traceback" not in r.err and "Traceback" not in r.out, f"{what}: traceback\n{r.err}"
    assert "Exception ignored" not in r.err, f"{what}: interpreter complained at exit\n{r.err}"
    assert r.rc in documented_codes(), f"{what}: exit {r.rc} is not in docs/cli.md ({sorted(documented_codes())})"
    assert len(r.err.strip().splitlines()) <= 12, f"{what}: too much on stderr\n{r.err}"


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass
class Lab:
    tmp: Path
    site: Path
    broken: Path
    dead_port: int
    sim_host: str
    sim_instance: int


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("cli")
    dead = free_port()  # nothing listens there: broker and Modbus device are "dead"
    site = write_site(tmp, f"mqtt://127.0.0.1:{dead}", interval="1s", devices=(
        "  - {name: box, type: edge-box, interval: 1s}\n"
        f"  - {{name: meter, type: schneider-iem3155, interval: 5s, connection: {{host: 127.0.0.1, port: {dead}, "
        "unit: 1}}\n"))
    broken = tmp / "broken.yaml"
    broken.write_text("site: {id: Bad Id}\nuplink: {broker: 'http://x'}\ndevices: [{name: a, type: nope}]\n")
    agent = start_agent_process(site, tmp / "agent.log")
    sim_host, inst = next_host(), 7000 + os.getpid() % 500
    sim = subprocess.Popen([sys.executable, "-m", "drivers.bacnet.sim", "--address", f"{sim_host}/8",
                            "--instance", str(inst), "--name", "cli-sim"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None and sim.stdout.readline().startswith("ready")
        deadline = time.monotonic() + 20
        while not (tmp / "agent.sock").exists():
            assert agent.poll() is None and time.monotonic() < deadline, (tmp / "agent.log").read_text()
            time.sleep(0.05)
        yield Lab(tmp, site, broken, dead, sim_host, inst)
    finally:
        stop_process(agent)
        stop_process(sim)


def cases(lab: Lab) -> list[tuple[str, list[str], int, bool]]:
    """(what, argv, exit code, writes to stdout). Each command's usual output and failures."""
    s = ["--config", str(lab.site)]
    bac = ["--local", f"{next_host()}/8", "--port", "47809"]
    return [
        ("validate broken site", ["validate", str(lab.broken)], 78, True),
        ("validate --json broken site", ["validate", "--json", str(lab.broken)], 78, True),
        # the lab's broker and meter are dead: status answers "unhealthy" (exit 1), a health check's verdict
        ("status", ["status", *s], 1, True),
        ("status --json", ["status", "--json", *s], 1, True),
        ("status --device", ["status", "--device", "meter", *s], 1, True),
        ("status unknown device", ["status", "--device", "nope", *s], 2, False),
        ("retry dead device", ["retry", "meter", *s], 1, True),
        ("retry unknown device", ["retry", "nope", *s], 2, False),
        ("status, no agent", ["status", "--socket", str(lab.tmp / "no.sock")], 3, False),
        ("status, no site file", ["status", "--config", str(lab.tmp / "none.yaml")], 2, False),
        ("plan", ["plan", "meter", *s], 0, True),
        ("plan --json", ["plan", "meter", "--json", *s], 0, True),
        ("plan unknown device", ["plan", "nope", *s], 2, False),
        ("write read-only point", ["write", "meter", "active_power", "5", *s], 1, False),
        ("write unknown device", ["write", "nope", "x", "1", *s], 1, False),
        ("monitor dead broker", ["monitor", "--broker", f"mqtt://127.0.0.1:{lab.dead_port}"], 1, False),
        ("diag broker dead", ["diag", "broker", "--timeout", "2", *s], 1, True),
        ("diag device beside the agent", ["diag", "device", "box", *s], 1, False),
        ("diag device --force", ["diag", "device", "box", "--force", *s], 0, True),
        ("diag device dead", ["diag", "device", "meter", "--force", "--timeout", "2", *s], 1, True),
        ("bacnet discover nothing", ["bacnet", "discover", *bac, "--address", "127.77.251.251", "--timeout",
                                     "0.3"], 3, True),
        ("bacnet scan wrong instance", ["bacnet", "scan", str(lab.sim_instance + 1), "--address", lab.sim_host,
                                        *bac, "--timeout", "1"], 1, False),
        ("bacnet scan", ["bacnet", "scan", str(lab.sim_instance), "--address", lab.sim_host, *bac,
                         "--timeout", "1"], 0, True),
        ("provision bad site id", ["provision", "-y", "--site-id", "Bad Id", "--broker", "mqtt://127.0.0.1:1",
                                   "--config", str(lab.tmp / "p" / "site.yaml")], 2, False),
        ("run broken site", ["run", "--config", str(lab.broken)], 78, False),
        ("no command", [], 2, False),
        ("--help", ["--help"], 0, True),
    ]


CASE_NAMES = [c[0] for c in cases(Lab(Path("/x"), Path("/x"), Path("/x"), 1, "127.0.0.1", 1))]


@pytest.mark.parametrize("what", CASE_NAMES)
def test_command_ends_cleanly_and_when_the_reader_goes_away(lab: Lab, what: str) -> None:
    _, argv, rc, writes = next(c for c in cases(lab) if c[0] == what)
    plain = cli(*argv)
    clean(plain, what)
    assert plain.rc == rc, f"{what}: exit {plain.rc}, expected {rc}\n{plain.err}"
    assert bool(plain.out.strip()) == writes, f"{what}: stdout {plain.out[:200]!r}"

    closed = cli_closed_stdout(*argv)
    clean(closed, f"{what} (stdout closed)")
    assert closed.rc == (141 if writes else rc), f"{what} (stdout closed): exit {closed.rc}\n{closed.err}"
    assert closed.err == plain.err or writes, f"{what}: stderr changed with stdout closed\n{closed.err}"

    head = cli_head(*argv)
    clean(head, f"{what} | head -1")
    assert head.rc in ({rc, 141} if writes else {rc}), f"{what} | head -1: exit {head.rc}\n{head.err}"
    assert len(head.out.splitlines()) == (1 if writes else 0)


def all_commands() -> list[list[str]]:
    """Every command and sub-command of the parser, so a new one is covered without editing this test."""
    out: list[list[str]] = []

    def walk(parser: object, prefix: list[str]) -> None:
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]  # type: ignore[attr-defined]
        if not subs and prefix:
            out.append(prefix)
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, [*prefix, name])

    walk(build_parser(), [])
    return out


@pytest.mark.parametrize("argv", all_commands(), ids=" ".join)
def test_bad_arguments_give_usage_not_a_traceback(argv: list[str]) -> None:
    for bad in (["--no-such-option"], ["--timeout", "soon", "--count", "many", "--port", "x"]):
        r = cli(*argv, *bad)
        clean(r, f"{argv} {bad}")
        assert r.rc == 2 and "usage: edge-agent" in r.err and "error:" in r.err, (argv, bad, r.err)
        assert r.out == ""
        closed = cli_closed_stdout(*argv, *bad)
        assert (closed.rc, closed.err) == (2, r.err)


def test_monitor_output_closed_while_printing(broker: Broker) -> None:
    """BrokenPipeError raised inside the asyncio loop of monitor (not only at exit)."""
    pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-r", "-q", "1",
                          "-t", "ea/v1/s1/e/dev", "-m", '{"seq": 1, "kind": "availability"}'],
                         capture_output=True, text=True, timeout=10)
    assert pub.returncode == 0, pub.stderr
    argv = ["monitor", "--broker", broker.url, "--count", "1"]
    plain = cli(*argv, timeout=30)
    clean(plain, "monitor")
    assert plain.rc == 0 and "ea/v1/s1/e/dev" in plain.out
    closed = cli_closed_stdout(*argv, timeout=30)
    clean(closed, "monitor (stdout closed)")
    # stderr keeps only the monitor's own "connected" line: no traceback, no "Broken pipe"
    assert closed.rc == 141 and all(line.startswith("monitor: ") for line in closed.err.splitlines()), closed.err


def test_internal_error_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    """Whatever escapes a command unplanned is one line and exit 70; --debug adds the traceback. Caused for real
    by fault injection: a status socket that answers valid JSON that is not an object."""
    import socket
    import threading

    path = tmp_path / "garbage.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b'["not", "an", "object"]\n')

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = cli("status", "--socket", str(path), timeout=30)
        clean(r, "status against a garbage socket")
        assert r.rc == 70 and "internal error" in r.err and len(r.err.strip().splitlines()) == 1, r.err
        d = cli("--debug", "status", "--socket", str(path), timeout=30)
        assert d.rc == 70 and "Traceback" in d.err
    finally:
        srv.close()
        t.join(5)


def test_documented_codes_are_the_ones_the_cli_uses() -> None:
    assert documented_codes() == set(EXIT_CODES), (documented_codes(), set(EXIT_CODES))


def test_monitor_and_diag_against_a_tls_broker(tmp_path: Path) -> None:
    """A plain MQTT client on a TLS listener: a clear line and exit 1, no traceback (monitor and diag broker)."""
    key, crt = tmp_path / "srv.key", tmp_path / "srv.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True, timeout=30)
    b = Broker(tmp_path, tls={"ca": str(crt), "cert": str(crt), "key": str(key), "require_certificate": "false"})
    b.start()
    try:
        plain_url = f"mqtt://127.0.0.1:{b.port}"
        for argv in (["monitor", "--broker", plain_url],
                     ["diag", "broker", "--timeout", "3", "--config",
                      str(write_site(tmp_path, plain_url))]):
            r = cli(*argv, "--timeout", "3", timeout=60) if argv[0] == "monitor" else cli(*argv, timeout=60)
            clean(r, " ".join(argv[:2]))
            assert r.rc == 1, (argv, r.rc, r.err, r.out)
            if argv[0] == "monitor":
                # the last line is the command's own (a library may log one line of its own before it)
                assert r.err.strip().splitlines()[-1].startswith("monitor: no MQTT session"), r.err
            else:
                assert "FAIL" in r.out, r.out
    finally:
        b.stop()
