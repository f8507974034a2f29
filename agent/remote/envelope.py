"""The signed envelope: a JWS (RFC 7515) in compact serialisation, signed with Ed25519 (``alg`` ``EdDSA`` per
RFC 8037, or the fully specified ``Ed25519`` of RFC 9864), ``kid`` naming the operator key. The payload is a
JSON object of claims:

    {"aud": SITE, "jti": ID, "iat": SECONDS, "exp": SECONDS, "cmd": NAME, "args": {...}}

``verify`` applies the scope and replay rules of docs/remote.md and raises ``Refused`` with the reason.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from agent.remote.replay import ReplayFull, ReplayRecord
from agent.remote.trust import TrustStore

ALGORITHMS = ["EdDSA", "Ed25519"]
SIGN_ALG = "EdDSA"
# Clocks: boxes sync by NTP, but a box without a battery-backed clock may start minutes off until its first sync,
# and an operator's laptop may drift. 5 minutes tolerates that while keeping a stolen message short-lived.
MAX_SKEW = 300.0
MAX_LIFETIME = 3600.0  # exp - iat: the replay record must keep each id this long (plus the skew)
MAX_ID_CHARS = 64
MAX_TOKEN_BYTES = 2 * 1024 * 1024
# The role each signed command needs (docs/remote.md).
COMMAND_ROLES = {
    "write": "write", "retry": "ops", "reload": "ops", "diag": "ops", "status": "ops", "log-tail": "ops",
    "log-level": "ops", "bundle": "ops", "push": "config", "keys": "config", "rollback": "config",
    "door": "door",
}


class Refused(Exception):
    pass


@dataclass(frozen=True)
class Signed:
    key: str  # the operator key's name
    id: str
    cmd: str
    args: dict[str, Any]
    iat: float
    exp: float


def sign(key: OKPKey, kid: str, claims: dict[str, Any], alg: str = SIGN_ALG) -> str:
    body = json.dumps(claims, separators=(",", ":"), allow_nan=False).encode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns that EdDSA is superseded by RFC 9864 names
        return str(jws.serialize_compact({"alg": alg, "kid": kid}, body, key, algorithms=ALGORITHMS))


def claims(site: str, cmd: str, args: dict[str, Any], mid: str, lifetime: float = 300.0,
           now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {"aud": site, "jti": mid, "iat": int(now), "exp": int(now + lifetime), "cmd": cmd, "args": args}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def verify(token: str, trust: TrustStore, site: str, record: ReplayRecord | None, *,
           now: float | None = None) -> Signed:
    """Checked in this order: form, key (known, not revoked), signature, site, times, role, replay. When
    ``record`` is given the id is recorded (durably) before this returns: the caller obeys at most once."""
    now = time.time() if now is None else now
    if not isinstance(token, str) or not token:
        raise Refused("jws must be a non-empty string (compact serialisation)")
    if len(token) > MAX_TOKEN_BYTES:
        raise Refused(f"signed message too large ({len(token)} bytes, max {MAX_TOKEN_BYTES})")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError, TypeError) as exc:
        raise Refused(f"malformed JWS: {exc}"[:200]) from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise Refused(f"algorithm {str(alg)[:20]!r} refused: only {' or '.join(ALGORITHMS)} (Ed25519)")
    if not isinstance(kid, str):
        raise Refused("no key named (kid missing in the JWS header)")
    if trust.is_revoked(kid):
        raise Refused(f"key {kid[:64]!r} is revoked")
    op = trust.find(kid)
    if op is None:
        raise Refused(f"unknown key {kid[:64]!r}: not in the box's trust store")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = jws.deserialize_compact(token, op.key, algorithms=ALGORITHMS)
    except JoseError as exc:
        raise Refused(f"bad signature for key {kid!r}: {exc.error if hasattr(exc, 'error') else exc}"[:200]) from None
    try:
        c = json.loads(obj.payload, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Refused(f"malformed claims: {exc}"[:200]) from None
    if not isinstance(c, dict):
        raise Refused("malformed claims: a JSON object is needed")
    aud = c.get("aud")
    if aud != site:
        raise Refused(f"for another site ({str(aud)[:64]!r}); this is {site!r}")
    mid = c.get("jti")
    if not (isinstance(mid, str) and 1 <= len(mid) <= MAX_ID_CHARS and mid.isprintable()):
        raise Refused(f"jti must be a string of 1-{MAX_ID_CHARS} printable characters")
    iat, exp = c.get("iat"), c.get("exp")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (iat, exp)):
        raise Refused("iat and exp must be numbers (seconds since 1970)")
    assert isinstance(iat, int | float) and isinstance(exp, int | float)
    if iat > now + MAX_SKEW:
        raise Refused(f"issued {iat - now:.0f} s in the future: the clocks differ by more than {MAX_SKEW:g} s")
    if exp + MAX_SKEW < now:
        raise Refused(f"expired {now - exp:.0f} s ago")
    if exp <= iat or exp - iat > MAX_LIFETIME:
        raise Refused(f"lifetime exp - iat must be within 0-{MAX_LIFETIME:g} s")
    cmd, args = c.get("cmd"), c.get("args", {})
    if not isinstance(cmd, str) or cmd not in COMMAND_ROLES:
        raise Refused(f"unknown signed command {str(cmd)[:32]!r}; known: {', '.join(sorted(COMMAND_ROLES))}")
    if not isinstance(args, dict):
        raise Refused("args must be a JSON object")
    role = COMMAND_ROLES[cmd]
    if role not in op.roles:
        raise Refused(f"key {kid!r} lacks the role {role!r} that {cmd} needs (it has: {', '.join(sorted(op.roles))})")
    if record is not None:
        if record.seen(mid, iat):
            raise Refused(f"replayed: message {mid!r} was already obeyed")
        try:
            record.remember(mid, exp + MAX_SKEW, now)
        except ReplayFull as exc:
            raise Refused(str(exc)) from None
        except OSError as exc:
            raise Refused(f"cannot record the message id ({exc.strerror or exc}): not obeyed") from None
    return Signed(kid, mid, cmd, args, float(iat), float(exp))
