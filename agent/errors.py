"""The one exception tree of edge-agent.

Library exceptions are mapped to these at the driver boundary and chained (``raise ... from exc``) so that
callers never need to know which protocol library produced them.

    EdgeAgentError
    ├── ConfigError            bad site file / profile / argument (carries located problems)
    ├── DriverError            a device or bus misbehaved
    │   ├── DeviceUnreachable  no route / connection refused / port closed
    │   ├── DeviceTimeout      no reply in time
    │   ├── ProtocolError      reply malformed, exception code, unexpected type
    │   ├── DeviceBusy         device says busy (Modbus exception 6, BACnet busy)
    │   └── DriverUnavailable  the driver's library is missing or failed to import
    ├── WriteRefused           a write was refused before reaching the device (read-only, out of bounds)
    ├── UplinkError            MQTT session problem
    └── StoreError             the outbox database failed
        ├── StoreFull          ... because the disk under it is (nearly) full
        └── StoreInUse         another process holds the outbox (a second agent on the same state)
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgeAgentError(Exception):
    """Base of every error edge-agent raises on purpose."""


def mark_logged(exc: BaseException) -> BaseException:
    """Note on an exception that a layer already logged it, so the layers it passes through on its way up do not
    log the same refusal again (one line per refused command in the journal, not three)."""
    exc.__dict__["edge_agent_logged"] = True
    return exc


def was_logged(exc: BaseException) -> bool:
    return bool(getattr(exc, "__dict__", {}).get("edge_agent_logged"))


@dataclass(frozen=True)
class Problem:
    """One located configuration problem: ``FILE:LINE: key.path: message``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(EdgeAgentError):
    """One or more located problems in configuration."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("<config>", None, "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class DriverError(EdgeAgentError):
    """A device or bus failed; ``device`` names it when known."""

    code = "driver"
    retry_after: float | None = None  # the device must not be asked again sooner (seconds), e.g. a refused login

    def __init__(self, message: str, *, device: str | None = None) -> None:
        self.device = device
        super().__init__(message)


class DeviceUnreachable(DriverError):
    code = "unreachable"


class DeviceTimeout(DriverError):
    code = "timeout"


class ProtocolError(DriverError):
    code = "protocol"


class DeviceBusy(DriverError):
    code = "busy"


class DriverUnavailable(DriverError):
    code = "unavailable"


class WriteRefused(EdgeAgentError):
    """A write was refused locally: unknown point, read-only point, value outside min/max."""


class UplinkError(EdgeAgentError):
    """The MQTT session failed."""


class StoreError(EdgeAgentError):
    """The outbox database failed."""


class StoreFull(StoreError):
    """The outbox cannot write because the disk under it is (nearly) full."""


class StoreInUse(StoreError):
    """Another process holds the outbox: retrying cannot help while it runs."""
