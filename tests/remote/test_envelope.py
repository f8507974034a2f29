"""Operator keys, the trust store and the signed envelope: every refusal rule, and the replay record across a
restart (a new ReplayRecord on the same file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from agent.errors import ConfigError
from agent.remote import envelope, replay
from agent.remote.envelope import Refused, claims, sign, verify
from agent.remote.replay import ReplayRecord
from agent.remote.trust import TrustStore

SITE = "townhall"
NOW = 1_800_000_000.0


def jwk(name: str, roles: list[str]) -> tuple[OKPKey, dict[str, Any]]:
    k = OKPKey.generate_key("Ed25519")
    return k, {**k.as_dict(private=False), "kid": name, "roles": roles}


@pytest.fixture
def keys() -> dict[str, Any]:
    ops, ops_pub = jwk("alice", ["ops", "write"])
    cfg, cfg_pub = jwk("bob", ["config"])
    old, old_pub = jwk("carol", ["ops", "write", "config"])
    trust = TrustStore.from_doc({"keys": [ops_pub, cfg_pub, old_pub], "revoked": ["carol"]})
    return {"alice": ops, "bob": cfg, "carol": old, "trust": trust}


def token(key: OKPKey, kid: str, **over: Any) -> str:
    c = claims(SITE, "write", {"device": "m", "point": "p", "value": 1}, "op-1", now=NOW)
    c.update(over)
    c = {k: v for k, v in c.items() if v is not None}
    return sign(key, kid, c)


def test_a_good_message_passes_and_names_key_and_command(keys: dict[str, Any], tmp_path: Path) -> None:
    s = verify(token(keys["alice"], "alice"), keys["trust"], SITE, ReplayRecord(tmp_path / "r.json"), now=NOW)
    assert (s.key, s.id, s.cmd, s.args["device"]) == ("alice", "op-1", "write", "m")


def test_the_rfc9864_algorithm_name_is_accepted(keys: dict[str, Any]) -> None:
    t = sign(keys["alice"], "alice", claims(SITE, "status", {}, "x", now=NOW), alg="Ed25519")
    assert verify(t, keys["trust"], SITE, None, now=NOW).cmd == "status"


@pytest.mark.parametrize(("make", "reason"), [
    (lambda k: "", "non-empty"),
    (lambda k: "not.a.jws", "malformed JWS"),
    (lambda k: "eyJhbGciOiJub25lIn0.e30.", "algorithm 'none' refused"),
    (lambda k: token(k["alice"], "mallory"), "unknown key 'mallory'"),
    (lambda k: token(k["bob"], "alice"), "bad signature"),  # signed by another key than the one named
    (lambda k: token(k["carol"], "carol"), "revoked"),
    (lambda k: token(k["alice"], "alice", aud="school"), "another site"),
    (lambda k: token(k["alice"], "alice", aud=None), "another site"),
    (lambda k: token(k["alice"], "alice", iat=NOW - 4000, exp=NOW - 400), "expired"),
    (lambda k: token(k["alice"], "alice", iat=NOW + 400, exp=NOW + 500), "in the future"),
    (lambda k: token(k["alice"], "alice", iat=NOW, exp=NOW + 7200), "lifetime"),
    (lambda k: token(k["alice"], "alice", iat="now"), "iat and exp must be numbers"),
    (lambda k: token(k["alice"], "alice", jti=None), "jti must be"),
    (lambda k: token(k["alice"], "alice", cmd="shell"), "unknown signed command 'shell'"),
    (lambda k: token(k["alice"], "alice", args=[1]), "args must be"),
    (lambda k: token(k["alice"], "alice", cmd="push"), "lacks the role 'config'"),
    (lambda k: token(k["bob"], "bob"), "lacks the role 'write'"),
])
def test_refusals(keys: dict[str, Any], make: Any, reason: str, tmp_path: Path) -> None:
    record = ReplayRecord(tmp_path / "r.json")
    with pytest.raises(Refused) as ei:
        verify(make(keys), keys["trust"], SITE, record, now=NOW)
    assert reason in str(ei.value)
    assert len(record) == 0  # nothing refused is recorded


def test_a_tampered_payload_is_refused(keys: dict[str, Any]) -> None:
    h, p, s = token(keys["alice"], "alice").split(".")
    import base64

    body = json.loads(base64.urlsafe_b64decode(p + "=="))
    body["args"]["value"] = 99
    p2 = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(Refused, match="bad signature"):
        verify(f"{h}.{p2}.{s}", keys["trust"], SITE, None, now=NOW)


def test_a_replay_is_refused_also_after_a_restart(keys: dict[str, Any], tmp_path: Path) -> None:
    t = token(keys["alice"], "alice")
    verify(t, keys["trust"], SITE, ReplayRecord(tmp_path / "r.json"), now=NOW)
    with pytest.raises(Refused, match="replayed"):
        verify(t, keys["trust"], SITE, ReplayRecord(tmp_path / "r.json"), now=NOW + 10)  # a new process
    # the same id is refused even when signed anew
    with pytest.raises(Refused, match="replayed"):
        verify(token(keys["alice"], "alice", cmd="status"), keys["trust"], SITE,
               ReplayRecord(tmp_path / "r.json"), now=NOW + 20)


def test_the_record_forgets_expired_ids_and_is_bounded(keys: dict[str, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "MAX_IDS", 3)
    record = ReplayRecord(tmp_path / "r.json")
    for i in range(3):
        verify(token(keys["alice"], "alice", jti=f"id{i}"), keys["trust"], SITE, record, now=NOW)
    with pytest.raises(Refused, match="replay record full"):
        verify(token(keys["alice"], "alice", jti="id3"), keys["trust"], SITE, record, now=NOW)
    later = NOW + 300 + envelope.MAX_SKEW + 1  # the first three have expired: forgotten, room again
    t = token(keys["alice"], "alice", jti="id4", iat=later, exp=later + 60)
    assert verify(t, keys["trust"], SITE, record, now=later).id == "id4"
    assert len(ReplayRecord(tmp_path / "r.json")) == 1


def test_an_unreadable_record_refuses_older_messages(keys: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "r.json").write_bytes(b"\x00garbage")
    with pytest.raises(Refused, match="replayed"):
        verify(token(keys["alice"], "alice"), keys["trust"], SITE, ReplayRecord(tmp_path / "r.json", now=NOW + 1),
               now=NOW + 1)
    # messages issued after the loss are obeyed, and the barrier itself survives the next restart
    fresh = token(keys["alice"], "alice", iat=NOW + 2, exp=NOW + 60)
    verify(fresh, keys["trust"], SITE, ReplayRecord(tmp_path / "r.json", now=NOW + 3), now=NOW + 3)
    with pytest.raises(Refused, match="replayed"):
        verify(token(keys["alice"], "alice", jti="other"), keys["trust"], SITE,
               ReplayRecord(tmp_path / "r.json", now=NOW + 4), now=NOW + 4)


@pytest.mark.parametrize(("doc", "problem"), [
    ([], "'keys' list"),
    ({"keys": [{"kty": "RSA"}]}, "keys[0]: only Ed25519"),
    ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "roles": ["ops"]}]}, "keys[0].kid"),
    ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "a", "roles": ["root"]}]}, "unknown role(s) root"),
    ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "a", "roles": []}]}, "keys[0].roles"),
    ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "a", "roles": ["ops"]}]}, "not a valid Ed25519"),
])
def test_a_broken_trust_file_is_located(tmp_path: Path, doc: Any, problem: str) -> None:
    f = tmp_path / "operators.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as ei:
        TrustStore.load(f)
    assert str(f) in str(ei.value) and problem in str(ei.value)


def test_a_private_key_in_the_trust_file_is_refused(tmp_path: Path) -> None:
    k = OKPKey.generate_key("Ed25519")
    f = tmp_path / "operators.json"
    f.write_text(json.dumps({"keys": [{**k.as_dict(private=True), "kid": "a", "roles": ["ops"]}]}))
    with pytest.raises(ConfigError, match="private key"):
        TrustStore.load(f)


def test_no_trust_file_means_every_signed_message_is_refused(tmp_path: Path) -> None:
    trust = TrustStore.load(tmp_path / "operators.json")
    k, _ = jwk("alice", ["ops"])
    with pytest.raises(Refused, match="unknown key"):
        verify(token(k, "alice"), trust, SITE, None, now=NOW)
