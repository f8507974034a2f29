"""A simulated ONVIF camera (drivers/onvif/sim.py) as a real process on loopback, started by the tests.

It keeps its port across restarts, so a restart is a camera reboot: every subscription is forgotten. Faults
(motion, dropped renews, slow answers) are set through its control URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from .common import SimProcess

PASSWORD = "s3cret-Pw-9f1"  # tests grep every payload and log line for it


@dataclass
class OnvifCamera(SimProcess):
    module: ClassVar[str] = "drivers.onvif.sim"
    log_prefix: ClassVar[str] = "onvif-sim"
    password: str = PASSWORD

    def motion(self, on: bool = True) -> None:
        self.control("motion", on=int(on))

    def stats(self) -> dict[str, Any]:
        return self.control("stats")


@pytest.fixture
def onvif_camera(tmp_path: Path) -> Iterator[OnvifCamera]:
    cam = OnvifCamera(tmp_path).start()
    yield cam
    cam.stop()
