"""``edge-agent provision``: turn a freshly installed box into this building's agent.

Writes the site file from a few flags (or, on a terminal, prompts that check each answer as it is typed):
site id, broker URL, TLS files. Before anything is
written it checks every argument, loads the certificates, asks the broker for an MQTT session with exactly
those settings, and validates the resulting site file with the same code the agent runs. Only then are the
files put in place, each by temp file + rename, rolled back together if one fails: a failed provision leaves
the box as it found it.

Where things go (defaults for the Debian package):
    /etc/edge-agent/site.yaml          the site file (no secrets in it)
    /etc/edge-agent/tls/ca.crt         broker CA, client.crt: client certificate (public, copied)
    /etc/credstore/mqtt-key            client private key, root-only; the unit's LoadCredential=mqtt-key
    /etc/credstore/mqtt-password       MQTT password, same way (LoadCredential=mqtt-password)
    /etc/edge-agent/unprovisioned      removed: the unit's start condition, so systemd may start the agent

Exit codes: 0 done, 2 bad arguments or files, 3 the broker did not answer or refused, 1 could not write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from pydantic import ValidationError

from agent.config import SiteInfo, UplinkConfig, load_site
from agent.errors import ConfigError
from agent.tools import tlsfiles
from agent.tools.helptext import epilog

DEFAULT_CONFIG = "/etc/edge-agent/site.yaml"
DEFAULT_CREDSTORE = "/etc/credstore"
MARKER = "unprovisioned"
KEY_CREDENTIAL = "mqtt-key"
PASSWORD_CREDENTIAL = "mqtt-password"

EXIT_WRITE, EXIT_USAGE, EXIT_BROKER = 1, 2, 3


class ProvisionError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Plan:
    """Everything provision will write, checked before the first byte is."""

    site_id: str
    site_name: str | None
    broker: str
    config: Path
    credstore: Path
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    server_hostname: str | None = None

    @property
    def tls_dir(self) -> Path:
        return self.config.parent / "tls"

    @property
    def uses_tls(self) -> bool:
        return urlparse(self.broker).scheme in ("mqtts", "ssl")

    def site_document(self, ca: str | None, cert: str | None) -> dict[str, Any]:
        site: dict[str, Any] = {"id": self.site_id}
        if self.site_name:
            site["name"] = self.site_name
        uplink: dict[str, Any] = {"broker": self.broker}
        if self.username:
            uplink["username"] = self.username
        if self.password is not None:
            uplink["password"] = {"credential": PASSWORD_CREDENTIAL}
        tls: dict[str, Any] = {}
        if ca:
            tls["ca_file"] = ca
        if cert:
            tls["cert_file"] = cert
            tls["key_file"] = {"credential": KEY_CREDENTIAL}
        if self.server_hostname:
            tls["server_hostname"] = self.server_hostname
        if tls:
            uplink["tls"] = tls
        return {
            "site": site,
            "uplink": uplink,
            "devices": [{"name": "box", "type": "edge-box", "interval": "30s"}],
        }

    def render(self, ca: str | None, cert: str | None) -> str:
        head = (
            "# Site file written by `edge-agent provision`. Check changes with `edge-agent validate`.\n"
            "# Secrets are not in this file: the client key and password are systemd credentials\n"
            f"# ({self.credstore}/{KEY_CREDENTIAL}, {self.credstore}/{PASSWORD_CREDENTIAL}).\n"
        )
        return head + yaml.safe_dump(self.site_document(ca, cert), sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------------------------------- arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "provision",
        help="write this box's site file, check the broker answers, print the next step",
        description="Turn a freshly installed box into this building's agent: write the site file from flags "
                    "(or, on a terminal, by asking one value at a time, each checked as it is typed), load the "
                    "TLS files, open an MQTT session with exactly those settings, validate the site file, and "
                    "only then put the files in place (all or nothing). The client key and password become "
                    "systemd credentials in /etc/credstore, never part of the site file.",
        epilog=epilog(["edge-agent provision",
                       "edge-agent provision -y --site-id townhall-7 --broker mqtts://mqtt.example.org:8883 "
                       "--ca ca.crt --cert box.crt --key box.key",
                       "edge-agent provision -y --site-id lab-1 --broker mqtt://192.0.2.5:1883 --skip-broker-check"],
                      {0: "provisioned", 1: "could not write the files (nothing was changed)",
                       2: "a bad or missing value or file (nothing was written)",
                       3: "the broker did not answer or refused the session (nothing was written)"}),
    )
    p.add_argument("--site-id", metavar="ID", help="site id: lower case letters, digits, - and _ (e.g. townhall-7)")
    p.add_argument("--site-name", metavar="NAME", help="human name of the building")
    p.add_argument("--broker", metavar="URL", help="mqtts://host:8883 (TLS) or mqtt://host:1883")
    p.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) of the broker (default: system CAs)")
    p.add_argument("--cert", metavar="FILE", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", metavar="FILE", help="client private key (PEM); installed as credential mqtt-key")
    p.add_argument("--server-hostname", metavar="NAME",
                   help="name to check in the broker's certificate, if not the URL's")
    p.add_argument("--username", metavar="USER", help="MQTT user name")
    p.add_argument("--password-file", metavar="FILE", help="file holding the MQTT password")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"site file to write (default {DEFAULT_CONFIG})")
    p.add_argument("--credstore", default=DEFAULT_CREDSTORE, metavar="DIR",
                   help=f"where systemd credentials live (default {DEFAULT_CREDSTORE})")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="seconds allowed for the broker check")
    p.add_argument("--skip-broker-check", action="store_true",
                   help="do not contact the broker (flashing boxes off site); everything else is checked")
    p.add_argument("--force", action="store_true", help="replace a site file that was already provisioned")
    p.add_argument("-y", "--non-interactive", action="store_true",
                   help="never prompt: missing values are errors (implied when stdin is not a terminal)")
    p.set_defaults(func=main)


class Prompter:
    """Asks the missing values one at a time on the terminal and checks each answer as it is typed, with the
    same checks as the flags: a bad answer is explained and asked again before the next question."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def ask(self, label: str, check: Any, *, optional: bool = False) -> str | None:
        while True:
            try:
                answer = input(f"{label}: ").strip()
            except EOFError:
                print(file=sys.stderr)
                raise ProvisionError(f"no answer for {label.split(' (')[0].lower()}") from None
            if not answer and optional:
                return None
            if not answer:
                print("  a value is needed here (Ctrl-C to give up)", file=sys.stderr)
                continue
            try:
                check(answer)
            except ProvisionError as exc:
                print(f"  {exc}; try again (Ctrl-C to give up)", file=sys.stderr)
                continue
            return answer

    def fill(self) -> None:
        a = self.args
        if a.site_id is None:
            a.site_id = self.ask("Site id (e.g. townhall-7)", check_site_id)
        if a.site_name is None:
            a.site_name = self.ask("Site name (empty: none)", lambda v: None, optional=True)
        if a.broker is None:
            a.broker = self.ask("Broker URL (mqtts://host:8883 or mqtt://host:1883)", check_broker_url)
        if urlparse(a.broker).scheme not in ("mqtts", "ssl"):
            return
        if a.ca is None:
            a.ca = self.ask("Broker CA file (empty: the system's CAs)", check_ca, optional=True)
        if a.cert is None:
            a.cert = self.ask("Client certificate file (empty: none)", check_cert, optional=True)
        if a.cert and a.key is None:
            a.key = self.ask("Client key file", lambda v: check_key(v, a.cert))


