"""A simulated access-control panel (drivers/access/sim.py) as a real process on loopback, started by the tests.

Use in a test under ``tests/access/`` (the fixture is registered in ``tests/access/conftest.py``)::

    async def test_x(access_panel: AccessPanel) -> None:
        # ONVIFCamera("127.0.0.1", access_panel.port, access_panel.user, access_panel.password)
        access_panel.open("Door_1")            # the door opens: Locked -> DoorAlarm DoorForcedOpen
        access_panel.close("Door_1")
        access_panel.badge("AP_1", credential="CARD-1", holder="Jane Doe", result="denied", reason="InvalidPIN")
        access_panel.state()["doors"]["Door_1"]["mode"]       # "Locked"
        access_panel.stats()["ops"].get("UnlockDoor", 0)      # 0: the command never reached the panel
        access_panel.restart()                 # a reboot on the same port: subscriptions are forgotten

Options go in ``extra`` before start: ``AccessPanel(tmp_path, extra=["--no-op", "LockDoor"]).start()``; the
fixture's panel uses ``--access-time 1 --open-too-long 2`` (fast tests) and a state file in the test's
directory, so door states survive ``restart()``. Faults: ``control("fail", op="LockDoor")``,
``control("delay", s=2)``, ``control("drop-renew", n=1)``, ``control("forget")``, ``tamper()``, ``fault()``.
The password is ``PASSWORD``: tests can grep payloads and logs for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from .common import SimProcess

PASSWORD = "p4nel-Pw-7c2e"  # tests grep every payload and log line for it
FAST = ["--access-time", "1", "--open-too-long", "2"]


@dataclass
class AccessPanel(SimProcess):
    module: ClassVar[str] = "drivers.access.sim"
    log_prefix: ClassVar[str] = "access-sim"
    password: str = PASSWORD

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/onvif/device_service"

    def open(self, door: str = "Door_1") -> None:
        self.control("open", door=door)

    def close(self, door: str = "Door_1") -> None:
        self.control("close", door=door)

    def badge(self, ap: str = "AP_1", credential: str = "CARD-0001", holder: str = "", result: str = "granted",
              reason: str = "") -> None:
        self.control("badge", ap=ap, credential=credential, holder=holder, result=result, reason=reason)

    def tamper(self, door: str = "Door_1", on: bool = True) -> None:
        self.control("tamper", door=door, on=int(on))

    def fault(self, door: str = "Door_1", on: bool = True, reason: str = "") -> None:
        self.control("fault", door=door, on=int(on), reason=reason)

    def stats(self) -> dict[str, Any]:
        return self.control("stats", method="GET")

    def state(self) -> dict[str, Any]:
        return self.control("state", method="GET")


@pytest.fixture
def access_panel(tmp_path: Path) -> Iterator[AccessPanel]:
    panel = AccessPanel(tmp_path, extra=[*FAST, "--state-file", str(tmp_path / "panel-state.json")]).start()
    yield panel
    panel.stop()
