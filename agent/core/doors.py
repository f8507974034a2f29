"""Door commands (docs/access-control.md): the one way to a panel's door operations, for the signed ``door``
command (role ``door``, verified by ``RemoteOps`` before it gets here) and for ``edge-agent door`` on the
status socket. The site file decides, per door, which commands are allowed and when (in the site's timezone);
what it refuses never reaches the panel. Every outcome (obeyed, refused, failed) is a ``door_command`` event
upstream and a log line: an audit trail naming who asked and by which way.

Drivers with doors offer ``connection.check_door(door, command, when) -> token`` (ValueError: refused) and
``driver.door_command(token, command) -> dict`` (the panel's answer); duck-typed so that core never imports a
driver."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from agent.contract.device import DeviceConfig
from agent.core.supervisor import DeviceRunner
from agent.errors import DeviceTimeout, EdgeAgentError, WriteRefused, mark_logged
from agent.model import DeviceHealth, Event, Severity

log = logging.getLogger("edge_agent.doors")

DOOR_TIMEOUT = 30.0  # one door command, wait for the device's lock included


class DoorRefused(WriteRefused):
    """Refused before anything was sent to the panel."""


class DoorGate:
    def __init__(self, devices: list[DeviceConfig], runners: dict[str, DeviceRunner],
                 health: dict[str, DeviceHealth], event: Callable[[Event], None], timezone: str | None) -> None:
        self.devices = {d.name: d for d in devices}
        self.runners = runners
        self.health = health
        self.event = event
        self.tz = ZoneInfo(timezone) if timezone else None
        self.sent = 0  # commands that reached a driver (tests compare with the panel's own count)

    def now(self) -> dt.datetime:
        return dt.datetime.now(self.tz) if self.tz is not None else dt.datetime.now().astimezone()

    def _check(self, device: str, door: str, command: str) -> tuple[DeviceRunner, str]:
        dev = self.devices.get(device)
        if dev is None:
            raise DoorRefused(f"no device named {device!r}")
        check = getattr(dev.connection, "check_door", None)
        if check is None:
            raise DoorRefused(f"{device} has no doors (driver {dev.driver})")
        try:
            token = str(check(door, command, self.now()))
        except ValueError as exc:
            raise DoorRefused(f"{device}: {exc}") from None
        runner = self.runners.get(device)
        if runner is None:
            raise DoorRefused(f"{device} is not running (state {self.health[device].state})")
        return runner, token

    async def run(self, device: str, door: str, command: str, *, by: str, via: str) -> dict[str, Any]:
        """Check against the site file, send, and answer with the panel's answer; DoorRefused (nothing sent) or
        a DriverError (the panel's fault, unreachable, unsupported) otherwise. Every outcome is audited."""
        base = {"device": device, "door": door, "command": command}
        try:
            runner, token = self._check(device, door, command)
        except DoorRefused as exc:
            self._audit(base, by, via, "refused", str(exc))
            mark_logged(exc)
            raise
        sent = False
        try:
            async with asyncio.timeout(DOOR_TIMEOUT):
                async with runner.lock:  # never through a driver being stopped or restarted; serialised with polls
                    driver = runner.driver
                    send = getattr(driver, "door_command", None)
                    if driver is None or send is None:
                        raise DoorRefused(f"{device} is not running (state {self.health[device].state})")
                    self.sent += 1
                    sent = True
                    answer: dict[str, Any] = await send(token, command)
        except DoorRefused as exc:
            self._audit(base, by, via, "refused", str(exc))
            mark_logged(exc)
            raise
        except TimeoutError:
            outcome = ("not confirmed within {t:g} s; outcome unknown" if sent else
                       "not sent: the device stayed busy for {t:g} s")
            exc2 = DeviceTimeout(f"{device}: door {door} {command} " + outcome.format(t=DOOR_TIMEOUT), device=device)
            self._audit(base, by, via, "failed", str(exc2))
            raise mark_logged(exc2) from None
        except EdgeAgentError as exc:
            self._audit(base, by, via, "failed", str(exc))
            mark_logged(exc)
            raise
        result = {**base, "token": token, **answer}
        self._audit({**base, "token": token, "state": answer.get("state")}, by, via, "ok")
        return result

    def _audit(self, data: dict[str, Any], by: str, via: str, result: str, reason: str | None = None) -> None:
        doc = {**data, "by": by, "via": via, "result": result}
        if reason is not None:
            doc["reason"] = reason[:300]
            log.warning("door %s %s %s by %s (%s) %s: %s", data["device"], data["door"], data["command"], by, via,
                        result, reason)
        else:
            log.info("door %s %s %s by %s (%s): ok", data["device"], data["door"], data["command"], by, via)
        source = data["device"] if data["device"] in self.health else "agent"
        self.event(Event(source, "door_command", doc, Severity.INFO if result == "ok" else Severity.WARNING))
