"""``edge-agent bacnet scan`` writes what it learned as profile keys (issue 8, item 16): max APDU,
segmentation, ReadPropertyMultiple support, writability (commandable objects only), min/max from
min-pres-value/max-pres-value, state texts, a warning for every property it could not read, UTF-8 as text;
and ``plan`` on the scanned profile is the plan the started driver makes (item 15)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from agent.config import load_profile
from agent.contract.driver import prepare_write
from drivers.bacnet.cli import scan
from tests.peers.bacnet import BACnetLab, next_host

ROOT = Path(__file__).resolve().parents[2]


def _args(sim: Any, pid: str) -> argparse.Namespace:
    return argparse.Namespace(device=sim.instance, address=sim.host, local=f"{next_host()}/8", port=47809,
                              local_instance=4194001, bbmd=None, timeout=1.0, json=True, output=None, id=pid,
                              all_types=False)


async def _scan_to(lab: BACnetLab, sim: Any, pid: str) -> tuple[dict[str, Any], str, Path]:
    result = await scan(_args(sim, pid))
    text = result.pop("profile")
    path = lab.tmp / f"{pid}.yaml"
    path.write_text(text, encoding="utf-8")
    return result, text, path


def _site(lab: BACnetLab, ptype: str, sim: Any) -> Path:
    """A site file outside the profiles directory (the lab's own site.yaml lives in it)."""
    d = lab.tmp / "cli"
    d.mkdir(exist_ok=True)
    site = d / f"{ptype}.yaml"
    site.write_text(f"site: {{id: scan}}\nuplink: {{broker: 'mqtt://127.0.0.1:1'}}\nprofiles_dirs: [{lab.tmp}]\n"
                    f"devices:\n  - {{name: ahu, type: {ptype}, connection: {{device_instance: {sim.instance}, "
                    f"address: '{sim.host}', local_address: {next_host()}/8, local_port: 47809}}}}\n")
    return site


def _plan(site: Path, device: str) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "agent.tools.cli", "plan", device, "-c", str(site),
                           "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


async def test_scan_writes_what_it_learned(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(instance=3101, max_apdu=206, segmentation=False, extra=40)
    result, text, path = await _scan_to(bacnet_lab, sim, "scanned-206")
    doc = yaml.safe_load(text)
    assert doc["device"] == {"max_apdu": 206, "segmentation": "no-segmentation"}  # RPM listed: no key
    pts = {p["name"]: p for p in doc["points"]}
    assert (pts["room-setpoint"]["min"], pts["room-setpoint"]["max"]) == (16.0, 26.0)
    assert pts["mode"]["states"] == ["off", "heat", "cool", "auto"] and (pts["mode"]["min"], pts["mode"]["max"]) \
        == (1, 4)
    # writability from the objects: only commandable ones (priority array) get the hint
    lines = text.splitlines()
    hinted = {lines[i - 1].split('"')[1] for i, ln in enumerate(lines) if "commandable (priority array)" in ln}
    assert hinted == {"room-setpoint", "fan-command"}  # not mode (a non-commandable value), not inputs
    assert all("access" not in p for p in doc["points"])  # nothing made writable without the operator
    assert "température extérieure" in text and "\\u00e9" not in text
    assert result["warnings"] == [] and result["device"]["rpm"] is True
    load_profile(path)  # validates
    # plan before the device answers, from the profile's keys, is what the started driver plans
    site = _site(bacnet_lab, "scanned-206", sim)
    offline = await asyncio.to_thread(_plan, site, "ahu")
    drv = await bacnet_lab.driver("scanned-206", sim)
    online = drv.plan()
    assert [len(r["points"]) for r in offline] == [len(r["points"]) for r in online]
    assert len(offline) == 6 and all(r["service"] == "read-property-multiple" for r in offline)  # was 1
    assert all(r["reply_bytes"] <= 206 for r in offline)
    # what the started driver reads: exactly those requests, every point good, no abort
    sim.requests.clear()
    got = await drv.read(drv.device.enabled_points)
    assert all(s.error is None for s in got), [s for s in got if s.error]
    assert sim.requests["ReadPropertyMultipleRequest"] == 6


async def test_scan_warns_for_every_property_it_could_not_read(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(instance=3102, max_apdu=50, segmentation=False)
    result, text, path = await _scan_to(bacnet_lab, sim, "scanned-50")
    # at 50 bytes the long descriptions do not fit one reply: each one is a warning, in the result and the file
    longest = {"outdoor-temp", "fan-status", "mode"}
    assert {w.split(" ")[0] for w in result["warnings"]} == longest
    assert all("could not read description: segmentation-not-supported" in w for w in result["warnings"])
    assert text.count("# warning: could not read description") == 3
    doc = yaml.safe_load(text)
    assert doc["device"]["max_apdu"] == 50
    pts = {p["name"]: p for p in doc["points"]}
    assert "description" not in pts["outdoor-temp"] and pts["room-temp"]["description"] == "Room temperature"
    assert pts["mode"]["states"] == ["off", "heat", "cool", "auto"]  # state-text element by element
    load_profile(path)


async def test_scan_of_a_device_without_rpm_says_so(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(instance=3103, rpm=False)
    result, text, _ = await _scan_to(bacnet_lab, sim, "scanned-norpm")
    assert yaml.safe_load(text)["device"]["read_property_multiple"] == "never"
    assert result["device"]["rpm"] is False
    site = _site(bacnet_lab, "scanned-norpm", sim)
    offline = await asyncio.to_thread(_plan, site, "ahu")
    assert {r["service"] for r in offline} == {"read-property"} and len(offline) == 9


async def test_a_state_can_be_written_by_its_name(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(instance=3104)
    _, _, path = await _scan_to(bacnet_lab, sim, "scanned-states")
    text = path.read_text(encoding="utf-8").replace('name: "mode", ', 'name: "mode", access: read-write, ')
    path.write_text(text, encoding="utf-8")
    drv = await bacnet_lab.driver("scanned-states", sim)
    pt, value = prepare_write(drv.device, "mode", "Heat", text=True)
    assert value == 2
    await drv.write(pt, value)
    assert int(sim.obj("multi-state-value,1").presentValue) == 2
    from agent.errors import WriteRefused

    try:
        prepare_write(drv.device, "mode", "turbo", text=True)
    except WriteRefused as exc:
        assert "state number 1, 2, 3... or one of off, heat, cool, auto; got 'turbo'" in str(exc)
    else:
        raise AssertionError("turbo accepted")
