"""Exception codes, silent devices, garbage and truncated replies: per-point error quality where the rest of
the device answered, a DriverError subclass where nothing did, never a crash."""

from __future__ import annotations

import asyncio
import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from agent.contract.driver import DriverContext
from agent.errors import DeviceBusy, DeviceTimeout, DeviceUnreachable, DriverError
from agent.model import Quality
from tests.peers.common import free_port
from tests.peers.modbus import ModbusPeer, RawModbusTcp, mbap, registers_reply

from .conftest import make_driver, write_profile

# two reads: holding 0-1 and holding 100-101 (the gap is larger than max_gap)
PROFILE = {
    "defaults": {"table": "holding"},
    "points": [
        {"name": "a", "address": 0},
        {"name": "b", "address": 1},
        {"name": "x", "address": 100},
        {"name": "y", "address": 101, "type": "int16"},
    ],
}
TABLES = {1: {"holding": {0: 11, 1: 12, 100: 13, 101: 0xFFFF}}}


def by_name(samples: list[Any]) -> dict[str, Any]:
    return {s.point: s for s in samples}


async def driver_for(tmp_path: Path, port: int, **model: Any) -> Any:
    prof = write_profile(tmp_path, PROFILE)
    conn = {"transport": "tcp", "host": "127.0.0.1", "port": port, "unit": 1,
            **model.pop("conn", {})}
    drv = make_driver(prof, conn, DriverContext("t", tmp_path), **{"timeout": 0.3, "retries": 1, **model})
    await drv.start()
    return drv


@pytest.mark.parametrize(
    ("code", "text"),
    [(1, "exception 1 illegal function"), (3, "exception 3 illegal data value"),
     (4, "exception 4 server device failure"), (6, "exception 6 server device busy")],
)
async def test_exception_codes_give_per_point_errors(tmp_path: Path, code: int, text: str) -> None:
    peer = await ModbusPeer(TABLES, exceptions={(1, 100): code}).start()
    drv = await driver_for(tmp_path, peer.port)
    try:
        s = by_name(await drv.read(drv.points))
        assert (s["a"].value, s["b"].value) == (11, 12) and s["a"].quality == Quality.GOOD
        for n in ("x", "y"):
            assert s[n].quality == Quality.ERROR and s[n].value is None and s[n].error == text
        # the device recovers: the next cycle reads everything
        peer.exceptions.clear()
        s = by_name(await drv.read(drv.points))
        assert (s["x"].value, s["y"].value) == (13, -1)
    finally:
        await drv.stop()
        await peer.stop()


async def test_exception_2_on_a_single_register_is_isolated(tmp_path: Path) -> None:
    # the server maps x but refuses reads that include it; the block 100-101 splits, y stays readable
    peer = await ModbusPeer(TABLES, exceptions={(1, 100): 2}).start()
    drv = await driver_for(tmp_path, peer.port)
    try:
        s = by_name(await drv.read(drv.points))
        assert s["x"].error == "exception 2 illegal data address" and s["y"].value == -1
        assert [(r["start"], r["count"]) for r in drv.plan()] == [(0, 2), (100, 1), (101, 1)]
    finally:
        await drv.stop()
        await peer.stop()


async def test_busy_everywhere_is_device_busy(tmp_path: Path) -> None:
    peer = await ModbusPeer(TABLES, exceptions={(1, 0): 6, (1, 100): 6}).start()
    drv = await driver_for(tmp_path, peer.port)
    try:
        with pytest.raises(DeviceBusy, match="exception 6"):
            await drv.read(drv.points)
    finally:
        await drv.stop()
        await peer.stop()


