"""Driver registry: an explicit table of driver names to packages.

A driver package ``drivers/<name>/__init__.py`` exposes ``SPEC``, built from pydantic models only: importing
it never imports the protocol library. The runtime class named by ``SPEC.driver_class`` is imported only
when a device of that driver runs; if that import fails only those devices are disabled, with the reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agent.contract.points import PointBase
from agent.errors import DriverUnavailable

# name -> importable package holding SPEC. Add a line here to add a driver.
DRIVERS: dict[str, str] = {
    "system": "drivers.system",
    "modbus": "drivers.modbus",
    "bacnet": "drivers.bacnet",
    "onvif": "drivers.onvif",
    "motion": "drivers.motion",
    "access": "drivers.access",
}

ProfileCheck = Callable[[Sequence[PointBase], dict[str, Any]], list[tuple[tuple[str | int, ...], str]]]


@dataclass
class DriverSpec:
    name: str
    point_model: type[PointBase]
    connection_model: type[BaseModel]
    driver_class: str  # "package.module:Class"
    device_model: type[BaseModel] | None = None  # schema of the profile's ``device:`` quirks section
    check_profile: ProfileCheck | None = None  # cross-point checks: [((point_index, key...), message)]
    # a site entry against its profile's ``device:`` section: (profile device dict, connection) ->
    # [((key under the device entry...), message)], e.g. a setting of the profile that needs a connection key
    check_device: Callable[[dict[str, Any], BaseModel], list[tuple[tuple[str | int, ...], str]]] | None = None
    # points repeated per entry of the connection (an access panel's doors): (profile points with overrides
    # applied, connection) -> (the device's points, [((key under connection...), message)])
    expand_points: Callable[[Sequence[PointBase], BaseModel],
                            tuple[list[PointBase], list[tuple[tuple[str | int, ...], str]]]] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def load_class(self) -> type:
        """The class named by ``driver_class``; ``agent.contract.driver.driver_class`` checks it is a Driver."""
        module, _, cls = self.driver_class.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise DriverUnavailable(
                f"driver {self.name!r} is unavailable: cannot import {exc.name or module} ({exc})"
            ) from exc
        found = getattr(mod, cls, None)
        if not isinstance(found, type):
            raise DriverUnavailable(f"driver {self.name!r} is unavailable: {self.driver_class} is not a class")
        return found


_cache: dict[str, DriverSpec] = {}


def known_drivers() -> list[str]:
    return sorted(DRIVERS)


def get_spec(name: str) -> DriverSpec:
    """The spec of a driver; KeyError for an unknown name."""
    if name in _cache:
        return _cache[name]
    pkg = DRIVERS[name]
    mod = importlib.import_module(pkg)
    spec: DriverSpec = mod.SPEC
    _cache[name] = spec
    return spec
