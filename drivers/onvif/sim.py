"""A simulated ONVIF camera for the tests, the demo and the bench: ``python -m drivers.onvif.sim --port P``.

It serves over real HTTP what onvif-zeep-async needs of a camera: the device service (GetSystemDateAndTime
without authentication, GetServices, GetCapabilities, GetDeviceInformation, GetScopes), the media service
(GetProfiles, GetStreamUri, GetSnapshotUri), the events service (CreatePullPointSubscription,
GetEventProperties) and the subscriptions it creates (PullMessages as a long poll, Renew, Unsubscribe,
SetSynchronizationPoint), with WS-Security UsernameToken digest authentication, plus a JPEG snapshot behind
HTTP digest (or basic) authentication. The client is the judge: the replies are parsed by zeep against the
WSDLs shipped with onvif-zeep-async.

Faults as in the field are set through unauthenticated control URLs (a simulator on loopback only):
``POST /control/motion?on=1``, ``/control/tamper?on=1``, ``/control/input?on=1``, ``/control/drop-renew?n=1``
(the next n Renew requests are refused and their subscription is dropped, as a camera does when a renew
comes late), ``/control/delay?s=2`` (every SOAP answer is late by that much), ``/control/forget`` (drop
every subscription, as a reboot does), ``GET /control/stats`` (JSON counters).

Cameras that misbehave by design: ``--push-only`` (no PullPoint: its capabilities say so and
CreatePullPointSubscription is refused), ``--termination MODE`` (``absolute-only``: relative durations such as
PT60S are refused with a fault; ``no-current-time``: Renew answers carry no CurrentTime, so TerminationTime
is on the camera's clock alone; ``naive``: TerminationTime without a time zone; ``zero``: TerminationTime
equal to CurrentTime, whatever was granted) and ``--max-lifetime S`` (the camera grants at most S seconds,
whatever is asked, and really drops a subscription not renewed by then).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import secrets
import signal
import time
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from aiohttp import web

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
NS = {
    "s": SOAP, "tt": "http://www.onvif.org/ver10/schema", "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl", "tev": "http://www.onvif.org/ver10/events/wsdl",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2", "wsa": "http://www.w3.org/2005/08/addressing",
    "tns1": "http://www.onvif.org/ver10/topics", "ter": "http://www.onvif.org/ver10/error",
}
XMLNS = " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items())
DIALECT = "http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"
# what each control switch raises: (topic, source item, data item)
TOPICS = {
    "motion": ("tns1:RuleEngine/CellMotionDetector/Motion", ("VideoSourceConfigurationToken", "vsc0"), "IsMotion"),
    "tamper": ("tns1:VideoSource/GlobalSceneChange/ImagingService", ("Source", "vs0"), "State"),
    "input": ("tns1:Device/Trigger/DigitalInput", ("InputToken", "in0"), "LogicalState"),
}
# a minimal valid JPEG (1x1 grey) used when Pillow is not installed
TINY_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP//////////////////////////////////////////////////////////////////"
    "////////////////////wgALCAABAAEBAREA/8QAFBABAAAAAAAAAAAAAAAAAAAAAP/aAAgBAQABPxA="
)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_duration(text: str | None, default: float, now: dt.datetime | None = None) -> float:
    """``PT60S``, ``PT1M``, ``PT1H2M3.5S``; an absolute time gives the seconds from ``now`` (the camera's)."""
    if not text:
        return default
    text = text.strip()
    if text.startswith("PT"):
        total, num = 0.0, ""
        for ch in text[2:]:
            if ch.isdigit() or ch == ".":
                num += ch
            else:
                total += float(num or 0) * {"H": 3600, "M": 60, "S": 1}.get(ch, 0)
                num = ""
        return total
    with contextlib.suppress(ValueError):
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        return (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return default


@dataclass
class Subscription:
    sid: str
    expires: float  # monotonic
    queue: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Camera:
    """State and SOAP handlers of one simulated camera."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = f"http://{args.host}:{args.port}"
        self.subs: dict[str, Subscription] = {}
        self.state = {k: False for k in TOPICS}
        self.drop_renew = 0
        self.delay = 0.0
        self.stats: dict[str, int] = {"requests": 0, "auth_failures": 0, "subscriptions": 0, "renews": 0,
                                      "pulls": 0, "sync_points": 0, "snapshots": 0, "dropped_renews": 0}
        self.ops: dict[str, int] = {}  # requests by operation, answered or refused

    # ------------------------------------------------------------------------------ plumbing
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.args.clock_offset)

    @staticmethod
    def envelope(body: str) -> str:
        return f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope {XMLNS}><s:Body>{body}</s:Body></s:Envelope>'

    def fault(self, subcode: str, reason: str, status: int = 500) -> web.Response:
        body = (f"<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode>"
                f'</s:Code><s:Reason><s:Text xml:lang="en">{reason}</s:Text></s:Reason></s:Fault>')
        return web.Response(status=status, body=self.envelope(body).encode(), content_type="application/soap+xml")

    def ok(self, body: str) -> web.Response:
        return web.Response(body=self.envelope(body).encode(), content_type="application/soap+xml")

    def authorised(self, root: ET.Element) -> bool:
        token = root.find(f"./{{{SOAP}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
        if token is None:
            return False
        user = token.findtext(f"{{{WSSE}}}Username") or ""
        password = token.find(f"{{{WSSE}}}Password")
        nonce = token.findtext(f"{{{WSSE}}}Nonce") or ""
        created = token.findtext(f"{{{WSU}}}Created") or ""
        if user != self.args.user or password is None:
            return False
        if (password.get("Type") or "").endswith("#PasswordText"):
            return password.text == self.args.password
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
            if abs((when - self.now()).total_seconds()) > self.args.max_skew:
                return False  # as cameras do: a token created too far from the camera's clock is refused
        try:
            raw = base64.b64decode(nonce)
        except ValueError:
            return False
        digest = base64.b64encode(hashlib.sha1(raw + created.encode() + self.args.password.encode()).digest())
        return secrets.compare_digest(digest.decode(), password.text or "")

    async def soap(self, request: web.Request) -> web.Response:
        self.stats["requests"] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            root = ET.fromstring(await request.read())
        except ET.ParseError:
            return self.fault("ter:WellFormed", "not XML")
        body = root.find(f"{{{SOAP}}}Body")
        op = body[0] if body is not None and len(body) else None
        if op is None:
            return self.fault("ter:InvalidArgVal", "empty body")
        name = op.tag.rpartition("}")[2]
        self.ops[name] = self.ops.get(name, 0) + 1
        if name != "GetSystemDateAndTime" and not self.authorised(root):
            self.stats["auth_failures"] += 1
            return self.fault("ter:NotAuthorized", "Sender not Authorized", status=400)
        handler = getattr(self, f"op_{name}", None)
        if handler is None:
            return self.fault("ter:ActionNotSupported", f"{name} is not supported")
        result: web.Response = await handler(request, op)
        return result

    # ------------------------------------------------------------------------------ device
    async def op_GetSystemDateAndTime(self, _r: web.Request, _op: ET.Element) -> web.Response:
        t = self.now()
        return self.ok(
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType>"
            "<tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime><tt:Time><tt:Hour>{t.hour}</tt:Hour><tt:Minute>{t.minute}</tt:Minute>"
            f"<tt:Second>{t.second}</tt:Second></tt:Time><tt:Date><tt:Year>{t.year}</tt:Year>"
            f"<tt:Month>{t.month}</tt:Month><tt:Day>{t.day}</tt:Day></tt:Date></tt:UTCDateTime>"
            "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    def _services(self) -> list[tuple[str, str]]:
        out = [(NS["tds"], "/onvif/device_service"), (NS["trt"], "/onvif/media_service")]
        if self.args.events:
            out.append((NS["tev"], "/onvif/events_service"))
        if self.args.ptz:
            out.append(("http://www.onvif.org/ver20/ptz/wsdl", "/onvif/ptz_service"))
        return out

    async def op_GetServices(self, _r: web.Request, _op: ET.Element) -> web.Response:
        items = "".join(
            f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{self.base}{path}</tds:XAddr>"
            "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>"
            for ns, path in self._services()
        )
        return self.ok(f"<tds:GetServicesResponse>{items}</tds:GetServicesResponse>")

    async def op_GetCapabilities(self, _r: web.Request, _op: ET.Element) -> web.Response:
        caps = f"<tt:Device><tt:XAddr>{self.base}/onvif/device_service</tt:XAddr></tt:Device>"
        if self.args.events:
            caps += (f"<tt:Events><tt:XAddr>{self.base}/onvif/events_service</tt:XAddr>"
                     "<tt:WSSubscriptionPolicySupport>true</tt:WSSubscriptionPolicySupport>"
                     f"<tt:WSPullPointSupport>{str(not self.args.push_only).lower()}</tt:WSPullPointSupport>"
                     "<tt:WSPausableSubscriptionManagerInterfaceSupport>false"
                     "</tt:WSPausableSubscriptionManagerInterfaceSupport></tt:Events>")
        caps += (f"<tt:Media><tt:XAddr>{self.base}/onvif/media_service</tt:XAddr><tt:StreamingCapabilities>"
                 "<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP>"
                 "<tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>")
        return self.ok(f"<tds:GetCapabilitiesResponse><tds:Capabilities>{caps}</tds:Capabilities>"
                       "</tds:GetCapabilitiesResponse>")

    async def op_GetDeviceInformation(self, _r: web.Request, _op: ET.Element) -> web.Response:
        return self.ok(
            "<tds:GetDeviceInformationResponse><tds:Manufacturer>EdgeSim</tds:Manufacturer>"
            "<tds:Model>EA-CAM-1</tds:Model><tds:FirmwareVersion>1.4.2</tds:FirmwareVersion>"
            f"<tds:SerialNumber>{self.args.serial}</tds:SerialNumber><tds:HardwareId>HW1</tds:HardwareId>"
            "</tds:GetDeviceInformationResponse>"
        )

    async def op_GetScopes(self, _r: web.Request, _op: ET.Element) -> web.Response:
        scopes = ["onvif://www.onvif.org/type/video_encoder", "onvif://www.onvif.org/hardware/EA-CAM-1",
                  "onvif://www.onvif.org/name/EdgeSim", "onvif://www.onvif.org/Profile/Streaming"]
        items = "".join(f"<tds:Scopes><tt:ScopeDef>Fixed</tt:ScopeDef><tt:ScopeItem>{s}</tt:ScopeItem></tds:Scopes>"
                        for s in scopes)
        return self.ok(f"<tds:GetScopesResponse>{items}</tds:GetScopesResponse>")

    # ------------------------------------------------------------------------------ media
    PROFILES = (("main", "MainStream", "H264", 1920, 1080, 25), ("sub", "SubStream", "H264", 640, 360, 10))

    async def op_GetProfiles(self, _r: web.Request, _op: ET.Element) -> web.Response:
        out = ""
        for token, name, enc, w, h, fps in self.PROFILES:
            out += (
                f'<trt:Profiles token="{token}" fixed="true"><tt:Name>{name}</tt:Name>'
                '<tt:VideoSourceConfiguration token="vsc0"><tt:Name>vsc</tt:Name><tt:UseCount>2</tt:UseCount>'
                '<tt:SourceToken>vs0</tt:SourceToken><tt:Bounds x="0" y="0" width="1920" height="1080"/>'
                f'</tt:VideoSourceConfiguration><tt:VideoEncoderConfiguration token="enc-{token}">'
                f"<tt:Name>enc-{token}</tt:Name><tt:UseCount>1</tt:UseCount><tt:Encoding>{enc}</tt:Encoding>"
                f"<tt:Resolution><tt:Width>{w}</tt:Width><tt:Height>{h}</tt:Height></tt:Resolution>"
                "<tt:Quality>5</tt:Quality><tt:RateControl>"
                f"<tt:FrameRateLimit>{fps}</tt:FrameRateLimit><tt:EncodingInterval>1</tt:EncodingInterval>"
                "<tt:BitrateLimit>4096</tt:BitrateLimit></tt:RateControl>"
                "<tt:SessionTimeout>PT60S</tt:SessionTimeout></tt:VideoEncoderConfiguration></trt:Profiles>"
            )
        return self.ok(f"<trt:GetProfilesResponse>{out}</trt:GetProfilesResponse>")

    @staticmethod
    def _media_uri(uri: str) -> str:
        return (f"<trt:MediaUri><tt:Uri>{uri}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
                "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>")

    async def op_GetStreamUri(self, _r: web.Request, op: ET.Element) -> web.Response:
        token = op.findtext(f"{{{NS['trt']}}}ProfileToken") or "main"
        # like many cameras, it puts the credentials in the URI: the agent must strip them
        uri = f"rtsp://{self.args.user}:{self.args.password}@{self.args.host}:{self.args.rtsp_port}/{token}"
        return self.ok(f"<trt:GetStreamUriResponse>{self._media_uri(uri)}</trt:GetStreamUriResponse>")

    async def op_GetSnapshotUri(self, _r: web.Request, op: ET.Element) -> web.Response:
        token = op.findtext(f"{{{NS['trt']}}}ProfileToken") or "main"
        uri = f"{self.base}/snapshot/{token}.jpg"
        return self.ok(f"<trt:GetSnapshotUriResponse>{self._media_uri(uri)}</trt:GetSnapshotUriResponse>")

    # ------------------------------------------------------------------------------ events
    async def op_GetEventProperties(self, _r: web.Request, _op: ET.Element) -> web.Response:
        return self.ok(
            "<tev:GetEventPropertiesResponse>"
            "<tev:TopicNamespaceLocation>http://www.onvif.org/onvif/ver10/topics/topicns.xml"
            "</tev:TopicNamespaceLocation><wsnt:FixedTopicSet>true</wsnt:FixedTopicSet>"
            "<tev:MessageContentFilterDialect>http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter"
            "</tev:MessageContentFilterDialect></tev:GetEventPropertiesResponse>"
        )

    def _termination(self, op: ET.Element, tag: str) -> float | None:
        """Seconds granted; None when this camera refuses the form asked (absolute-only and a duration)."""
        text = (op.findtext(tag) or "").strip()
        if self.args.termination == "absolute-only" and text.startswith("P"):
            return None
        seconds = _parse_duration(text, 60.0, self.now())
        return max(1.0, min(seconds, 3600.0, self.args.max_lifetime))

    def _times(self, seconds: float, renew: bool = False) -> tuple[str, str]:
        """CurrentTime and TerminationTime as this camera writes them (--termination)."""
        now, mode = self.now(), self.args.termination
        term = _iso(now) if mode == "zero" else _iso(now + dt.timedelta(seconds=seconds))
        if mode == "naive":
            term = term.rstrip("Z")
        cur = "" if renew and mode == "no-current-time" else f"<wsnt:CurrentTime>{_iso(now)}</wsnt:CurrentTime>"
        return cur, f"<wsnt:TerminationTime>{term}</wsnt:TerminationTime>"

    def _bad_termination(self) -> web.Response:
        return self.fault("ter:InvalidArgVal", "TerminationTime: only an absolute xsd:dateTime is accepted")

    async def op_CreatePullPointSubscription(self, _r: web.Request, op: ET.Element) -> web.Response:
        if self.args.push_only:
            return self.fault("ter:ActionNotSupported", "no PullPoint: this camera only pushes notifications")
        seconds = self._termination(op, f"{{{NS['tev']}}}InitialTerminationTime")
        if seconds is None:
            return self._bad_termination()
        sub = Subscription(secrets.token_hex(6), time.monotonic() + seconds)
        self.subs[sub.sid] = sub
        self.stats["subscriptions"] += 1
        cur, term = self._times(seconds)
        return self.ok(
            "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
            f"<wsa:Address>{self.base}/onvif/subscription/{sub.sid}</wsa:Address></tev:SubscriptionReference>"
            f"{cur}{term}</tev:CreatePullPointSubscriptionResponse>"
        )

    def _sub(self, request: web.Request) -> Subscription | None:
        sub = self.subs.get(request.match_info.get("sid", ""))
        if sub is not None and sub.expires < time.monotonic():
            del self.subs[sub.sid]
            return None
        return sub

    def _unknown(self) -> web.Response:
        return self.fault("ter:InvalidArgVal", "unknown or expired subscription")

    def notification(self, kind: str, value: bool, operation: str = "Changed") -> str:
        topic, (src_name, src_value), item = TOPICS[kind]
        return (
            f'<wsnt:NotificationMessage><wsnt:Topic Dialect="{DIALECT}">{topic}</wsnt:Topic>'
            f'<wsnt:Message><tt:Message UtcTime="{_iso(self.now())}" PropertyOperation="{operation}">'
            f'<tt:Source><tt:SimpleItem Name="{src_name}" Value="{src_value}"/></tt:Source>'
            f'<tt:Data><tt:SimpleItem Name="{item}" Value="{"true" if value else "false"}"/></tt:Data>'
            "</tt:Message></wsnt:Message></wsnt:NotificationMessage>"
        )

    def publish(self, kind: str, value: bool) -> None:
        self.state[kind] = value
        msg = self.notification(kind, value)
        for sub in self.subs.values():
            sub.queue.append(msg)
            sub.wake.set()

    async def op_PullMessages(self, request: web.Request, op: ET.Element) -> web.Response:
        sub = self._sub(request)
        if sub is None:
            return self._unknown()
        self.stats["pulls"] += 1
        timeout = min(_parse_duration(op.findtext(f"{{{NS['tev']}}}Timeout"), 10.0), 60.0)
        limit = int(op.findtext(f"{{{NS['tev']}}}MessageLimit") or 100)
        if not sub.queue:
            sub.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await sub.wake.wait()
        if self.subs.get(sub.sid) is not sub:
            return self._unknown()
        msgs, sub.queue = sub.queue[:limit], sub.queue[limit:]
        now = self.now()
        term = now + dt.timedelta(seconds=max(0.0, sub.expires - time.monotonic()))
        return self.ok(f"<tev:PullMessagesResponse><tev:CurrentTime>{_iso(now)}</tev:CurrentTime>"
                       f"<tev:TerminationTime>{_iso(term)}</tev:TerminationTime>{''.join(msgs)}"
                       "</tev:PullMessagesResponse>")

    async def op_Renew(self, request: web.Request, op: ET.Element) -> web.Response:
        sub = self._sub(request)
        if sub is None:
            return self._unknown()
        if self.drop_renew > 0:
            self.drop_renew -= 1
            self.stats["dropped_renews"] += 1
            del self.subs[sub.sid]
            sub.wake.set()
            return self._unknown()
        seconds = self._termination(op, f"{{{NS['wsnt']}}}TerminationTime")
        if seconds is None:
            return self._bad_termination()
        self.stats["renews"] += 1
        sub.expires = time.monotonic() + seconds
        cur, term = self._times(seconds, renew=True)
        return self.ok(f"<wsnt:RenewResponse>{term}{cur}</wsnt:RenewResponse>")

    async def op_Unsubscribe(self, request: web.Request, _op: ET.Element) -> web.Response:
        sub = self._sub(request)
        if sub is None:
            return self._unknown()
        del self.subs[sub.sid]
        sub.wake.set()
        return self.ok("<wsnt:UnsubscribeResponse/>")

    async def op_SetSynchronizationPoint(self, request: web.Request, _op: ET.Element) -> web.Response:
        sub = self._sub(request)
        if sub is None:
            return self._unknown()
        self.stats["sync_points"] += 1
        sub.queue.extend(self.notification(k, v, "Initialized") for k, v in self.state.items())
        sub.wake.set()
        return self.ok("<tev:SetSynchronizationPointResponse/>")

    # ------------------------------------------------------------------------------ snapshot
    def _http_auth_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic ") and self.args.snapshot_auth == "basic":
            with contextlib.suppress(ValueError):
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                return user == self.args.user and pw == self.args.password
            return False
        if header.startswith("Digest ") and self.args.snapshot_auth == "digest":
            parts: dict[str, str] = {}
            for item in header[7:].split(","):
                k, _, v = item.strip().partition("=")
                parts[k] = v.strip('"')
            ha1 = hashlib.md5(f"{self.args.user}:cam:{self.args.password}".encode()).hexdigest()
            ha2 = hashlib.md5(f"{request.method}:{parts.get('uri', '')}".encode()).hexdigest()
            if "qop" in parts:
                tail = f"{parts.get('nonce')}:{parts.get('nc')}:{parts.get('cnonce')}:{parts['qop']}"
            else:
                tail = parts.get("nonce", "")
            want = hashlib.md5(f"{ha1}:{tail}:{ha2}".encode()).hexdigest()
            return parts.get("username") == self.args.user and want == parts.get("response")
        return False

    async def snapshot(self, request: web.Request) -> web.Response:
        if not self._http_auth_ok(request):
            if self.args.snapshot_auth == "basic":
                challenge = 'Basic realm="cam"'
            else:
                challenge = f'Digest realm="cam", qop="auth", nonce="{secrets.token_hex(8)}", algorithm=MD5'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        self.stats["snapshots"] += 1
        return web.Response(body=make_jpeg(self.args.snapshot_width, self.args.snapshot_height),
                            content_type="image/jpeg")

    # ------------------------------------------------------------------------------ control
    async def control(self, request: web.Request) -> web.Response:
        what = request.match_info["what"]
        q = request.query
        if what in TOPICS:
            self.publish(what, q.get("on", "1") in ("1", "true", "on"))
        elif what == "drop-renew":
            self.drop_renew = int(q.get("n", "1"))
        elif what == "delay":
            self.delay = float(q.get("s", "0"))
        elif what == "forget":
            for sub in self.subs.values():
                sub.wake.set()
            self.subs.clear()
        elif what != "stats":
            return web.Response(status=404, text=f"unknown control {what}\n")
        return web.json_response({**self.stats, "subscriptions_live": len(self.subs), "state": self.state,
                                  "ops": self.ops})


def make_jpeg(width: int, height: int) -> bytes:
    """A test picture of that size (Pillow when installed, else a tiny fixed JPEG)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return TINY_JPEG
    import io

    img = Image.new("RGB", (width, height), (40, 90, 140))
    draw = ImageDraw.Draw(img)
    for i in range(0, width, max(1, width // 16)):
        draw.line([(i, 0), (width - i, height)], fill=(200, (i * 7) % 255, 60), width=3)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_app(args: argparse.Namespace) -> web.Application:
    cam = Camera(args)
    app = web.Application()
    for path in ("/onvif/device_service", "/onvif/media_service", "/onvif/events_service", "/onvif/ptz_service",
                 "/onvif/subscription/{sid}"):
        app.router.add_post(path, cam.soap)
    app.router.add_get("/snapshot/{token}.jpg", cam.snapshot)
    app.router.add_route("*", "/control/{what}", cam.control)
    app["camera"] = cam
    return app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m drivers.onvif.sim", description="simulated ONVIF camera")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only outside a namespace)")
    p.add_argument("--port", type=int, default=8899)
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="admin")
    p.add_argument("--serial", default="SIM0001")
    p.add_argument("--clock-offset", type=float, default=0.0, help="camera clock minus true time, seconds")
    p.add_argument("--max-skew", type=float, default=300.0, help="refuse tokens created further off, seconds")
    p.add_argument("--rtsp-port", type=int, default=8554)
    p.add_argument("--no-events", dest="events", action="store_false", help="offer no events service")
    p.add_argument("--ptz", action="store_true", help="announce a PTZ service")
    p.add_argument("--snapshot-auth", choices=("digest", "basic"), default="digest")
    p.add_argument("--snapshot-width", type=int, default=1280)
    p.add_argument("--snapshot-height", type=int, default=720)
    p.add_argument("--discovery", action="store_true",
                   help="answer WS-Discovery probes on 239.255.255.250:3702 (only inside a network namespace)")
    p.add_argument("--discovery-bare", action="store_true", help="answer without the ProbeMatches wrapper")
    p.add_argument("--model", default="EA-CAM-1", help="model named in the discovery scopes")
    p.add_argument("--push-only", action="store_true", help="no PullPoint: only push notifications (refused)")
    p.add_argument("--termination", choices=("normal", "absolute-only", "no-current-time", "naive", "zero"),
                   default="normal", help="how the camera reads and writes termination times (see the docstring)")
    p.add_argument("--max-lifetime", type=float, default=3600.0, help="longest subscription granted, seconds")
    p.add_argument("--motion-every", type=float, default=0.0, help="motion on/off every N seconds (demo)")
    return p


async def _serve(args: argparse.Namespace) -> None:
    app = build_app(args)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    if args.discovery:
        from drivers.onvif.discovery import serve_responder

        scopes = ["onvif://www.onvif.org/type/video_encoder", f"onvif://www.onvif.org/hardware/{args.model}",
                  f"onvif://www.onvif.org/name/EdgeSim-{args.serial}", "onvif://www.onvif.org/location/hall"]
        await serve_responder(f"http://{args.host}:{args.port}/onvif/device_service", scopes, args.discovery_bare)
    print(f"onvif-sim ready on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cam: Camera = app["camera"]
    try:
        while not stop.is_set():
            if args.motion_every > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.motion_every):
                        await stop.wait()
                cam.publish("motion", not cam.state["motion"])
            else:
                await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
