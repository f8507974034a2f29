"""One camera's ONVIF session (onvif-zeep-async) and the facts read through it.

Every request runs under the device's timeout; library exceptions become the agent's DriverErrors here:
a refused login (``ter:NotAuthorized``) is told apart from an unreachable camera and from a missing service.
Credentials never leave this module in a URI: stream and snapshot URIs are stripped of user info and of
credential query parameters before they become facts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from onvif import ONVIFCamera
from onvif.exceptions import ONVIFAuthError, ONVIFError, ONVIFTimeoutError
from zeep.exceptions import Fault, TransportError, XMLParseError

from agent.errors import DeviceTimeout, DeviceUnreachable, DriverError, ProtocolError

T = TypeVar("T")
log = logging.getLogger(__name__)
# At DEBUG these libraries log whole HTTP bodies, and cameras put passwords in stream URIs: keep them quiet
# whatever the agent's level. Our own log lines say what failed.
for _name in ("onvif", "zeep", "httpx"):
    logging.getLogger(_name).setLevel(logging.WARNING)
NS_PTZ = "http://www.onvif.org/ver20/ptz/wsdl"
NS_EVENTS = "http://www.onvif.org/ver10/events/wsdl"
CLOCK_SUSPECT = 60.0  # seconds: cameras refuse WS-Security tokens created further from their clock
# A refused login without the ter:NotAuthorized subcode: some cameras (ipycam among them) answer HTTP 401 with
# a bare s:Receiver fault whose only hint is its text, which zeep hands over without the HTTP status.
AUTH_FAULT_TEXT = re.compile(r"not\s+authori[sz]ed|unauthori[sz]ed|authenticat\w*\s+fail|"
                             r"(wrong|invalid|bad)\s+(user|password|credential)", re.IGNORECASE)
CREDENTIAL_KEYS = {"user", "username", "usr", "pwd", "password", "passwd", "pass", "auth", "token", "key"}


class DeviceAuthFailed(DriverError):
    """The camera refused our login: wrong user or password, or a clock too far from the camera's."""

    code = "auth"
    retry_after = 300.0  # cameras lock accounts after a few failures: `edge-agent retry` asks again sooner


class NoSuchService(DriverError):
    """The camera does not offer the service asked for (events, media...)."""

    code = "no-service"


def password_of(source: Any) -> str:
    """The password a ``SecretSource`` (or None) gives; an unreadable one is a refused login, not a crash."""
    if source is None:
        return ""
    try:
        return str(source.read())
    except ValueError as exc:
        raise DeviceAuthFailed(str(exc)) from None


def strip_credentials(uri: str | None) -> str | None:
    """The URI without ``user:password@`` and without credential query parameters."""
    if not uri:
        return uri
    parts = urlsplit(str(uri))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in CREDENTIAL_KEYS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _fault_codes(exc: Fault) -> set[str]:
    out = set()
    for q in getattr(exc, "subcodes", None) or []:
        out.add(str(getattr(q, "localname", q)))
    if exc.code:
        out.add(str(exc.code).rpartition(":")[2])
    return out


