"""Modbus TCP client for the poll path: MBAP framing on one asyncio connection, replies matched to requests
by transaction id.

Why not pymodbus' client for plain Modbus TCP: measured with bench/site_poll.py (50 meters x 40 points, whole
agent process), its per-request path (request and response objects, a lock and ``wait_for`` per request, a
frame ring buffer kept even with debug logging off) was about half of the agent's CPU. This client keeps to
what the driver uses, with the same method names, reply attributes (``isError()``, ``function_code``,
``exception_code``, ``registers``, ``bits``) and pymodbus' exception classes, so ``Bus`` maps errors exactly
as before. pymodbus stays the client for RTU and RTU over TCP, and the peer of every test.

A reply for no pending transaction (late, or from another one) is ignored. A frame that cannot be decoded
fails its request at once; bytes that are not a frame, or a frame that never completes, leave the stream
desynchronised, so the connection is dropped at the next timeout and the next request reconnects.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence

from pymodbus.exceptions import ConnectionException, ModbusIOException

_HEAD = struct.Struct(">HHHB")
_READ = struct.Struct(">BHH")


class Reply:
    """What the driver reads from a reply (the attributes pymodbus' responses have)."""

    __slots__ = ("bits", "exception_code", "function_code", "registers")

    def __init__(self, function_code: int, registers: list[int] | None = None, bits: list[bool] | None = None,
                 exception_code: int = 0) -> None:
        self.function_code = function_code
        self.registers = registers if registers is not None else []
        self.bits = bits if bits is not None else []
        self.exception_code = exception_code

    def isError(self) -> bool:  # pymodbus' name
        return self.exception_code != 0


class _Link(asyncio.Protocol):
    """The connection: splits the byte stream into MBAP frames and hands each to its waiting request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: dict[int, tuple[int, asyncio.Future[bytes] | _Chain]] = {}
        self.desync = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        lost = ConnectionException(f"connection lost: {exc or 'closed by the device'}")
        for _, target in list(self.pending.values()):
            if isinstance(target, _Chain):
                target.lost(lost)
            elif not target.done():
                target.set_exception(lost)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while len(buf) >= 8:
            tid, proto, length, unit = _HEAD.unpack_from(buf)
            if proto != 0 or not 2 <= length <= 254:
                self.desync = True  # not a frame: drop what we have, the next timeout reconnects
                buf = b""
                break
            end = 6 + length
            if len(buf) < end:
                break
            entry = self.pending.get(tid)
            if entry is None and tid == 0 and len(self.pending) == 1:
                entry = next(iter(self.pending.values()))  # a device that does not echo the id (pymodbus allows it)
            # unit 0 is "whatever answers" (pymodbus does not check it either)
            if entry is not None and entry[0] in (unit, 0):
                target = entry[1]
                if isinstance(target, _Chain):
                    target.reply(buf[7:end])
                elif not target.done():
                    target.set_result(buf[7:end])
            buf = buf[end:]
        self.buf = buf


class TcpClient:
    """The subset of ``AsyncModbusTcpClient`` the driver uses, over ``_Link``."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self._link: _Link | None = None
        self._tid = 0

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.transport is not None

    async def connect(self) -> bool:
        self.close()
        loop = asyncio.get_running_loop()
        _, self._link = await loop.create_connection(_Link, self.host, self.port)
        return True

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()

    async def _execute(self, unit: int, pdu: bytes) -> bytes:
        link = self._link
        if link is None or link.transport is None:
            raise ConnectionException(f"not connected to {self.host}:{self.port}")
        self._tid = tid = self._tid % 0xFFFF + 1  # 1..65535: 0 is what non-echoing devices send
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        link.pending[tid] = (unit, fut)
        try:
            link.transport.write(_HEAD.pack(tid, 0, len(pdu) + 1, unit) + pdu)
            async with asyncio.timeout(self.timeout):
                return await fut
        except TimeoutError:
            if link.desync or link.buf:  # junk, or a frame that will never complete: start afresh
                self.close()
            raise ModbusIOException(f"no reply within {self.timeout:g}s") from None
        finally:
            link.pending.pop(tid, None)

    async def read_many(self, reads: Sequence[tuple[int, int, int, int]]) -> list[Reply | ModbusIOException]:
        """Several reads ``(unit, function, address, count)`` sent at once (several outstanding transactions,
        one write to the socket), all answered within one timeout. A read that fails (no reply in time, a
        reply that cannot be decoded) gets its exception in the list; a lost connection raises."""
        link = self._link
        if link is None or link.transport is None:
            raise ConnectionException(f"not connected to {self.host}:{self.port}")
        loop = asyncio.get_running_loop()
        futs: list[tuple[int, asyncio.Future[bytes]]] = []
        frames = []
        for unit, fc, address, count in reads:
            self._tid = tid = self._tid % 0xFFFF + 1  # 1..65535: 0 is what non-echoing devices send
            fut: asyncio.Future[bytes] = loop.create_future()
            link.pending[tid] = (unit, fut)
            futs.append((tid, fut))
            frames.append(_HEAD.pack(tid, 0, 6, unit) + _READ.pack(fc, address, count))
        out: list[Reply | ModbusIOException] = []
        try:
            link.transport.write(b"".join(frames))
            try:
                async with asyncio.timeout(self.timeout):
                    for (_, fut), (_, fc, _, _) in zip(futs, reads, strict=True):
                        rep = await fut
                        try:
                            out.append(_parse_read(fc, rep))
                        except ModbusIOException as exc:
                            out.append(exc)
            except TimeoutError:
                if link.desync or link.buf:
                    self.close()
                out += [ModbusIOException(f"no reply within {self.timeout:g}s")] * (len(reads) - len(out))
        finally:
            for tid, _ in futs:
                link.pending.pop(tid, None)
        return out

    def next_tid(self) -> int:
        self._tid = tid = self._tid % 0xFFFF + 1  # 1..65535: 0 is what non-echoing devices send
        return tid

    async def read_chain(self, reads: Sequence[tuple[int, int, int, int]],
                         stop: Callable[[], bool]) -> list[Reply | ModbusIOException | None]:
        """Several reads ``(unit, function, address, count)`` one after the other, one outstanding at a time
        (what the device sees is the same as separate requests), each next one written as soon as the reply
        to the previous one arrives, from the protocol callback: no task wake-up, timer or lock round per
        read. Per read: its reply (an exception reply too), ``ModbusIOException`` when it got no valid reply
        in time, or None when it was not sent because the chain stopped first: after a reply that is not a
        good one, or when ``stop()`` says something else waits for the connection. A lost connection
        raises."""
        link = self._link
        if link is None or link.transport is None:
            raise ConnectionException(f"not connected to {self.host}:{self.port}")
        chain = _Chain(self, link, reads, stop)
        try:
            chain.send()
            return await chain.fut
        finally:
            chain.close()

    async def _read(self, fc: int, address: int, count: int, unit: int) -> Reply:
        return _parse_read(fc, await self._execute(unit, _READ.pack(fc, address, count)))

    async def _write(self, unit: int, pdu: bytes) -> Reply:
        rep = await self._execute(unit, pdu)
        if rep[0] & 0x80:
            return _exception(rep)
        return Reply(rep[0])

    async def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> Reply:
        return await self._read(1, address, count, device_id)

    async def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> Reply:
        return await self._read(2, address, count, device_id)

    async def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Reply:
        return await self._read(3, address, count, device_id)

    async def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Reply:
        return await self._read(4, address, count, device_id)

    async def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> Reply:
        return await self._write(device_id, struct.pack(">BHH", 5, address, 0xFF00 if value else 0))

    async def write_register(self, address: int, value: int, *, device_id: int = 1) -> Reply:
        return await self._write(device_id, struct.pack(">BHH", 6, address, value))

    async def write_coils(self, address: int, values: Sequence[bool], *, device_id: int = 1) -> Reply:
        packed = bytearray((len(values) + 7) // 8)
        for i, v in enumerate(values):
            if v:
                packed[i // 8] |= 1 << (i % 8)
        return await self._write(device_id, struct.pack(">BHHB", 15, address, len(values), len(packed))
                                 + bytes(packed))

    async def write_registers(self, address: int, values: Sequence[int], *, device_id: int = 1) -> Reply:
        n = len(values)
        return await self._write(device_id, struct.pack(f">BHHB{n}H", 16, address, n, 2 * n, *values))


class _Chain:
    """The state of one ``read_chain``: the reads, their replies so far, one timer re-armed lazily."""

    __slots__ = ("client", "deadline", "fut", "link", "loop", "out", "reads", "stop", "tid", "timer")

    def __init__(self, client: TcpClient, link: _Link, reads: Sequence[tuple[int, int, int, int]],
                 stop: Callable[[], bool]) -> None:
        self.client, self.link, self.reads, self.stop = client, link, reads, stop
        self.loop = asyncio.get_running_loop()
        self.fut: asyncio.Future[list[Reply | ModbusIOException | None]] = self.loop.create_future()
        self.out: list[Reply | ModbusIOException | None] = []
        self.tid = 0
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def send(self) -> None:
        i = len(self.out)
        if i == len(self.reads) or (i and self.stop()):
            self.finish()
            return
        transport = self.link.transport
        if transport is None:  # closed under us: connection_lost has failed the chain already
            return
        unit, fc, address, count = self.reads[i]
        self.tid = tid = self.client.next_tid()
        self.link.pending[tid] = (unit, self)
        # One timer for the whole chain: set at the first read's deadline, moved on only when it fires early.
        self.deadline = self.loop.time() + self.client.timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self.expire)
        transport.write(_HEAD.pack(tid, 0, 6, unit) + _READ.pack(fc, address, count))

    def reply(self, pdu: bytes) -> None:
        self.link.pending.pop(self.tid, None)
        if self.fut.done():
            return
        try:
            rep: Reply | ModbusIOException = _parse_read(self.reads[len(self.out)][1], pdu)
        except ModbusIOException as exc:
            rep = exc
        self.out.append(rep)
        if isinstance(rep, ModbusIOException) or rep.exception_code:
            self.finish()
        else:
            self.send()

    def expire(self) -> None:
        self.timer = None
        if self.fut.done():
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self.expire)
            return
        self.link.pending.pop(self.tid, None)
        if self.link.desync or self.link.buf:  # junk, or a frame that will never complete: start afresh
            self.client.close()
        self.out.append(ModbusIOException(f"no reply within {self.client.timeout:g}s"))
        self.finish()

    def lost(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)

    def finish(self) -> None:
        if not self.fut.done():
            self.fut.set_result(self.out + [None] * (len(self.reads) - len(self.out)))

    def close(self) -> None:
        """The awaiting side is done (or cancelled): nothing more is sent, a late reply is ignored."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.link.pending.pop(self.tid, None)
        if not self.fut.done():
            self.fut.cancel()


def _parse_read(fc: int, rep: bytes) -> Reply:
    got = rep[0]
    if got & 0x80:
        return _exception(rep)
    if len(rep) < 2 or rep[1] != len(rep) - 2:
        raise ModbusIOException(f"malformed reply to function {fc}: byte count {rep[1] if len(rep) > 1 else '-'}"
                                f", {len(rep) - 2} bytes of data")
    data = rep[2:]
    if got in (1, 2):
        return Reply(got, bits=[bool(b >> i & 1) for b in data for i in range(8)])
    if len(data) % 2:
        raise ModbusIOException(f"malformed reply to function {fc}: odd byte count {len(data)}")
    return Reply(got, registers=list(struct.unpack(f">{len(data) // 2}H", data)))


def _exception(rep: bytes) -> Reply:
    return Reply(rep[0], exception_code=(rep[1] if len(rep) > 1 else 0) or 4)
