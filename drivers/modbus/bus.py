"""The wire of one Modbus bus: the shared connection or serial line (``Bus``, one lock, RTU gaps), the per-unit
memory that survives driver restarts (breaker, exception-2 lessons), and the requests of one device on it
(``Requests``: retries, busy, pacing, several outstanding reads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from agent.errors import DeviceUnreachable, ProtocolError

from . import BIT_TABLES, ModbusConnection, ModbusDeviceQuirks
from .planner import Lessons, Request
from .tcp import TcpClient

log = logging.getLogger("drivers.modbus.driver")


EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusExceptionReply(Exception):
    """The device answered with an exception code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code} {EXCEPTION_NAMES.get(code, 'unknown')}")


class RequestTimeout(Exception):
    """No valid reply in time (silence, or a reply pymodbus could not decode)."""


class Bus:
    """One physical bus: a TCP connection (device or gateway) or a serial line. Every request of every device
    on it goes through ``transact``, which holds the one lock, so polls and writes never interleave and RTU
    frames keep their silent interval."""

    def __init__(self, conn: ModbusConnection) -> None:
        self.key = conn.bus_key
        self.conn = conn
        self.lock = asyncio.Lock()
        self.gap = conn.frame_gap
        self.last_io = 0.0
        self.users = 0
        self.requests = 0
        self.waiting = 0  # transactions waiting for the lock: a chain of reads lets them in between two reads
        self.one_at_a_time = False  # learned: several outstanding requests get only the first answered
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient | TcpClient | None = None
        # Per unit id: what outlives one driver instance (the supervisor builds a new one after a failure).
        self.memory: dict[int, UnitMemory] = {}

    def unit_memory(self, conn: ModbusConnection) -> UnitMemory:
        mem = self.memory.get(conn.unit)
        if mem is None:
            mem = self.memory[conn.unit] = UnitMemory(Breaker(conn.breaker_threshold, conn.breaker_probe))
        return mem

    def _make_client(self, timeout: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient | TcpClient:
        c = self.conn
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if c.transport == "tcp" and c.tcp_client == "native":
            return TcpClient(cast(str, c.host), c.port, timeout)
        if c.transport == "rtu":
            client = AsyncModbusSerialClient(
                cast(str, c.serial_port), framer=FramerType.RTU, baudrate=c.baudrate, bytesize=c.bytesize,
                parity=c.parity, stopbits=c.stopbits, timeout=timeout, retries=0, reconnect_delay=0,
            )
        else:
            framer = FramerType.RTU if c.transport == "rtu-over-tcp" else FramerType.SOCKET
            client = AsyncModbusTcpClient(
                cast(str, c.host), port=c.port, framer=framer, timeout=timeout, retries=0, reconnect_delay=0,
            )
        # A silent device must not make pymodbus drop the connection the other devices share.
        client.set_max_no_responses(1_000_000)
        return client

    async def _connect(self, budget: float) -> None:
        if self.client is not None and self.client.connected:
            return
        if self.client is None:
            self.client = self._make_client(budget)
        try:
            async with asyncio.timeout(budget + 1.0):
                ok = await self.client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            self.client.close()
            self.client = None
            raise DeviceUnreachable(f"cannot connect to {self.key}: {_why(exc, budget + 1.0)}") from exc
        if not ok:
            self.client.close()
            self.client = None
            raise DeviceUnreachable(f"cannot connect to {self.key}")

    async def connect(self, budget: float) -> None:
        async with self.lock:
            await self._connect(budget)

    async def transact(self, budget: float, op: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run one request (or one read-modify-write) alone on the bus, within ``budget`` seconds."""
        timeout = budget
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        try:
            await self._connect(timeout)
            client = self.client
            assert client is not None
            if self.gap:
                wait = self.last_io + self.gap - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if isinstance(client, TcpClient):
                client.timeout = timeout
            else:
                client.ctx.comm_params.timeout_connect = timeout
            self.requests += 1
            # a guard only, for pymodbus (which times out first); the native client's own timeout is the one
            guard = contextlib.nullcontext() if isinstance(client, TcpClient) else asyncio.timeout(timeout * 2 + 0.5)
            try:
                async with guard:
                    return await op(client)
            except TimeoutError as exc:
                raise RequestTimeout(f"no reply within {timeout:g} s") from exc
            except ConnectionException as exc:
                client.close()
                self.client = None
                raise DeviceUnreachable(f"connection to {self.key} lost") from exc
            except ModbusException as exc:  # ModbusIOException: no (valid) reply in time
                # pymodbus' own text ("No response received after 0 retries") talks about its retries, which
                # are off: the driver counts attempts itself and says so in its own words.
                if not client.connected:
                    client.close()
                    self.client = None
                raise RequestTimeout(f"no valid reply within {timeout:g} s") from exc
            finally:
                self.last_io = time.monotonic()
        finally:
            self.lock.release()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


@dataclass
class Breaker:
    """Per-device circuit breaker: after ``threshold`` consecutive timeouts the device is probed once every
    ``probe`` seconds and otherwise fails at once, so it never holds the shared bus for its timeouts."""

    threshold: int
    probe: float
    failures: int = 0
    open_until: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.failures >= self.threshold

    def allow(self, now: float) -> bool:
        return not self.is_open or now >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.is_open:
            self.open_until = now + self.probe


@dataclass
class UnitMemory:
    """State of one unit id on a bus that survives driver restarts: its breaker and its exception-2 lessons."""

    breaker: Breaker
    lessons: Lessons = field(default_factory=Lessons)


_READ_FN = {
    "coil": "read_coils",
    "discrete_input": "read_discrete_inputs",
    "holding": "read_holding_registers",
    "input": "read_input_registers",
}


_FUNCTION = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}


def _why(exc: BaseException, budget: float) -> str:
    """A connect failure in a few words of our own (not the library's exception text)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {budget:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "connection failed"


class RequestHost(Protocol):
    """What ``Requests`` needs of the Modbus driver (a protocol: this module does not import the driver)."""

    @property
    def name(self) -> str: ...

    @property
    def bus(self) -> Bus: ...

    conn: ModbusConnection
    quirks: ModbusDeviceQuirks
    timeout: float
    stats: dict[str, int]


class Requests:
    def __init__(self, host: RequestHost) -> None:
        self.host = host
        self._last_request = 0.0

    async def pace(self) -> None:
        if self.host.quirks.pause:
            wait = self._last_request + self.host.quirks.pause - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def request(self, op: Callable[[Any], Awaitable[Any]], retries: int, attempt: int = 0) -> Any:
        """One request with retries; busy (exception 6) is retried after a short delay. ``attempt``: attempts
        already made (by ``prefetch`` or ``chain``)."""
        while True:
            if self.host.quirks.pause:
                await self.pace()
            self.host.stats["requests"] += 1
            try:
                rr = await self.host.bus.transact(self.host.timeout, op)
            except RequestTimeout as exc:
                if attempt >= retries:
                    tries = f"{attempt + 1} attempts" if attempt else "1 attempt"
                    raise RequestTimeout(f"{exc} ({tries})") from exc.__cause__
                attempt += 1
                continue
            finally:
                self._last_request = time.monotonic()
            if rr.isError():
                code = int(getattr(rr, "exception_code", 0) or 0)
                if code == 6 and attempt < retries:
                    attempt += 1
                    await asyncio.sleep(self.host.quirks.busy_retry_delay)
                    continue
                raise ModbusExceptionReply(code)
            return rr

    async def prefetch(self, reqs: list[Request]) -> list[Any]:
        """First attempts of a cycle's reads, ``max_outstanding`` at a time, under one hold of the bus; per read
        its reply or its RequestTimeout. Writes wait for the whole window, not for the whole cycle."""
        window = self.host.conn.max_outstanding
        out: list[Any] = []
        for i in range(0, len(reqs), window):
            chunk = reqs[i : i + window]
            reads = [(r.unit, _FUNCTION[r.table], r.start, r.count) for r in chunk]

            async def op(client: Any, reads: list[tuple[int, int, int, int]] = reads) -> Any:
                if not isinstance(client, TcpClient):  # the endpoint's first device chose pymodbus' client
                    return [None] * len(reads)
                return await client.read_many(reads)

            self.host.stats["requests"] += len(chunk)
            try:
                replies = await self.host.bus.transact(self.host.timeout, op)
            except RequestTimeout as exc:  # the guard: nothing came back in time
                replies = [exc] * len(chunk)
            finally:
                self._last_request = time.monotonic()
            got = [RequestTimeout(f"no valid reply within {self.host.timeout:g} s") if isinstance(r, ModbusException)
                   else r for r in replies]
            if len(got) > 1 and got[0] is not None and not isinstance(got[0], RequestTimeout) \
                    and all(isinstance(r, RequestTimeout) for r in got[1:]):
                # only the first of several outstanding reads answered: this device (or gateway) takes one
                # at a time (pymodbus' own server does so); the bus says so from now on
                self.host.bus.one_at_a_time = True
                log.warning("%s: %s answers one request at a time; max_outstanding %d ignored", self.host.name,
                            self.host.conn.bus_key, window)
            out += got
            if self.host.bus.one_at_a_time:
                out += [None] * (len(reqs) - len(out))
                break
        return out

    async def chain(self, reqs: list[Request]) -> list[Any]:
        """First attempts of a cycle's reads, one outstanding at a time, chained by the native client under one
        hold of the bus (see ``TcpClient.read_chain``): per read its reply, a RequestTimeout, or None (not
        sent: left to the ordinary path). The chain stops as soon as another request waits for the bus (a
        write, another device), so a write still waits at most for the read in flight."""
        reads = [(r.unit, _FUNCTION[r.table], r.start, r.count) for r in reqs]
        bus = self.host.bus

        async def op(client: Any) -> Any:
            if not isinstance(client, TcpClient):  # the endpoint's first device chose pymodbus' client
                return [None] * len(reads)
            return await client.read_chain(reads, lambda: bus.waiting > 0)

        try:
            replies = await bus.transact(self.host.timeout, op)
        except RequestTimeout as exc:  # not expected (the native client answers in time), but a timeout
            replies = [exc] + [None] * (len(reqs) - 1)
        finally:
            self._last_request = time.monotonic()
        self.host.stats["requests"] += sum(r is not None for r in replies)
        return [RequestTimeout(f"no valid reply within {self.host.timeout:g} s") if isinstance(r, ModbusException)
                else r for r in replies]

    async def read(self, req: Request, retries: int, first: Any = None) -> list[Any]:
        """One read with its retries. ``first``: the reply (or RequestTimeout) of an attempt already made by
        ``prefetch`` or ``chain``; it counts as the first attempt: a timeout is retried, busy (exception 6) is
        asked again after the delay, any other exception reply is final, as without them."""
        fn = _READ_FN[req.table]
        unit, start, count = req.unit, req.start, req.count

        async def op(client: Any) -> Any:
            return await getattr(client, fn)(start, count=count, device_id=unit)

        if isinstance(first, RequestTimeout):
            if retries == 0:
                raise RequestTimeout(f"{first} (1 attempt)")
            rr = await self.request(op, retries, 1)
        elif first is None:
            rr = await self.request(op, retries)
        elif not first.isError():
            rr = first
        else:
            code = int(getattr(first, "exception_code", 0) or 0)
            if code != 6 or retries == 0:
                raise ModbusExceptionReply(code)
            await asyncio.sleep(self.host.quirks.busy_retry_delay)
            rr = await self.request(op, retries, 1)
        fc = getattr(rr, "function_code", None)
        if fc != _FUNCTION[req.table]:
            raise ProtocolError(f"reply to function {fc}, expected {_FUNCTION[req.table]}")
        values = rr.bits if req.table in BIT_TABLES else rr.registers
        if values is None or len(values) < count:
            got = 0 if values is None else len(values)
            raise ProtocolError(f"short reply: {got} of {count} {'bits' if req.table in BIT_TABLES else 'registers'}")
        return cast(list[Any], values)