async def test_silent_device_times_out_then_fails_fast(tmp_path: Path) -> None:
    peer = await ModbusPeer(TABLES, silent={1}).start()
    drv = await driver_for(tmp_path, peer.port, retries=0, conn={"breaker_threshold": 2, "breaker_probe": 0.5})
    try:
        for _ in range(2):
            t0 = time.monotonic()
            with pytest.raises(DeviceTimeout):
                await drv.read(drv.points)
            assert 0.25 < time.monotonic() - t0 < 2.0  # one request's timeout, not one per read
        t0, asked = time.monotonic(), peer.requests
        with pytest.raises(DeviceTimeout, match="not answering"):
            await drv.read(drv.points)
        assert peer.requests == asked and time.monotonic() - t0 < 0.5  # breaker open: no I/O, no wait
        # the supervisor replaces a failed driver with a new instance: the breaker lives on the bus
        again = make_driver(drv.device.profile, drv.device.model.connection, drv.ctx, timeout=0.3, retries=0)
        await again.start()
        t0, asked = time.monotonic(), peer.requests
        with pytest.raises(DeviceTimeout, match="not answering"):
            await again.read(again.points)
        assert peer.requests == asked and time.monotonic() - t0 < 0.5
        with pytest.raises(DeviceTimeout, match="write not sent"):  # writes do not wait for a dead device
            await again.write(again.points[0].model_copy(update={"access": "read-write"}), 1)
        await again.stop()
        peer.silent.clear()
        await asyncio.sleep(0.55)  # next probe is allowed and succeeds
        s = by_name(await drv.read(drv.points))
        assert s["a"].value == 11 and not drv.breaker.is_open
    finally:
        await drv.stop()
        await peer.stop()


async def test_connection_refused_is_unreachable(tmp_path: Path) -> None:
    prof = write_profile(tmp_path, PROFILE)
    drv = make_driver(prof, {"host": "127.0.0.1", "port": free_port()}, DriverContext("t", tmp_path), timeout=0.3)
    with pytest.raises(DeviceUnreachable) as ei:
        await drv.start()
    assert ei.value.__cause__ is not None or "cannot connect" in str(ei.value)
    with pytest.raises(DeviceUnreachable):
        await drv.read(drv.points)


# ------------------------------------------------------------------------------- broken replies (raw server)


def good(tid: int, unit: int, pdu: bytes) -> bytes:
    start, count = struct.unpack(">HH", pdu[1:5])
    return mbap(tid, unit, registers_reply(3, [start + i for i in range(count)]))