def check_site_id(value: str) -> None:
    try:
        SiteInfo.model_validate({"id": value})
    except ValidationError:
        raise ProvisionError(
            f"bad site id {value!r}: use 1-64 lower case letters, digits, '-' and '_', "
            "starting with a letter or digit (e.g. townhall-7)"
        ) from None


def check_broker_url(value: str) -> None:
    try:
        UplinkConfig.model_validate({"broker": value})
    except ValidationError as exc:
        raise ProvisionError(f"bad broker URL {value!r}: {_first_error(exc)}") from None


def check_ca(value: str) -> None:
    path = _readable(value, "CA certificate")
    problem = tlsfiles.ca_problem(path) if path else None
    if problem:
        raise ProvisionError(problem)


def check_cert(value: str) -> None:
    path = _readable(value, "client certificate")
    problem = tlsfiles.certificate_problem(path, "client certificate") if path else None
    if problem:
        raise ProvisionError(problem)


def check_key(value: str, cert: str | None) -> None:
    key = _readable(value, "client key")
    crt = _readable(cert, "client certificate")
    problem = tlsfiles.pair_problem(crt, key) if crt and key else (tlsfiles.key_problem(key) if key else None)
    if problem:
        raise ProvisionError(problem)


def _readable(path: str | None, what: str) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ProvisionError(f"{what} {path}: no such file")
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ProvisionError(f"{what} {path}: cannot read: {exc.strerror}") from exc
    return p.resolve()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    return str(err["msg"]).removeprefix("Value error, ")


