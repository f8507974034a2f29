"""The box's BACnet/IP interface (issue 8, item 17): an IP without prefix, an interface name, ``host`` on a
box without a default route, and a second BACnet/IP stack on the same address and port.

The field cases run in network namespaces joined by a bridge (tests/bacnet/test_netns.py's ``Lan``): every
namespace has eth0 = 10.231.0.n/24 and no default route; everyone uses port 47808 as on a site. The error
messages are also checked on loopback without root.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from agent.errors import DeviceUnreachable
from drivers.bacnet import localif
from drivers.bacnet.localif import resolve_local
from tests.bacnet.test_netns import ROOT, Lan, lan  # noqa: F401  (fixture)
from tests.peers.bacnet import BACnetLab, write_profile

DRIVE = textwrap.dedent("""\
    import asyncio, json, sys
    from pathlib import Path
    from agent.config import load_site
    from agent.contract.driver import DriverContext
    from agent.errors import DriverError
    from drivers.bacnet.driver import BACnetDriver
    async def main():
        dev = load_site(sys.argv[1]).devices[0]
        drv = BACnetDriver(dev, DriverContext("netns", Path(sys.argv[2])))
        try:
            await drv.start()
        except DriverError as exc:
            print(json.dumps({"error": str(exc)}))
            return
        got = await drv.read(dev.enabled_points)
        await drv.stop()
        print(json.dumps({"address": str(drv.address), "local": drv.local,
                          "errors": [s.error for s in got if s.error]}))
    asyncio.run(main())
""")


def _site(tmp: Path, local: str) -> Path:
    site = tmp / f"site-{local.replace('/', '_')}.yaml"
    site.write_text(textwrap.dedent(f"""\
        site: {{id: netns}}
        uplink: {{broker: "mqtt://127.0.0.1:1"}}
        profiles_dirs: [{ROOT / 'profiles'}]
        devices:
          - name: ahu
            type: demo-bacnet-ahu
            timeout: 1s
            connection: {{device_instance: 5012, local_address: "{local}", discover_timeout: 2s}}
    """))
    return site


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.root
@pytest.mark.slow
def test_local_interface_on_a_site_without_default_route(lan: Lan, tmp_path: Path) -> None:  # noqa: F811
    client = lan.host(1)
    ns = lan.host(12)
    lan.start(ns, "-m", "drivers.bacnet.sim", "--address", "10.231.0.12/24", "--instance", "5012")
    (tmp_path / "drive.py").write_text(DRIVE)

    def discover(*local: str) -> tuple[int, str, str]:
        r = lan.run(client, "-m", "agent.tools.cli", "bacnet", "discover", *local, "--low", "5000", "--high", "5999",
                    "--timeout", "1", "--json")
        return r.returncode, r.stdout, r.stderr

    # an IP without prefix: the prefix comes from eth0, the Who-Is is broadcast, the device is found
    for local in (["--local", "10.231.0.1"], ["--local", "eth0"]):
        rc, out, err = discover(*local)
        assert rc == 0, err
        assert [d["instance"] for d in json.loads(out)] == [5012]
    # the driver: local_address without prefix, device found by instance (Who-Is), polled
    res = lan.run(client, str(tmp_path / "drive.py"), str(_site(tmp_path, "10.231.0.1")), str(tmp_path))
    out = json.loads(res.stdout)
    assert out == {"address": "10.231.0.12", "local": "10.231.0.1/24", "errors": []}, res.stderr
    # host without a default route, an unknown interface: one clear line each
    rc, _, err = discover()
    assert rc == 1 and "local_address host: this box has no default route" in _one_line(err)
    rc, _, err = discover("--local", "eth7")
    assert rc == 1 and "no interface named eth7 on this box (interfaces: eth0, lo)" in _one_line(err)
    rc, _, err = discover("--local", "10.231.0.1/33")
    assert rc == 1 and _one_line(err).startswith("edge-agent bacnet discover: --local: ")
    res = lan.run(client, str(tmp_path / "drive.py"), str(_site(tmp_path, "host")), str(tmp_path))
    assert "this box has no default route" in json.loads(res.stdout)["error"]
    # a second stack on the same address and port (another process): the driver refuses, discover warns
    lan.start(client, "-m", "drivers.bacnet.sim", "--address", "10.231.0.1/24", "--instance", "5999")
    res = lan.run(client, str(tmp_path / "drive.py"), str(_site(tmp_path, "eth0")), str(tmp_path))
    assert "another BACnet/IP stack already uses 10.231.0.1:47808" in json.loads(res.stdout)["error"]
    rc, out, err = discover("--local", "eth0")
    assert "another BACnet/IP stack already uses 10.231.0.1:47808" in err


def test_messages_on_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_local("127.0.0.1") == "127.0.0.1/8"
    assert resolve_local("lo") == "127.0.0.1/8"
    assert resolve_local("10.0.0.1/16") == "10.0.0.1/16"
    with pytest.raises(DeviceUnreachable, match=r"local_address 203\.0\.113\.7 is not an address of this box "
                                                r"\(its IPv4 addresses: lo 127\.0\.0\.1/8"):
        resolve_local("203.0.113.7")
    with pytest.raises(DeviceUnreachable, match="no interface named nosuch0 on this box"):
        resolve_local("nosuch0")
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\n")
    monkeypatch.setattr(localif, "ROUTE_FILE", route)
    with pytest.raises(DeviceUnreachable, match="local_address host: this box has no default route"):
        resolve_local("host")


async def test_ip_without_prefix_and_a_second_stack_on_loopback(bacnet_lab: BACnetLab) -> None:
    sim = await bacnet_lab.sim()
    write_profile(bacnet_lab.tmp, "ahu", "- {name: t, object_type: analog-input, instance: 3}\n")
    drv = await bacnet_lab.driver("ahu", sim, conn={"local_address": bacnet_lab.client_host})
    assert drv.local == f"{bacnet_lab.client_host}/8"
    assert (await drv.read(drv.device.enabled_points))[0].value == 21.0
    # another process's stack on that address and port: here a second application in another context
    from agent.contract.driver import DriverContext
    from drivers.bacnet.driver import BACnetDriver

    other = BACnetDriver(drv.device, DriverContext("other", bacnet_lab.tmp))
    with pytest.raises(DeviceUnreachable, match=f"another BACnet/IP stack already uses {bacnet_lab.client_host}"
                                                ":47809 on this box"):
        await other.start()


def test_discover_on_a_32_prefix_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """bacpypes3 on a /32 has no broadcast address: the Who-Is would fail in a background task
    ("Task exception was never retrieved") and the command would report that nobody answered."""
    from agent.tools.cli import main

    rc = main(["bacnet", "discover", "--local", "127.77.9.9/32", "--port", "47809", "--timeout", "0.3"])
    err = capsys.readouterr().err
    assert rc == 1 and _one_line(err) == (
        "edge-agent bacnet discover: --local 127.77.9.9/32 has no broadcast address, so a Who-Is reaches "
        "nobody: give the real prefix, --address, --broadcast or --bbmd")


async def test_reopening_right_after_close_is_not_another_stack() -> None:
    """The supervisor may stop and start a device's shared socket back to back: the closed socket of this
    process is not taken for another stack."""
    from drivers.bacnet import BACnetConnection
    from drivers.bacnet.driver import open_application
    from tests.peers.bacnet import next_host

    conn = BACnetConnection(device_instance=1, local_address=f"{next_host()}/8", local_port=47809)
    for _ in range(3):
        app = await open_application(conn)
        app.close()