FAULTS = {
    # a frame of noise with a valid-looking header
    "garbage": lambda tid, unit, pdu: mbap(tid, unit, b"\x03\x99\xde\xad\xbe\xef"),
    # the length field promises more than is sent: the rest never comes
    "truncated": lambda tid, unit, pdu: mbap(tid, unit, registers_reply(3, [1, 2]), length=40)[:12],
    # byte count says 4 registers, carries 1
    "short_count": lambda tid, unit, pdu: mbap(tid, unit, b"\x03\x08\x00\x01"),
    # a reply to another function
    "wrong_function": lambda tid, unit, pdu: mbap(tid, unit, registers_reply(4, [1, 2])),
    # a reply to another transaction
    "wrong_tid": lambda tid, unit, pdu: mbap((tid + 7) & 0xFFFF, unit, registers_reply(3, [1, 2])),
    # pure junk, no MBAP at all
    "junk": lambda tid, unit, pdu: b"\xff\x00\x13\x37" * 5,
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_broken_reply_gives_point_errors_not_a_crash(tmp_path: Path, fault: str) -> None:
    broken_once = {"on": True}

    def responder(tid: int, unit: int, fc: int, pdu: bytes) -> bytes | None:
        start = struct.unpack(">H", pdu[1:3])[0]
        if start == 100 and broken_once["on"]:
            return FAULTS[fault](tid, unit, pdu)
        return good(tid, unit, pdu)

    async with RawModbusTcp(responder) as srv:
        drv = await driver_for(tmp_path, srv.port, retries=0)
        try:
            s = by_name(await drv.read(drv.points))
            assert (s["a"].value, s["b"].value) == (0, 1)
            assert s["x"].quality == Quality.ERROR and s["y"].quality == Quality.ERROR
            assert s["x"].error
            # the bus recovers for the next cycle (a fresh connection if the stream was desynchronised)
            broken_once["on"] = False
            s = by_name(await drv.read(drv.points))
            assert (s["x"].value, s["y"].value) == (100, 101)
        finally:
            await drv.stop()


async def test_all_broken_raises_a_driver_error(tmp_path: Path) -> None:
    async with RawModbusTcp(lambda tid, unit, fc, pdu: FAULTS["garbage"](tid, unit, pdu)) as srv:
        drv = await driver_for(tmp_path, srv.port, retries=0)
        try:
            with pytest.raises(DriverError):
                await drv.read(drv.points)
        finally:
            await drv.stop()


async def test_devices_on_one_line_must_agree_on_serial_settings(tmp_path: Path) -> None:
    prof = write_profile(tmp_path, PROFILE)
    ctx = DriverContext("t", tmp_path)
    line = {"transport": "rtu", "serial_port": str(tmp_path / "ttyNone"), "baudrate": 9600, "parity": "N"}
    a = make_driver(prof, {**line, "unit": 1}, ctx, "a")
    b = make_driver(prof, {**line, "unit": 2, "baudrate": 19200}, ctx, "b")
    assert a.bus is b.bus
    with pytest.raises(DeviceUnreachable, match="differ"):
        await b.start()


async def test_lessons_apply_to_every_point_set(tmp_path: Path) -> None:
    """A hole learned while polling the fast points is not read again when the supervisor polls fast+slow."""
    prof = write_profile(tmp_path, {"defaults": {"table": "holding"}, "points": [
        {"name": "a", "address": 0}, {"name": "b", "address": 1},
        {"name": "x", "address": 10}, {"name": "y", "address": 11, "poll": "slow"},
    ]})
    peer = await ModbusPeer({1: {"holding": {0: 1, 1: 2, 10: 3, 11: 4}}}).start()
    drv = make_driver(prof, {"host": "127.0.0.1", "port": peer.port}, DriverContext("t", tmp_path))
    try:
        await drv.start()
        fast = [p for p in drv.points if p.poll == "fast"]
        s = by_name(await drv.read(fast))  # holding 0-10 refused (2-9 unmapped): split, learned
        assert (s["a"].value, s["b"].value, s["x"].value) == (1, 2, 3)
        assert drv.stats["splits"] == 1
        sent = drv.stats["requests"]
        s = by_name(await drv.read(drv.points))
        assert [s[n].value for n in "abxy"] == [1, 2, 3, 4]
        assert drv.stats["requests"] - sent == 2 and drv.stats["splits"] == 1  # 0-1 and 10-11, no refusal
        # plan shows both cycles as they go on the wire: the slow one reads x and y in one request; both are
        # cut at the hole learned from exception 2
        assert [(r["start"], r["count"], r["cycle"], r.get("learned")) for r in drv.plan()] == [
            (0, 2, "fast", "split after exception 2"), (10, 1, "fast", "split after exception 2"),
            (0, 2, "slow", "split after exception 2"), (10, 2, "slow", "split after exception 2")]
    finally:
        await drv.stop()
        await peer.stop()


def test_plan_needs_no_connection(tmp_path: Path) -> None:
    """`edge-agent plan` builds the driver and prints its plan without any I/O."""
    prof = write_profile(tmp_path, PROFILE)
    drv = make_driver(prof, {"host": "127.0.0.1", "port": free_port(), "unit": 9}, DriverContext("t", tmp_path))
    assert drv.plan() == [
        {"unit": 9, "table": "holding", "start": 0, "count": 2, "points": ["a", "b"], "cycle": "fast"},
        {"unit": 9, "table": "holding", "start": 100, "count": 2, "points": ["x", "y"], "cycle": "fast"},
    ]


async def test_reconnects_after_the_device_restarts(tmp_path: Path) -> None:
    peer = await ModbusPeer(TABLES).start()
    drv = await driver_for(tmp_path, peer.port, retries=0)
    try:
        assert by_name(await drv.read(drv.points))["a"].value == 11
        await peer.stop()  # the meter reboots: connection closed, port refused
        with pytest.raises(DriverError):
            await drv.read(drv.points)
        peer = await ModbusPeer(TABLES, port=peer.port).start()
        assert by_name(await drv.read(drv.points))["a"].value == 11
    finally:
        await drv.stop()
        await peer.stop()


@pytest.mark.parametrize("client", ["native", "pymodbus"])
async def test_late_reply_is_not_taken_for_the_next_request(tmp_path: Path, client: str) -> None:
    """A reply that arrives after its request timed out carries the old transaction id: it is dropped, the
    next request gets its own reply, and the connection (shared by a whole bus) stays up."""
    state: dict[str, Any] = {"silent_tid": None, "connections": 0}

    def responder(tid: int, unit: int, fc: int, pdu: bytes) -> bytes | None:
        start = struct.unpack(">H", pdu[1:3])[0]
        if start == 100 and state["silent_tid"] is None:
            state["silent_tid"] = tid  # no answer now: this request times out
            return None
        reply = good(tid, unit, pdu)
        if state["silent_tid"] is not None and start == 0:
            # the late reply of the timed-out request (other values), then the right one
            stale = mbap(state["silent_tid"], unit, registers_reply(3, [7777, 7777]))
            state["silent_tid"] = -1
            return stale + reply
        return reply

    async with RawModbusTcp(responder) as srv:
        drv = await driver_for(tmp_path, srv.port, retries=0, conn={"tcp_client": client})
        try:
            s = by_name(await drv.read(drv.points))
            assert s["x"].quality == Quality.ERROR and s["a"].value == 0
            client_before = drv.bus.client
            s = by_name(await drv.read(drv.points))
            assert (s["a"].value, s["b"].value, s["x"].value, s["y"].value) == (0, 1, 100, 101)
            assert drv.bus.client is client_before and client_before.connected
        finally:
            await drv.stop()


async def test_outstanding_reads_go_out_together(tmp_path: Path) -> None:
    """A gateway that answers only once both reads of the cycle are in (what several outstanding
    transactions allow): with max_outstanding 2 every point is read; a read it never answers gives ERROR
    samples for its points only."""
    seen: list[tuple[int, bytes]] = []
    state = {"drop_x": False}

    def responder(tid: int, unit: int, fc: int, pdu: bytes) -> bytes | None:
        seen.append((tid, pdu))
        if len(seen) < 2:
            return None
        batch, seen[:] = list(seen), []
        out = b""
        for t, p in batch:
            if state["drop_x"] and struct.unpack(">H", p[1:3])[0] == 100:
                continue
            out += good(t, unit, p)
        return out

    async with RawModbusTcp(responder) as srv:
        drv = await driver_for(tmp_path, srv.port, retries=0, conn={"max_outstanding": 2})
        try:
            s = by_name(await drv.read(drv.points))
            assert (s["a"].value, s["b"].value, s["x"].value, s["y"].value) == (0, 1, 100, 101)
            state["drop_x"] = True
            s = by_name(await drv.read(drv.points))
            assert (s["a"].value, s["b"].value) == (0, 1)
            assert s["x"].quality == Quality.ERROR and "timeout" in (s["x"].error or "")
        finally:
            await drv.stop()


@pytest.mark.parametrize("client", ["native", "pymodbus"])
async def test_device_that_answers_with_transaction_id_0(tmp_path: Path, client: str) -> None:
    """Some devices do not echo the transaction id and always send 0: one request at a time, the reply is
    still taken (pymodbus' client does the same)."""
    async with RawModbusTcp(lambda tid, unit, fc, pdu: good(0, unit, pdu)) as srv:
        drv = await driver_for(tmp_path, srv.port, retries=0, conn={"tcp_client": client})
        try:
            s = by_name(await drv.read(drv.points))
            assert (s["a"].value, s["b"].value, s["x"].value, s["y"].value) == (0, 1, 100, 101)
        finally:
            await drv.stop()


async def test_errors_read_in_the_agents_words(tmp_path: Path) -> None:
    """Not pymodbus' text ("No response received after 0 retries" while retries: 1 is configured): what the
    agent did, in its own words."""
    peer = await ModbusPeer(TABLES, silent={1}).start()
    drv = await driver_for(tmp_path, peer.port, retries=1)
    where = f"unit 1 on tcp:127.0.0.1:{peer.port}"
    try:
        with pytest.raises(DeviceTimeout) as ei:
            await drv.read(drv.points)
        assert str(ei.value) == f"{where}: no valid reply within 0.3 s (2 attempts)"
        with pytest.raises(DeviceTimeout) as ei:  # the unit failed its last cycle: probed without retries
            await drv.read(drv.points)
        assert str(ei.value) == f"{where}: no valid reply within 0.3 s (1 attempt; no retries until it answers again)"
        await peer.stop()
        with pytest.raises(DriverError) as ei2:
            await drv.read(drv.points)
        assert "Modbus Error" not in str(ei2.value) and "pymodbus" not in str(ei2.value)
        assert re.search(r"lost$|cannot connect to .*: connection refused$|no (valid )?reply within", str(ei2.value))
    finally:
        await drv.stop()
        await peer.stop()
