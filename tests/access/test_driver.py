"""The access driver on its own against the simulated panel (no agent): the profile's access_time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.config import load_site
from agent.contract.driver import DriverContext
from drivers.access.driver import AccessDriver
from tests.core.agentkit import ROOT
from tests.peers.panel import AccessPanel


async def test_access_time_of_the_profile_is_sent(tmp_path: Path) -> None:
    panel = AccessPanel(tmp_path, extra=["--access-time", "4"]).start()  # the panel's own default: 4 s
    try:
        pw = tmp_path / "pw"
        pw.write_text(panel.password)
        (tmp_path / "prof").mkdir()
        text = (ROOT / "profiles" / "generic-onvif-access-panel.yaml").read_text()
        (tmp_path / "prof" / "pp.yaml").write_text(text.replace("device:\n", "device:\n  access_time: 1.5s\n"))
        site = tmp_path / "site.yaml"
        site.write_text(f"site: {{id: t1}}\nstate_dir: {tmp_path / 'state'}\nprofiles_dirs: [{tmp_path / 'prof'}]\n"
                        "uplink: {broker: 'mqtt://127.0.0.1:9'}\ndevices:\n  - name: panel\n    type: pp\n"
                        f"    connection: {{host: 127.0.0.1, port: {panel.port}, password: {{file: {pw}}}, "
                        "doors: [{token: Door_1, commands: [access]}]}\n")
        drv = AccessDriver(load_site(site).devices[0], DriverContext("t1", tmp_path / "state"))
        await drv.start()
        try:
            t0 = time.monotonic()
            answer = await drv.door_command("Door_1", "access")
            assert answer["panel"] == "ok" and answer["state"]["mode"] == "Accessed"
            assert drv.session is not None
            while (await drv.session.door_state("Door_1"))["mode"] == "Accessed":
                await asyncio.sleep(0.05)
            took = time.monotonic() - t0
        finally:
            await drv.stop()
        assert 1.2 < took < 3.0, took
    finally:
        panel.stop()
