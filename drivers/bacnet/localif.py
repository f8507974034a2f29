"""Which local interface BACnet/IP uses: ``host``, an IP, an IP/prefix or an interface name → ``IP/prefix``.

bacpypes3 needs the prefix to know the subnet's broadcast address: without it (``10.61.1.3``) it binds as a
/32, no Who-Is can ever be broadcast and every device is reported as missing its I-Am. The prefix is taken
from the interface that holds the address. Every failure is one line for the user (``DeviceUnreachable``).
Also here: noticing another BACnet/IP stack on the same address and port (bacpypes3 binds with SO_REUSEPORT,
so a second process binds silently and the kernel splits the unicast replies between the two).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.errors import DeviceUnreachable

IFNAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:@-]{0,14}")
HINT = "give local_address as IP/prefix (e.g. 192.168.10.5/24) or an interface name (e.g. eth0)"


@dataclass(frozen=True)
class IfAddr:
    ifname: str
    ip: str
    prefix: int

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefix}"


def addresses() -> list[IfAddr]:
    """Every IPv4 address of this machine (``ip -j -4 addr``; the kernel's primary addresses without it)."""
    ip = shutil.which("ip")
    if ip is not None:
        try:
            out = subprocess.run([ip, "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=5,
                                 check=True).stdout
            return [IfAddr(str(link["ifname"]), str(a["local"]), int(a["prefixlen"]))
                    for link in json.loads(out or "[]") for a in link.get("addr_info", [])
                    if a.get("family") == "inet"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
            pass
    return _ioctl_addresses()


def _ioctl_addresses() -> list[IfAddr]:
    import fcntl
    import struct

    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
                mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x891B, req)[20:24])  # SIOCGIFNETMASK
            except OSError:
                continue
            out.append(IfAddr(name, addr, ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen))
    return out


ROUTE_FILE = Path("/proc/net/route")


def default_route_interface() -> str | None:
    try:
        lines = ROUTE_FILE.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000":
            return f[0]
    return None


def _listing(addrs: list[IfAddr]) -> str:
    return ", ".join(f"{a.ifname} {a.cidr}" for a in addrs) or "none"


def resolve_local(spec: str) -> str:
    """``IP/prefix`` for a ``local_address`` setting; DeviceUnreachable (one line) when there is none."""
    if "/" in spec:
        return spec
    addrs = addresses()
    if spec == "host":
        ifname = default_route_interface()
        if ifname is None:
            raise DeviceUnreachable(f"local_address host: this box has no default route; {HINT}")
        mine = [a for a in addrs if a.ifname == ifname]
        if not mine:
            raise DeviceUnreachable(f"local_address host: the default route's interface {ifname} has no IPv4 "
                                    f"address; {HINT}")
        return mine[0].cidr
    try:
        ip = ipaddress.IPv4Address(spec)
    except ValueError:
        ip = None
    if ip is not None:
        exact = [a for a in addrs if a.ip == spec]
        if exact:
            return exact[0].cidr
        # an address the kernel routes locally without holding it (127.x.y.z on lo's 127.0.0.1/8)
        within = [a for a in addrs if ip in ipaddress.IPv4Network(a.cidr, strict=False) and a.ip.startswith("127.")]
        if within:
            return f"{spec}/{within[0].prefix}"
        raise DeviceUnreachable(f"local_address {spec} is not an address of this box (its IPv4 addresses: "
                                f"{_listing(addrs)}); {HINT}")
    if not IFNAME.fullmatch(spec):
        raise DeviceUnreachable(f"local_address {spec!r} is neither an IPv4 address nor an interface name; {HINT}")
    mine = [a for a in addrs if a.ifname == spec]
    if mine:
        return mine[0].cidr
    names = sorted({n for _, n in socket.if_nameindex()})
    if spec in names:
        raise DeviceUnreachable(f"interface {spec} has no IPv4 address (its addresses: {_listing(addrs)})")
    raise DeviceUnreachable(f"no interface named {spec} on this box (interfaces: {', '.join(names)})")


def other_stack(ip: str, port: int) -> bool:
    """True when another socket already holds ``ip:port`` (another BACnet/IP stack on this box).

    The probe binds without SO_REUSEADDR/SO_REUSEPORT, which fails only when someone holds the address.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, port))
        except OSError as exc:
            import errno

            return exc.errno == errno.EADDRINUSE
    return False
