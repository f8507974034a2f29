"""``edge-agent bundle``: contents listed, size bounded, and no secret of a test site survives in it."""

from __future__ import annotations

import asyncio
import os
import sys
import tarfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.tools.bundle import DEFAULT_MAX
from tests.peers.common import free_port

from .agentkit import ROOT, running_agent, write_site

PASSWORD = "pw-Zq81xLmnT"
COMMENT_SECRET = "hunter2-Old9x"
URL_SECRET = "Adm1nPwQ7"
KEY_LINES = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", "Vv0jN2Wq3Hc9mS8pLk4XyZa1BcDeFgHiJkLmNoPqRsTu"]
KEY = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(KEY_LINES) + "\n-----END PRIVATE KEY-----\n"
TOKEN = "tok-4f9a1c2e77b0"


def _read(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name.removeprefix("edge-agent-bundle/"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


async def _bundle(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.tools.cli", "bundle", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_bundle_contents_and_no_secret_survives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-key").write_text(KEY)
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("EA_TEST_MQTT_PW", PASSWORD)
    port = free_port()
    uplink = (f"  username: box\n  password: {{env: EA_TEST_MQTT_PW}}\n"
              f"  tls: {{cert_file: {tmp_path / 'cert.pem'}, key_file: {{credential: mqtt-key}}}}\n")
    extra = (f"# the old broker password: {COMMENT_SECRET}\n"
             f"# was mqtt://admin:{URL_SECRET}@broker.example:1883\n"
             f"metrics: {{listen: '127.0.0.1:{port}'}}\n")
    site = write_site(tmp_path, f"mqtts://127.0.0.1:{free_port()}", extra_uplink=uplink, extra=extra)
    log = tmp_path / "agent.log"
    log.write_text("".join(f"line {i}\n" for i in range(5000))
                   + f"debug: connecting with password={PASSWORD}\n{KEY}api token: {TOKEN}\nlast line\n")
    out = tmp_path / "b.tar.gz"
    async with running_agent(site):
        await asyncio.sleep(0.5)
        rc, stdout, err = await _bundle("--config", str(site), "-o", str(out), "--log", str(log), "--lines", "100")
    assert rc == 0, err
    assert stdout.strip() == str(out)
    assert os.stat(out).st_mode & 0o777 == 0o600
    parts = _read(out)
    expected = {"MANIFEST.txt", "versions.json", "status.json", "validate.txt", "site.yaml",
                "profiles/edge-box.yaml", "outbox.json", "metrics.txt", "journal.txt"}
    assert expected <= set(parts), sorted(parts)
    manifest = parts["MANIFEST.txt"].decode()
    for name in (*expected - {"MANIFEST.txt"}, "systemctl.txt"):
        assert name in manifest, name  # present, or listed as MISSING with the reason

    blob = b"\n".join(parts.values()).decode()
    for secret in (PASSWORD, COMMENT_SECRET, URL_SECRET, TOKEN, *KEY_LINES, "BEGIN PRIVATE KEY"):
        assert secret not in blob, f"secret {secret!r} survived in the bundle"

    site_text = parts["site.yaml"].decode()
    assert len(site_text.splitlines()) == len(site.read_text().splitlines())  # validate's line numbers still hold
    assert "{env: EA_TEST_MQTT_PW}" in site_text and "{credential: mqtt-key}" in site_text  # references kept
    assert "password: <redacted>" in site_text and "admin:<redacted>@broker" in site_text
    journal = parts["journal.txt"].decode().splitlines()
    assert journal[-1] == "last line" and "line 4999" in journal and "line 4899" not in journal  # --lines 100
    assert "<redacted>" in journal[-2]  # the PEM block, collapsed into one mark
    assert '"site": "t1"' in parts["status.json"].decode()
    fams = {f.name for f in text_string_to_metric_families(parts["metrics.txt"].decode())}
    assert "edge_agent_outbox_backlog_messages" in fams and "edge_agent_device_cycle_duration_seconds" in fams
    assert b'"agent": "' in parts["versions.json"] and b"prometheus-client" in parts["versions.json"]


async def test_bundle_size_is_bounded_and_works_without_an_agent(tmp_path: Path) -> None:
    site = write_site(tmp_path, "mqtt://127.0.0.1:9")
    log = tmp_path / "huge.log"
    with log.open("w") as f:
        for i in range(300_000):
            f.write(f"{i:08d} a long and boring log line repeated to make the file big ........\n")
    out = tmp_path / "b.tar.gz"
    rc, _, err = await _bundle("--config", str(site), "-o", str(out), "--log", str(log), "--lines", "10000000")
    assert rc == 0, err
    parts = _read(out)
    assert sum(len(p) for p in parts.values()) <= DEFAULT_MAX + 4096
    assert out.stat().st_size <= DEFAULT_MAX
    assert log.stat().st_size > DEFAULT_MAX  # the log alone would not have fitted
    manifest = parts["MANIFEST.txt"].decode()
    assert "status.json  MISSING" in manifest  # no agent: said so, the rest is there
    assert "site.yaml" in parts and "validate.txt" in parts
    assert parts["journal.txt"].endswith(b"........\n")


def test_redactor_by_key_keeps_references_and_lines() -> None:
    from agent.tools.redact import Redactor

    r = Redactor()
    text = ("a: {password: hunter22, user: x}\nkey: abcdef\nkey_file: /etc/k.pem\napi_token: 'x y z w'\n"
            "password: {file: /p}\nsecret: \"q w e\"\n{\"password\": \"abc d\", \"n\": 1}\n")
    out = r.text(text)
    assert out == ("a: {password: <redacted>, user: x}\nkey: <redacted>\nkey_file: /etc/k.pem\n"
                   "api_token: <redacted>\npassword: {file: /p}\nsecret: <redacted>\n"
                   '{"password": <redacted>, "n": 1}\n'), out
