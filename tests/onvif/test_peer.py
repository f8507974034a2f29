"""The simulated camera answers what onvif-zeep-async asks, parsed by zeep against the shipped WSDLs."""

from __future__ import annotations

import datetime as dt

import pytest
from onvif import ONVIFCamera
from zeep.exceptions import Fault

from tests.peers.onvif import OnvifCamera

PULL = {"MessageLimit": 10, "Timeout": dt.timedelta(seconds=2)}


async def test_client_parses_device_media_and_events(onvif_camera: OnvifCamera) -> None:
    cam = ONVIFCamera("127.0.0.1", onvif_camera.port, "admin", onvif_camera.password, no_cache=True,
                      adjust_time=True)
    try:
        await cam.update_xaddrs()
        assert "http://www.onvif.org/ver10/events/wsdl" in cam.xaddrs
        info = await (await cam.create_devicemgmt_service()).GetDeviceInformation()
        assert (info.Manufacturer, info.Model, info.SerialNumber) == ("EdgeSim", "EA-CAM-1", "SIM0001")
        profiles = await (await cam.create_media_service()).GetProfiles()
        assert [p.VideoEncoderConfiguration.Resolution.Width for p in profiles] == [1920, 640]
        manager = await cam.create_pullpoint_manager(dt.timedelta(seconds=60), lambda: None)
        onvif_camera.motion(True)
        res = await manager.get_service().PullMessages(PULL)
        msg = res.NotificationMessage[0]
        assert msg.Topic._value_1 == "tns1:RuleEngine/CellMotionDetector/Motion"
        assert msg.Message._value_1.Data.SimpleItem[0].Value == "true"
        await manager.set_synchronization_point()
        res = await manager.get_service().PullMessages(PULL)
        assert {m.Message._value_1.PropertyOperation for m in res.NotificationMessage} == {"Initialized"}
        assert await cam.get_snapshot("main")  # HTTP digest
        onvif_camera.restart()  # a reboot forgets the subscription
        with pytest.raises(Fault):
            await manager.get_service().PullMessages(PULL)
    finally:
        await cam.close()
    assert onvif_camera.stats()["subscriptions_live"] == 0


async def test_wrong_password_is_refused(onvif_camera: OnvifCamera) -> None:
    cam = ONVIFCamera("127.0.0.1", onvif_camera.port, "admin", "wrong", no_cache=True)
    try:
        with pytest.raises(Fault) as info:
            await cam.update_xaddrs()
        assert "NotAuthorized" in str([q.localname for q in info.value.subcodes or []])
    finally:
        await cam.close()
    assert onvif_camera.stats()["auth_failures"] >= 1