def build_plan(args: argparse.Namespace) -> Plan:
    """Check the arguments; nothing is written and nothing is contacted."""
    if not args.site_id:
        raise ProvisionError("--site-id is required (e.g. --site-id townhall-7)")
    check_site_id(args.site_id)
    if not args.broker:
        raise ProvisionError("--broker is required (e.g. --broker mqtts://mqtt.example.org:8883)")
    check_broker_url(args.broker)
    plan = Plan(
        site_id=args.site_id,
        site_name=args.site_name,
        broker=args.broker,
        config=Path(args.config).absolute(),
        credstore=Path(args.credstore).absolute(),
        ca=_readable(args.ca, "CA certificate"),
        cert=_readable(args.cert, "client certificate"),
        key=_readable(args.key, "client key"),
        username=args.username,
        server_hostname=args.server_hostname,
    )
    if args.password_file:
        pw = _readable(args.password_file, "password file")
        assert pw is not None
        plan.password = pw.read_text(encoding="utf-8").rstrip("\r\n")
        if not plan.password:
            raise ProvisionError(f"password file {args.password_file} is empty")
    if bool(plan.cert) != bool(plan.key):
        raise ProvisionError("--cert and --key go together (mutual TLS needs both)")
    problem = (tlsfiles.ca_problem(plan.ca) if plan.ca else None) or (
        tlsfiles.pair_problem(plan.cert, plan.key) if plan.cert and plan.key else None)
    if problem:
        raise ProvisionError(problem)
    if (plan.ca or plan.cert or plan.server_hostname) and not plan.uses_tls:
        raise ProvisionError(f"TLS files given but {plan.broker} is plain MQTT: use mqtts://host:8883")
    if plan.uses_tls:
        tls_context(plan)  # loads the PEM files: a wrong or mismatched file fails here
    if plan.config.exists() and not (plan.config.parent / MARKER).exists() and not args.force:
        raise ProvisionError(
            f"{plan.config} exists and this box is already provisioned; add --force to replace it "
            f"(the current file is kept as {plan.config.name}.bak)"
        )
    return plan


def tls_context(plan: Plan) -> ssl.SSLContext:
    from agent.uplink.mqtt import client_tls_context

    try:
        ctx = client_tls_context(str(plan.ca) if plan.ca else None, plan.server_hostname)
    except (ssl.SSLError, ValueError) as exc:
        raise ProvisionError(f"CA certificate {plan.ca}: not a PEM certificate ({exc})") from None
    if plan.cert and plan.key:
        try:
            ctx.load_cert_chain(str(plan.cert), str(plan.key))
        except ssl.SSLError as exc:
            raise ProvisionError(
                f"client certificate {plan.cert} / key {plan.key}: cannot be used together ({exc.reason or exc})"
            ) from None
    return ctx


# ------------------------------------------------------------------------------------------ broker check


