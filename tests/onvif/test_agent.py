"""End to end: the real agent (supervisor, pipeline, outbox, uplink) with simulated cameras and Mosquitto."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.core.agentkit import Collector, running_agent, write_site
from tests.peers.onvif import OnvifCamera


def _values(col: Collector, device: str, point: str) -> list[Any]:
    return [s["value"] for m in col.of("t") if m.get("device") == device for s in m["samples"]
            if s["point"] == point]


def _events(col: Collector, device: str, kind: str | None = None) -> list[dict[str, Any]]:
    out = []
    for m in col.of("e"):
        doc = m.get("doc")
        if isinstance(doc, dict) and doc.get("src") == device and (kind is None or doc.get("kind") == kind):
            out.append(doc)
    return out


def _site(tmp_path: Path, broker: Any, cams: dict[str, OnvifCamera], extra: str = "",
          password_file: Path | None = None) -> Path:
    pw = password_file or tmp_path / "cam-password"
    if password_file is None:
        pw.write_text(next(iter(cams.values())).password + "\n")
    devices = "".join(
        f"  - name: {name}\n    type: {'test-camera' if extra else 'generic-onvif-camera'}\n"
        "    interval: 2s\n    slow_interval: 30s\n    timeout: 2s\n"
        f"    connection: {{host: 127.0.0.1, port: {cam.port}, user: admin, password: {{file: {pw}}}}}\n"
        for name, cam in cams.items()
    )
    site = write_site(tmp_path, broker.url, devices=devices)
    if extra:
        (tmp_path / "profiles").mkdir(exist_ok=True)
        (tmp_path / "profiles" / "test-camera.yaml").write_text(extra)
        site.write_text(site.read_text().replace("devices:\n", f"profiles_dirs: [{tmp_path / 'profiles'}]\ndevices:\n"))
    return site


async def test_facts_and_motion_reach_the_broker(onvif_camera: OnvifCamera, broker: Any, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    site = _site(tmp_path, broker, {"cam1": onvif_camera})
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: _values(col, "cam1", "model") == ["EA-CAM-1"], 15, "facts")
        assert _values(col, "cam1", "online") == [True]
        assert _values(col, "cam1", "manufacturer") == ["EdgeSim"]
        assert _values(col, "cam1", "firmware") == ["1.4.2"]
        assert _values(col, "cam1", "serial") == ["SIM0001"]
        assert _values(col, "cam1", "main_resolution") == ["1920x1080"]
        assert _values(col, "cam1", "sub_resolution") == ["640x360"]
        assert _values(col, "cam1", "main_codec") == ["H264"]
        assert _values(col, "cam1", "main_fps") == [25]
        assert _values(col, "cam1", "main_stream_uri") == ["rtsp://127.0.0.1:8554/main"]
        assert _values(col, "cam1", "sub_stream_uri") == ["rtsp://127.0.0.1:8554/sub"]
        assert _values(col, "cam1", "snapshot_supported") == [True]
        assert _values(col, "cam1", "events_supported") == [True]
        assert _values(col, "cam1", "ptz") == [False]
        assert "MainStream 1920x1080 H264 25fps" in _values(col, "cam1", "profiles")[0]
        assert abs(_values(col, "cam1", "clock_offset")[0]) <= 1.0
        # motion on -> event at the broker in under 1 s
        await col.wait(lambda: onvif_camera.stats()["subscriptions_live"] == 1, 10, "subscription")
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        onvif_camera.motion(True)
        await col.wait(lambda: any(e["data"]["state"] is True and e["data"]["operation"] == "Changed"
                                   for e in _events(col, "cam1", "motion")), 1.0, "motion event under 1 s")
        print(f"motion to broker: {(time.monotonic() - t0) * 1000:.0f} ms")
        ev = next(e for e in _events(col, "cam1", "motion") if e["data"]["state"] is True
                  and e["data"]["operation"] == "Changed")
        assert ev["sev"] == "warning"
        assert ev["data"]["topic"] == "tns1:RuleEngine/CellMotionDetector/Motion"
        assert ev["data"]["source"] == {"VideoSourceConfigurationToken": "vsc0"}
        assert ev["data"]["id"]
        onvif_camera.control("tamper", on=1)
        await col.wait(lambda: any(e["data"]["state"] is True for e in _events(col, "cam1", "tamper")), 3, "tamper")
        assert next(e for e in _events(col, "cam1", "tamper") if e["data"]["state"] is True)["sev"] == "alarm"
    # no credentials anywhere: not in a payload, not in a log line
    for m in col.messages:
        assert onvif_camera.password.encode() not in m["raw"], m
    assert onvif_camera.password not in caplog.text


async def test_events_again_within_15s_after_camera_restart(onvif_camera: OnvifCamera, broker: Any,
                                                             tmp_path: Path) -> None:
    site = _site(tmp_path, broker, {"cam1": onvif_camera})
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: onvif_camera.stats()["subscriptions_live"] == 1, 15, "subscription")
        onvif_camera.stop()
        await asyncio.sleep(3)  # the camera is away: pulls fail, the device goes offline
        onvif_camera.start()  # back, every subscription forgotten
        t0 = time.monotonic()
        await col.wait(lambda: onvif_camera.stats()["subscriptions_live"] >= 1, 15, "resubscribed")
        n = len(_events(col, "cam1", "motion"))
        onvif_camera.motion(True)
        await col.wait(lambda: any(e["data"]["state"] is True for e in _events(col, "cam1", "motion")[n:]),
                       max(0.5, 15 - (time.monotonic() - t0)), "motion within 15 s of the camera answering")
        took = time.monotonic() - t0
        print(f"events again {took:.1f} s after the camera answered")
        assert took < 15
        states = [e["data"] for e in _events(col, "cam1", "availability")]
        assert any(d.get("events") == "lost" for d in states) or any(d.get("state") == "offline" for d in states)


async def test_dropped_renew_is_resubscribed(onvif_camera: OnvifCamera, broker: Any, tmp_path: Path) -> None:
    profile = (Path(__file__).resolve().parents[2] / "profiles" / "generic-onvif-camera.yaml").read_text()
    profile = profile.replace("subscription: 60s", "subscription: 3s")
    site = _site(tmp_path, broker, {"cam1": onvif_camera}, extra=profile)
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: onvif_camera.stats()["subscriptions_live"] == 1, 15, "subscription")
        await col.wait(lambda: onvif_camera.stats()["renews"] >= 1, 10, "a renew")
        onvif_camera.control("drop-renew", n=1)
        await col.wait(lambda: onvif_camera.stats()["dropped_renews"] == 1, 10, "the renew dropped")
        await col.wait(lambda: any(e["data"].get("events") == "resubscribed"
                                   for e in _events(col, "cam1", "availability")), 10, "resubscribed")
        assert onvif_camera.stats()["subscriptions"] >= 2
        onvif_camera.motion(True)
        await col.wait(lambda: any(e["data"]["state"] is True for e in _events(col, "cam1", "motion")), 3,
                       "events flow after the dropped renew")


async def test_wrong_password_says_so_without_retry_storm(onvif_camera: OnvifCamera, broker: Any,
                                                           tmp_path: Path) -> None:
    bad = tmp_path / "bad-password"
    bad.write_text("not-the-password\n")
    site = _site(tmp_path, broker, {"cam1": onvif_camera}, password_file=bad)
    async with Collector(broker.port) as col, running_agent(site):
        await col.wait(lambda: any(e["data"].get("state") == "offline" for e in _events(col, "cam1", "availability")),
                       15, "offline")
        ev = next(e for e in _events(col, "cam1", "availability") if e["data"].get("state") == "offline")
        assert ev["data"]["reason"].startswith("auth:"), ev
        assert "wrong user or password" in ev["data"]["reason"]
        await asyncio.sleep(8)
    assert onvif_camera.stats()["auth_failures"] <= 2


def _pictures(col: Collector, device: str) -> list[dict[str, Any]]:
    return [m for m in col.messages if m["kind"] == "s" and m.get("device") == device]


@pytest.mark.parametrize("auth", ["digest", "basic"])
async def test_snapshot_on_event_and_on_command(tmp_path: Path, broker: Any, auth: str) -> None:
    import io

    import aiomqtt
    from PIL import Image

    cam = OnvifCamera(tmp_path, extra=["--snapshot-auth", auth, "--snapshot-width", "1920",
                                       "--snapshot-height", "1080"]).start()
    try:
        profile = (Path(__file__).resolve().parents[2] / "profiles" / "generic-onvif-camera.yaml").read_text()
        profile = profile.replace("device:\n", "device:\n  snapshots: {width: 320, quality: 80, max_bytes: 12000, "
                                  "min_interval: 3s, kinds: [motion]}\n")
        site = _site(tmp_path, broker, {"cam1": cam}, extra=profile)
        async with Collector(broker.port) as col, running_agent(site):
            await col.wait(lambda: cam.stats()["subscriptions_live"] == 1, 15, "subscription")
            cam.motion(True)
            await col.wait(lambda: len(_pictures(col, "cam1")) == 1, 5, "snapshot of the motion event")
            ev = next(e for e in _events(col, "cam1", "motion") if e["data"]["state"] is True
                      and e["data"]["operation"] == "Changed")
            pic = _pictures(col, "cam1")[0]
            assert ev["data"]["snapshot"] is True
            assert pic["topic"] == f"ea/v1/t1/s/cam1/{ev['data']['id']}"
            assert pic["retain"] is False
            img = Image.open(io.BytesIO(pic["raw"]))
            assert (img.format, img.width, img.height) == ("JPEG", 320, 180)
            assert len(pic["raw"]) <= 12000
            # rate limit: a second motion within min_interval takes none
            cam.motion(False)
            cam.motion(True)
            await asyncio.sleep(1.0)
            assert len(_pictures(col, "cam1")) == 1
            await asyncio.sleep(2.5)
            async with aiomqtt.Client("127.0.0.1", broker.port) as op:
                cmd = {"id": "s1", "cmd": "snapshot", "args": {"device": "cam1"}}
                await op.publish("ea/v1/t1/cmd", json.dumps(cmd), qos=1)
                await col.wait(lambda: any(isinstance(m.get("doc"), dict) and m["doc"].get("id") == "s1"
                                           for m in col.of("ack")), 10, "ack")
                ack = next(m["doc"] for m in col.of("ack") if m["doc"].get("id") == "s1")
                assert ack["ok"], ack
                await col.wait(lambda: any(m["topic"] == ack["result"]["topic"] for m in _pictures(col, "cam1")), 5,
                               "snapshot of the command")
                for cid, dev in (("s2", "cam1"), ("s3", "nope")):
                    cmd = {"id": cid, "cmd": "snapshot", "args": {"device": dev}}
                    await op.publish("ea/v1/t1/cmd", json.dumps(cmd), qos=1)
                await col.wait(lambda: {"s2", "s3"} <= {m["doc"].get("id") for m in col.of("ack")}, 10, "acks")
                acks = {m["doc"]["id"]: m["doc"] for m in col.of("ack")}
                assert not acks["s2"]["ok"] and "rate limit" in acks["s2"]["error"]
                assert not acks["s3"]["ok"] and "no running camera" in acks["s3"]["error"]
        assert cam.stats()["snapshots"] == 2
        for m in col.messages:
            assert cam.password.encode() not in m["raw"]
    finally:
        cam.stop()
