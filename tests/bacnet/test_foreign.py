"""Foreign-device registration: a controller on 'another subnet' reached through a BBMD."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agent.errors import DeviceUnreachable
from agent.model import Quality
from tests.peers.bacnet import BACnetLab, next_host, write_profile


async def test_discovered_by_instance_through_bbmd(bacnet_lab: BACnetLab) -> None:
    from bacpypes3.app import Application

    bbmd_host = next_host()
    bbmd = Application.from_args(SimpleNamespace(
        name="bbmd", instance=900, address=f"{bbmd_host}/8:47808", network=0, vendoridentifier=999,
        foreign=None, ttl=30, bbmd=[f"{bbmd_host}/8:47808"]))
    try:
        sim = await bacnet_lab.sim(instance=1777)
        write_profile(bacnet_lab.tmp, "ahu", "- {name: room, object_type: analog-input, instance: 3}")
        # no address: the driver registers with the BBMD, whose broadcast distribution carries the Who-Is
        drv = await bacnet_lab.driver("ahu", sim, conn={"address": None, "bbmd": f"{bbmd_host}:47808",
                                                        "bbmd_ttl": "30s", "discover_timeout": "1.5s"})
        assert str(drv.address) == sim.host.removesuffix(":47808")
        [s] = await drv.read(drv.device.enabled_points)
        assert s.quality == Quality.GOOD and s.value == 21.0
        # without the BBMD the client's broadcast (its own port, 47809) reaches nobody: clear error
        lone = await bacnet_lab.driver("ahu", sim, name="lone", start=False, conn={
            "address": None, "local_address": f"{next_host()}/8", "discover_timeout": "0.5s"})
        with pytest.raises(DeviceUnreachable, match="no I-Am from device 1777"):
            await lone.start()
    finally:
        bbmd.close()
