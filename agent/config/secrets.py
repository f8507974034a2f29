"""Secrets by reference: environment variables, files, or systemd credentials. Never inline, never logged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

CREDSTORES = ("/etc/credstore", "/run/credstore")


class SecretRef(BaseModel):
    """Exactly one of ``env``, ``file`` or ``credential``.

    ``credential: NAME`` reads ``$CREDENTIALS_DIRECTORY/NAME`` (systemd ``LoadCredential=``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(None, description="name of an environment variable holding the secret")
    file: str | None = Field(None, description="path of a file holding the secret")
    credential: str | None = Field(
        None, description="name of a systemd credential ($CREDENTIALS_DIRECTORY/NAME)"
    )

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        given = [k for k in ("env", "file", "credential") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a secret reference needs exactly one of env, file, credential")
        return self

    def describe(self) -> str:
        if self.env:
            return f"environment variable {self.env}"
        if self.file:
            return f"file {self.file}"
        return f"credential {self.credential}"

    def path(self) -> Path:
        """Where the secret lives on disk (file or credential); ValueError when absent."""
        if self.file:
            p = Path(self.file)
        elif self.credential:
            cdir = os.environ.get("CREDENTIALS_DIRECTORY")
            if cdir:
                p = Path(cdir) / str(self.credential)
            else:
                # Outside the service (an operator running `edge-agent validate`): look where systemd's
                # LoadCredential=NAME looks, so a provisioned box validates without extra environment.
                found = [c for c in (Path(d) / str(self.credential) for d in CREDSTORES) if c.is_file()]
                if not found:
                    raise ValueError(
                        f"credential {self.credential!r} asked for, but CREDENTIALS_DIRECTORY is not set "
                        f"(not started by systemd with LoadCredential=?) and it is not in {', '.join(CREDSTORES)}"
                    )
                p = found[0]
        else:
            raise ValueError("an environment variable has no path")
        if not p.is_file():
            raise ValueError(f"secret {self.describe()} not found at {p}")
        return p

    def resolve(self, kind: Literal["value", "path"] = "value") -> SecretStr:
        """Read the secret (``value``) or check it exists and return its path (``path``)."""
        if self.env:
            if kind == "path":
                raise ValueError("this secret must be a file: use file: or credential:")
            val = os.environ.get(self.env)
            if val is None:
                raise ValueError(f"environment variable {self.env} is not set")
            return SecretStr(val)
        p = self.path()
        if kind == "path":
            return SecretStr(str(p))
        try:
            return SecretStr(p.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as exc:
            raise ValueError(f"cannot read secret {self.describe()}: {exc}") from exc
