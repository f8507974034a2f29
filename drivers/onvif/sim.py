"""A simulated ONVIF camera for the tests, the demo and the bench: ``python -m drivers.onvif.sim --port P``.

It serves over real HTTP what onvif-zeep-async needs of a camera: the device service (GetSystemDateAndTime
without authentication, GetServices, GetCapabilities, GetDeviceInformation, GetScopes), the media service
(GetProfiles, GetStreamUri, GetSnapshotUri), the events service (CreatePullPointSubscription,
GetEventProperties) and the subscriptions it creates (PullMessages as a long poll, Renew, Unsubscribe,
SetSynchronizationPoint), with WS-Security UsernameToken digest authentication, plus a JPEG snapshot behind
HTTP digest (or basic) authentication. The client is the judge: the replies are parsed by zeep against the
WSDLs shipped with onvif-zeep-async. The SOAP plumbing (envelopes, faults, WS-Security, dispatch,
PullPoint subscriptions) is shared with the access panel simulator: ``drivers/onvif/soapsim.py``.

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
import hashlib
import secrets
import signal
from xml.etree import ElementTree as ET

from aiohttp import web

from drivers.onvif.soapsim import PullPoints, SoapDevice, add_common_arguments, notification

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
MEDIA = "http://www.onvif.org/ver10/media/wsdl"


class Camera(SoapDevice):
    """State and SOAP handlers of one simulated camera (envelopes, auth, dispatch, PullPoints: soapsim)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, {"trt": MEDIA})
        self.hub = PullPoints(self, self.initial, on_subscribe=False)
        self.register(self.hub)
        self.state = {k: False for k in TOPICS}
        for key in ("requests", "auth_failures", "subscriptions", "renews", "pulls", "sync_points", "snapshots",
                    "dropped_renews"):
            self.stats[key] = 0

    # ------------------------------------------------------------------------------ device
    def _services(self) -> list[tuple[str, str]]:
        out = [(self.ns["tds"], "/onvif/device_service"), (MEDIA, "/onvif/media_service")]
        if self.args.events:
            out.append((self.ns["tev"], "/onvif/events_service"))
        if self.args.ptz:
            out.append(("http://www.onvif.org/ver20/ptz/wsdl", "/onvif/ptz_service"))
        return out

    async def op_GetServices(self, _r: web.Request, _op: ET.Element) -> web.Response:
        return self.ok(self.services_xml((ns, path, "2.60") for ns, path in self._services()))

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
        token = op.findtext(f"{{{MEDIA}}}ProfileToken") or "main"
        # like many cameras, it puts the credentials in the URI: the agent must strip them
        uri = f"rtsp://{self.args.user}:{self.args.password}@{self.args.host}:{self.args.rtsp_port}/{token}"
        return self.ok(f"<trt:GetStreamUriResponse>{self._media_uri(uri)}</trt:GetStreamUriResponse>")

    async def op_GetSnapshotUri(self, _r: web.Request, op: ET.Element) -> web.Response:
        token = op.findtext(f"{{{MEDIA}}}ProfileToken") or "main"
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

    def notification(self, kind: str, value: bool, operation: str = "Changed") -> tuple[str, str]:
        topic, source, item = TOPICS[kind]
        return topic, notification(topic, self.now(), [source], [(item, "true" if value else "false")], operation)

    def initial(self) -> list[tuple[str, str]]:
        return [self.notification(k, v, "Initialized") for k, v in self.state.items()]

    def publish(self, kind: str, value: bool) -> None:
        self.state[kind] = value
        self.hub.publish(*self.notification(kind, value))

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
            self.hub.drop_renew = int(q.get("n", "1"))
        elif what == "delay":
            self.delay = float(q.get("s", "0"))
        elif what == "forget":
            self.hub.forget()
        elif what != "stats":
            return web.Response(status=404, text=f"unknown control {what}\n")
        return web.json_response({**self.stats, **self.hub.stats(), "state": self.state})


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
    add_common_arguments(p, port=8899)
    p.add_argument("--serial", default="SIM0001")
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
