"""`edge-agent provision` against a real Mosquitto on loopback: good runs write a site file the agent
accepts; bad arguments fail with a clear message and leave every file as it was."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_site
from agent.tools import provision
from agent.tools.cli import main
from tests.peers.common import free_port
from tests.peers.mosquitto import Broker


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(crt),
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    return key, crt


def make_leaf(d: Path, name: str, ca_key: Path, ca_crt: Path, ext: str) -> tuple[Path, Path]:
    key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    extfile = d / f"{name}.ext"
    extfile.write_text(ext + "\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-out", str(crt), "-extfile", str(extfile))
    return key, crt


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = make_ca(d, "ca")
    _, other_ca = make_ca(d, "other-ca")
    srv_key, srv = make_leaf(d, "server", ca_key, ca, "subjectAltName=IP:127.0.0.1,DNS:localhost")
    cli_key, cli = make_leaf(d, "client", ca_key, ca, "extendedKeyUsage=clientAuth")
    other_key, _ = make_leaf(d, "other", ca_key, ca, "extendedKeyUsage=clientAuth")
    return {"ca": ca, "other_ca": other_ca, "server": srv, "server_key": srv_key, "client": cli,
            "client_key": cli_key, "other_key": other_key}


@pytest.fixture
def tls_broker(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Broker]:
    b = Broker(tmp_path, tls={"ca": str(pki["ca"]), "cert": str(pki["server"]), "key": str(pki["server_key"]),
                              "require_certificate": "true"}).start()
    yield b
    b.stop()


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A freshly installed box's /etc: the package's example site file and the start-hold marker."""
    etc = tmp_path / "box" / "etc"
    (etc / "edge-agent").mkdir(parents=True)
    example = Path(__file__).resolve().parents[2] / "packaging" / "site.yaml"
    (etc / "edge-agent" / "site.yaml").write_bytes(example.read_bytes())
    (etc / "edge-agent" / "unprovisioned").write_text("hold\n")
    return etc


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), p.read_bytes() if p.is_file() else b"")
    return out


def provision_args(etc: Path, *extra: str) -> list[str]:
    return ["provision", "-y", "--config", str(etc / "edge-agent" / "site.yaml"),
            "--credstore", str(etc / "credstore"), "--timeout", "5", *extra]