def map_error(exc: BaseException, what: str, host: str, noun: str = "camera") -> DriverError:
    """A library exception as the agent's error, with a reason a field tech can act on."""
    cause: BaseException = exc
    if isinstance(exc, ONVIFError) and exc.__cause__ is not None and not isinstance(exc, ONVIFAuthError):
        cause = exc.__cause__
    if isinstance(cause, Fault):
        codes = _fault_codes(cause)
        if codes & {"NotAuthorized", "FailedAuthentication", "InvalidSecurity"} or AUTH_FAULT_TEXT.search(
                str(cause.message or "")):
            return DeviceAuthFailed(f"{what}: the {noun} refused the login (wrong user or password, or its "
                                    "clock too far from the box's)")
        if codes & {"ActionNotSupported", "ServiceNotSupported"}:
            return NoSuchService(f"{what}: not supported by the {noun} ({cause.message})")
        return ProtocolError(f"{what}: {noun} fault: {cause.message or ', '.join(sorted(codes))}")
    if isinstance(cause, ONVIFAuthError):
        return DeviceAuthFailed(f"{what}: the {noun} refused the login (HTTP 401)")
    if isinstance(cause, TimeoutError | ONVIFTimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return DeviceTimeout(f"{what}: no answer from {host}")
    if isinstance(cause, aiohttp.ClientConnectorError | ConnectionError | OSError):
        return DeviceUnreachable(f"{what}: cannot connect to {host}")
    if isinstance(cause, TransportError) and cause.status_code in (404, 405):
        return NoSuchService(f"{what}: no ONVIF service at {host} (HTTP {cause.status_code}): wrong port or path?")
    if isinstance(cause, TransportError):
        return ProtocolError(f"{what}: HTTP {cause.status_code} from {host}")
    if isinstance(cause, aiohttp.ClientError):
        return DeviceUnreachable(f"{what}: connection to {host} failed ({type(cause).__name__})")
    if isinstance(cause, XMLParseError):
        return ProtocolError(f"{what}: malformed reply from {host}")
    if isinstance(cause, ONVIFError):
        text = str(cause)
        if "doesn`t support service" in text or "Device doesn" in text:
            return NoSuchService(f"{what}: the {noun} offers no such service")
        return ProtocolError(f"{what}: {text}")
    return ProtocolError(f"{what}: {type(cause).__name__}: {cause}")


@dataclass
class StreamInfo:
    token: str
    name: str
    codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    uri: str | None = None

    def summary(self) -> str:
        res = f"{self.width}x{self.height}" if self.width and self.height else "?"
        fps = f"{self.fps:g}fps" if self.fps else "?fps"
        return f"{self.name or self.token} {res} {self.codec or '?'} {fps}"


@dataclass
class Facts:
    info: dict[str, str | None] = field(default_factory=dict)
    clock_offset: float | None = None
    streams: list[StreamInfo] = field(default_factory=list)
    snapshot: bool | None = None
    ptz: bool = False
    events: bool = False


class CameraSession:
    """The ONVIFCamera of one device and the requests the driver makes through it."""

    noun = "camera"  # what errors call the device (the access panel's session says "panel")

    def __init__(self, host: str, port: int, user: str, password: str, timeout: float, adjust_time: bool) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.where = f"{host}:{port}"
        self.cam = ONVIFCamera(host, port, user, password, no_cache=True, adjust_time=adjust_time)
        self.facts = Facts()

    async def call(self, what: str, aw: Awaitable[T], budget: float | None = None) -> T:
        try:
            async with asyncio.timeout(budget or self.timeout):
                return await aw
        except asyncio.CancelledError:
            raise
        except DriverError:
            raise
        except Exception as exc:
            raise map_error(exc, what, self.where, self.noun) from exc

    async def connect(self) -> None:
        try:
            await self.call("connect", self.cam.update_xaddrs(), self.timeout * 3)
        except DeviceAuthFailed as exc:
            raise DeviceAuthFailed(await self._why_refused(str(exc))) from exc
        xaddrs = self.cam.xaddrs
        self.facts.ptz = NS_PTZ in xaddrs
        self.facts.events = NS_EVENTS in xaddrs

    async def _why_refused(self, message: str) -> str:
        """Tell a wrong password from a clock too far off: the camera's time is readable without login."""
        try:
            offset = await self.clock_offset()
        except DriverError:
            return message
        if abs(offset) > CLOCK_SUSPECT:
            return (f"connect: the camera refused the login and its clock is {offset:+.0f} s off the box's: "
                    "probably clock skew (set the camera's NTP), else wrong user or password")
        return f"connect: the camera refused the login: wrong user or password (clocks agree within {offset:+.0f} s)"

    async def close(self) -> None:
        try:
            async with asyncio.timeout(2.0):
                await self.cam.close()
        except Exception as exc:  # closing sockets of a dead camera: nothing to report
            log.debug("%s: close: %r", self.where, exc)

    async def device_info(self) -> dict[str, str | None]:
        dm = await self.call("device service", self.cam.create_devicemgmt_service())
        r = await self.call("GetDeviceInformation", dm.GetDeviceInformation())
        self.facts.info = {k: (None if getattr(r, k, None) is None else str(getattr(r, k)))
                           for k in ("Manufacturer", "Model", "FirmwareVersion", "SerialNumber", "HardwareId")}
        return self.facts.info

    async def clock_offset(self) -> float:
        """Camera clock minus the box's, in seconds (the camera answers to the second)."""
        dm = await self.call("device service", self.cam.create_devicemgmt_service())
        t0 = time.time()
        r = await self.call("GetSystemDateAndTime", dm.GetSystemDateAndTime())
        t1 = time.time()
        u = getattr(r, "UTCDateTime", None)
        if u is None:
            raise ProtocolError("GetSystemDateAndTime: the camera gave no UTC time")
        cam = dt.datetime(u.Date.Year, u.Date.Month, u.Date.Day, u.Time.Hour, u.Time.Minute, u.Time.Second,
                          tzinfo=dt.UTC).timestamp()
        # the camera truncates to the second: compare with the middle of that second
        self.facts.clock_offset = round(cam + 0.5 - (t0 + t1) / 2, 1)
        return self.facts.clock_offset

    async def streams(self) -> list[StreamInfo]:
        media = await self.call("media service", self.cam.create_media_service())
        profiles = await self.call("GetProfiles", media.GetProfiles())
        out: list[StreamInfo] = []
        for p in profiles or []:
            enc = getattr(p, "VideoEncoderConfiguration", None)
            res = getattr(enc, "Resolution", None)
            rate = getattr(enc, "RateControl", None)
            fps = getattr(rate, "FrameRateLimit", None)
            out.append(StreamInfo(
                token=str(p.token), name=str(getattr(p, "Name", "") or ""),
                codec=str(enc.Encoding) if enc is not None and getattr(enc, "Encoding", None) else None,
                width=getattr(res, "Width", None), height=getattr(res, "Height", None),
                fps=float(fps) if fps is not None else None,
            ))
        for s in out[:2]:
            req = {"StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}, "ProfileToken": s.token}
            try:
                r = await self.call("GetStreamUri", media.GetStreamUri(req))
                s.uri = strip_credentials(getattr(r, "Uri", None))
            except (ProtocolError, NoSuchService):
                s.uri = None
        if out:
            try:
                r = await self.call("GetSnapshotUri", media.GetSnapshotUri({"ProfileToken": out[0].token}))
                self.facts.snapshot = bool(getattr(r, "Uri", None))
            except (ProtocolError, NoSuchService):
                self.facts.snapshot = False
        self.facts.streams = out
        return out

    def stream(self, which: str) -> StreamInfo | None:
        s = self.facts.streams
        if not s:
            return None
        return s[0] if which == "main" or len(s) == 1 else s[1]

    def raw(self) -> Any:
        return self.cam
