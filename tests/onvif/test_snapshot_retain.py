"""`snapshots.retain`: the camera's last picture kept by a real Mosquitto for late subscribers, only when set."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from PIL import Image

from tests.core.agentkit import Collector, running_agent
from tests.onvif.test_agent import _pictures, _site
from tests.peers.onvif import OnvifCamera

ROOT = Path(__file__).resolve().parents[2]


async def _late(port: int, topic: str, wait: float = 1.5) -> list[aiomqtt.Message]:
    """What a subscriber arriving now gets (retained messages only: nothing else is published meanwhile)."""
    got: list[aiomqtt.Message] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier="late-viewer", clean_session=True) as c:
        await c.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                async for msg in c.messages:
                    got.append(msg)
    return got


@pytest.mark.parametrize("retain", [True, False])
async def test_late_subscriber_gets_the_last_picture_only_when_retained(tmp_path: Path, broker: Any,
                                                                        retain: bool) -> None:
    cam = OnvifCamera(tmp_path).start()
    try:
        snaps = f"{{kinds: [motion], min_interval: 1s, retain: {str(retain).lower()}}}"
        profile = (ROOT / "profiles" / "generic-onvif-camera.yaml").read_text().replace(
            "device:\n", f"device:\n  snapshots: {snaps}\n")
        site = _site(tmp_path, broker, {"cam1": cam}, extra=profile)
        async with Collector(broker.port) as col, running_agent(site):
            await col.wait(lambda: cam.stats()["subscriptions_live"] == 1, 15, "subscription")
            cam.motion(True)  # a picture of the event
            await col.wait(lambda: len(_pictures(col, "cam1")) >= 1, 5, "picture of the event")
            await asyncio.sleep(1.2)
            async with aiomqtt.Client("127.0.0.1", broker.port) as op:  # and one by command
                await op.publish("ea/v1/t1/cmd", json.dumps({"id": "s1", "cmd": "snapshot",
                                                             "args": {"device": "cam1"}}), qos=1)
                await col.wait(lambda: any(m["doc"].get("id") == "s1" for m in col.of("ack")), 10, "ack")
            ack = next(m["doc"] for m in col.of("ack") if m["doc"].get("id") == "s1")
            assert ack["ok"], ack
            await col.wait(lambda: any(m["topic"] == ack["result"]["topic"] for m in col.messages), 5, "picture")
            await asyncio.sleep(0.5)
            late = await _late(broker.port, "ea/v1/t1/s/#")
        by_ref = [m for m in _pictures(col, "cam1") if not m["topic"].endswith("/last")]
        assert len(by_ref) == 2  # the event's and the command's, on their own topics, as always
        if not retain:
            assert late == [] and not any(m["topic"].endswith("/last") for m in col.messages)
            return
        # one retained picture per camera, on its fixed topic: the last one taken
        assert [(str(m.topic), m.retain) for m in late] == [("ea/v1/t1/s/cam1/last", True)]
        payload = late[0].payload
        assert isinstance(payload, bytes) and payload == by_ref[-1]["raw"]
        assert Image.open(io.BytesIO(payload)).format == "JPEG"
    finally:
        cam.stop()
