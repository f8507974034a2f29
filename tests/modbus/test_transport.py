"""Against a real pymodbus server, over TCP, over a socat pty pair (RTU) and RTU framing over TCP (a
transparent serial server): every type and byte order
decodes to what the server holds, values follow the server, writes land and read back, bad writes never
leave the box."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client.mixin import ModbusClientMixin

from agent.contract.driver import DriverContext, check_write
from agent.errors import WriteRefused
from agent.model import Quality
from tests.peers.modbus import ModbusPeer

from . import alltypes
from .conftest import make_driver, write_profile
from .wire import device_registers


@pytest.fixture(params=["tcp", "tcp-pymodbus", "rtu", "rtu-over-tcp"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Any, ModbusPeer, Any]]:
    """tcp: the agent's own Modbus TCP client (drivers/modbus/tcp.py); tcp-pymodbus: pymodbus' client."""
    data, tables, expected = alltypes.build()
    prof = write_profile(tmp_path, data)
    if request.param in ("tcp", "tcp-pymodbus", "rtu-over-tcp"):
        transport = "tcp" if request.param == "tcp-pymodbus" else request.param
        peer = await ModbusPeer({1: tables}, transport=transport).start()
        conn: dict[str, Any] = {"transport": transport, "host": "127.0.0.1", "port": peer.port, "unit": 1}
        if request.param == "tcp-pymodbus":
            conn["tcp_client"] = "pymodbus"
    else:
        pty = request.getfixturevalue("pty_pair")
        peer = await ModbusPeer({1: tables}, transport="rtu", serial_port=pty.a).start()
        conn = {"transport": "rtu", "serial_port": pty.b, "baudrate": 19200, "parity": "N", "unit": 1}
    drv = make_driver(prof, conn, DriverContext("t", tmp_path), timeout=1.0)
    await drv.start()
    try:
        yield drv, peer, expected
    finally:
        await drv.stop()
        await peer.stop()


def values(samples: list[Any]) -> dict[str, Any]:
    bad = {s.point: s.error for s in samples if s.quality != Quality.GOOD}
    assert not bad, bad
    return {s.point: s.value for s in samples}


def test_independent_encoder_agrees_with_pymodbus() -> None:
    """Our test-side wire encoder matches pymodbus' own conversion for the orders pymodbus knows."""
    dt = ModbusClientMixin.DATATYPE
    for t, v in alltypes.VALUES.items():
        kind = getattr(dt, t.upper())
        assert device_registers(t, v, "ABCD") == ModbusClientMixin.convert_to_registers(v, kind)
        if alltypes.SIZE[t] > 1:
            assert device_registers(t, v, "CDAB") == ModbusClientMixin.convert_to_registers(
                v, kind, word_order="little"
            )


async def test_every_type_and_order_decodes(setup: Any) -> None:
    drv, _peer, expected = setup
    got = values(await drv.read(drv.points))
    assert got == expected
    # planned: holding 0-79 and 100-123 (the gap 80-99 exceeds max_gap 16); the server does not map
    # 105-109 and 116-119, answers exception 2 to 100-123, and the driver learned three reads instead
    assert [(r["table"], r["start"], r["count"]) for r in drv.plan()] == [
        ("coil", 3, 38), ("discrete_input", 17, 1), ("holding", 0, 80),
        ("holding", 100, 5), ("holding", 110, 6), ("holding", 120, 4), ("input", 7, 2),
    ]
    sent = drv.stats["requests"]
    assert values(await drv.read(drv.points)) == expected
    assert drv.stats["requests"] - sent == 7  # the learned plan is kept: no more failing reads


async def test_values_follow_the_server(setup: Any) -> None:
    drv, peer, _ = setup
    await peer.set(1, "holding", 100, [2417, 0])  # 241.7 V, LSW first
    await peer.set(1, "input", 7, device_registers("uint32", 4_000_000_000, "ABCD"))
    await peer.set(1, "coil", 3, [False])
    got = values(await drv.read(drv.points))
    assert got["volts_x10"] == 241.7 and got["counter"] == 4_000_000_000 and got["relay"] is False


