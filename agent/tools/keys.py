"""``edge-agent keys generate|show``: operator keys (Ed25519, as JWK) and the box's trust store (docs/remote.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from joserfc.jwk import OKPKey

from agent.errors import ConfigError
from agent.remote.trust import ROLES, OperatorKey, TrustStore, parse_key, trust_path
from agent.tools.args import json_arg, site_arg
from agent.tools.helptext import epilog


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="operator keys and the box's trust store (signed remote operations)",
                       description="Operator keys sign remote operations (pushes, writes, commands) for the boxes "
                                   "that trust them. `generate` makes a key pair for an operator; `show` lists the "
                                   "keys a box trusts, or the public part of a key file.")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    g = ks.add_parser(
        "generate", help="make an operator key pair (Ed25519 JWK)",
        description="Make an Ed25519 key pair for one operator. The private key (a JWK with its name and roles) "
                    "is written to FILE with mode 0600 and never overwritten; the public entry to add to a box's "
                    "operators.json (beside the site file) is printed on stdout.",
        epilog=epilog(["edge-agent keys generate --name alice --roles ops,write -o alice.jwk",
                       "edge-agent keys generate --name deploy --roles config -o /secure/deploy.jwk"],
                      {0: "written", 1: "FILE exists or cannot be written"}))
    g.add_argument("--name", required=True, help="the key's name (kid): who signs, e.g. alice or deploy-bot")
    g.add_argument("--roles", required=True,
                   help=f"comma-separated roles the key may use: {', '.join(ROLES)}")
    g.add_argument("-o", "--out", required=True, metavar="FILE", help="where to write the private key (mode 0600)")
    g.set_defaults(func=cmd_generate)
    s = ks.add_parser(
        "show", help="list trusted keys, or show the public part of a key file",
        description="Without FILE: the keys the box trusts (operators.json beside the site file): name, roles, "
                    "RFC 7638 thumbprint and whether it is revoked. With FILE (a key made by `keys generate` or "
                    "a trust file): its public part; a private key is never printed.",
        epilog=epilog(["edge-agent keys show", "edge-agent keys show alice.jwk --json"],
                      {0: "shown", 1: "the file is unreadable or not a key", 2: "the trust file is broken"}))
    s.add_argument("file", nargs="?", metavar="FILE", help="a key file or trust file (default: the site's trust file)")
    site_arg(s, "the site file; its folder holds operators.json")
    json_arg(s)
    s.set_defaults(func=cmd_show)


def cmd_generate(args: argparse.Namespace) -> int:
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    key = OKPKey.generate_key("Ed25519")
    entry = {**key.as_dict(private=True), "kid": args.name, "roles": roles}
    try:
        op = parse_key(entry, "key", private=True)
    except ValueError as exc:
        print(f"keys generate: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"keys generate: {out} exists; not overwritten", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"keys generate: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as f:
        json.dump(entry, f, indent=2)
        f.write("\n")
    print(json.dumps(op.public_jwk()))
    print(f"private key written to {out} (keep it secret); add the line above to the 'keys' of a box's "
          f"operators.json; thumbprint {op.thumbprint}", file=sys.stderr)
    return 0


def load_private(path: Path) -> OperatorKey:
    """An operator's private key file (``keys generate``); ValueError with what is wrong."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    op = parse_key(doc, str(path), private=True)
    if not isinstance(doc, dict) or "d" not in doc:
        raise ValueError(f"{path}: holds no private key ('d'): made by `edge-agent keys generate`?")
    return op


def _row(k: OperatorKey, revoked: bool) -> dict[str, Any]:
    return {"name": k.name, "roles": sorted(k.roles), "thumbprint": k.thumbprint, "revoked": revoked}


def cmd_show(args: argparse.Namespace) -> int:
    if args.file:
        path = Path(args.file)
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            print(f"keys show: {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return 1
        try:
            if isinstance(doc, dict) and "keys" in doc:
                store = TrustStore.from_doc(doc, path)
            else:
                store = TrustStore([parse_key(doc, str(path), private=True)], set(), path)
        except (ValueError, ConfigError) as exc:
            print(f"keys show: {exc}", file=sys.stderr)
            return 1
    else:
        path = trust_path(Path(args.config))
        try:
            store = TrustStore.load(path)
        except ConfigError as exc:
            for p in exc.problems:
                print(p, file=sys.stderr)
            return 2
    rows = [_row(k, store.is_revoked(k.name)) for k in store.keys.values()]
    if args.json:
        print(json.dumps({"file": str(path), "keys": rows, "revoked": sorted(store.revoked)}, indent=2))
        return 0
    if not rows:
        print(f"{path}: no keys (every signed message is refused)")
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        flag = "  REVOKED" if r["revoked"] else ""
        print(f"{r['name']:<{width}}  {','.join(r['roles']):<22} {r['thumbprint']}{flag}")
    return 0
