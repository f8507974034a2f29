"""``edge-agent bundle``: one archive with what support asks for first, every secret removed, size bounded.

Contents (docs/observability.md): MANIFEST.txt, versions.json, status.json, validate.txt, site.yaml and the
profiles in use (redacted), journal.txt (last N lines), outbox.json, systemctl.txt, metrics.txt. A part that
cannot be had (no agent running, no systemd, no journal) is replaced by a line saying why; the bundle is
still written. Nothing in it is read from the devices.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from agent import __version__
from agent.tools.helptext import epilog
from agent.tools.redact import Redactor

LIBRARIES = ("pydantic", "PyYAML", "aiomqtt", "paho-mqtt", "pymodbus", "pyserial", "bacpypes3", "prometheus-client")
UNIT = "edge-agent"
PART_MAX = 2 * 1024 * 1024  # one member, before compression
DEFAULT_MAX = 8 * 1024 * 1024  # all members, before compression
COMMAND_TIMEOUT = 15.0


def register(sub: Any) -> None:
    from agent.tools.args import site_arg, socket_arg

    p = sub.add_parser(
        "bundle", help="write a support archive (status, config, logs, metrics; secrets removed)",
        description="Write one .tar.gz for a support ticket: versions (agent, Python, libraries, OS), the running "
                    "agent's status, validate output, the site file and the profiles in use with every secret "
                    "removed, the last log lines, outbox figures, the unit's systemctl properties and a metrics "
                    "scrape. Parts that cannot be had are listed in MANIFEST.txt with the reason. Size bounded.",
        epilog=epilog(["edge-agent bundle", "edge-agent bundle -o /tmp/townhall.tar.gz --lines 5000",
                       "edge-agent bundle --log /var/log/edge-agent.log"],
                      {0: "archive written (its path is printed)", 1: "the archive could not be written"}))
    site_arg(p)
    p.add_argument("-o", "--output", metavar="FILE",
                   help="archive to write (default: edge-agent-bundle-SITE-TIME.tar.gz here)")
    p.add_argument("--lines", type=int, default=2000, metavar="N", help="log lines to include (default: 2000)")
    p.add_argument("--log", metavar="FILE", help="read the log from this file instead of the journal")
    socket_arg(p)
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX, metavar="N",
                   help=f"bound on the archive's contents before compression (default: {DEFAULT_MAX})")
    p.set_defaults(func=cmd_bundle)


def cmd_bundle(args: argparse.Namespace) -> int:
    b = Bundle(Path(args.config), args.lines, args.log, args.socket, args.max_bytes)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.output) if args.output else Path(f"edge-agent-bundle-{b.site_id}-{stamp}.tar.gz")
    try:
        names = b.write(out)
    except OSError as exc:
        print(f"cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(out)
    print(f"{len(names)} parts, {out.stat().st_size} bytes: {', '.join(names)}", file=sys.stderr)
    return 0


def _run(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        raise OSError(f"{cmd[0]} not found")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    if r.returncode != 0 and not r.stdout:
        raise OSError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[:300]}")
    return r.stdout


class Bundle:
    def __init__(self, site: Path, lines: int, log: str | None, sock: str | None, max_bytes: int) -> None:
        self.site = site
        self.lines = max(0, lines)
        self.log = Path(log) if log else None
        self.sock = sock
        self.max_bytes = max_bytes
        self.redactor = Redactor()
        self.parts: dict[str, bytes] = {}
        self.missing: dict[str, str] = {}
        self.loaded: Any = None  # the Site when it loads
        self.status: dict[str, Any] | None = None
        self.site_id = "unknown"
        self._load()

    def _load(self) -> None:
        from agent.config import load_site
        from agent.config.yamlloc import load_file
        from agent.errors import ConfigError

        with contextlib.suppress(Exception):
            self.redactor.collect(load_file(self.site).data)
        try:
            self.loaded = load_site(self.site, strict=False)
            self.site_id = self.loaded.id
        except (ConfigError, OSError):
            self.loaded = None
        if self.loaded is not None:
            s = self.loaded.secrets
            self.redactor.add(s.password.get_secret_value() if s.password else None)
            for f in (s.key_file,):
                if f:
                    with contextlib.suppress(OSError, UnicodeDecodeError):
                        self.redactor.add(Path(f).read_text(encoding="utf-8"))

    # ------------------------------------------------------------------------------------------- parts

    def gather(self) -> None:
        steps: list[tuple[str, Callable[[], str | bytes]]] = [
            ("versions.json", self._versions), ("status.json", self._status), ("validate.txt", self._validate),
            ("site.yaml", self._site), ("outbox.json", self._outbox), ("systemctl.txt", self._systemctl),
            ("metrics.txt", self._metrics), ("journal.txt", self._journal),
        ]
        for name, fn in steps:
            try:
                data = fn()
            except Exception as exc:  # one part failing never costs the others
                why = str(exc) if isinstance(exc, OSError) and not exc.errno else f"{type(exc).__name__}: {exc}"
                self.missing[name] = " ".join(why.split())
                continue
            self._put(name, data)
        with contextlib.suppress(Exception):
            self._profiles()

    def _put(self, name: str, data: str | bytes) -> None:
        text = self.redactor.text(data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
        raw = text.encode()
        if len(raw) > PART_MAX:
            # keep the end (latest log lines, last devices) and say so
            raw = b"[... truncated to the last %d bytes ...]\n" % PART_MAX + raw[-PART_MAX:]
        used = sum(len(v) for v in self.parts.values())
        if used + len(raw) > self.max_bytes:
            self.missing[name] = f"left out: the bundle would exceed {self.max_bytes} bytes"
            return
        self.parts[name] = raw

    def _versions(self) -> str:
        libs: dict[str, str | None] = {}
        for lib in LIBRARIES:
            try:
                libs[lib] = metadata.version(lib)
            except metadata.PackageNotFoundError:
                libs[lib] = None
        os_release = {}
        with contextlib.suppress(OSError):
            for line in Path("/etc/os-release").read_text().splitlines():
                k, _, v = line.partition("=")
                if k in ("PRETTY_NAME", "ID", "VERSION_ID"):
                    os_release[k] = v.strip('"')
        return json.dumps({"agent": __version__, "python": sys.version, "executable": sys.executable,
                           "libraries": libs, "os": os_release, "kernel": platform.release(),
                           "machine": platform.machine(), "hostname": socket.gethostname(),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2)

    def _socket(self) -> Path:
        if self.sock:
            return Path(self.sock)
        if self.loaded is not None:
            return Path(self.loaded.client_socket_path())
        return Path("/run/edge-agent/agent.sock")

    def _status(self) -> str:
        from agent.core.status import request

        path = self._socket()
        try:
            ans = request(path, {"op": "status"})
        except OSError as exc:
            raise OSError(f"no agent answering on {path}: {exc.strerror or exc}") from None
        if not ans.get("ok"):
            raise OSError(f"the agent answered with an error: {ans.get('error')}")
        self.status = ans["status"]
        return json.dumps(self.status, indent=2, default=str)

    def _validate(self) -> str:
        from agent.tools.commands import cmd_validate

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cmd_validate(argparse.Namespace(paths=[], config=str(self.site), json=False))
        return f"$ edge-agent validate --config {self.site}\n{out.getvalue()}{err.getvalue()}(exit {rc})\n"

    def _site(self) -> str:
        return self.site.read_text(encoding="utf-8", errors="replace")

    def _profiles(self) -> None:
        if self.loaded is None:
            return
        used = {d.type for d in self.loaded.devices}
        for pid, prof in sorted(self.loaded.profiles.items()):
            if pid in used and prof.file:
                with contextlib.suppress(OSError):
                    self._put(f"profiles/{Path(prof.file).name}", Path(prof.file).read_text(errors="replace"))

    def _outbox(self) -> str:
        if self.status is not None:
            return json.dumps({"source": "status socket", **self.status.get("outbox", {})}, indent=2, default=str)
        if self.loaded is None:
            raise OSError("no running agent and no valid site file: outbox location unknown")
        files = {}
        for f in sorted(self.loaded.state_dir.glob("outbox*")):
            with contextlib.suppress(OSError):
                files[f.name] = f.stat().st_size
        return json.dumps({"source": "files (agent not running)", "state_dir": str(self.loaded.state_dir),
                           "files": files}, indent=2)

    def _systemctl(self) -> str:
        return _run(["systemctl", "show", UNIT, "--no-pager"])

    def _journal(self) -> str:
        if self.log is not None:
            return _tail(self.log, self.lines)
        return _run(["journalctl", "-u", UNIT, "-n", str(self.lines), "--no-pager", "-o", "short-iso"])

    def _metrics(self) -> str:
        listen = self.loaded.model.metrics.listen if self.loaded is not None else None
        if listen:
            return _scrape(listen)
        if self.status is None:
            raise OSError("metrics.listen is not set and no agent answers the status socket")
        from agent.obs.metrics import Metrics

        st = self.status
        text = Metrics(lambda: st).exposition().decode()
        return "# metrics.listen is not set: rendered from status (no histograms)\n" + text

    # ------------------------------------------------------------------------------------------- write

    def write(self, out: Path) -> list[str]:
        self.gather()
        manifest = [f"edge-agent support bundle, site {self.site_id}, "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", "",
                    *(f"{n}  {len(d)} bytes" for n, d in self.parts.items()), "",
                    *(f"{n}  MISSING: {why}" for n, why in self.missing.items()), "",
                    "Secrets are removed by key name and by value (docs/observability.md)."]
        self.parts = {"MANIFEST.txt": self.redactor.text("\n".join(manifest) + "\n").encode(), **self.parts}
        leaks = self.redactor.leaks(p.decode("utf-8", "replace") for p in self.parts.values())
        assert not leaks, "redaction failed"  # cannot happen: text() replaced every value
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
                now = time.time()
                for name, data in self.parts.items():
                    info = tarfile.TarInfo(f"edge-agent-bundle/{name}")
                    info.size, info.mtime, info.mode = len(data), int(now), 0o600
                    tar.addfile(info, io.BytesIO(data))
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return list(self.parts)


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines, reading at most PART_MAX bytes from the end."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - PART_MAX))
        data = f.read()
    text = data.decode("utf-8", "replace").splitlines()
    if size > PART_MAX:
        text = text[1:]  # the first line is cut
    return "\n".join(text[-lines:] if lines else []) + "\n"


def _scrape(listen: str) -> str:
    from agent.types import parse_listen

    where = parse_listen(listen)
    if isinstance(where, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = where
    else:
        fam = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        target = where
    with s:
        s.settimeout(COMMAND_TIMEOUT)
        s.connect(target)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
            if len(buf) > PART_MAX * 2:
                break
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"metrics listener answered {head.splitlines()[0][:80]!r}")
    return body.decode("utf-8", "replace")
