"""Modbus runtime: one shared client and lock per physical bus, planned reads, writes, circuit breaker.

Imports ``pymodbus.client`` only (``pymodbus.server`` pulls in aiohttp). A pymodbus import failure raises
ImportError here, which the registry turns into "driver unavailable" for Modbus devices only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from agent.contract.driver import Driver, DriverContext
from agent.contract.points import PointBase
from agent.errors import (
    DeviceBusy,
    DeviceTimeout,
    DeviceUnreachable,
    DriverError,
    ProtocolError,
    WriteRefused,
)
from agent.model import Quality, Sample, Value

from . import MAX_WRITE_REGISTERS, ModbusConnection, ModbusDeviceQuirks, ModbusPoint, reference_hint
from .bus import (
    Breaker,
    Bus,
    ModbusExceptionReply,
    Requests,
    RequestTimeout,
)
from .codec import Decoder, compile_decoder, encode, set_bit
from .planner import TABLE_ORDER, Lessons, Request, plan, refine

# pymodbus logs every timeout at ERROR level; a silent device on a shared bus would flood the journal.
# The driver reports failures itself (per-point errors, DriverError to the supervisor).
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
log = logging.getLogger(__name__)
GOOD = Quality.GOOD

class ModbusDriver(Driver):
    def __init__(self, device: Any, ctx: DriverContext) -> None:
        super().__init__(device, ctx)
        self.conn = cast(ModbusConnection, self.device.connection)
        self.quirks = ModbusDeviceQuirks.model_validate(self.device.profile.device)
        self.points: list[ModbusPoint] = [cast(ModbusPoint, p) for p in self.device.enabled_points]
        self._polled: list[PointBase] = list(self.points)
        self.unit = self.conn.unit
        self.timeout = float(self.device.model.timeout)
        self.retries = int(self.device.model.retries)
        self._plans: dict[frozenset[str], list[Request]] = {}
        self._plan_gen = 0  # bumped whenever plans are forgotten or replaced
        self._last_plan: tuple[object, list[Request], int] = (None, [], -1)  # (point list, its plan, gen)
        self._bus: Bus | None = None
        self.stats = {"requests": 0, "cycles": 0, "splits": 0}
        self._started = False  # plan(): hints only for what the device refused once it answers
        self.requests = Requests(self)

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            self._bus = self.ctx.bus(self.conn.bus_key, lambda: Bus(self.conn))
            self._bus.users += 1
        return self._bus

    @property
    def breaker(self) -> Breaker:
        return self.bus.unit_memory(self.conn).breaker

    @property
    def lessons(self) -> Lessons:
        """What exception-2 replies taught about this unit; applies to every plan of it."""
        return self.bus.unit_memory(self.conn).lessons

    async def start(self) -> None:
        mine, line = self.conn.line_settings(), self.bus.conn.line_settings()
        if mine != line:
            raise DeviceUnreachable(
                f"{self.name}: serial settings {mine} differ from those already used on {self.conn.bus_key} "
                f"{line}: every device on one RS-485 line must use the same baud rate, parity and framing",
                device=self.name,
            )
        await self.bus.connect(self.timeout)
        self._started = True

    def polled_points(self) -> list[PointBase]:
        return self._polled  # the same list every cycle (the base class builds a new one at each call)

    def probe_now(self) -> None:
        self.breaker.open_until = 0.0  # still open (no retries) until the probe is answered

    async def stop(self) -> None:
        if self._bus is not None:
            self._bus.users -= 1
            if self._bus.users <= 0:
                self._bus.close()
            self._bus = None

    # ---------------------------------------------------------------------------------------------- plan

    def _plan_for(self, points: Sequence[ModbusPoint]) -> list[Request]:
        last = self._last_plan
        if last[0] is points and last[2] == self._plan_gen:  # the supervisor passes the same list every cycle
            return last[1]
        key = frozenset(p.name for p in points)
        reqs = self._plans.get(key)
        if reqs is None:
            reqs = plan(points, self.unit, self.quirks, self.lessons)
            for r in reqs:
                _compile(r)
            self._plans[key] = reqs
        self._last_plan = (points, reqs, self._plan_gen)
        return reqs

    def _replan(self) -> None:
        """Forget every plan (lessons changed what can be joined)."""
        self._plans.clear()
        self._plan_gen += 1

    def plan(self) -> list[dict[str, Any]]:
        """What goes on the wire: the fast cycle, and the slow cycle where fast and slow points are planned
        together (blocks merge); splits learned from exception 2 are included and marked."""
        out: list[dict[str, Any]] = []
        refused = self.lessons.refused
        for cycle, pts in self.cycles():
            for r in self._plan_for([cast(ModbusPoint, p) for p in pts]):
                row = {**r.as_dict(), "cycle": cycle}
                if (r.table, r.start) in refused and len(r.points) == 1:
                    row["learned"] = "refused with exception 2 even alone"
                elif r.isolated or any(e == r.start or b == r.end for b, e in self.lessons.holes.get(r.table, ())):
                    row["learned"] = "split after exception 2"  # a piece, or bounded by a learned hole
                # running: only points the device refused; from the files: every address that looks like one
                hints = [h if self._started else f"if the device answers exception 2: {h}" for p in r.points
                         if (h := reference_hint(p.table, p.address))
                         and (not self._started or (p.table, p.address) in refused)]
                if hints:
                    row["hints"] = hints
                out.append(row)
        return out

    # --------------------------------------------------------------------------------------------- reads

    async def read(self, points: Sequence[PointBase]) -> list[Sample]:
        pts = cast("Sequence[ModbusPoint]", points)  # no per-point cast() call: this runs every cycle
        reqs = self._plan_for(pts)
        now = time.monotonic()
        if not self.breaker.allow(now):
            raise DeviceTimeout(
                f"unit {self.unit} on {self.conn.bus_key} is not answering "
                f"(next probe in {self.breaker.open_until - now:.0f}s)", device=self.name,
            )
        # a unit that failed its last cycle gets no retries until it answers again: on a shared bus every
        # retry of a silent unit is a timeout the other units wait for
        probing = self.breaker.failures > 0
        self.stats["cycles"] += 1
        samples: dict[str, Sample] = {}
        ok = 0
        device_errors: list[DriverError] = []
        consecutive_timeouts = 0
        new_plan: list[Request] = []
        changed = False
        first: list[Any] = [None] * len(reqs)
        if (len(reqs) > 1 and not probing and not self.quirks.pause and self.conn.transport == "tcp"
                and self.conn.tcp_client == "native"):
            if self.conn.max_outstanding > 1 and not self.bus.one_at_a_time:
                first = await self.requests.prefetch(reqs)
            else:
                first = await self.requests.chain(reqs)
        for i, req in enumerate(reqs):
            if consecutive_timeouts >= 2:
                self._fail(req, "timeout (skipped: device stopped answering)", samples)
                new_plan.append(req)
                continue
            retries = 0 if (probing or consecutive_timeouts) else self.retries
            try:
                values = await self.requests.read(req, retries, first[i])
            except RequestTimeout as exc:
                consecutive_timeouts += 1
                if ok == 0 and i == 0:
                    self.breaker.failure(time.monotonic())
                    note = "; no retries until it answers again" if probing and self.retries else ""
                    raise DeviceTimeout(f"unit {self.unit} on {self.conn.bus_key}: {str(exc)[:-1]}{note})",
                                        device=self.name) from exc
                self._fail(req, f"timeout: {exc}", samples)
                new_plan.append(req)
                continue
            except ModbusExceptionReply as exc:
                consecutive_timeouts = 0
                if exc.code == 2 and len(req.points) > 1:
                    parts = await self._learn(req, samples)
                    new_plan.extend(parts)
                    changed = True
                    ok += 1  # the device answered
                    continue
                if exc.code == 2 and (req.table, req.start) not in self.lessons.refused:
                    self.lessons.refused.add((req.table, req.start))  # refused alone: never joined again
                    self._replan()
                if exc.code == 6:
                    device_errors.append(DeviceBusy(str(exc), device=self.name))
                elif exc.code in (10, 11):
                    device_errors.append(DeviceTimeout(str(exc), device=self.name))
                else:
                    ok += 1  # an answer, even a refusal, shows the device is there
                self._fail(req, str(exc), samples)
                new_plan.append(req)
                continue
            except ProtocolError as exc:
                consecutive_timeouts = 0
                device_errors.append(exc)
                self._fail(req, str(exc), samples)
                new_plan.append(req)
                continue
            consecutive_timeouts = 0
            ok += 1
            self._decode(req, values, samples)
            new_plan.append(req)
        if changed:
            self._replan()  # other point sets (fast, slow, fast+slow) replan with the lessons
            self._plans[frozenset(p.name for p in pts)] = sorted(
                new_plan, key=lambda r: (TABLE_ORDER[r.table], r.start)
            )
        if ok == 0 and device_errors:
            self.breaker.success()  # it answered, just not usefully
            err = device_errors[0]
            raise type(err)(f"unit {self.unit}: {err}", device=self.name) from err
        self.breaker.success()
        return [samples.get(p.name) or Sample(self.name, p.name, None, Quality.ERROR, error="not read") for p in pts]

    async def _learn(self, req: Request, samples: dict[str, Sample]) -> list[Request]:
        """Split a read refused with exception 2 until the pieces work; remember the pieces."""
        self.stats["splits"] += 1
        results: dict[int, list[Any]] = {}
        errors: dict[int, str] = {}

        async def fails(r: Request) -> bool:
            if r is req:
                return True
            try:
                results[id(r)] = await self.requests.read(r, self.retries)
                return False
            except ModbusExceptionReply as exc:
                errors[id(r)] = str(exc)
                return exc.code == 2
            except (RequestTimeout, ProtocolError) as exc:
                errors[id(r)] = f"timeout: {exc}" if isinstance(exc, RequestTimeout) else str(exc)
                return False  # not an address problem: keep the piece, report its points

        parts, dead = await refine([req], fails)
        self.lessons.learn(parts, dead)
        for r in parts:
            _compile(r)
            if id(r) in results:
                self._decode(r, results[id(r)], samples)
            else:
                self._fail(r, errors.get(id(r), "exception 2 illegal data address"), samples)
        if dead:
            log.info("%s: %d point(s) refused with exception 2: %s", self.name, len(dead),
                     ", ".join(_with_hint(r.points[0].name, r.points[0], always=True) for r in dead))
        return parts

    def _decode(self, req: Request, values: list[Any], samples: dict[str, Sample]) -> None:
        ts = time.time()
        name = self.name
        last = req.last
        if last is not None and last[0] == values:
            # The same raw reply as last time: nothing in this block changed. The values are not decoded
            # again, and the very same value objects go out, which lets the pipeline skip its change test
            # (bench/site_poll.py: most blocks of a meter are unchanged at most polls).
            good = last[2]
            if good is not None:  # every value of the block was good: no per-value checks either
                for point, same in good:
                    samples[point] = Sample(name, point, same, GOOD, ts)
                return
            for dec, same in zip(cast(list[Decoder], req.decoders), last[1], strict=True):
                samples[dec.name] = self._sample(name, dec.name, same, ts)
            return
        decoded: list[Value | Exception] = []
        all_good = True
        # A changed block: only the points whose own registers changed are decoded again; the others keep the
        # very value objects of last time (a meter's block rarely changes whole).
        before, old = (last[0], last[1]) if last is not None and len(last[0]) == len(values) else (None, None)
        for i, dec in enumerate(cast(list[Decoder], req.decoders)):
            o = dec.offset
            if before is not None and old is not None and before[o] == values[o] and (
                    dec.count == 1 or before[o + 1:o + dec.count] == values[o + 1:o + dec.count]):
                v: Value | Exception = old[i]
            else:
                try:
                    v = dec.fn(values, o)
                except Exception as exc:  # a decoding bug must not blank the other points
                    v = exc
            decoded.append(v)
            if v is None or isinstance(v, Exception):
                all_good = False
            samples[dec.name] = self._sample(name, dec.name, v, ts)
        pairs = [(d.name, v) for d, v in zip(cast(list[Decoder], req.decoders), decoded, strict=True)]
        req.last = (values, decoded, pairs if all_good else None)

    @staticmethod
    def _sample(device: str, point: str, v: Value | Exception, ts: float) -> Sample:
        if v is None:
            return Sample(device, point, None, Quality.ERROR, ts, "not available (NaN)")
        if isinstance(v, Exception):
            return Sample(device, point, None, Quality.ERROR, ts, f"decode: {v}")
        return Sample(device, point, v, Quality.GOOD, ts)

    def _fail(self, req: Request, error: str, samples: dict[str, Sample]) -> None:
        ts = time.time()
        for p in req.points:
            samples[p.name] = Sample(self.name, p.name, None, Quality.ERROR, ts, _with_hint(error, p))

    # -------------------------------------------------------------------------------------------- writes

    async def write(self, point: PointBase, value: Value) -> Value:
        p = cast(ModbusPoint, point)
        if p.table in ("discrete_input", "input"):
            raise WriteRefused(f"{self.name}.{p.name}: a {p.table} cannot be written")
        value = self.checked(p, value)  # the point type's checks: nothing unchecked reaches the wire
        payload = encode(p, value)
        if not self.breaker.allow(time.monotonic()):
            raise DeviceTimeout(f"{self.name}: unit {self.unit} is not answering; write not sent", device=self.name)
        unit, addr = self.unit, p.address
        multiple = self.quirks.write_multiple
        if len(payload) > MAX_WRITE_REGISTERS:
            raise WriteRefused(f"{self.name}.{p.name}: {len(payload)} registers exceed one write")

        if p.table == "coil":
            bit = bool(payload[0])

            async def op(client: Any) -> Any:
                if multiple:
                    return await client.write_coils(addr, [bit], device_id=unit)
                return await client.write_coil(addr, bit, device_id=unit)
        elif p.type == "bool":
            on, bitno = bool(payload[0]), p.bit or 0

            async def op(client: Any) -> Any:
                # read-modify-write under one hold of the bus lock: no poll or write can slip in between
                rr = await client.read_holding_registers(addr, count=1, device_id=unit)
                if rr.isError():
                    return rr
                new = set_bit(rr.registers[0], bitno, on)
                if multiple:
                    return await client.write_registers(addr, [new], device_id=unit)
                return await client.write_register(addr, new, device_id=unit)
        else:
            regs = [int(w) for w in payload]

            async def op(client: Any) -> Any:
                if len(regs) == 1 and not multiple:
                    return await client.write_register(addr, regs[0], device_id=unit)
                return await client.write_registers(addr, regs, device_id=unit)

        try:
            await self.requests.request(op, self.retries)
        except RequestTimeout as exc:
            raise DeviceTimeout(f"{self.name}.{p.name}: write not acknowledged: {exc}", device=self.name) from exc
        except ModbusExceptionReply as exc:
            cls = DeviceBusy if exc.code == 6 else ProtocolError
            raise cls(f"{self.name}.{p.name}: write refused by the device: {_with_hint(str(exc), p)}",
                      device=self.name) from exc
        if p.table == "coil" or p.type == "bool":
            return bool(payload[0])
        return compile_decoder(p)(payload, 0)


def _with_hint(error: str, p: ModbusPoint, *, always: bool = False) -> str:
    """An exception-2 error of a point whose address looks like a 3xxxx/4xxxx reference number says so."""
    hint = reference_hint(p.table, p.address)
    if hint is None or not (always or error.startswith("exception 2")):
        return error
    return f"{error} ({hint})"
def _compile(req: Request) -> None:
    req.decoders = [Decoder(p, req.start) for p in req.points]