def test_good_run_plain_mqtt(box: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(provision_args(box, "--site-id", "townhall-7", "--site-name", "Town hall", "--broker", broker.url))
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "answered" in out.out and "Next:" in out.out and "edge-agent run --config" in out.out
    site = load_site(box / "edge-agent" / "site.yaml", strict=True)
    assert site.id == "townhall-7" and site.model.uplink.broker == broker.url
    assert [d.type for d in site.devices] == ["edge-box"]
    assert not (box / "edge-agent" / "unprovisioned").exists(), "the start hold is lifted"
    assert not (box / "credstore").exists(), "no secrets given, no credential store touched"
    leftovers = [p.name for p in (box / "edge-agent").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_good_run_mutual_tls(box: Path, tls_broker: Broker, pki: dict[str, Path],
                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    pw = box.parent / "pw"
    pw.write_text("s3cret\n")
    rc = main(provision_args(box, "--site-id", "library-3", "--broker", tls_broker.url, "--ca", str(pki["ca"]),
                             "--cert", str(pki["client"]), "--key", str(pki["client_key"]),
                             "--username", "agent", "--password-file", str(pw)))
    out = capsys.readouterr()
    assert rc == 0, out.err
    print(out.out)
    text = (box / "edge-agent" / "site.yaml").read_text()
    assert "BEGIN" not in text and "s3cret" not in text, "no secret in the site file"
    key = box / "credstore" / "mqtt-key"
    assert key.read_bytes() == pki["client_key"].read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((box / "credstore").stat().st_mode) == 0o700
    assert (box / "credstore" / "mqtt-password").read_text() == "s3cret\n"
    assert (box / "edge-agent" / "tls" / "ca.crt").read_bytes() == pki["ca"].read_bytes()
    # As the service sees it: LoadCredential= puts the credentials in $CREDENTIALS_DIRECTORY.
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(box / "credstore"))
    site = load_site(box / "edge-agent" / "site.yaml", strict=True)
    assert site.secrets.key_file == str(key)
    assert site.secrets.password is not None and site.secrets.password.get_secret_value() == "s3cret"
    assert site.model.uplink.tls is not None and site.model.uplink.tls.ca_file == str(
        box / "edge-agent" / "tls" / "ca.crt")


@pytest.mark.parametrize(
    ("case", "expect_rc", "expect_msg"),
    [
        ("bad-site-id", 2, "bad site id 'Town Hall'"),
        ("missing-site-id", 2, "--site-id is required"),
        ("bad-url", 2, "bad broker URL"),
        ("missing-cert", 2, "client certificate /nonexistent/client.crt: no such file"),
        ("cert-without-key", 2, "--cert and --key go together"),
        ("key-does-not-match", 2, "cannot be used together"),
        ("not-a-certificate", 2, "not a PEM certificate"),
        ("tls-files-on-plain-mqtt", 2, "is plain MQTT"),
        ("unreachable-broker", 3, "cannot reach broker 127.0.0.1:"),
        ("wrong-ca", 3, "TLS with broker"),
        ("no-client-cert", 3, "broker"),
    ],
)
def test_bad_arguments_fail_clearly_and_write_nothing(
    case: str, expect_rc: int, expect_msg: str, box: Path, tls_broker: Broker, pki: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = ["--site-id", "t1", "--broker", tls_broker.url, "--ca", str(pki["ca"]), "--cert", str(pki["client"]),
            "--key", str(pki["client_key"])]
    args = {
        "bad-site-id": ["--site-id", "Town Hall", *good[2:]],
        "missing-site-id": good[2:],
        "bad-url": ["--site-id", "t1", "--broker", "http://x:1883"],
        "missing-cert": [*good[:6], "--cert", "/nonexistent/client.crt", *good[8:]],
        "cert-without-key": good[:-2],
        "key-does-not-match": [*good[:-1], str(pki["other_key"])],
        "not-a-certificate": [*good[:4], "--ca", str(pki["client_key"])],
        "tls-files-on-plain-mqtt": ["--site-id", "t1", "--broker", "mqtt://127.0.0.1:1883", "--ca", str(pki["ca"])],
        "unreachable-broker": ["--site-id", "t1", "--broker", f"mqtt://127.0.0.1:{free_port()}"],
        "wrong-ca": [*good[:4], "--ca", str(pki["other_ca"]), *good[6:]],
        "no-client-cert": good[:6],
    }[case]
    before = snapshot(box)
    rc = main(provision_args(box, *args))
    err = capsys.readouterr().err
    print(err)
    assert rc == expect_rc, err
    assert expect_msg in err
    assert "nothing was written" in err
    assert snapshot(box) == before


def test_refuses_to_replace_a_provisioned_site_without_force(box: Path, broker: Broker,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(provision_args(box, "--site-id", "first", "--broker", broker.url)) == 0
    first = (box / "edge-agent" / "site.yaml").read_text()
    capsys.readouterr()
    assert main(provision_args(box, "--site-id", "second", "--broker", broker.url)) == 2
    assert "already provisioned; add --force" in capsys.readouterr().err
    assert (box / "edge-agent" / "site.yaml").read_text() == first
    assert main(provision_args(box, "--site-id", "second", "--broker", broker.url, "--force")) == 0
    assert (box / "edge-agent" / "site.yaml.bak").read_text() == first
    assert "second" in (box / "edge-agent" / "site.yaml").read_text()


def test_failure_while_writing_rolls_back(box: Path, tls_broker: Broker, pki: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The key and CA are in place when renaming the site file fails: they are taken back out."""
    (box / "credstore").mkdir(mode=0o700)
    (box / "credstore" / "mqtt-key").write_text("previous key\n")
    before = snapshot(box)
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "site.yaml":
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(provision.os, "replace", failing_replace)
    rc = main(provision_args(box, "--site-id", "t1", "--broker", tls_broker.url, "--ca", str(pki["ca"]),
                             "--cert", str(pki["client"]), "--key", str(pki["client_key"])))
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "No space left on device" in err and "nothing was written" in err
    monkeypatch.setattr(provision.os, "replace", real_replace)
    assert snapshot(box) == before


class Terminal:
    """`edge-agent provision` on a real pseudo-terminal, answered one prompt at a time, as a technician does."""

    def __init__(self, argv: list[str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.tools.cli", *argv], stdin=slave, stdout=slave,
                                     stderr=slave, cwd=Path(__file__).resolve().parents[2], close_fds=True,
                                     env={**os.environ, "TERM": "dumb"}, start_new_session=True)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 20.0) -> str:
        """Read until ``text`` appears; returns what came before it (and consumes it)."""
        import select

        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"waited {timeout:g}s for {text!r}; the terminal shows:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # EIO: the program ended
                    chunk = ""
                assert chunk or text in self.seen, f"ended before {text!r}:\n{self.seen}"
                self.seen += chunk.replace("\r\n", "\n")
        before, _, self.seen = self.seen.partition(text)
        return before

    def answer(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> int:
        try:
            return self.proc.wait(30)
        finally:
            os.close(self.master)


def test_interactive_asks_one_value_at_a_time_and_checks_each(box: Path, broker: Broker) -> None:
    """A bad site id is refused right after it is typed, before the broker is asked for; so is a bad URL."""
    argv = [a for a in provision_args(box) if a != "-y"]
    term = Terminal(argv)
    try:
        term.expect("Site id (e.g. townhall-7): ")
        term.answer("Town Hall 7")
        shown = term.expect("Site id (e.g. townhall-7): ")  # asked again, and nothing else yet
        assert "bad site id 'Town Hall 7'" in shown and "Broker" not in shown, shown
        term.answer("townhall-7")
        term.expect("Site name (empty: none): ")
        term.answer("")
        term.expect("Broker URL (mqtts://host:8883 or mqtt://host:1883): ")
        term.answer("http://mqtt.example.invalid")
        shown = term.expect("Broker URL (mqtts://host:8883 or mqtt://host:1883): ")
        assert "bad broker URL 'http://mqtt.example.invalid'" in shown, shown
        term.answer(broker.url)
        done = term.expect("site townhall-7 is provisioned.")
        assert "answered" in done, done
    finally:
        rc = term.close()
    assert rc == 0, term.seen
    assert load_site(box / "edge-agent" / "site.yaml").id == "townhall-7"


def test_interactive_tls_files_checked_as_typed(box: Path, tls_broker: Broker, pki: dict[str, Path]) -> None:
    """The key given as the certificate is recognised at once, and so is a key of another certificate."""
    argv = [a for a in provision_args(box, "--site-id", "lib-2", "--site-name", "Library") if a != "-y"]
    term = Terminal(argv)
    try:
        term.expect("Broker URL (mqtts://host:8883 or mqtt://host:1883): ")
        term.answer(tls_broker.url)
        term.expect("Broker CA file (empty: the system's CAs): ")
        term.answer(str(pki["client_key"]))
        shown = term.expect("Broker CA file (empty: the system's CAs): ")
        assert "holds a private key, not a PEM certificate" in shown, shown
        term.answer(str(pki["ca"]))
        term.expect("Client certificate file (empty: none): ")
        term.answer(str(pki["client_key"]))  # swapped with the key
        shown = term.expect("Client certificate file (empty: none): ")
        assert "certificate and key swapped?" in shown and "PEM lib" not in shown, shown
        term.answer(str(pki["client"]))
        term.expect("Client key file: ")
        term.answer(str(pki["other_key"]))
        shown = term.expect("Client key file: ")
        assert "the key belongs to another certificate" in shown, shown
        term.answer(str(pki["client_key"]))
        term.expect("site lib-2 is provisioned.")
    finally:
        rc = term.close()
    assert rc == 0, term.seen


@pytest.mark.parametrize(("case", "expect"), [
    ("swapped", "certificate and key swapped: "),
    ("no-client-cert", "requires a client certificate: give --cert and --key"),
])
def test_tls_failures_name_their_cause(case: str, expect: str, box: Path, tls_broker: Broker,
                                       pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    files = {"swapped": ["--ca", str(pki["ca"]), "--cert", str(pki["client_key"]), "--key", str(pki["client"])],
             "no-client-cert": ["--ca", str(pki["ca"])]}[case]
    rc = main(provision_args(box, "--site-id", "t1", "--broker", tls_broker.url, *files))
    err = capsys.readouterr().err
    print(err)
    assert rc in (2, 3) and expect in err and "PEM lib" not in err and "_ssl.c" not in err, err


def test_edge_agent_command_exit_code(box: Path) -> None:
    """Through the installed entry point, as a flashing script calls it: non-zero exit, message on stderr."""
    exe = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "edge-agent"
    proc = subprocess.run([str(exe), *provision_args(box, "--site-id", "Bad_Id", "--broker", "mqtt://127.0.0.1")],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "bad site id" in proc.stderr
