"""Helpers for the Modbus tests: build a device (profile + connection) without a site file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_profile
from agent.contract.device import DeviceConfig, DeviceConfigModel, Profile
from agent.contract.driver import DriverContext
from agent.contract.registry import get_spec
from tests.peers.modbus import pty_pair  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
MODBUS_PROFILES = sorted(
    p for p in PROFILES.glob("*.yaml") if yaml.safe_load(p.read_text()).get("driver") == "modbus"
)


def write_profile(tmp: Path, data: dict[str, Any], name: str = "test-device") -> Profile:
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"driver": "modbus", **data}, sort_keys=False))
    return load_profile(f)


def make_device(profile: Profile | str | Path, connection: dict[str, Any], name: str = "dev",
                **model: Any) -> DeviceConfig:
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    spec = get_spec("modbus")
    dm = DeviceConfigModel(name=name, type=prof.id, connection=connection, **model)
    conn = spec.connection_model.model_validate(connection)
    return DeviceConfig(name, prof.id, "modbus", spec, dm, prof, conn, list(prof.points))


def make_driver(profile: Profile | str | Path, connection: dict[str, Any], ctx: DriverContext | None = None,
                name: str = "dev", **model: Any) -> Any:
    from drivers.modbus.driver import ModbusDriver

    dev = make_device(profile, connection, name, **model)
    return ModbusDriver(dev, ctx or DriverContext("test", Path("/tmp")))


@pytest.fixture
def ctx(tmp_path: Path) -> DriverContext:
    return DriverContext("test", tmp_path)
