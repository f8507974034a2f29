"""Request planner: the fewest reads that cover a set of points, within the device's limits.

Points are grouped per unit id and table, sorted by address, and joined greedily: a point joins the current
read when the unused registers between them do not exceed the gap limit and the read stays within the size
limit. For intervals sorted by start, extending the current read as long as allowed is optimal (exchange
argument: any plan's first read ends no later than the greedy one's, and so on), so the plan is minimal for
the given limits.

When a device answers a joined read with "illegal data address" (some register in the gap or under a point
does not exist), ``split`` cuts the read in two between points; the driver retries the halves and keeps the
ones that work, so the learned plan is remembered and one bad register never blanks a whole block.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import BIT_TABLES, ModbusDeviceQuirks, ModbusPoint

TABLE_ORDER = {"coil": 0, "discrete_input": 1, "holding": 2, "input": 3}


@dataclass
class Request:
    """One read: unit, table, first address, count, and the points it carries (sorted by address)."""

    unit: int
    table: str
    start: int
    count: int
    points: list[ModbusPoint] = field(default_factory=list)
    isolated: bool = False  # learned: this read cannot be joined further (it failed when joined)
    decoders: list[Any] = field(default_factory=list, repr=False, compare=False)  # compiled by the driver
    # the driver's memory of the last good reply: (raw registers or bits, decoded values, [(point, value)] when
    # every value is good, else None); equal raw data needs no decoding (most registers of a meter rarely
    # change)
    last: tuple[list[Any], list[Any], list[tuple[str, Any]] | None] | None = field(default=None, repr=False,
                                                                                     compare=False)

    @property
    def end(self) -> int:
        return self.start + self.count

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit, "table": self.table, "start": self.start, "count": self.count,
            "points": [p.name for p in self.points],
        }


def limits(table: str, quirks: ModbusDeviceQuirks) -> tuple[int, int]:
    """(max size, max gap) of one read of this table."""
    if table in BIT_TABLES:
        return quirks.max_bits, (quirks.max_bit_gap if quirks.gap_fill else 0)
    return quirks.max_registers, (quirks.max_gap if quirks.gap_fill else 0)


@dataclass
class Lessons:
    """What exception-2 replies taught about a device, so that every plan of it avoids the same mistakes:
    ``holes`` are unused ranges a read must not span (something in them is refused), ``refused`` the points
    the device refuses even alone (each keeps a read of its own, and so keeps being tried)."""

    holes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    refused: set[tuple[str, int]] = field(default_factory=set)

    def learn(self, parts: Sequence[Request], dead: Sequence[Request]) -> None:
        """Record the outcome of ``refine`` for one failed read: the holes between its working pieces."""
        ordered = sorted(parts, key=lambda r: r.start)
        for a, b in itertools.pairwise(ordered):
            if b.start > a.end:
                self.holes.setdefault(a.table, []).append((a.end, b.start))
        for r in dead:
            self.refused.add((r.table, r.start))

    def blocks(self, table: str, start: int, end: int) -> bool:
        """True when the unused range [start, end) meets a learned hole."""
        return any(s < end and start < e for s, e in self.holes.get(table, ()))

    def __bool__(self) -> bool:
        return bool(self.holes or self.refused)


def plan(points: Iterable[ModbusPoint], unit: int, quirks: ModbusDeviceQuirks,
         lessons: Lessons | None = None) -> list[Request]:
    """The minimal list of reads covering these points (within what ``lessons`` forbids)."""
    by_table: dict[str, list[ModbusPoint]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    out: list[Request] = []
    for table in sorted(by_table, key=TABLE_ORDER.__getitem__):
        size, gap = limits(table, quirks)
        pts = sorted(by_table[table], key=lambda p: (p.address, p.end))
        cur: Request | None = None
        cur_alone = False
        for p in pts:
            alone = lessons is not None and (table, p.address) in lessons.refused
            if cur is not None:
                new_end = max(cur.end, p.end)
                if (
                    p.address - cur.end <= gap
                    and new_end - cur.start <= size
                    and not alone
                    and not cur_alone
                    and not (lessons is not None and p.address > cur.end
                             and lessons.blocks(table, cur.end, p.address))
                ):
                    cur.count = new_end - cur.start
                    cur.points.append(p)
                    continue
                out.append(cur)
            cur = Request(unit, table, p.address, p.register_count, [p], alone)
            cur_alone = alone
        if cur is not None:
            out.append(cur)
    return out


def tight(unit: int, table: str, points: Sequence[ModbusPoint], isolated: bool = False) -> Request:
    start = min(p.address for p in points)
    end = max(p.end for p in points)
    return Request(unit, table, start, end - start, list(points), isolated)


def split(req: Request) -> list[Request]:
    """Cut a read in two between points, at the widest gap (most likely where missing registers are);
    ties go to the middle. A read of one point cannot be split: returned as is."""
    pts = req.points
    if len(pts) < 2:
        return [req]
    best_i, best_key = 1, (-1, 0.0)
    mid = len(pts) / 2
    run_end = pts[0].end
    for i in range(1, len(pts)):
        gap = pts[i].address - run_end
        key = (gap, -abs(i - mid))
        if key > best_key:
            best_i, best_key = i, key
        run_end = max(run_end, pts[i].end)
    return [tight(req.unit, req.table, pts[:best_i], True), tight(req.unit, req.table, pts[best_i:], True)]


async def refine(
    requests: list[Request], fails: Callable[[Request], Awaitable[bool]]
) -> tuple[list[Request], list[Request]]:
    """Split every failing read until the pieces work or hold one point. Returns (plan, dead) where dead
    are single-point reads that still fail (their points get an error each cycle and stay on their own).

    ``fails`` is the device: in the driver a real request, in the planner tests a model of the device.
    """
    out: list[Request] = []
    dead: list[Request] = []
    todo = list(requests)
    while todo:
        r = todo.pop(0)
        if not await fails(r):
            out.append(r)
            continue
        parts = split(r)
        if len(parts) == 1:
            r.isolated = True
            out.append(r)
            dead.append(r)
            continue
        todo[0:0] = parts
    return out, dead


def one_per_point(points: Iterable[ModbusPoint], unit: int) -> list[Request]:
    """The naive baseline (one request per configured point), for the bench."""
    return [Request(unit, p.table, p.address, p.register_count, [p]) for p in points]
