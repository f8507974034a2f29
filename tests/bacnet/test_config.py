"""Profile and site validation of BACnet points: names checked without bacpypes3, errors located."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_profile
from agent.errors import ConfigError
from drivers.bacnet import unit_symbol
from drivers.bacnet.enums import ENGINEERING_UNITS, OBJECT_TYPES, PROPERTY_IDENTIFIERS

ROOT = Path(__file__).resolve().parents[2]


def _bacpypes_table(enum: type) -> dict[str, int]:
    return {k: v for k, v in enum._enum_map.items() if "-" in k or k.islower()}  # type: ignore[attr-defined]


def test_static_tables_match_bacpypes3() -> None:
    from bacpypes3.basetypes import EngineeringUnits, ObjectType, PropertyIdentifier

    assert _bacpypes_table(ObjectType) == OBJECT_TYPES
    assert _bacpypes_table(PropertyIdentifier) == PROPERTY_IDENTIFIERS
    assert _bacpypes_table(EngineeringUnits) == ENGINEERING_UNITS


def test_validation_does_not_import_bacpypes3() -> None:
    code = ("import sys; from agent.config import load_profile; "
            "load_profile('profiles/demo-bacnet-ahu.yaml'); import drivers.bacnet.cli; "
            "print(any(m.startswith('bacpypes3') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shipped_bacnet_profiles_validate() -> None:
    files = sorted((ROOT / "profiles").glob("*bacnet*.yaml"))
    assert files
    for f in files:
        prof = load_profile(f)
        assert prof.driver == "bacnet" and prof.points


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "bad-bacnet.yaml"
    p.write_text(body)
    return p


def test_unknown_object_type_and_property_are_located(tmp_path: Path) -> None:
    f = _write(tmp_path, """\
driver: bacnet
points:
  - {name: ok, object_type: analogInput, instance: 1}
  - {name: t1, object_type: analog-inptu, instance: 2}
  - name: t2
    object_type: analog-value
    instance: 3
    property: present-valeu
  - {name: t3, object_type: binary-input, instance: 4194303}
  - {name: t4, object_type: analog-input, instance: 5, access: read-write}
  - {name: t5, object_type: multi-state-value, instance: 6, property: state-text, cov: true}
  - {name: t6, object_type: analog-input, instance: 1}
""")
    with pytest.raises(ConfigError) as ei:
        load_profile(f)
    msgs = [str(p) for p in ei.value.problems]
    text = "\n".join(msgs)
    assert f"{f}:4: points[1].object_type: unknown BACnet object type 'analog-inptu'" in text
    assert f"{f}:8: points[2].property: unknown BACnet property 'present-valeu'" in text
    assert f"{f}:9: points[3].instance:" in text
    assert "points[4]" in text and "not writable" in text
    assert "points[5]" in text and "only present-value can be followed by COV" in text


def test_duplicate_object_property_is_located(tmp_path: Path) -> None:
    f = _write(tmp_path, """\
driver: bacnet
points:
  - {name: a, object_type: analog-input, instance: 1}
  - {name: b, object_type: analogInput, instance: 1}
""")
    with pytest.raises(ConfigError) as ei:
        load_profile(f)
    assert f"{f}:4: points[1].instance: same object and property as points[0]" in str(ei.value)


def test_bad_device_quirk_and_names_normalised(tmp_path: Path) -> None:
    f = _write(tmp_path, """\
driver: bacnet
device: {max_apdu: 20, max_point_per_request: 3}
points:
  - {name: a, object_type: Multi_State_Value, instance: 1, property: PresentValue}
""")
    with pytest.raises(ConfigError) as ei:
        load_profile(f)
    text = str(ei.value)
    assert "device.max_apdu:" in text and "device.max_point_per_request: unknown key" in text
    f.write_text("driver: bacnet\npoints:\n  - {name: a, object_type: Multi_State_Value, instance: 1, "
                 "property: PresentValue}\n")
    p = load_profile(f).points[0]
    assert (p.object_type, p.property, p.object_id) == ("multi-state-value", "present-value",  # type: ignore[attr-defined]
                                                        "multi-state-value,1")


def test_units() -> None:
    assert unit_symbol("degrees-celsius") == "degC"
    assert unit_symbol("percent-relative-humidity") == "%RH"
    assert unit_symbol("no-units") is None
    assert unit_symbol("kilograms-per-hour") == "kilograms-per-hour"


def test_bad_connection_is_located(tmp_path: Path) -> None:
    from agent.config import load_site

    site = tmp_path / "site.yaml"
    site.write_text(f"""\
site: {{id: t}}
uplink: {{broker: "mqtt://127.0.0.1:1"}}
profiles_dirs: [{ROOT / 'profiles'}]
devices:
  - name: ahu
    type: demo-bacnet-ahu
    connection:
      device_instance: 4194303
      address: plant-room
      local_address: 10.0.0.5:47808
      bbmd_tll: 60
""")
    with pytest.raises(ConfigError) as ei:
        load_site(site)
    text = str(ei.value)
    assert f"{site}:8: devices[0].connection.device_instance:" in text
    assert f"{site}:9: devices[0].connection.address: expected IP, IP:port, or NETWORK:MAC" in text
    assert f"{site}:10: devices[0].connection.local_address: expected 'host' or IP/prefix" in text
    assert f"{site}:11: devices[0].connection.bbmd_tll: unknown key" in text
