"""Shipped profiles: they load, name their source document, decode the documents' encodings to the documents'
engineering values, and run against the simulated meters the demo uses."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_profile
from agent.contract.driver import DriverContext, check_write
from agent.errors import WriteRefused
from agent.model import Quality
from drivers.modbus.sim import SimMeter, SimServer
from tests.peers.common import free_port

from .conftest import MODBUS_PROFILES, PROFILES, ROOT, make_driver
from .wire import device_registers

SHIPPED = {
    1: PROFILES / "carlo-gavazzi-em340.yaml",
    2: PROFILES / "schneider-iem3155.yaml",
    3: PROFILES / "socomec-countis-e34.yaml",
    4: PROFILES / "remeha-gtw08.yaml",
}


def test_shipped_profiles_name_their_documents() -> None:
    assert len(MODBUS_PROFILES) >= 4
    for f in MODBUS_PROFILES:
        prof = load_profile(f)
        md = prof.metadata
        assert md.manufacturer and md.model and md.document and md.document_version, f
        assert all(p.description for p in prof.points), f


@pytest.fixture
async def sim(tmp_path: Path) -> Any:
    meters = [SimMeter.from_profile(p, u) for u, p in SHIPPED.items()]
    srv = await SimServer(meters, port=free_port(), update_every=0.2).start()
    ctx = DriverContext("t", tmp_path)
    drivers = {u: make_driver(p, {"host": "127.0.0.1", "port": srv.port, "unit": u}, ctx, p.stem, timeout=1.0)
               for u, p in SHIPPED.items()}
    for d in drivers.values():
        await d.start()
    try:
        yield srv, drivers
    finally:
        for d in drivers.values():
            await d.stop()
        await srv.stop()


async def test_every_shipped_point_reads_from_the_simulator(sim: Any) -> None:
    _srv, drivers = sim
    for u, drv in drivers.items():
        samples = await drv.read(drv.points)
        bad = {s.point: s.error for s in samples if s.quality != Quality.GOOD}
        assert not bad, (SHIPPED[u].name, bad)


async def test_simulated_values_move_plausibly(sim: Any) -> None:
    _srv, drivers = sim
    em340 = drivers[1]

    async def snap() -> dict[str, Any]:
        return {s.point: s.value for s in await em340.read(em340.points)}

    iem = drivers[2]

    async def energy() -> Any:
        return next(s.value for s in await iem.read(iem.points) if s.point == "energy_import")

    first, e1 = await snap(), await energy()
    await asyncio.sleep(0.7)
    second, e2 = await snap(), await energy()
    assert e2 > e1  # counters only go up (kWh from an int64 of Wh: a few Wh in 0.7 s at ~10 kW)
    assert second["active_power"] != first["active_power"]  # power fluctuates
    assert 1000 < second["active_power"] < 40000
    assert 220 < second["voltage_l1_n"] < 240 and 390 < second["voltage_l1_l2"] < 410
    assert 49.5 < second["frequency"] < 50.5


async def test_documented_encodings_decode_to_documented_values(sim: Any) -> None:
    """Raw register contents as each document defines them -> the engineering value it says they mean."""
    srv, drivers = sim
    srv._task.cancel()  # freeze the simulation: these registers are set by hand
    ctx = srv.server.context

    async def put(unit: int, addr: int, regs: list[int]) -> None:
        assert await ctx.async_setValues(unit, 3, addr, regs) is None

    # Carlo Gavazzi EM340: INT32 LSW first; Volt*10, Watt*10, kWh*10; INT16 Hz*10, PF*1000
    await put(1, 0x0000, device_registers("int32", 2305, "CDAB"))
    await put(1, 0x0012, device_registers("int32", -12345, "CDAB"))
    await put(1, 0x0034, device_registers("int32", 1234567, "CDAB"))
    await put(1, 0x0033, [500])
    await put(1, 0x0031, [(-950) & 0xFFFF])
    # Schneider iEM3155: Float32 big-endian (kW, V), Int64 Wh; protocol address = register - 1;
    # the profile scales kW to W and Wh to kWh (docs/profiles.md, Units)
    await put(2, 3059, device_registers("float32", 12.5, "ABCD"))
    await put(2, 3027, device_registers("float32", 231.25, "ABCD"))
    await put(2, 3203, device_registers("int64", 123_456_789_012, "ABCD"))
    # Socomec Countis E34: U32/S32 high word first; V/100, A/1000, Hz/100, W/0.1, kWh/100
    await put(3, 50520, device_registers("uint32", 23012, "ABCD"))
    await put(3, 50528, device_registers("uint32", 12345, "ABCD"))
    await put(3, 50526, device_registers("uint32", 5001, "ABCD"))
    await put(3, 50536, device_registers("int32", -150, "ABCD"))
    await put(3, 50946, device_registers("uint32", 1234567, "ABCD"))  # Ea+, kWh/100
    # Remeha GTW-08: INT16, 0.01 degC
    await put(4, 384, [(-200) & 0xFFFF])
    await put(4, 400, [6543])
    want = {
        1: {"voltage_l1_n": 230.5, "active_power_l1": -1234.5, "energy_import": 123456.7, "frequency": 50.0,
            "power_factor": -0.95},
        # Wh x 0.001 in binary floating point: 123456789.012 to the last bit of a double (1.5e-8 kWh).
        2: {"active_power": 12500.0, "voltage_l1_n": 231.25, "energy_import": pytest.approx(123_456_789.012, abs=1e-7)},
        3: {"voltage_v1": 230.12, "current_i1": 12.345, "frequency": 50.01, "active_power": -1500,
            "energy_import": 12345.67},
        4: {"outside_temperature": -2.0, "flow_temperature": 65.43},
    }
    for u, expected in want.items():
        got = {s.point: s.value for s in await drivers[u].read(drivers[u].points)}
        assert {k: got[k] for k in expected} == expected, SHIPPED[u].name


async def test_remeha_fallback_setpoint_write(sim: Any) -> None:
    srv, drivers = sim
    srv._task.cancel()
    drv = drivers[4]
    p = check_write(drv.device, "fallback_power_setpoint", 55)
    assert await drv.write(p, 55) == 55  # FC16: the GTW-08 accepts no FC6
    assert await srv.server.context.async_getValues(4, 3, 21023, 1) == [55]
    with pytest.raises(WriteRefused, match="above the maximum 100"):
        check_write(drv.device, "fallback_power_setpoint", 101)


def test_sim_cli_serves_a_profile(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.modbus.sim", "--profile", str(SHIPPED[4]), "--unit", "7",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        assert "simulating 1 device(s) on 127.0.0.1:" in proc.stdout.readline()

        async def one() -> Any:
            drv = make_driver(SHIPPED[4], {"host": "127.0.0.1", "port": port, "unit": 7},
                              DriverContext("t", tmp_path))
            await drv.start()
            try:
                return {s.point: s for s in await drv.read(drv.points)}
            finally:
                await drv.stop()

        got = asyncio.run(one())
        assert got["flow_temperature"].quality == Quality.GOOD and 30 < got["flow_temperature"].value < 80
    finally:
        proc.terminate()
        proc.wait(5)


def test_schema_does_not_import_pymodbus_and_runtime_not_the_server() -> None:
    code = (
        "import sys, drivers.modbus; assert 'pymodbus' not in sys.modules, 'schema imported pymodbus'\n"
        "import drivers.modbus.driver; assert 'pymodbus.server' not in sys.modules, 'runtime imported server'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_missing_pymodbus_disables_only_the_driver() -> None:
    code = (
        "import sys; sys.modules['pymodbus'] = None  # as if pymodbus were not installed\n"
        "from agent.config import load_profile\n"
        "from agent.errors import DriverUnavailable\n"
        "from agent.contract.registry import get_spec\n"
        "load_profile('profiles/remeha-gtw08.yaml')  # profiles still validate\n"
        "try:\n"
        "    get_spec('modbus').load_class()\n"
        "except DriverUnavailable as exc:\n"
        "    assert 'pymodbus' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('driver loaded without pymodbus')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