async def check_broker(plan: Plan, budget: float) -> float:
    """TCP connect, then one MQTT session with the given TLS settings and credentials. Returns seconds."""
    import aiomqtt

    u = UplinkConfig.model_validate({"broker": plan.broker})
    host, port = u.host, u.port
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(budget):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except TimeoutError:
        raise ProvisionError(f"broker {host}:{port} did not answer within {budget:g}s", EXIT_BROKER) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if isinstance(exc, socket.gaierror):
            reason = f"cannot resolve {host}: {exc.strerror}"
        raise ProvisionError(f"cannot reach broker {host}:{port}: {reason}", EXIT_BROKER) from None
    ctx = tls_context(plan) if plan.uses_tls else None  # checks --server-hostname, as the agent does
    client = aiomqtt.Client(
        host,
        port,
        identifier=f"edge-agent-{plan.site_id}-provision",
        username=plan.username,
        password=plan.password,
        tls_context=ctx,
        timeout=budget,
        keepalive=max(5, int(budget)),
    )
    try:
        async with asyncio.timeout(budget):
            async with client:
                pass
    except TimeoutError:
        raise ProvisionError(
            f"broker {host}:{port} accepted TCP but no MQTT session within {budget:g}s"
            + (" (the broker probably requires a client certificate: give --cert and --key)"
               if ctx and not plan.cert else ""),
            EXIT_BROKER,
        ) from None
    except ssl.SSLError as exc:
        raise ProvisionError(f"TLS with broker {host}:{port} failed: {tlsfiles.handshake_problem(exc)}",
                             EXIT_BROKER) from None
    except aiomqtt.MqttError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "[SSL" in str(exc) or "certificate" in str(exc).lower():
            reason = tlsfiles.handshake_problem(cause if isinstance(cause, ssl.SSLError) else exc)
            raise ProvisionError(f"TLS with broker {host}:{port} failed: {reason}", EXIT_BROKER) from None
        if ctx and not plan.cert and "timed out" in str(exc).lower():
            raise ProvisionError(f"broker {host}:{port} closed the TLS session: it probably requires a client "
                                 "certificate (give --cert and --key)", EXIT_BROKER) from None
        raise ProvisionError(f"broker {host}:{port} refused the MQTT session: {exc}", EXIT_BROKER) from None
    except OSError as exc:
        raise ProvisionError(f"broker {host}:{port}: {exc.strerror or exc}", EXIT_BROKER) from None
    return time.monotonic() - t0


