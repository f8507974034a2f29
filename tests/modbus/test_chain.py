"""The reads of one poll cycle chained by the native TCP client (issue 15): one request outstanding at a time
as before, each next one written from the reply callback, one timer per cycle; against pymodbus' server and
a raw server, with a write and another device on the same bus, exception replies, busy and a timeout in the
middle of a chain."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

from agent.contract.driver import DriverContext, check_write
from agent.model import Quality
from tests.peers.modbus import ModbusPeer, RawModbusTcp, mbap, registers_reply

from .conftest import make_driver, write_profile

# four reads: the holes between the blocks are wider than max_gap
PROFILE = {
    "defaults": {"table": "holding"},
    "points": [
        {"name": "a", "address": 0, "access": "read-write"},
        {"name": "b", "address": 100},
        {"name": "c", "address": 200},
        {"name": "d", "address": 300},
    ],
}
TABLES = {1: {"holding": {0: 10, 100: 11, 200: 12, 300: 13}}}
EXPECTED = {"a": 10, "b": 11, "c": 12, "d": 13}


def by_name(samples: list[Any]) -> dict[str, Any]:
    return {s.point: s for s in samples}


def good_values(samples: list[Any]) -> dict[str, Any]:
    bad = {s.point: s.error for s in samples if s.quality != Quality.GOOD}
    assert not bad, bad
    return {s.point: s.value for s in samples}


def driver(tmp_path: Path, port: int, ctx: DriverContext | None = None, name: str = "dev", unit: int = 1,
           **model: Any) -> Any:
    prof = write_profile(tmp_path, PROFILE)
    conn = {"transport": "tcp", "host": "127.0.0.1", "port": port, "unit": unit}
    return make_driver(prof, conn, ctx or DriverContext("t", tmp_path), name=name,
                       **{"timeout": 0.5, "retries": 1, **model})


class TimerCount:
    """Counts the timers the event loop is asked for (``call_at``: what ``asyncio.timeout`` uses)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.n = 0
        self._orig = self.loop.call_at

    def __enter__(self) -> TimerCount:
        def call_at(when: float, cb: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
            self.n += 1
            return self._orig(when, cb, *args, context=context)

        self.loop.call_at = call_at  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.loop.call_at  # the instance attribute goes, the class method is back


async def test_a_cycle_of_reads_takes_one_timer(tmp_path: Path) -> None:
    """Four reads of one cycle: four requests, one after the other, every value read, one timer for the whole
    cycle (before: one ``asyncio.timeout`` per request)."""
    peer = await ModbusPeer(TABLES).start()
    drv = driver(tmp_path, peer.port)
    await drv.start()
    try:
        assert good_values(await drv.read(drv.points)) == EXPECTED
        peer.functions.clear()
        sent = drv.stats["requests"]
        with TimerCount() as timers:
            assert good_values(await drv.read(drv.points)) == EXPECTED
        assert drv.stats["requests"] - sent == 4
        assert sorted(a for _, a in peer.functions) == [0, 100, 200, 300]
        assert timers.n == 1
    finally:
        await drv.stop()
        await peer.stop()


async def test_one_request_outstanding_at_a_time(tmp_path: Path) -> None:
    """A read left unanswered holds the chain: the device sees its retry next, not the next read (several
    outstanding requests stay opt-in, ``max_outstanding``)."""
    seen: list[int] = []

    def responder(tid: int, unit: int, fc: int, pdu: bytes) -> bytes | None:
        addr = struct.unpack(">H", pdu[1:3])[0]
        seen.append(addr)
        if addr == 0 and seen.count(0) == 1:
            return None  # the first read of the first cycle is never answered
        return mbap(tid, unit, registers_reply(3, [EXPECTED["abcd"[addr // 100]]]))

    async with RawModbusTcp(responder) as srv:
        drv = driver(tmp_path, srv.port, timeout=0.2)
        await drv.start()
        try:
            assert good_values(await drv.read(drv.points)) == EXPECTED
            assert seen == [0, 0, 100, 200, 300]
        finally:
            await drv.stop()


async def test_a_write_waits_for_the_read_in_flight_only(tmp_path: Path) -> None:
    """A write asked for while a cycle's chain runs goes out right after the read in flight, not after the
    whole cycle; the rest of the cycle is read after it."""
    peer = await ModbusPeer(TABLES, delay=0.1).start()
    drv = driver(tmp_path, peer.port, timeout=1.0)
    await drv.start()
    try:
        await drv.read(drv.points)
        peer.functions.clear()
        cycle = asyncio.create_task(drv.read(drv.points))
        await asyncio.sleep(0.05)  # the first read is in flight
        assert await drv.write(check_write(drv.device, "a", 7), 7) == 7
        s = by_name(await cycle)
        assert s["b"].value == 11 and s["d"].value == 13
        order = [(fc, a) for fc, a in peer.functions]
        write = order.index((6, 0))
        assert write <= 2, order  # after the read in flight (pymodbus may list a write twice), not at the end
        assert sorted(a for fc, a in order if fc == 3) == [0, 100, 200, 300]
    finally:
        await drv.stop()
        await peer.stop()


async def test_devices_on_one_bus_take_turns_within_a_cycle(tmp_path: Path) -> None:
    """Two units behind one gateway: a cycle of one does not hold the bus for its whole chain while the other
    waits; both read everything."""
    tables = {1: TABLES[1], 2: {"holding": {0: 20, 100: 21, 200: 22, 300: 23}}}
    peer = await ModbusPeer(tables, delay=0.02).start()
    ctx = DriverContext("t", tmp_path)
    d1 = driver(tmp_path, peer.port, ctx, "one", 1, timeout=1.0)
    d2 = driver(tmp_path, peer.port, ctx, "two", 2, timeout=1.0)
    await d1.start()
    await d2.start()
    try:
        await asyncio.gather(d1.read(d1.points), d2.read(d2.points))
        peer.functions.clear()
        r1, r2 = await asyncio.gather(d1.read(d1.points), d2.read(d2.points))
        assert good_values(r1) == EXPECTED
        assert good_values(r2) == {"a": 20, "b": 21, "c": 22, "d": 23}
        assert len(peer.functions) == 8
        units = d1.bus.memory.keys()
        assert set(units) == {1, 2}
        assert d1.bus is d2.bus
    finally:
        await d1.stop()
        await d2.stop()
        await peer.stop()


async def test_exception_replies_in_a_chain_are_not_asked_twice(tmp_path: Path) -> None:
    """A read refused with exception 4 in the middle of a chain: its point gets the error, the reads after it
    are made, and the refused read is not sent again in the same cycle (retries are for timeouts and busy)."""
    peer = await ModbusPeer(TABLES, exceptions={(1, 100): 4}).start()
    drv = driver(tmp_path, peer.port)
    await drv.start()
    try:
        await drv.read(drv.points)
        peer.functions.clear()
        sent = drv.stats["requests"]
        s = by_name(await drv.read(drv.points))
        assert s["b"].error == "exception 4 server device failure"
        assert (s["a"].value, s["c"].value, s["d"].value) == (10, 12, 13)
        assert drv.stats["requests"] - sent == 4
        assert sorted(a for _, a in peer.functions) == [0, 100, 200, 300]
    finally:
        await drv.stop()
        await peer.stop()


async def test_busy_in_a_chain_is_asked_again_after_the_delay(tmp_path: Path) -> None:
    """Exception 6 (busy) once in the middle of a chain: asked again after ``busy_retry_delay``; every value."""
    busy = {"left": 1}

    def responder(tid: int, unit: int, fc: int, pdu: bytes) -> bytes | None:
        addr = struct.unpack(">H", pdu[1:3])[0]
        if addr == 200 and busy["left"]:
            busy["left"] -= 1
            return mbap(tid, unit, bytes([0x83, 6]))
        return mbap(tid, unit, registers_reply(3, [EXPECTED["abcd"[addr // 100]]]))

    async with RawModbusTcp(responder) as srv:
        drv = driver(tmp_path, srv.port)
        await drv.start()
        try:
            sent = drv.stats["requests"]
            assert good_values(await drv.read(drv.points)) == EXPECTED
            assert drv.stats["requests"] - sent == 5 and busy["left"] == 0
        finally:
            await drv.stop()


async def test_a_timeout_in_the_middle_of_a_chain(tmp_path: Path) -> None:
    """A read never answered in the middle of a chain: retried once (``retries: 1``), its point gets the
    timeout in the agent's words with both attempts counted; the reads after it are made."""

    def responder(tid: int, unit: int, fc: int, pdu: bytes) -> bytes | None:
        addr = struct.unpack(">H", pdu[1:3])[0]
        if addr == 100:
            return None
        return mbap(tid, unit, registers_reply(3, [EXPECTED["abcd"[addr // 100]]]))

    async with RawModbusTcp(responder) as srv:
        drv = driver(tmp_path, srv.port, timeout=0.2)
        await drv.start()
        try:
            s = by_name(await drv.read(drv.points))
            assert (s["a"].value, s["c"].value, s["d"].value) == (10, 12, 13)
            assert s["b"].quality == Quality.ERROR
            assert s["b"].error == "timeout: no valid reply within 0.2 s (2 attempts)"
        finally:
            await drv.stop()
