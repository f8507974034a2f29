"""The last log lines kept in memory for the signed ``log-tail`` command: bounded by lines and bytes, and
redacted on the way out (secret values the site uses, passwords in URLs, ``key: value`` pairs that name a secret)."""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Iterable

MAX_LINES = 2000
MAX_LINE_CHARS = 500
MARK = "<redacted>"
_URL_PASS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+(@)", re.IGNORECASE)
_BY_KEY = re.compile(r"((?:password|passwd|passphrase|secret|token|api_?key|private_?key|psk)[\"']?\s*[:=]\s*)"
                     r"(\"[^\"]*\"|'[^']*'|[^\s,}\]]+)", re.IGNORECASE)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S)


class LogRing(logging.Handler):
    def __init__(self, lines: int = MAX_LINES) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[str] = deque(maxlen=lines)
        self.secrets: set[str] = set()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record)[:MAX_LINE_CHARS])
        except Exception:  # a log line must never break the code that logs
            self.handleError(record)

    def add_secrets(self, values: Iterable[str]) -> None:
        self.secrets.update(v for v in values if len(v) >= 4)

    def redact(self, text: str) -> str:
        for v in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(v, MARK)
        text = _PEM.sub(MARK, text)
        text = _URL_PASS.sub(rf"\1{MARK}\2", text)
        return _BY_KEY.sub(rf"\1{MARK}", text)

    def tail(self, n: int, max_chars: int) -> list[str]:
        """The last ``n`` lines, redacted, at most ``max_chars`` characters in all (the newest kept)."""
        out: list[str] = []
        used = 0
        for line in reversed(list(self.lines)[-n:] if n > 0 else []):
            line = self.redact(line)
            if used + len(line) + 1 > max_chars:
                break
            out.append(line)
            used += len(line) + 1
        out.reverse()
        return out
