"""The operator keys a box trusts: a JWK Set (RFC 7517) of Ed25519 public keys, each with a name (``kid``) and
the roles it may use, installed by provisioning as ``operators.json`` beside the site file (docs/remote.md).

A key listed in ``revoked`` (by name or by RFC 7638 thumbprint) is refused even if it is still in ``keys``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from agent.errors import ConfigError, Problem

TRUST_FILE = "operators.json"
ROLES = ("config", "write", "door", "ops")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_TRUST_BYTES = 256 * 1024


@dataclass(frozen=True)
class OperatorKey:
    name: str
    roles: frozenset[str]
    key: OKPKey

    @property
    def thumbprint(self) -> str:
        return str(self.key.thumbprint())

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.name, "roles": sorted(self.roles)}


def trust_path(site_file: str | Path) -> Path:
    return Path(site_file).parent / TRUST_FILE


def parse_key(entry: Any, where: str, *, private: bool = False) -> OperatorKey:
    """One JWK entry with ``kid`` and ``roles``; ValueError with what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a key must be a JSON object (a JWK)")
    if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
        raise ValueError(f"{where}: only Ed25519 keys (kty OKP, crv Ed25519) are accepted")
    name = entry.get("kid")
    if not (isinstance(name, str) and NAME_RE.match(name)):
        raise ValueError(f"{where}.kid: a name of 1-64 letters, digits, '.', '_', '@' or '-' is needed")
    roles = entry.get("roles")
    if not (isinstance(roles, list) and roles and all(isinstance(r, str) for r in roles)):
        raise ValueError(f"{where}.roles: a non-empty list of roles is needed ({', '.join(ROLES)})")
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"{where}.roles: unknown role(s) {', '.join(unknown)} (known: {', '.join(ROLES)})")
    if not private and "d" in entry:
        raise ValueError(f"{where}: holds a private key ('d'); the box needs only the public part")
    fields = {k: entry[k] for k in ("kty", "crv", "x", "d") if k in entry}
    try:
        key = OKPKey.import_key(fields)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a valid Ed25519 JWK: {exc}") from None
    return OperatorKey(name, frozenset(roles), key)


class TrustStore:
    """Keys by name; names and thumbprints that are revoked."""

    def __init__(self, keys: list[OperatorKey], revoked: set[str], path: Path | None = None) -> None:
        self.keys = {k.name: k for k in keys}
        self.revoked = revoked
        self.path = path

    @classmethod
    def empty(cls, path: Path | None = None) -> TrustStore:
        return cls([], set(), path)

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """The trust file, or an empty store if there is none (every signed message is then refused).
        ConfigError (located: FILE: key: message) if it exists and is broken."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls.empty(path)
        except OSError as exc:
            msg = f"cannot read the trust file: {exc.strerror or exc}"
            raise ConfigError([Problem(str(path), None, "", msg)]) from None
        if len(raw) > MAX_TRUST_BYTES:
            raise ConfigError([Problem(str(path), None, "", f"larger than {MAX_TRUST_BYTES} bytes")])
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError([Problem(str(path), getattr(exc, "lineno", None), "", f"not JSON: {exc}")]) from None
        return cls.from_doc(doc, path)

    @classmethod
    def from_doc(cls, doc: Any, path: Path | None = None) -> TrustStore:
        problems: list[Problem] = []
        where = path if path is not None else Path("<trust>")
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            msg = "a JSON object with a 'keys' list (a JWK Set) is needed"
            raise ConfigError([Problem(str(where), None, "keys", msg)])
        keys: list[OperatorKey] = []
        for i, entry in enumerate(doc["keys"]):
            try:
                k = parse_key(entry, f"keys[{i}]")
            except ValueError as exc:
                key_path, _, msg = str(exc).partition(": ")
                problems.append(Problem(str(where), None, key_path, msg))
                continue
            if any(o.name == k.name for o in keys):
                problems.append(Problem(str(where), None, f"keys[{i}].kid", f"the name {k.name!r} is used twice"))
            keys.append(k)
        revoked = doc.get("revoked", [])
        if not (isinstance(revoked, list) and all(isinstance(r, str) for r in revoked)):
            problems.append(Problem(str(where), None, "revoked", "a list of key names or thumbprints is needed"))
            revoked = []
        if problems:
            raise ConfigError(problems)
        return cls(keys, set(revoked), path)

    def find(self, name: str) -> OperatorKey | None:
        k = self.keys.get(name)
        if k is None or name in self.revoked or k.thumbprint in self.revoked:
            return None
        return k

    def is_revoked(self, name: str) -> bool:
        k = self.keys.get(name)
        return name in self.revoked or (k is not None and k.thumbprint in self.revoked)

    def doc(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys.values()], "revoked": sorted(self.revoked)}

    def save(self, path: Path) -> None:
        """Atomically (write, fsync, rename): a power loss leaves the old or the new file, whole."""
        write_atomic(path, json.dumps(self.doc(), indent=2).encode() + b"\n", mode=0o644)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
