"""Broadcast discovery as on a real site: network namespaces joined by a bridge, everyone on port 47808.

The bridge lives in its own namespace too, so the host's network is never touched. Needs root (CI has it);
skipped with the reason otherwise. Namespaces are deleted however the test ends.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.common import stop_process

ROOT = Path(__file__).resolve().parents[2]
_seq = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


class Lan:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{next(_seq)}"
        self.prefix = f"eabn{tag}"
        self.bridge_ns = f"{self.prefix}br"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    def create(self) -> None:
        _ip("netns", "add", self.bridge_ns)
        self.namespaces.append(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def host(self, n: int) -> str:
        """A namespace with eth0 = 10.231.0.n/24 on the bridge."""
        ns = f"{self.prefix}h{n}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", self.bridge_ns, "link", "add", f"v{n}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.bridge_ns, "link", "set", f"v{n}", "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"10.231.0.{n}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def run(self, ns: str, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, *cmd], cwd=ROOT, capture_output=True,
                              text=True, timeout=30, **kw)  # type: ignore[call-overload]

    def start(self, ns: str, *cmd: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *cmd], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), (line, proc.stderr.read() if proc.stderr else "")
        return proc

    def destroy(self) -> None:
        for p in self.procs:
            stop_process(p)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns)")
    lan = Lan()
    try:
        lan.create()
    except (OSError, subprocess.CalledProcessError) as exc:
        lan.destroy()
        err = getattr(exc, "stderr", "") or exc
        pytest.skip(f"ip netns not permitted here: {err}")
    try:
        yield lan
    finally:
        lan.destroy()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert lan.prefix not in left, "namespaces left behind"


@pytest.mark.root
@pytest.mark.slow
def test_global_who_is_in_namespaces(lan: Lan, tmp_path: Path) -> None:
    client = lan.host(1)
    for n, inst in ((11, 5011), (12, 5012), (13, 5013)):
        ns = lan.host(n)
        lan.start(ns, "-m", "drivers.bacnet.sim", "--address", f"10.231.0.{n}/24", "--instance", str(inst))
    # plain global Who-Is, every device and the client on 47808
    res = lan.run(client, "-m", "agent.tools.cli", "bacnet", "discover", "--local", "10.231.0.1/24",
                  "--low", "5000", "--high", "5999", "--timeout", "1", "--json")
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert [(d["instance"], d["address"]) for d in found] == [
        (5011, "10.231.0.11"), (5012, "10.231.0.12"), (5013, "10.231.0.13")]
    assert all(d["model"] == "EA-SIM-AHU" for d in found)
    # a device without an address in the site file is found by instance, then polled and written
    site = tmp_path / "site.yaml"
    site.write_text(textwrap.dedent(f"""\
        site: {{id: netns}}
        uplink: {{broker: "mqtt://127.0.0.1:1"}}
        profiles_dirs: [{ROOT / 'profiles'}]
        devices:
          - name: ahu
            type: demo-bacnet-ahu
            connection: {{device_instance: 5012, local_address: 10.231.0.1/24}}
    """))
    script = textwrap.dedent(f"""\
        import asyncio, json
        from pathlib import Path
        from agent.config import load_site
        from agent.contract.driver import DriverContext
        from drivers.bacnet.driver import BACnetDriver
        async def main():
            dev = load_site({str(site)!r}).devices[0]
            drv = BACnetDriver(dev, DriverContext("netns", Path({str(tmp_path)!r})))
            await drv.start()
            pts = {{p.name: p for p in dev.points}}
            await drv.write(pts["room_setpoint"], 24.0)
            got = await drv.read(dev.enabled_points)
            await drv.stop()
            print(json.dumps({{"address": str(drv.address), "values": {{s.point: s.value for s in got}},
                              "errors": [s.error for s in got if s.error]}}))
        asyncio.run(main())
    """)
    res = lan.run(client, "-c", script)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["address"] == "10.231.0.12" and not out["errors"]
    assert out["values"]["room_setpoint"] == 24.0 and out["values"]["mode"] == 4