async def test_writes_land_and_read_back(setup: Any) -> None:
    drv, peer, _ = setup
    dev = drv.device
    cases: list[tuple[str, Any, Any, int, list[Any]]] = [
        ("temp_c", 21.537, 21.54, 102, [2154]),  # FC6, rounded to the 0.01 resolution
        ("setpoint", 42.25, 42.25, 120, [0x4229, 0x0000]),  # FC16 float32 ABCD
        ("limit_u32", 70000, 70000, 122, [0x1170, 0x0001]),  # FC16, LSW first
        ("label", "EDGE", "EDGE", 110, [0x4544, 0x4745, 0, 0]),
    ]
    for name, value, written, addr, regs in cases:
        p = check_write(dev, name, value)
        assert await drv.write(p, value) == written
        assert await peer.get(1, "holding", addr, len(regs)) == regs, name
    # bit in a register: read-modify-write keeps bit 15 (fault) as it was
    assert await drv.write(check_write(dev, "run", False), False) is False
    assert await peer.get(1, "holding", 104) == [0x8000]
    # coil, FC5
    assert await drv.write(check_write(dev, "relay", False), False) is False
    assert (await peer.get(1, "coil", 3)) == [False]
    got = values(await drv.read(drv.points))
    assert (got["temp_c"], got["setpoint"], got["limit_u32"], got["label"], got["run"], got["fault"],
            got["relay"]) == (21.54, 42.25, 70000, "EDGE", False, True, False)


async def test_out_of_bounds_writes_refused_before_the_wire(setup: Any) -> None:
    drv, peer, _ = setup
    dev = drv.device
    before = await peer.get(1, "holding", 102)
    sent = drv.stats["requests"]
    with pytest.raises(WriteRefused, match="above the maximum 90"):
        check_write(dev, "temp_c", 95)
    with pytest.raises(WriteRefused, match="below the minimum -20"):
        check_write(dev, "temp_c", -20.5)
    with pytest.raises(WriteRefused, match="read-only"):
        check_write(dev, "volts_x10", 230)
    with pytest.raises(WriteRefused, match="outside uint32"):
        await drv.write(check_write(dev, "limit_u32", -1), -1)
    with pytest.raises(WriteRefused, match="do not fit"):
        await drv.write(check_write(dev, "label", "TOO LONG!"), "TOO LONG!")
    with pytest.raises(WriteRefused, match="expects true/false, 1/0, on/off or active/inactive"):
        await drv.write(check_write(dev, "relay", 5), 5)
    assert drv.stats["requests"] == sent
    assert await peer.get(1, "holding", 102) == before


async def test_writes_queue_between_polls_on_a_shared_bus(setup: Any) -> None:
    """Polls of the device run back to back while writes arrive: every write lands, no poll breaks."""
    drv, peer, _ = setup
    stop = asyncio.Event()
    errors: list[Any] = []

    async def poll() -> int:
        n = 0
        while not stop.is_set():
            errors.extend(s for s in await drv.read(drv.points) if s.quality != Quality.GOOD)
            n += 1
        return n

    task = asyncio.create_task(poll())
    for i in range(20):
        v = round(10 + i * 0.25, 2)
        assert await drv.write(check_write(drv.device, "temp_c", v), v) == v
        assert await peer.get(1, "holding", 102) == [round(v * 100)]
    stop.set()
    assert await task >= 1
    assert not errors


@pytest.mark.parametrize(("multiple", "coil_fc", "reg_fc"), [(False, 5, 6), (True, 15, 16)])
async def test_write_function_codes(tmp_path: Path, multiple: bool, coil_fc: int, reg_fc: int) -> None:
    """FC5/FC6 by default; FC15/FC16 for devices that only accept the multiple-write functions."""
    prof = write_profile(tmp_path, {"device": {"write_multiple": multiple}, "points": [
        {"name": "relay", "table": "coil", "address": 2, "type": "bool", "access": "read-write"},
        {"name": "sp", "table": "holding", "address": 4, "type": "int16", "access": "read-write"},
        {"name": "sp32", "table": "holding", "address": 6, "type": "float32", "access": "read-write"},
    ]})
    tables: dict[str, dict[int, int | bool]] = {"coil": {a: False for a in range(16)},
                                                "holding": {a: 0 for a in range(10)}}
    peer = await ModbusPeer({1: tables}).start()
    drv = make_driver(prof, {"host": "127.0.0.1", "port": peer.port}, DriverContext("t", tmp_path))
    try:
        await drv.start()
        peer.functions.clear()
        await drv.write(check_write(drv.device, "relay", True), True)
        await drv.write(check_write(drv.device, "sp", -5), -5)
        await drv.write(check_write(drv.device, "sp32", 1.5), 1.5)
        # pymodbus consults its datastore twice for FC5/FC6 (check, then set): collapse repeats
        f = peer.functions
        seen = [x for i, x in enumerate(f) if i == 0 or f[i - 1] != x]
        assert seen == [(coil_fc, 2), (reg_fc, 4), (16, 6)]  # a float32 is always FC16
        assert await peer.get(1, "coil", 2) == [True]
        assert await peer.get(1, "holding", 4, 4) == [0xFFFB, 0, 0x3FC0, 0]
    finally:
        await drv.stop()
        await peer.stop()


