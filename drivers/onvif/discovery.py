"""WS-Discovery of ONVIF cameras: a multicast Probe, and a tolerant parser of the answers.

Real cameras answer in several shapes: a ``ProbeMatches`` wrapper around ``ProbeMatch`` elements (the
standard), bare ``ProbeMatch`` elements, or a ``Hello`` (ipycam and some cheap cameras). The parser looks for
the endpoint address, XAddrs, Types and Scopes wherever they are, so all of these count.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree as ET

GROUP, PORT = "239.255.255.250", 3702
WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
MATCH_TAGS = {"ProbeMatch", "Hello"}


def probe_message(message_id: str | None = None) -> bytes:
    mid = message_id or f"uuid:{uuid.uuid4()}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="{WSA}" xmlns:d="{WSD}" '
        'xmlns:dn="http://www.onvif.org/ver10/network/wsdl"><s:Header>'
        f"<a:Action>{WSD}/Probe</a:Action><a:MessageID>{mid}</a:MessageID>"
        "<a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To></s:Header>"
        "<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body></s:Envelope>"
    ).encode()


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _scope_info(scopes: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in scopes:
        path = urlsplit(s).path.strip("/").split("/")
        if s.startswith("onvif://www.onvif.org/") and len(path) >= 2 and path[0] in ("name", "hardware", "location"):
            out.setdefault(path[0], unquote("/".join(path[1:])))
    return out


def split_scopes(text: str) -> list[str]:
    """The space-separated scope URIs; a word that is no URI continues the previous scope, as cameras that
    put an unescaped space in their name send it (``onvif://www.onvif.org/name/Virtual Camera``)."""
    out: list[str] = []
    for word in text.split():
        if out and "://" not in word and ":" not in word:
            out[-1] += " " + word
        else:
            out.append(word)
    return out


def parse_matches(data: bytes, sender: str) -> list[dict[str, Any]]:
    """Every camera described in one datagram (empty when it is not a discovery answer)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return []
    out = []
    for el in root.iter():
        if _local(el.tag) not in MATCH_TAGS:
            continue
        fields: dict[str, str] = {}
        for child in el.iter():
            name = _local(child.tag)
            if name in ("Address", "XAddrs", "Types", "Scopes") and child.text:
                fields.setdefault(name, child.text.strip())
        xaddrs = fields.get("XAddrs", "").split()
        if not xaddrs:
            continue
        scopes = split_scopes(fields.get("Scopes", ""))
        info = _scope_info(scopes)
        first = urlsplit(xaddrs[0])
        out.append({
            "endpoint": fields.get("Address", ""), "address": first.hostname or sender, "port": first.port or 80,
            "xaddrs": xaddrs, "types": fields.get("Types", "").split(), "scopes": scopes,
            "name": info.get("name"), "model": info.get("hardware"), "location": info.get("location"),
            "from": sender,
        })
    return out


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.found: dict[str, dict[str, Any]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        for m in parse_matches(data, str(addr[0])):
            self.found.setdefault(m["endpoint"] or m["xaddrs"][0], m)


async def discover(wait: float = 3.0, interface: str | None = None, repeats: int = 2) -> list[dict[str, Any]]:
    """Probe the local network (multicast) and list the cameras that answered within ``wait`` seconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    if interface:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    sock.bind((interface or "0.0.0.0", 0))
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Collector, sock=sock)
    try:
        msg = probe_message()
        for _ in range(repeats):  # UDP: a second probe for a lost datagram, same MessageID
            transport.sendto(msg, (GROUP, PORT))
            await asyncio.sleep(min(0.2, wait / 4))
        await asyncio.sleep(max(0.0, wait - repeats * min(0.2, wait / 4)))
    finally:
        transport.close()
    return sorted(proto.found.values(), key=lambda m: (m["address"], m["port"]))


class Responder(asyncio.DatagramProtocol):
    """The camera side, for the simulator: answers Probes with a ProbeMatch (wrapped or bare)."""

    def __init__(self, xaddr: str, scopes: list[str], bare: bool = False) -> None:
        self.xaddr, self.scopes, self.bare = xaddr, scopes, bare
        self.endpoint = f"urn:uuid:{uuid.uuid4()}"
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # a datagram transport (asyncio's selector one is not a DatagramTransport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        with contextlib.suppress(ET.ParseError):
            root = ET.fromstring(data)
            if not any(_local(e.tag) == "Probe" for e in root.iter()):
                return
            relates = next((e.text for e in root.iter() if _local(e.tag) == "MessageID"), "")
            match = (f"<d:ProbeMatch><a:EndpointReference><a:Address>{self.endpoint}</a:Address>"
                     "</a:EndpointReference><d:Types>dn:NetworkVideoTransmitter</d:Types>"
                     f"<d:Scopes>{' '.join(self.scopes)}</d:Scopes><d:XAddrs>{self.xaddr}</d:XAddrs>"
                     "<d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch>")
            body = match if self.bare else f"<d:ProbeMatches>{match}</d:ProbeMatches>"
            reply = ('<?xml version="1.0" encoding="UTF-8"?>'
                     f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="{WSA}" '
                     f'xmlns:d="{WSD}" xmlns:dn="http://www.onvif.org/ver10/network/wsdl"><s:Header>'
                     f"<a:Action>{WSD}/ProbeMatches</a:Action><a:MessageID>urn:uuid:{uuid.uuid4()}</a:MessageID>"
                     f"<a:RelatesTo>{relates}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>")
            if self.transport is not None:
                self.transport.sendto(reply.encode(), addr)


async def serve_responder(xaddr: str, scopes: list[str], bare: bool, bind: str = "0.0.0.0") -> asyncio.BaseTransport:
    """Listen on the discovery group (for the simulator; only inside a test's network namespace)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((bind, PORT))
    mreq = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("0.0.0.0"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: Responder(xaddr, scopes, bare), sock=sock)
    return transport
