"""Writes through the running agent (local CLI, and remote operations later): checked before any I/O,
serialised with the device's polls, and every outcome is a ``write`` event (an audit trail)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent.contract.device import DeviceConfig
from agent.contract.driver import prepare_write
from agent.core.supervisor import DeviceRunner
from agent.errors import DeviceTimeout, DriverError, EdgeAgentError, WriteRefused
from agent.model import DeviceHealth, Event, Severity, Value

log = logging.getLogger("edge_agent")

WRITE_TIMEOUT = 30.0  # one local or remote write, queue on the bus included


class Writer:
    def __init__(self, devices: list[DeviceConfig], runners: dict[str, DeviceRunner],
                 health: dict[str, DeviceHealth], event: Callable[[Event], None]) -> None:
        self.devices = devices
        self.runners = runners
        self.health = health
        self.event = event

    def device(self, name: str) -> DeviceConfig:
        for d in self.devices:
            if d.name == name:
                return d
        raise WriteRefused(f"no device named {name!r}")

    async def write(self, device: str, point: str, value: Value) -> Value:
        """Text is read by the point's type; the value is checked before any I/O. Every outcome is a ``write``
        event: ``result`` ok, refused (nothing sent) or failed."""
        given = value
        try:
            dev = self.device(device)
            pt, value = prepare_write(dev, point, value, text=isinstance(value, str))
            runner = self.runners.get(device)
            if runner is None:
                raise DriverError(f"{device} is not running (state {self.health[device].state})", device=device)
        except (WriteRefused, DriverError) as exc:
            self._trace(device, point, given, "refused", str(exc))
            raise
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                # the runner's lock: never write through a driver that is being stopped or restarted
                async with runner.lock:
                    driver = runner.driver
                    if driver is None:
                        raise WriteRefused(f"{device} is not running (state {self.health[device].state})")
                    written = await driver.write(pt, value)
        except WriteRefused as exc:
            self._trace(device, point, given, "refused", str(exc))
            raise
        except TimeoutError:
            exc2 = DeviceTimeout(f"{device}.{point}: write not confirmed within {WRITE_TIMEOUT:g} s; outcome unknown",
                                 device=device)
            self._trace(device, point, given, "failed", str(exc2))
            raise exc2 from None
        except EdgeAgentError as exc:
            self._trace(device, point, given, "failed", str(exc))
            raise
        self._trace(device, point, written, "ok")
        return written

    def _trace(self, device: str, point: str, value: Any, result: str, reason: str | None = None) -> None:
        data: dict[str, Any] = {"point": point, "value": value, "result": result}
        if reason is not None:
            data["reason"] = reason
            log.warning("write %s.%s = %r %s: %s", device, point, value, result, reason)
        else:
            log.info("write %s.%s = %r", device, point, value)
        source = device if device in self.health else "agent"
        if source == "agent":
            data["device"] = device
        self.event(Event(source, "write", data, Severity.INFO if result == "ok" else Severity.WARNING))
