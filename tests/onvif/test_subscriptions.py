"""Cameras that get subscriptions wrong: push notifications only, broken or absolute termination times.

Each runs the real agent against the simulator started with the misbehaviour (drivers/onvif/sim.py), which
really drops a subscription that is not renewed in time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.onvif.events import PUSH_ONLY
from tests.core.agentkit import Collector, running_agent
from tests.onvif.test_agent import _events, _site, _values
from tests.peers.onvif import OnvifCamera

ROOT = Path(__file__).resolve().parents[2]


def _profile(subscription: str) -> str:
    text = (ROOT / "profiles" / "generic-onvif-camera.yaml").read_text()
    return text.replace("subscription: 60s", f"subscription: {subscription}")


async def test_push_only_camera_is_said_once_and_not_retried(tmp_path: Path, broker: Any) -> None:
    cam = OnvifCamera(tmp_path, extra=["--push-only"]).start()
    try:
        site = _site(tmp_path, broker, {"cam1": cam})
        async with Collector(broker.port) as col, running_agent(site):
            await col.wait(lambda: any(e["data"].get("events") == "push-only"
                                       for e in _events(col, "cam1", "availability")), 15, "push-only said")
            await asyncio.sleep(8)  # long enough for several restarts with the driver's 5 s backoff
            await col.wait(lambda: _values(col, "cam1", "model") == ["EA-CAM-1"], 5, "facts still published")
        avail = [e["data"] for e in _events(col, "cam1", "availability")]
        said = [a for a in avail if a.get("events") == "push-only"]
        assert len(said) == 1 and said[0]["reason"] == f"events: {PUSH_ONLY}" and said[0]["state"] == "online", avail
        assert not any(a.get("state") == "offline" for a in avail), avail
        # asked once (and its capabilities read once): no retry loop behind the reason
        assert cam.stats()["ops"].get("CreatePullPointSubscription") == 1, cam.stats()
    finally:
        cam.stop()


# what the camera writes (simulator options); lifetime asked 8 s
CASES = {
    # Renew answers without CurrentTime from a camera 10 min behind, granting 5 s: read against its clock
    "no-current-time": ["--termination", "no-current-time", "--max-lifetime", "5", "--clock-offset", "-600"],
    # TerminationTime without a time zone beside a CurrentTime with one (granting 5 s)
    "naive": ["--termination", "naive", "--max-lifetime", "5"],
    # TerminationTime equal to CurrentTime whatever is granted: renewed early, not in a storm
    "zero": ["--termination", "zero"],
    # relative durations (PT8S) refused: switched to absolute times
    "absolute-only": ["--termination", "absolute-only"],
}


@pytest.mark.parametrize("case", list(CASES))
async def test_broken_termination_times_are_renewed_in_time(tmp_path: Path, broker: Any, case: str) -> None:
    cam = OnvifCamera(tmp_path, extra=CASES[case]).start()
    try:
        site = _site(tmp_path, broker, {"cam1": cam}, extra=_profile("8s"))
        async with Collector(broker.port) as col, running_agent(site):
            await col.wait(lambda: cam.stats()["subscriptions_live"] == 1, 15, "subscription")
            t0 = time.monotonic()
            await asyncio.sleep(14)  # longer than what the camera grants: only renewals keep it
            stats = cam.stats()
            took = time.monotonic() - t0
            # one subscription kept alive by renewals: never expired, never recreated, no renew storm
            assert stats["subscriptions"] == 1, stats
            assert 2 <= stats["renews"] <= 7, (stats, took)
            n = len(_events(col, "cam1", "motion"))
            cam.motion(True)
            await col.wait(lambda: any(e["data"]["state"] is True for e in _events(col, "cam1", "motion")[n:]), 2,
                           "motion through the renewed subscription")
        assert not any(e["data"].get("events") == "lost" for e in _events(col, "cam1", "availability"))
    finally:
        cam.stop()
