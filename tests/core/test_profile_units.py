"""Units are consistent across shipped profiles: the same quantity is given in the same unit everywhere, the
one the table in docs/profiles.md ("Units") names. The table is the single source: the test reads it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import load_profile
from agent.contract.device import Profile

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


@dataclass(frozen=True)
class Convention:
    unit: dict[str, str]  # quantity -> its unit
    quantity_of: dict[str, str]  # any known unit (used or not) -> quantity


def read_convention() -> Convention:
    text = (REPO / "docs" / "profiles.md").read_text(encoding="utf-8")
    section = text.split("### Units", 1)[1].split("\n#", 1)[0]
    unit: dict[str, str] = {}
    quantity_of: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        quantity, used, unused = cells
        unit[quantity] = used.strip("`")
        for u in [used, *re.findall(r"`([^`]+)`", unused)]:
            quantity_of[u.strip("`")] = quantity
    return Convention(unit, quantity_of)


def problems(profile: Profile, conv: Convention) -> list[str]:
    out = []
    for p in profile.points:
        if p.unit is None or p.unit not in conv.quantity_of:
            continue  # dimensionless or a count (%, msg, a power factor): nothing to convert
        quantity = conv.quantity_of[p.unit]
        if p.unit != conv.unit[quantity] and not p.writable:
            out.append(f"{profile.id}.{p.name}: {quantity} in {p.unit}, the convention is {conv.unit[quantity]}")
    return out


def test_the_convention_table_is_read() -> None:
    conv = read_convention()
    assert conv.unit["active power"] == "W" and conv.unit["active energy"] == "kWh"
    assert conv.quantity_of["kW"] == "active power" and conv.quantity_of["Wh"] == "active energy"
    assert len(conv.unit) >= 10


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_shipped_profile_follows_the_unit_convention(path: Path) -> None:
    found = problems(load_profile(path), read_convention())
    assert not found, "\n".join(found)


def test_same_quantity_same_unit_across_all_shipped_profiles() -> None:
    conv = read_convention()
    seen: dict[str, set[str]] = {}
    for path in PROFILES:
        for p in load_profile(path).points:
            if p.unit in conv.quantity_of and not p.writable:
                seen.setdefault(conv.quantity_of[p.unit], set()).add(p.unit)
    mixed = {q: units for q, units in seen.items() if len(units) > 1}
    assert not mixed, mixed
    # The meters really share these quantities (else the check above would say little).
    assert {"active power", "active energy", "voltage", "current"} <= seen.keys(), seen


def test_a_profile_in_kw_is_caught(tmp_path: Path) -> None:
    prof = tmp_path / "acme-kw.yaml"
    prof.write_text("driver: modbus\ndefaults: {table: holding}\npoints:\n"
                    "  - {name: p, address: 0, type: float32, unit: kW}\n"
                    "  - {name: e, address: 2, type: float32, unit: Wh}\n"
                    "  - {name: sp, address: 4, type: uint16, unit: min, access: read-write}\n")
    found = problems(load_profile(prof), read_convention())
    assert len(found) == 2 and "acme-kw.p: active power in kW" in found[0], found
