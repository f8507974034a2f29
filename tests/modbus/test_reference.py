"""3xxxx/4xxxx reference numbers (issue 8, item 14): ``address: 40001`` is a valid address, so it is not
refused, but when the device answers exception 2 the error says what the number likely means and gives the
0-based address; ``edge-agent plan`` shows the same hint; quoted numbers get an accurate message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_profile
from agent.contract.driver import DriverContext, check_write
from agent.errors import ConfigError, ProtocolError
from agent.model import Quality
from tests.peers.modbus import ModbusPeer

from .conftest import ROOT, make_driver, write_profile

POINTS: list[dict[str, Any]] = [
    {"name": "ok", "table": "holding", "address": 0},
    {"name": "setpoint", "table": "holding", "address": 40001, "access": "read-write"},  # meant: address 0
    {"name": "temp", "table": "input", "address": 30002},  # meant: input address 1
    {"name": "wrong_table", "table": "holding", "address": 30005},  # a 3xxxx number on a holding point
    {"name": "high", "table": "holding", "address": 50000},  # not a reference number: no hint
]


async def test_exception_2_on_a_reference_number_says_so(tmp_path: Path) -> None:
    prof = write_profile(tmp_path, {"points": POINTS})
    tables: dict[str, dict[int, int | bool]] = {"holding": {a: 7 for a in range(10)}, "input": {1: 5}}
    peer = await ModbusPeer({1: tables}).start()
    drv = make_driver(prof, {"host": "127.0.0.1", "port": peer.port}, DriverContext("t", tmp_path), timeout=1.0)
    try:
        await drv.start()
        got = {s.point: s for s in await drv.read(drv.points)}
        assert got["ok"].quality == Quality.GOOD and got["ok"].value == 7
        assert got["setpoint"].error == (
            "exception 2 illegal data address (address 40001 looks like a 4xxxx reference number: holding "
            "register 40001 is 0-based address 0 (address: 0))")
        assert got["temp"].error is not None and \
            "input register 30002 is 0-based address 1 (address: 1)" in got["temp"].error
        assert got["wrong_table"].error is not None and \
            "input register 30005 is 0-based address 4 (table: input, address: 4)" in got["wrong_table"].error
        assert got["high"].error == "exception 2 illegal data address"
        # the second cycle (learned plan, single reads) says the same
        again = {s.point: s for s in await drv.read(drv.points)}
        assert again["setpoint"].error == got["setpoint"].error
        # once the device answered, plan hints only at what it refused
        hinted = {h.split(" ")[1] for r in drv.plan() for h in r.get("hints", [])}
        assert hinted == {"40001", "30002", "30005"}
        with pytest.raises(ProtocolError, match=r"exception 2 illegal data address \(address 40001 looks like a "
                                                r"4xxxx reference number: .* 0-based address 0"):
            await drv.write(check_write(drv.device, "setpoint", 21), 21)
    finally:
        await drv.stop()
        await peer.stop()


def test_plan_shows_the_hint(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "refs.yaml").write_text(yaml.safe_dump({"driver": "modbus", "points": POINTS}, sort_keys=False))
    site = tmp_path / "site.yaml"
    site.write_text(f"site: {{id: t}}\nuplink: {{broker: 'mqtt://127.0.0.1:9'}}\nprofiles_dirs: [{profiles}]\n"
                    "devices:\n  - {name: m, type: refs, connection: {host: 127.0.0.1, port: 9}}\n")

    def plan(*extra: str) -> str:
        r = subprocess.run([sys.executable, "-m", "agent.tools.cli", "plan", "m", "-c", str(site), *extra],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    rows = json.loads(plan("--json"))
    hints = [h for r in rows for h in r.get("hints", [])]
    assert hints == [f"if the device answers exception 2: {h}" for h in [
        "address 30005 looks like a 3xxxx reference number: input register 30005 is 0-based address 4 "
        "(table: input, address: 4)",
        "address 40001 looks like a 4xxxx reference number: holding register 40001 is 0-based address 0 "
        "(address: 0)",
        "address 30002 looks like a 3xxxx reference number: input register 30002 is 0-based address 1 "
        "(address: 1)",
    ]]
    text = plan()
    assert "     hint: if the device answers exception 2: address 40001 looks like a 4xxxx reference number" in text


@pytest.mark.parametrize(("address", "message"), [
    ('"100"', "address '100' is quoted: write the number without quotes (address: 100) or as hex ('0x0064')"),
    ('"40001"', "address '40001' is quoted and looks like a 4xxxx reference number (holding register 40001 is "
                "0-based address 0): give the 0-based protocol address as a number"),
    ('"30010"', "(input register 30010 is 0-based address 9)"),
    ('"4x1"', "address '4x1': give the 0-based protocol address as a number or hex"),
])
def test_quoted_numbers_get_an_accurate_message(tmp_path: Path, address: str, message: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(f"driver: modbus\npoints:\n  - {{name: a, table: holding, address: {address}}}\n")
    with pytest.raises(ConfigError) as ei:
        load_profile(f)
    assert "p.yaml:3: points[0].address: " in str(ei.value) and message in str(ei.value), str(ei.value)