async def test_unchanged_block_is_not_decoded_again(setup: Any) -> None:
    """Equal raw registers: no decoding (the same value objects come back, which the pipeline's change test
    recognises at once), fresh timestamps; a changed register is decoded as before."""
    drv, peer, expected = setup
    first = {s.point: s for s in await drv.read(drv.points)}
    second = {s.point: s for s in await drv.read(drv.points)}
    assert {n: s.value for n, s in second.items()} == expected
    numbers = [n for n, s in first.items() if isinstance(s.value, float)]
    assert numbers and all(second[n].value is first[n].value for n in numbers)
    assert all(second[n].ts >= first[n].ts and second[n].quality == Quality.GOOD for n in second)
    await peer.set(1, "holding", 100, [2417, 0])
    third = values(await drv.read(drv.points))
    assert third["volts_x10"] == 241.7
    assert {n: v for n, v in third.items() if n != "volts_x10"} == {n: v for n, v in expected.items()
                                                                  if n != "volts_x10"}


async def test_in_a_changed_block_only_changed_points_are_decoded(setup: Any) -> None:
    """One register pair of a block changes: that point is decoded again (its new value), the other points of
    the same block keep the very value objects of the last reply (not decoded again), all with fresh
    timestamps; a later change of a neighbour's register is decoded too."""
    drv, peer, expected = setup
    await drv.read(drv.points)
    first = {s.point: s for s in await drv.read(drv.points)}
    await peer.set(1, "holding", 100, [2417, 0])  # volts_x10 (100-101), in one block with temp_c, kelvin...
    second = {s.point: s for s in await drv.read(drv.points)}
    assert second["volts_x10"].value == 241.7
    neighbours = ["temp_c", "kelvin", "setpoint", "limit_u32"]
    for n in neighbours:
        assert second[n].value is first[n].value, n
        assert second[n].quality == Quality.GOOD and second[n].ts >= first[n].ts
    await peer.set(1, "holding", 102, [1234])  # temp_c
    third = values(await drv.read(drv.points))
    assert third["temp_c"] == 12.34 and third["volts_x10"] == 241.7
    assert {n: v for n, v in third.items() if n not in ("temp_c", "volts_x10")} == {
        n: v for n, v in expected.items() if n not in ("temp_c", "volts_x10")}


async def test_outstanding_reads_fall_back_when_the_device_takes_one_at_a_time(tmp_path: Path) -> None:
    """pymodbus' server answers only the first of several requests sent together: with max_outstanding the
    first cycle still reads every value (the unanswered reads are asked again), and from then on the bus
    sends one request at a time, with no timeout."""
    data, tables, expected = alltypes.build()
    prof = write_profile(tmp_path, data)
    peer = await ModbusPeer({1: tables}, transport="tcp").start()
    conn = {"transport": "tcp", "host": "127.0.0.1", "port": peer.port, "unit": 1, "max_outstanding": 8}
    drv = make_driver(prof, conn, DriverContext("t", tmp_path), timeout=0.5)
    await drv.start()
    try:
        for _ in range(2):  # learns the exception-2 splits and "one at a time" (one timeout)
            assert values(await drv.read(drv.points)) == expected
        assert drv.bus.one_at_a_time
        sent, t0 = drv.stats["requests"], asyncio.get_running_loop().time()
        assert values(await drv.read(drv.points)) == expected
        assert drv.stats["requests"] - sent == 7 and asyncio.get_running_loop().time() - t0 < 0.4
    finally:
        await drv.stop()
        await peer.stop()
