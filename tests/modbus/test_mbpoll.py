"""Cross-check with mbpoll, an independent Modbus client: it must read the same values as the driver."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from agent.contract.driver import DriverContext
from tests.peers.modbus import ModbusPeer

from .conftest import make_driver, write_profile
from .wire import device_registers

MBPOLL = shutil.which("mbpoll")


async def mbpoll(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        MBPOLL or "mbpoll", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def reading(out: str, ref: int) -> str:
    m = re.search(rf"^\[{ref}\]:\s+(\S+)", out, re.M)
    assert m, out
    return m.group(1)


@pytest.mark.skipif(MBPOLL is None, reason="mbpoll not installed")
async def test_mbpoll_reads_what_the_driver_reads(tmp_path: Path) -> None:
    holding = {
        **dict(enumerate(device_registers("float32", 231.7, "ABCD"), start=10)),
        **dict(enumerate(device_registers("int32", -7654321, "CDAB"), start=20)),
        30: 0x1234,
    }
    peer = await ModbusPeer({5: {"holding": holding}}).start()
    prof = write_profile(tmp_path, {"defaults": {"table": "holding"}, "points": [
        {"name": "volts", "address": 10, "type": "float32"},
        {"name": "power", "address": 20, "type": "int32", "byte_order": "CDAB"},
        {"name": "raw", "address": 30, "type": "uint16"},
    ]})
    drv = make_driver(prof, {"host": "127.0.0.1", "port": peer.port, "unit": 5}, DriverContext("t", tmp_path))
    try:
        await drv.start()
        got = {s.point: s.value for s in await drv.read(drv.points)}
        base = ["-m", "tcp", "-p", str(peer.port), "-a", "5", "-0", "-1"]
        # mbpoll: -t 4:float -B = big-endian float (ABCD); -t 4:int without -B = low word first (CDAB)
        f = float(reading(await mbpoll(*base, "-t", "4:float", "-B", "-r", "10", "-c", "1", "127.0.0.1"), 10))
        i = int(reading(await mbpoll(*base, "-t", "4:int", "-r", "20", "-c", "1", "127.0.0.1"), 20))
        h = int(reading(await mbpoll(*base, "-t", "4:hex", "-r", "30", "-c", "1", "127.0.0.1"), 30), 16)
        assert got["volts"] == pytest.approx(f, rel=1e-6) and got["volts"] == 231.7
        assert got["power"] == i == -7654321
        assert got["raw"] == h == 0x1234
    finally:
        await drv.stop()
        await peer.stop()


@pytest.mark.skipif(MBPOLL is None, reason="mbpoll not installed")
async def test_mbpoll_over_rtu_reads_what_the_driver_reads(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pty = request.getfixturevalue("pty_pair")
    holding = dict(enumerate(device_registers("float32", -12.75, "ABCD"), start=40))
    peer = await ModbusPeer({3: {"holding": holding}}, transport="rtu", serial_port=pty.a).start()
    prof = write_profile(tmp_path, {"points": [{"name": "t", "table": "holding", "address": 40, "type": "float32"}]})
    try:
        out = await mbpoll("-m", "rtu", "-b", "19200", "-P", "none", "-a", "3", "-0", "-1", "-t", "4:float", "-B",
                           "-r", "40", "-c", "1", pty.b)
        drv = make_driver(prof, {"transport": "rtu", "serial_port": pty.b, "baudrate": 19200, "parity": "N",
                                 "unit": 3}, DriverContext("t", tmp_path))
        await drv.start()
        try:
            got = (await drv.read(drv.points))[0].value
        finally:
            await drv.stop()
        assert got == float(reading(out, 40)) == -12.75
    finally:
        await peer.stop()
