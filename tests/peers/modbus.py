"""Real Modbus peers for the tests: pymodbus servers over TCP and over a socat pty pair (RTU), plus a raw
TCP server for fault injection (garbage, truncated replies). Everything binds 127.0.0.1.

Fault injection on the real server uses pymodbus' own hooks: ``action`` returns an exception code for chosen
addresses; ``trace_packet`` swallows the replies of "silent" unit ids (pymodbus 3.16's
``ignore_missing_devices`` does not work with SimDevice: it answers exception 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .common import free_port, stop_process, wait_for

FC = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}
TABLE_INDEX = {"coil": 0, "discrete_input": 1, "holding": 2, "input": 3}

Tables = dict[str, dict[int, int | bool]]  # table -> {address: register value or bit}


def _runs(addrs: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for a in sorted(addrs):
        if runs and a == runs[-1][1]:
            runs[-1] = (runs[-1][0], a + 1)
        else:
            runs.append((a, a + 1))
    return runs


def sim_device(unit: int, tables: Tables, action: Any = None) -> SimDevice:
    """A device whose only valid addresses are those given; any other address answers exception 2."""
    blocks: list[list[SimData]] = [[], [], [], []]
    for table, values in tables.items():
        idx = TABLE_INDEX[table]
        if table in ("coil", "discrete_input"):
            regs: dict[int, int] = {}
            for a, v in values.items():
                regs.setdefault(a // 16, 0)
                if v:
                    regs[a // 16] |= 1 << (a % 16)
            for start, end in _runs(list(regs)):
                blocks[idx].append(
                    SimData(address=start, values=[regs[r] for r in range(start, end)], datatype=DataType.BITS)
                )
        else:
            for start, end in _runs(list(values)):
                blocks[idx].append(
                    SimData(address=start, values=[int(values[a]) for a in range(start, end)],
                            datatype=DataType.REGISTERS)
                )
    # pymodbus wants every table non-empty: park one invalid-looking cell far away
    for idx in range(4):
        if not blocks[idx]:
            dt = DataType.BITS if idx < 2 else DataType.REGISTERS
            blocks[idx].append(SimData(address=65535, values=[0], datatype=dt))
    return SimDevice(id=unit, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]), action=action)


@dataclass
class ModbusPeer:
    """A pymodbus server (TCP or RTU) with knobs for fault injection."""

    devices: dict[int, Tables]
    transport: str = "tcp"
    serial_port: str | None = None
    port: int = field(default_factory=free_port)
    silent: set[int] = field(default_factory=set)  # unit ids whose replies are swallowed
    exceptions: dict[tuple[int, int], int] = field(default_factory=dict)  # (unit, address) -> exception code
    delay: float = 0.0  # seconds added before every reply (slow device)
    server: Any = None
    requests: int = 0
    functions: list[tuple[int, int]] = field(default_factory=list)  # (function, address) of requests served
    reads: list[tuple[int, int, int]] = field(default_factory=list)  # (function, address, count) of FC1-4
    by_unit: Counter[int] = field(default_factory=Counter)  # requests that reached each unit id (silent ones too)

    def _action_for(self, unit: int) -> Callable[..., Awaitable[Any]]:
        async def action(fc: int, start: int, address: int, count: int, regs: Any, values: Any) -> Any:
            self.requests += 1
            self.by_unit[unit] += 1
            self.functions.append((fc, address))
            if fc in (1, 2, 3, 4):
                self.reads.append((fc, address, count))
            if self.delay:
                await asyncio.sleep(self.delay)
            for a in range(address, address + count):
                code = self.exceptions.get((unit, a))
                if code is not None:
                    return ExcCodes(code)
            return None
        return action

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending and data:
            unit = data[6] if self.transport == "tcp" else data[0]  # MBAP unit id / RTU address
            if unit in self.silent:
                return b""
        return data

    async def start(self) -> ModbusPeer:
        devs = [sim_device(u, t, self._action_for(u)) for u, t in self.devices.items()]
        if self.transport in ("tcp", "rtu-over-tcp"):
            framer = FramerType.SOCKET if self.transport == "tcp" else FramerType.RTU
            self.server = ModbusTcpServer(devs, framer=framer, address=("127.0.0.1", self.port),
                                          trace_packet=self._trace)
        else:  # a pty refuses parity E/O (termios EINVAL): tests use 8N1
            self.server = ModbusSerialServer(
                devs, framer=FramerType.RTU, port=self.serial_port or "", baudrate=19200, parity="N",
                trace_packet=self._trace,
            )
        await self.server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def set(self, unit: int, table: str, address: int, values: list[int] | list[bool]) -> None:
        """Change values while the server runs (what a meter does between two polls)."""
        res = await self.server.context.async_setValues(unit, FC[table], address, list(values))
        assert res is None, f"cannot set {table} {address}: {res}"

    async def get(self, unit: int, table: str, address: int, count: int = 1) -> list[Any]:
        res = await self.server.context.async_getValues(unit, FC[table], address, count)
        assert isinstance(res, list), f"cannot get {table} {address}: {res}"
        return res


@contextlib.asynccontextmanager
async def modbus_server(devices: dict[int, Tables], **kw: Any) -> AsyncIterator[ModbusPeer]:
    peer = await ModbusPeer(devices, **kw).start()
    try:
        yield peer
    finally:
        await peer.stop()


@dataclass
class PtyPair:
    """Two linked pseudo-terminals made by socat: the server opens ``a``, the agent opens ``b``."""

    a: str
    b: str
    proc: subprocess.Popen[bytes]


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is not installed (apt-get install socat)")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: a.exists() and b.exists(), 5, what="socat ptys")
        yield PtyPair(str(a), str(b), proc)
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------------------ fault injection


Responder = Callable[[int, int, bytes], bytes | None]  # (unit, function, request pdu) -> raw reply bytes


class RawModbusTcp:
    """A TCP server that speaks just enough Modbus framing to send chosen (broken) replies.

    ``responder(unit, fc, pdu)`` returns the *whole* bytes to send (MBAP included, see ``mbap``) or None for
    silence. Used for what a real server cannot be told to do: garbage, truncated frames, wrong lengths.
    """

    def __init__(self, responder: Callable[[int, int, int, bytes], bytes | None]) -> None:
        self.responder = responder
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> RawModbusTcp:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                out = self.responder(tid, unit, pdu[0], pdu)
                if out:
                    writer.write(out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def mbap(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    """A Modbus TCP frame; ``length`` lets a test lie about the length field."""
    n = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, 0, n, unit) + pdu


def registers_reply(fc: int, regs: list[int]) -> bytes:
    return bytes([fc, 2 * len(regs)]) + struct.pack(f">{len(regs)}H", *regs)
