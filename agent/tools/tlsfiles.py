"""Say what is wrong with a TLS file in the technician's words, not OpenSSL's (``PEM lib (_ssl.c:3874)``).

Used by ``provision`` (flags and prompts) before anything is contacted: a CA that is not a certificate, a
client certificate that is really the key (the two files swapped), a key that is encrypted, or a key that
belongs to another certificate each get their own sentence.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def pem_blocks(path: Path) -> list[str]:
    """The PEM block types in a file (``CERTIFICATE``, ``PRIVATE KEY``, ``EC PRIVATE KEY``...); [] if none."""
    try:
        data = path.read_bytes()[:1_000_000]
    except OSError:
        return []
    return [m.decode() for m in _BEGIN.findall(data)]


def _has_key(blocks: list[str]) -> bool:
    return any(b.endswith("PRIVATE KEY") for b in blocks)


def _has_cert(blocks: list[str]) -> bool:
    return any(b in ("CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE") for b in blocks)


def certificate_problem(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be used as a certificate (``what``: 'CA certificate', 'client certificate')."""
    blocks = pem_blocks(path)
    if _has_cert(blocks):
        return None
    if _has_key(blocks):
        return (f"{what} {path} holds a private key, not a PEM certificate"
                + (" (certificate and key swapped?)" if what == "client certificate" else ""))
    if not blocks:
        return f"{what} {path} is not a PEM certificate (expected -----BEGIN CERTIFICATE-----; DER? convert " \
               "it with `openssl x509 -inform der -in FILE -out FILE.pem`)"
    return f"{what} {path} holds {', '.join(sorted(set(blocks)))}, not a PEM certificate"


def key_problem(path: Path) -> str | None:
    blocks = pem_blocks(path)
    if "ENCRYPTED PRIVATE KEY" in blocks or (_has_key(blocks) and b"ENCRYPTED" in path.read_bytes()[:4096]):
        return f"client key {path} is protected by a passphrase; the agent starts unattended and needs it " \
               "without one (`openssl pkey -in KEY -out KEY.plain`)"
    if _has_key(blocks):
        return None
    if _has_cert(blocks):
        return f"client key {path} holds a certificate, not a private key (certificate and key swapped?)"
    if not blocks:
        return f"client key {path} is not a PEM file (expected -----BEGIN PRIVATE KEY-----)"
    return f"client key {path} holds {', '.join(sorted(set(blocks)))}, not a private key"


def pair_problem(cert: Path, key: Path) -> str | None:
    """Why the certificate and key cannot be used together, or None when they can."""
    for problem in (certificate_problem(cert, "client certificate"), key_problem(key)):
        if problem:
            if _has_key(pem_blocks(cert)) and _has_cert(pem_blocks(key)):
                return (f"certificate and key swapped: {cert} holds the private key and {key} the certificate "
                        "(give --cert the certificate, --key the key)")
            return problem
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or exc.reason == "KEY_VALUES_MISMATCH":
            return f"client certificate {cert} / key {key}: cannot be used together: the key belongs to another " \
                   "certificate"
        return f"client certificate {cert} / key {key}: cannot be used together ({exc.reason or exc})"
    return None


def ca_problem(path: Path) -> str | None:
    problem = certificate_problem(path, "CA certificate")
    if problem:
        return problem
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError) as exc:
        return f"CA certificate {path}: not a PEM certificate OpenSSL can load ({getattr(exc, 'reason', None) or exc})"
    return None


def handshake_problem(exc: BaseException) -> str:
    """A TLS failure during the broker check, with its likely cause."""
    text = f"{getattr(exc, 'reason', '') or ''} {getattr(exc, 'verify_message', '') or ''} {exc}"
    low = text.lower()
    if "certificate required" in low or "certificate_required" in low or "peer did not return a certificate" in low:
        return "the broker requires a client certificate: give --cert and --key"
    if "unknown ca" in low or "unknown_ca" in low:
        return "the broker does not trust this client certificate (signed by a CA it does not know)"
    if "hostname mismatch" in low or "ip address mismatch" in low:
        return f"the broker's certificate is for another name ({getattr(exc, 'verify_message', '') or exc}); " \
               "check the URL or give --server-hostname"
    if "certificate has expired" in low:
        return "the broker's certificate has expired"
    if "self-signed" in low or "unable to get local issuer" in low or "certificate verify failed" in low:
        msg = getattr(exc, "verify_message", None) or "certificate verify failed"
        return f"the broker's certificate is not signed by the given CA ({msg}); check --ca"
    if "wrong version number" in low or "record layer failure" in low:
        return "the broker does not speak TLS on this port (mqtts:// to a plain MQTT port?)"
    return str(getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc)
