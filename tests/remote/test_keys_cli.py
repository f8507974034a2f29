"""``edge-agent keys generate|show`` as an operator runs them (a real process), and the key it makes signs
messages that a box holding the printed public entry accepts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from agent.remote.envelope import claims, sign, verify
from agent.remote.trust import TrustStore
from agent.tools.keys import load_private

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.tools.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_generate_writes_a_private_key_and_prints_the_public_entry(tmp_path: Path) -> None:
    key = tmp_path / "alice.jwk"
    r = cli("keys", "generate", "--name", "alice", "--roles", "ops,write", "-o", str(key))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    entry = json.loads(r.stdout)
    assert entry["kid"] == "alice" and entry["roles"] == ["ops", "write"] and "d" not in entry
    (tmp_path / "operators.json").write_text(json.dumps({"keys": [entry]}))
    site = tmp_path / "site.yaml"
    op = load_private(key)
    token = sign(op.key, op.name, claims("townhall", "status", {}, "m1"))
    assert verify(token, TrustStore.load(tmp_path / "operators.json"), "townhall", None).key == "alice"
    again = cli("keys", "generate", "--name", "alice", "--roles", "ops", "-o", str(key))
    assert again.returncode == 1 and "not overwritten" in again.stderr
    shown = cli("keys", "show", "--config", str(site))
    assert shown.returncode == 0 and "alice" in shown.stdout and "ops,write" in shown.stdout
    pub = cli("keys", "show", str(key), "--json")
    assert pub.returncode == 0 and '"d"' not in pub.stdout and json.loads(pub.stdout)["keys"][0]["name"] == "alice"


def test_generate_refuses_an_unknown_role(tmp_path: Path) -> None:
    r = cli("keys", "generate", "--name", "x", "--roles", "root", "-o", str(tmp_path / "x.jwk"))
    assert r.returncode == 2 and "unknown role(s) root" in r.stderr and not (tmp_path / "x.jwk").exists()


def test_show_locates_a_broken_trust_file(tmp_path: Path) -> None:
    (tmp_path / "operators.json").write_text('{"keys": [{"kty": "RSA"}]}')
    r = cli("keys", "show", "--config", str(tmp_path / "site.yaml"))
    assert r.returncode == 2 and f"{tmp_path / 'operators.json'}: keys[0]: only Ed25519" in r.stderr
    assert "Traceback" not in r.stderr
