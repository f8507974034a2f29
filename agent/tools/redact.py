"""Secrets out of what leaves the box (the support bundle): by key name in YAML text, by value everywhere.

Two passes, so that neither alone has to be perfect:

- *by key*: in every text (site file, profiles, logs, JSON), the value of a key that names a secret (``password``,
  ``token``, ``secret``, ``*_key``, ``passphrase``, ...) is replaced unless it is a reference (``{env: X}``,
  ``{file: P}``, ``{credential: N}``: names, not secrets, and useful to support). Comments count too.
  Line numbers are kept, so ``validate`` output still points at the right lines.
- *by value*: every secret the site refers to is read (environment variables, secret files, systemd
  credentials, the client key) and each occurrence of its value in any text is replaced, wherever it
  appears (a log line, an error message, a comment). PEM private key blocks and the password in URLs
  (``mqtt://user:pass@host``) are replaced by pattern.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.config.secrets import SecretRef

MARK = "<redacted>"
SECRET_WORDS = r"(?:password|passwd|passphrase|secret|token|api_?key|private_?key|psk|auth_?key|credentials)"
# `key: value` where key is a secret word or ends in _<word>/-<word>; key_file, cert_file, ... are paths.
_BY_KEY = re.compile(
    rf"(?P<k>(?<![\w-])(?:[\w-]*[_-])?{SECRET_WORDS}|(?<![\w-])key)(?P<sep>[\"']?\s*[:=]\s*)"
    r"(?P<v>\"[^\"]*\"|'[^']*'|[^\s,}\]#{][^,}\]#\r\n]*)",
    re.IGNORECASE,
)
_URL_PASS = re.compile(r"(?P<pre>\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?P<pw>[^@\s/]+)(?P<at>@)", re.IGNORECASE)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S)
MIN_SECRET = 4  # shorter values would blank out ordinary words and digits


class Redactor:
    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: str | None) -> None:
        if value is None:
            return
        for v in {value, value.strip()}:
            if len(v) >= MIN_SECRET:
                self.values.add(v)
        # a PEM file: each base64 line on its own too, in case a partial copy lands in a log
        if "-----BEGIN" in value:
            for line in value.splitlines():
                if len(line) >= 16 and not line.startswith("-----"):
                    self.values.add(line.strip())

    def collect(self, data: Any) -> None:
        """Walk a loaded YAML document: read every secret reference it makes, and note inline values of
        secret-named keys."""
        if isinstance(data, dict):
            keys = set(data)
            if keys and keys <= {"env", "file", "credential"} and len(keys) == 1:
                self._resolve(data)
                return
            for k, v in data.items():
                if isinstance(v, str | int | float) and isinstance(k, str) and _BY_KEY.fullmatch(f"{k}: x"):
                    self.add(str(v))
                elif isinstance(v, str) and isinstance(k, str) and k.endswith(("key_file", "cert_file")):
                    self._read_file(Path(v))
                else:
                    self.collect(v)
        elif isinstance(data, list):
            for v in data:
                self.collect(v)

    def _resolve(self, ref: dict[str, Any]) -> None:
        with contextlib.suppress(ValueError, TypeError):
            r = SecretRef.model_validate(ref)
            if r.env:
                self.add(r.resolve("value").get_secret_value())
            else:
                self._read_file(r.path())

    def _read_file(self, path: Path) -> None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if path.is_file() and path.stat().st_size <= 1024 * 1024:
                self.add(path.read_text(encoding="utf-8").rstrip("\r\n"))

    def text(self, text: str) -> str:
        """Key-based redaction line by line (YAML, JSON, ``key=value`` in logs), then patterns and values."""
        text = "".join(_BY_KEY.sub(_keep_refs, line) for line in text.splitlines(keepends=True))
        text = _PEM.sub(MARK, text)
        text = _URL_PASS.sub(lambda m: m["pre"] + MARK + m["at"], text)
        for v in sorted(self.values, key=len, reverse=True):
            text = text.replace(v, MARK)
        return text

    def leaks(self, texts: Iterable[str]) -> list[str]:
        """Secret values still present (a last check before the bundle is written)."""
        return [v for v in self.values for t in texts if v in t]


def _keep_refs(m: re.Match[str]) -> str:
    v = m["v"].strip()
    if not v or v.startswith(("{", "[", "<redacted>")) or v in ("null", "~", '""', "''"):
        return m.group(0)
    return f"{m['k']}{m['sep']}{MARK}"
