"""Table-driven planner cases: tests/modbus/testcases/<name>/ holds profile.yaml (or names a shipped profile)
and expected.yaml: the expected plan, or the expected validation error, and optionally a device model
(``illegal`` addresses) with the plan the driver must learn from its exception-2 replies.

Besides the expected plan, every case checks the plan against an independent optimum (dynamic programming
over the sorted points), so "minimal number of requests" is asserted, not just recorded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_profile
from agent.errors import ConfigError
from drivers.modbus import BIT_TABLES, ModbusDeviceQuirks, ModbusPoint
from drivers.modbus.planner import Lessons, Request, limits, plan, refine

from .conftest import ROOT
from .optimum import optimum

CASES = Path(__file__).parent / "testcases"


def full_plan(points: list[ModbusPoint], quirks: ModbusDeviceQuirks) -> list[tuple[str, Request]]:
    out = []
    for poll in ("fast", "slow"):
        out += [(poll, r) for r in plan([p for p in points if p.enabled and p.poll == poll], 1, quirks)]
    return out


def as_rows(reqs: list[tuple[str, Request]]) -> list[dict[str, Any]]:
    return [{**r.as_dict(), "poll": poll} for poll, r in reqs]


@pytest.mark.parametrize("case", sorted(d.name for d in CASES.iterdir() if d.is_dir()))
def test_planner_case(case: str) -> None:
    d = CASES / case
    exp = yaml.safe_load((d / "expected.yaml").read_text())
    prof_file = ROOT / exp["profile_file"] if "profile_file" in exp else d / "profile.yaml"
    if "error" in exp:
        with pytest.raises(ConfigError) as ei:
            load_profile(prof_file)
        text = str(ei.value)
        for key in ("error", "error2"):
            if key in exp:
                assert exp[key] in text, text
        assert all(str(p).startswith(str(prof_file) + ":") for p in ei.value.problems), text
        return
    prof = load_profile(prof_file)
    quirks = ModbusDeviceQuirks.model_validate(prof.device)
    points = [p for p in prof.points if isinstance(p, ModbusPoint)]
    reqs = full_plan(points, quirks)
    if "plan" in exp:
        assert as_rows(reqs) == exp["plan"]
    if "plan_summary" in exp:
        assert [[r.table, r.start, r.count] for _, r in reqs] == exp["plan_summary"]
    if "requests" in exp:
        assert len(reqs) == exp["requests"]
    assert len(reqs) == optimum(points, quirks), "plan is not minimal"
    for _, r in reqs:  # every request within the limits, every point inside its request
        size, _gap = limits(r.table, quirks)
        assert r.count <= size
        assert all(r.start <= p.address and p.end <= r.end for p in r.points)
        if r.table not in BIT_TABLES:
            assert r.count <= 125
    if "illegal" in exp:
        illegal = {(t, a) for t, addrs in exp["illegal"].items() for a in addrs}
        probes: list[Request] = []

        async def fails(r: Request) -> bool:  # the device model: any illegal address in the read
            probes.append(r)
            return any((r.table, a) in illegal for a in range(r.start, r.end))

        learned, dead = asyncio.run(refine([r for _, r in reqs], fails))
        assert [{**r.as_dict(), "poll": "fast"} for r in learned] == exp["learned"]
        assert [r.points[0].name for r in dead] == exp["dead"]
        # what was learned is stable: the learned plan passes the device model as it stands
        assert not any(asyncio.run(fails(r)) for r in learned if r not in dead)
        # and the lessons reproduce it when the planner starts afresh (other point sets of the device)
        lessons = Lessons()
        lessons.learn(learned, dead)
        replanned = plan([p for p in points if p.enabled and p.poll == "fast"], 1, quirks, lessons)
        assert [r.as_dict() for r in replanned] == [r.as_dict() for r in learned]
