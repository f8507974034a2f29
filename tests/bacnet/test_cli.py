"""``edge-agent bacnet discover|scan`` and the simulator's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.model import Quality
from agent.tools.cli import build_parser, main
from drivers.bacnet.cli import scan
from tests.peers.bacnet import BACnetLab, next_host
from tests.peers.common import stop_process

ROOT = Path(__file__).resolve().parents[2]
BASE = 10000 + os.getpid() % 200 * 10  # instances unique per test process: broadcasts reach every run's sims


def _start_sim(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "drivers.bacnet.sim", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready device N at IP:PORT" once bound
    if not line.startswith("ready"):
        stop_process(proc)
        raise RuntimeError(f"simulator did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


@pytest.fixture
def two_sims() -> Iterator[list[str]]:
    hosts = [next_host(), next_host()]
    procs = []
    try:
        for i, h in enumerate(hosts):
            procs.append(_start_sim("--address", f"{h}/8", "--instance", str(BASE + 1 + i), "--name", f"sim-{i}",
                                    "--max-apdu", "480" if i else "1024", *(["--no-segmentation"] if i else [])))
        yield hosts
    finally:
        for p in procs:
            stop_process(p)


def test_discover_broadcast_on_loopback(two_sims: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    local = next_host()
    rc = main(["bacnet", "discover", "--local", f"{local}/8", "--port", "47809", "--low", str(BASE),
               "--high", str(BASE + 9), "--broadcast", "127.255.255.255:47808", "--timeout", "1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    found = json.loads(out)
    assert [d["instance"] for d in found] == [BASE + 1, BASE + 2]
    a, b = found
    assert a["address"] == two_sims[0] and b["address"] == two_sims[1]
    assert (a["vendor_id"], a["vendor_name"], a["model"], a["name"]) == (999, "edge-agent simulator", "EA-SIM-AHU",
                                                                          "sim-0")
    assert (a["max_apdu"], a["segmentation"]) == (1024, "segmented-both")
    assert (b["max_apdu"], b["segmentation"]) == (480, "no-segmentation")
    assert f"Who-Is {BASE}-{BASE + 9}" in err and "2 device(s) answered" in err
    # human output, unicast to one address
    rc = main(["bacnet", "discover", "--local", f"{local}/8", "--port", "47809", "--address", two_sims[1],
               "--timeout", "0.5"])
    out, _ = capsys.readouterr()
    assert rc == 0 and str(BASE + 2) in out and str(BASE + 1) not in out and "no-segmentation" in out


def test_discover_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bacnet", "discover", "--local", f"{next_host()}/8", "--port", "47809",
               "--address", "127.77.251.251", "--timeout", "0.3"])
    assert rc == 3 and "no device answered" in capsys.readouterr().err


def test_parser_has_bacnet_commands() -> None:
    args = build_parser().parse_args(["bacnet", "scan", "1001", "--address", "127.0.0.2", "--json"])
    assert args.device == 1001 and args.func.__name__ == "cmd_scan"


async def test_scan_writes_a_profile_that_validates_and_polls(bacnet_lab: BACnetLab, tmp_path: Path) -> None:
    sim = await bacnet_lab.sim(instance=3001, max_apdu=206, segmentation=False, extra=40)
    out = bacnet_lab.tmp / "scanned-bacnet-ahu.yaml"
    args = argparse.Namespace(device=3001, address=sim.host, local=f"{next_host()}/8", port=47809,
                              local_instance=4194001, bbmd=None, timeout=1.0, json=True, output=str(out),
                              id="scanned-bacnet-ahu", all_types=False)
    result = await scan(args)
    text = result.pop("profile")
    out.write_text(text)
    assert result["device"]["instance"] == 3001 and result["objects"] == 2 + 9 + 40  # device, network-port, AHU, extra
    names = [p["name"] for p in result["points"]]
    assert names[:3] == ["supply-air-temp", "return-air-temp", "room-temp"] and "fan-status" in names
    room = next(p for p in result["points"] if p["name"] == "room-temp")
    assert room == {"name": "room-temp", "object_type": "analog-input", "instance": 3, "unit": "degC",
                    "description": "Room temperature"}
    # the object list did not fit one 206-byte APDU: read element by element
    # device info 7, object-list whole (aborted) 1, its length 1, its 51 elements, mode's state-text 1;
    # one RPM per object
    assert (sim.requests["ReadPropertyRequest"], sim.requests["ReadPropertyMultipleRequest"]) == (61, 49)
    # edge-agent validate accepts it
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.tools.cli", "validate", str(out), cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode()
    # and a device of that type polls correctly
    drv = await bacnet_lab.driver("scanned-bacnet-ahu", sim)
    got = {s.point: s for s in await drv.read(drv.device.enabled_points)}
    assert len(got) == 49 and all(s.quality == Quality.GOOD for s in got.values()), got
    assert got["room-temp"].value == 21.0 and got["fan-status"].value is True and got["mode"].value == 4
    assert got["extra-39"].value == 39.0


def _read_back(host: str, prop: str, index: int | None = None) -> object:
    from drivers.bacnet import BACnetConnection
    from drivers.bacnet.driver import open_application
    from drivers.bacnet.values import to_value

    async def go() -> object:
        app = await open_application(BACnetConnection(device_instance=1, local_address=f"{next_host()}/8",
                                                      local_port=47809))
        try:
            async with asyncio.timeout(2):
                return to_value(await app.read_property(Address(host), "analog-value,1", prop, index))
        finally:
            app.close()

    from bacpypes3.pdu import Address

    return asyncio.run(go())


def test_plan_and_write_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = next_host()
    proc = _start_sim("--address", f"{host}/8", "--instance", str(BASE + 5))
    try:
        site = tmp_path / "site.yaml"
        site.write_text(
            "site: {id: cli}\n"
            f"state_dir: {tmp_path / 'state'}\n"
            "uplink: {broker: 'mqtt://127.0.0.1:1'}\n"
            "devices:\n"
            "  - name: ahu\n"
            "    type: demo-bacnet-ahu\n"
            f"    connection: {{device_instance: {BASE + 5}, address: '{host}', local_address: {next_host()}/8, "
            "local_port: 47809}\n")
        assert main(["plan", "ahu", "-c", str(site), "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert [(b["cycle"], b["service"], b["properties"]) for b in plan] == [
            ("fast", "read-property-multiple", 8), ("slow", "read-property-multiple", 9)]
        assert main(["write", "ahu", "room_setpoint", "24.5", "--direct", "-c", str(site)]) == 0
        assert "ahu.room_setpoint = 24.5" in capsys.readouterr().out
        assert _read_back(host, "present-value") == 24.5 and _read_back(host, "priority-array", 8) == 24.5
        assert main(["write", "ahu", "room_setpoint", "30", "--direct", "-c", str(site)]) == 1
        assert "above the maximum 26" in capsys.readouterr().err
        assert main(["write", "ahu", "fan_status", "false", "--direct", "-c", str(site)]) == 1
        assert "read-only" in capsys.readouterr().err
        assert main(["write", "ahu", "room_setpoint", "null", "--direct", "-c", str(site)]) == 0
        assert "ahu.room_setpoint = None" in capsys.readouterr().out
        assert _read_back(host, "present-value") == 21.0 and _read_back(host, "priority-array", 8) is None
    finally:
        stop_process(proc)


async def test_scan_of_a_segmenting_device_batches_objects(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(instance=3002, extra=40)
    args = argparse.Namespace(device=3002, address=sim.host, local=f"{next_host()}/8", port=47809,
                              local_instance=4194001, bbmd=None, timeout=1.0, json=True, output=None,
                              id=None, all_types=False)
    result = await scan(args)
    assert len(result["points"]) == 49 and result["points"][2]["unit"] == "degC"
    assert "fan-status" in [p["name"] for p in result["points"]] and "id: \"ea-sim-ahu\"" in result["profile"]
    # device info 7, whole object list in one (segmented) reply, mode's state-text; 49 objects described by
    # 3 RPM of 20 objects
    assert (sim.requests["ReadPropertyRequest"], sim.requests["ReadPropertyMultipleRequest"]) == (9, 3)


async def test_scan_of_a_device_without_rpm(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim(instance=3003, rpm=False)
    args = argparse.Namespace(device=3003, address=sim.host, local=f"{next_host()}/8", port=47809,
                              local_instance=4194001, bbmd=None, timeout=1.0, json=True, output=None,
                              id="x", all_types=False)
    result = await scan(args)
    assert [p["name"] for p in result["points"]][:2] == ["supply-air-temp", "return-air-temp"]
    assert len(result["points"]) == 9 and sim.requests["ReadPropertyMultipleRequest"] == 1  # refused once
