"""Fewest Modbus reads for a set of points, by dynamic programming: an oracle independent of the greedy
planner, used by the planner cases and by bench/modbus_poll.py."""

from __future__ import annotations

from drivers.modbus import ModbusDeviceQuirks, ModbusPoint
from drivers.modbus.planner import limits


def optimum(points: list[ModbusPoint], quirks: ModbusDeviceQuirks) -> int:
    """Fewest reads for these points, by dynamic programming (independent of the greedy planner)."""
    total = 0
    groups: dict[tuple[str, str], list[ModbusPoint]] = {}
    for p in points:
        if p.enabled:
            groups.setdefault((p.poll, p.table), []).append(p)
    for (_, table), pts in groups.items():
        size, gap = limits(table, quirks)
        pts.sort(key=lambda p: (p.address, p.end))
        n = len(pts)
        best = [0] + [10**9] * n  # best[i]: reads for the first i points
        for i in range(n):
            if best[i] >= 10**9:
                continue
            start, end = pts[i].address, pts[i].end
            for j in range(i, n):  # one read covering points i..j
                if j > i:
                    if pts[j].address - end > gap:
                        break
                    end = max(end, pts[j].end)
                if end - start > size:
                    break
                best[j + 1] = min(best[j + 1], best[i] + 1)
        total += best[n]
    return total
