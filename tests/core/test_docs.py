"""docs/ stays true: every configuration key and every core command is documented."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from agent.config import ProfileHeader, SiteModel
from agent.contract.device import ProfileMetadata
from agent.contract.points import PointBase
from agent.tools.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + name)
        ann = field.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            inner = getattr(cand, "__args__", (cand,))
            for c in (cand, *inner):
                if isinstance(c, type) and issubclass(c, BaseModel) and c.__name__ != "SecretRef":
                    out += _keys(c, prefix + name + ".")
    return out


def test_every_site_and_point_key_is_in_profiles_md() -> None:
    text = (DOCS / "profiles.md").read_text()
    keys = _keys(SiteModel) + _keys(PointBase) + _keys(ProfileHeader) + _keys(ProfileMetadata)
    missing = [k for k in keys if not any(f"{q}{k.split('.')[-1]}{e}" in text for q in "`." for e in "`,.[")]
    assert not missing, f"undocumented keys in docs/profiles.md: {missing}"


def test_every_core_command_is_in_cli_md() -> None:
    text = (DOCS / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [name for name in sub.choices if f"edge-agent {name}" not in text]  # type: ignore[union-attr]
    assert not missing, f"undocumented commands in docs/cli.md: {missing}"