# ------------------------------------------------------------------------------------------- validation


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def validate(plan: Plan) -> None:
    """Validate the site file as the agent will see it: same text, TLS files and credentials staged in a
    private temporary directory (the real ones are not touched yet)."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-provision-") as tmp:
        t = Path(tmp)
        creds = t / "credentials"
        creds.mkdir(mode=0o700)
        ca = cert = None
        if plan.ca:
            ca = str(t / "ca.crt")
            shutil.copyfile(plan.ca, ca)
        if plan.cert and plan.key:
            cert = str(t / "client.crt")
            shutil.copyfile(plan.cert, cert)
            shutil.copyfile(plan.key, creds / KEY_CREDENTIAL)
        if plan.password is not None:
            (creds / PASSWORD_CREDENTIAL).write_text(plan.password + "\n", encoding="utf-8")
        site = t / "site.yaml"
        site.write_text(plan.render(ca, cert), encoding="utf-8")
        with _env("CREDENTIALS_DIRECTORY", str(creds)):
            try:
                load_site(site, strict=True)
            except ConfigError as exc:
                problems = "\n  ".join(str(p) for p in exc.problems)
                raise ProvisionError(f"the site file would not be valid:\n  {problems}") from None


# ---------------------------------------------------------------------------------------------- writing


class Transaction:
    """Files staged next to their destination, renamed into place together; undone if one step fails."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path, int]] = []
        self.done: list[tuple[Path, Path | None]] = []  # (destination, backup of what it replaced)

    def stage(self, dest: Path, data: bytes, mode: int) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.staged.append((Path(tmp), dest, mode))

    def commit(self) -> None:
        try:
            for tmp, dest, _ in self.staged:
                backup = None
                if dest.exists():
                    # A hard link keeps the old file reachable for a rollback at no copying cost.
                    backup = dest.with_name(f".{dest.name}.provision-old")
                    with contextlib.suppress(FileNotFoundError):
                        backup.unlink()
                    os.link(dest, backup)
                try:
                    os.replace(tmp, dest)
                except BaseException:
                    if backup is not None:
                        with contextlib.suppress(OSError):
                            backup.unlink()
                    raise
                self.done.append((dest, backup))
        except BaseException:
            self.rollback()
            raise
        for d in {dest.parent for _, dest, _ in self.staged}:
            _fsync_dir(d)
        for _, backup in self.done:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()

    def rollback(self) -> None:
        for dest, backup in reversed(self.done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, dest)
                else:
                    dest.unlink()
        for tmp, _, _ in self.staged:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write(plan: Plan, keep_backup: bool) -> list[Path]:
    made_dirs: list[Path] = []

    def ensure_dir(d: Path, mode: int) -> None:
        missing = [p for p in [d, *d.parents] if not p.exists()]
        d.mkdir(mode=mode, parents=True, exist_ok=True)
        made_dirs.extend(reversed(missing))

    tx = Transaction()
    try:
        ensure_dir(plan.config.parent, 0o755)
        ca = cert = None
        if plan.ca or plan.cert:
            ensure_dir(plan.tls_dir, 0o755)
        if plan.ca:
            ca = str(plan.tls_dir / "ca.crt")
            tx.stage(Path(ca), plan.ca.read_bytes(), 0o644)
        if plan.cert and plan.key:
            cert = str(plan.tls_dir / "client.crt")
            tx.stage(Path(cert), plan.cert.read_bytes(), 0o644)
        if plan.key or plan.password is not None:
            ensure_dir(plan.credstore, 0o700)
        if plan.key:
            tx.stage(plan.credstore / KEY_CREDENTIAL, plan.key.read_bytes(), 0o600)
        if plan.password is not None:
            tx.stage(plan.credstore / PASSWORD_CREDENTIAL, (plan.password + "\n").encode(), 0o600)
        if keep_backup and plan.config.exists():
            tx.stage(plan.config.with_name(plan.config.name + ".bak"), plan.config.read_bytes(), 0o644)
        # The site file last: it is what the agent reads, and it only ever refers to files already in place.
        tx.stage(plan.config, plan.render(ca, cert).encode(), 0o644)
        tx.commit()
    except OSError as exc:
        tx.rollback()
        for d in reversed(made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise ProvisionError(f"could not write {exc.filename or plan.config}: {exc.strerror}", EXIT_WRITE) from None
    written = [dest for dest, _ in tx.done]
    with contextlib.suppress(FileNotFoundError):
        (plan.config.parent / MARKER).unlink()
    return written


# ------------------------------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> int:
    try:
        if not args.non_interactive and sys.stdin.isatty():
            Prompter(args).fill()
        plan = build_plan(args)
        if args.skip_broker_check:
            answered = None
            print(f"warning: broker {plan.broker} not contacted (--skip-broker-check)", file=sys.stderr)
        else:
            answered = asyncio.run(check_broker(plan, args.timeout))
        validate(plan)
        replacing = plan.config.exists() and not (plan.config.parent / MARKER).exists()
        written = write(plan, keep_backup=replacing)
    except ProvisionError as exc:
        print(f"edge-agent provision: error: {exc}", file=sys.stderr)
        print("edge-agent provision: nothing was written", file=sys.stderr)
        return exc.code
    for p in written:
        print(f"wrote {p}")
    if answered is not None:
        print(f"broker {plan.broker} answered (MQTT session in {answered * 1000:.0f} ms)")
    print(f"site {plan.site_id} is provisioned.")
    print()
    if plan.config == Path(DEFAULT_CONFIG):
        print("Next: start the agent and watch it connect:")
        print("  sudo systemctl restart edge-agent")
        print("  systemctl status edge-agent; journalctl -u edge-agent -f")
    else:
        print("Next: run the agent with this site file:")
        print(f"  edge-agent run --config {plan.config}")
    return 0
