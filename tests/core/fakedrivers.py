"""Fault-injection drivers for core tests (registered in-process only by the tests that use them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from agent.contract.driver import Driver, Sink
from agent.contract.points import PointBase
from agent.contract.registry import DriverSpec
from agent.errors import DeviceTimeout
from agent.model import Sample


class FakePoint(PointBase):
    pass


class FakeConn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    behaviour: str = "ok"  # ok | wedge | dead | crash | fails-when-cancelled


class FakeDriver(Driver):
    """ok: returns a counter; dead: times out; crash: raises a bug; wedge: swallows cancellation forever
    (a misbehaving driver that no timeout can stop, which the watchdog must notice); fails-when-cancelled: reads
    like ok, but its follower turns its cancellation into a driver error (a connection that breaks while the
    device is being stopped), which must not keep the device's loop alive."""

    count = 0
    unwedge = False
    reads: list[tuple[str, float]] = []  # (device, monotonic time) of every successful read

    async def read(self, points: Sequence[PointBase]) -> list[Sample]:
        mode = self.device.connection.behaviour  # type: ignore[attr-defined]
        if mode == "dead":
            raise DeviceTimeout("no answer", device=self.name)
        if mode == "crash":
            raise ZeroDivisionError("bug in driver")
        if mode == "wedge":
            while not FakeDriver.unwedge:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    continue
            raise DeviceTimeout("unwedged", device=self.name)
        FakeDriver.count += 1
        FakeDriver.reads.append((self.name, time.monotonic()))
        return [Sample(self.name, p.name, float(FakeDriver.count)) for p in points]

    async def follow(self, sink: Sink) -> None:
        if self.device.connection.behaviour == "fails-when-cancelled":  # type: ignore[attr-defined]
            await _follow_then_fail(self.name)


async def _follow_then_fail(name: str) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise DeviceTimeout("connection lost while stopping", device=name) from None


SPEC = DriverSpec("fake", FakePoint, FakeConn, "tests.core.fakedrivers:FakeDriver")


def install(profiles_dir: str) -> None:
    """Register the fake driver and write its profile into ``profiles_dir``."""
    from pathlib import Path

    from agent.contract import registry

    registry.DRIVERS["fake"] = "tests.core.fakedrivers"
    Path(profiles_dir).mkdir(parents=True, exist_ok=True)
    (Path(profiles_dir) / "fake-device.yaml").write_text("driver: fake\npoints:\n  - {name: counter}\n")
