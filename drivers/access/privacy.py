"""What access events may say about people (docs/privacy.md).

By default a credential holder's name never leaves the box, and credential tokens and card numbers are
replaced by a pseudonym: HMAC-SHA256 under a key of this site, truncated to 16 hex digits (64 bits). The same
badge gives the same pseudonym on this site (an operator can follow "the same badge was denied 5 times"), a
different one on another site, and nobody without the box's key can go back from it to the badge, nor test a
guess. The key is made on first use (32 random bytes) in the state directory, mode 0600, and never sent.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from . import Privacy

log = logging.getLogger(__name__)
KEY_FILE = "access-pseudonym.key"
KEY_BYTES = 32
DIGITS = 16
# SimpleItem names that identify a credential (the badge) or its holder (a person), in the Access Control events
CREDENTIAL_ITEMS = frozenset({"CredentialToken", "Card", "CredentialIdentifier", "IdentifierValue", "Identifier",
                              "CardNumber", "PIN"})
HOLDER_ITEMS = frozenset({"CredentialHolderName", "CredentialHolder", "HolderName", "UserName", "User"})


def load_key(state_dir: Path) -> bytes:
    """The site's pseudonym key, created (0600, written atomically) when missing."""
    path = state_dir / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) >= 16:
            return key
        log.error("%s is too short (%d bytes): a new key is made (pseudonyms change)", path, len(key))
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    log.info("access: pseudonym key created in %s", path)
    return key


class Redactor:
    """Applies the site's privacy settings to the items of one access event."""

    def __init__(self, settings: Privacy, state_dir: Path) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self._key: bytes | None = None

    def pseudonym(self, value: str) -> str:
        if self._key is None:
            self._key = load_key(self.state_dir)
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:DIGITS]

    def items(self, items: dict[str, str]) -> dict[str, Any]:
        """The items as they may leave the box."""
        out: dict[str, Any] = {}
        for k, v in items.items():
            if k in HOLDER_ITEMS:
                if self.settings.holder_name == "clear":
                    out[k] = v
            elif k in CREDENTIAL_ITEMS:
                if self.settings.credential == "clear":
                    out[k] = v
                elif self.settings.credential == "pseudonym" and v:
                    out[k] = self.pseudonym(v)
            else:
                out[k] = v
        return out
