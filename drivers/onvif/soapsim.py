"""Plumbing shared by the ONVIF simulators (``drivers/onvif/sim.py``, ``drivers/access/sim.py``).

A simulator is a tool for the tests, the demo and the bench, never runtime driver code. This module gives it:
SOAP 1.2 envelopes and faults with ONVIF's nested subcodes, WS-Security UsernameToken (digest or text)
checked against the simulated device's clock, a dispatcher from the request's first body element to an
``op_<Name>`` handler (each operation counted in the stats), and a PullPoint event hub (CreatePullPoint-
Subscription with an optional topic filter, PullMessages as a real long poll, Renew, Unsubscribe,
SetSynchronizationPoint, forced renew refusals and "forget everything" as a reboot does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
NS = {
    "s": SOAP, "tt": "http://www.onvif.org/ver10/schema", "tds": "http://www.onvif.org/ver10/device/wsdl",
    "tev": "http://www.onvif.org/ver10/events/wsdl", "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "wsa": "http://www.w3.org/2005/08/addressing", "wstop": "http://docs.oasis-open.org/wsn/t-1",
    "tns1": "http://www.onvif.org/ver10/topics", "ter": "http://www.onvif.org/ver10/error",
}
DIALECT = "http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"

Handler = Callable[[web.Request, ET.Element], Awaitable["str | web.Response"]]


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str | None, default: float, now: dt.datetime | None = None) -> float:
    """``PT60S``, ``PT1M``, ``PT1H2M3.5S``; an absolute time gives the seconds from ``now`` (the device's)."""
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


class SoapFault(Exception):
    """Raised by a handler: answered as a SOAP fault (``code`` Sender/Receiver, ONVIF subcodes outermost first)."""

    def __init__(self, code: str, subcodes: Iterable[str], reason: str, status: int = 500) -> None:
        super().__init__(reason)
        self.code, self.subcodes, self.reason, self.status = code, list(subcodes), reason, status


# the faults the ONVIF specs name most often
def not_found(what: str) -> SoapFault:
    return SoapFault("Sender", ["ter:InvalidArgVal", "ter:NotFound"], f"{what} not found")


def not_supported(op: str) -> SoapFault:
    return SoapFault("Receiver", ["ter:ActionNotSupported", "ter:NotSupported"], f"{op} is not supported")


def failure(reason: str) -> SoapFault:
    return SoapFault("Receiver", ["ter:Action", "ter:Failure"], reason)


def simple_items(items: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<tt:SimpleItem Name={quoteattr(k)} Value={quoteattr(v)}/>" for k, v in items)


def notification(topic: str, when: dt.datetime, source: Iterable[tuple[str, str]],
                 data: Iterable[tuple[str, str]], operation: str | None = "Changed") -> str:
    """One ``wsnt:NotificationMessage`` in the ONVIF message shape (Source and Data simple items)."""
    prop = f' PropertyOperation="{operation}"' if operation else ""
    return (
        f'<wsnt:NotificationMessage><wsnt:Topic Dialect="{DIALECT}">{escape(topic)}</wsnt:Topic>'
        f'<wsnt:Message><tt:Message UtcTime="{iso(when)}"{prop}>'
        f"<tt:Source>{simple_items(source)}</tt:Source><tt:Data>{simple_items(data)}</tt:Data>"
        "</tt:Message></wsnt:Message></wsnt:NotificationMessage>"
    )


def add_common_arguments(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only outside a namespace)")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="admin")
    p.add_argument("--clock-offset", type=float, default=0.0, help="device clock minus true time, seconds")
    p.add_argument("--max-skew", type=float, default=300.0, help="refuse tokens created further off, seconds")


class SoapDevice:
    """Envelopes, faults, authentication and dispatch of one simulated ONVIF device."""

    def __init__(self, args: argparse.Namespace, xmlns: dict[str, str] | None = None) -> None:
        self.args = args
        self.base = f"http://{args.host}:{args.port}"
        self.ns = {**NS, **(xmlns or {})}
        self.xmlns = " ".join(f'xmlns:{k}="{v}"' for k, v in self.ns.items())
        self.delay = 0.0
        self.stats: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()  # every operation received, by name (before authentication)
        self.missing: set[str] = set()  # operations this device lacks (ActionNotSupported)
        self.failing: set[str] = set()  # operations answering a Failure fault (control URL)
        self.handlers: dict[str, Handler] = {}
        self.register(self)

    def register(self, obj: object) -> None:
        """Every ``op_<Name>`` method of obj answers the SOAP operation <Name>."""
        for attr in dir(obj):
            if attr.startswith("op_"):
                self.handlers[attr[3:]] = getattr(obj, attr)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.args.clock_offset)

    def envelope(self, body: str) -> str:
        return f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope {self.xmlns}><s:Body>{body}</s:Body></s:Envelope>'

    def fault_response(self, fault: SoapFault) -> web.Response:
        sub = ""
        for code in reversed(fault.subcodes):
            sub = f"<s:Subcode><s:Value>{code}</s:Value>{sub}</s:Subcode>"
        body = (f"<s:Fault><s:Code><s:Value>s:{fault.code}</s:Value>{sub}</s:Code>"
                f'<s:Reason><s:Text xml:lang="en">{escape(fault.reason)}</s:Text></s:Reason></s:Fault>')
        self.stats["faults"] += 1
        return web.Response(status=fault.status, body=self.envelope(body).encode(),
                            content_type="application/soap+xml")

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
                return False  # as devices do: a token created too far from the device's clock is refused
        try:
            raw = base64.b64decode(nonce)
        except ValueError:
            return False
        digest = base64.b64encode(hashlib.sha1(raw + created.encode() + self.args.password.encode()).digest())
        return secrets.compare_digest(digest.decode(), password.text or "")

    def unauthenticated(self, name: str) -> bool:
        """Operations answered without credentials (as the ONVIF core spec allows for the clock)."""
        return name == "GetSystemDateAndTime"

    async def soap(self, request: web.Request) -> web.Response:
        self.stats["requests"] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            root = ET.fromstring(await request.read())
        except ET.ParseError:
            return self.fault_response(SoapFault("Sender", ["ter:WellFormed"], "not XML"))
        body = root.find(f"{{{SOAP}}}Body")
        op = body[0] if body is not None and len(body) else None
        if op is None:
            return self.fault_response(SoapFault("Sender", ["ter:InvalidArgVal"], "empty body"))
        name = op.tag.rpartition("}")[2]
        self.ops[name] += 1
        handler = self.handlers.get(name)
        try:
            if not self.unauthenticated(name) and not self.authorised(root):
                self.stats["auth_failures"] += 1
                raise SoapFault("Sender", ["ter:NotAuthorized"], "Sender not Authorized", 400)
            if handler is None or name in self.missing:
                raise not_supported(name)
            if name in self.failing:
                raise failure(f"{name} failed (simulated fault)")
            result = await handler(request, op)
        except SoapFault as exc:
            self.observe(name, op, exc.subcodes[-1].rpartition(":")[2] if exc.subcodes else exc.code)
            return self.fault_response(exc)
        self.observe(name, op, "ok")
        return self.ok(result) if isinstance(result, str) else result

    def observe(self, name: str, op: ET.Element, outcome: str) -> None:
        """Called after every operation with "ok" or the innermost fault subcode (a hook for the stats)."""

    async def op_GetSystemDateAndTime(self, _r: web.Request, _op: ET.Element) -> str:
        t = self.now()
        return (
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType>"
            "<tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime><tt:Time><tt:Hour>{t.hour}</tt:Hour><tt:Minute>{t.minute}</tt:Minute>"
            f"<tt:Second>{t.second}</tt:Second></tt:Time><tt:Date><tt:Year>{t.year}</tt:Year>"
            f"<tt:Month>{t.month}</tt:Month><tt:Day>{t.day}</tt:Day></tt:Date></tt:UTCDateTime>"
            "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    def services_xml(self, services: Iterable[tuple[str, str, str]], caps: Callable[[str], str] | None = None) -> str:
        """GetServicesResponse for (namespace, path, version "major.minor") triples; ``caps(namespace)`` gives the
        service's capabilities element when the request asked IncludeCapability."""
        out = ""
        for ns, path, version in services:
            major, _, minor = version.partition(".")
            cap = caps(ns) if caps else ""
            out += (f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{self.base}{path}</tds:XAddr>"
                    + (f"<tds:Capabilities>{cap}</tds:Capabilities>" if cap else "")
                    + f"<tds:Version><tt:Major>{major}</tt:Major><tt:Minor>{minor or 0}</tt:Minor></tds:Version>"
                    "</tds:Service>")
        return f"<tds:GetServicesResponse>{out}</tds:GetServicesResponse>"


def topic_matches(expression: str, topic: str) -> bool:
    """A ConcreteSet/ExtendedSet topic expression (``a|b``, ``tns1:Door//.``, ``*`` segments) against a topic."""
    def local(path: str) -> list[str]:
        return [seg.rpartition(":")[2] for seg in path.strip().split("/")]

    want = local(topic)
    for alt in expression.split("|"):
        alt = alt.strip()
        if not alt:
            continue
        deep = alt.endswith("//.")
        segs = local(alt[:-3] if deep else alt)
        head = want[: len(segs)] if deep else want
        if len(head) == len(segs) and all(s in ("*", w) for s, w in zip(segs, head, strict=True)):
            return True
    return False


@dataclass
class Subscription:
    sid: str
    expires: float  # monotonic
    topics: str = ""  # topic filter expression, empty for all
    queue: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class PullPoints:
    """The events service's PullPoint subscriptions of one device.

    ``initial()`` gives (topic, notification) pairs (PropertyOperation Initialized) of the device's current
    state: queued at every SetSynchronizationPoint and, with ``on_subscribe``, on a new subscription.
    Subscriptions live at ``/onvif/subscription/{sid}``.
    """

    def __init__(self, device: SoapDevice, initial: Callable[[], list[tuple[str, str]]],
                 on_subscribe: bool = True) -> None:
        self.dev = device
        self.initial = initial
        self.on_subscribe = on_subscribe
        self.subs: dict[str, Subscription] = {}
        self.drop_renew = 0

    # How the device reads and writes termination times (the camera simulator's --termination, --max-lifetime,
    # --push-only; other devices keep the defaults): see drivers/onvif/sim.py's docstring.
    def _option(self, name: str, default: Any) -> Any:
        return getattr(self.dev.args, name, default)

    def _termination(self, op: ET.Element, tag: str) -> float | None:
        """Seconds granted; None when this device refuses the form asked (absolute-only and a duration)."""
        text = (op.findtext(tag) or "").strip()
        if self._option("termination", "normal") == "absolute-only" and text.startswith("P"):
            return None
        seconds = parse_duration(text, 60.0, self.dev.now())
        return max(1.0, min(seconds, 3600.0, self._option("max_lifetime", 3600.0)))

    def _times(self, seconds: float, renew: bool = False) -> tuple[str, str]:
        """CurrentTime and TerminationTime as this device writes them."""
        now, mode = self.dev.now(), self._option("termination", "normal")
        term = iso(now) if mode == "zero" else iso(now + dt.timedelta(seconds=seconds))
        if mode == "naive":
            term = term.rstrip("Z")
        cur = "" if renew and mode == "no-current-time" else f"<wsnt:CurrentTime>{iso(now)}</wsnt:CurrentTime>"
        return cur, f"<wsnt:TerminationTime>{term}</wsnt:TerminationTime>"

    @staticmethod
    def _bad_termination() -> SoapFault:
        return SoapFault("Sender", ["ter:InvalidArgVal"], "TerminationTime: only an absolute xsd:dateTime is accepted")

    def _sub(self, request: web.Request) -> Subscription:
        sub = self.subs.get(request.match_info.get("sid", ""))
        if sub is not None and sub.expires < time.monotonic():
            del self.subs[sub.sid]
            sub = None
        if sub is None:
            raise SoapFault("Sender", ["ter:InvalidArgVal"], "unknown or expired subscription")
        return sub

    def _queue(self, sub: Subscription, messages: Iterable[tuple[str, str]]) -> None:
        sub.queue.extend(xml for topic, xml in messages if not sub.topics or topic_matches(sub.topics, topic))
        sub.wake.set()

    def publish(self, topic: str, xml: str) -> None:
        for sub in self.subs.values():
            self._queue(sub, [(topic, xml)])

    def forget(self) -> None:
        for sub in self.subs.values():
            sub.wake.set()
        self.subs.clear()

    async def op_CreatePullPointSubscription(self, _r: web.Request, op: ET.Element) -> str:
        if self._option("push_only", False):
            raise SoapFault("Receiver", ["ter:ActionNotSupported"],
                            "no PullPoint: this device only pushes notifications")
        tev, wsnt = self.dev.ns["tev"], self.dev.ns["wsnt"]
        seconds = self._termination(op, f"{{{tev}}}InitialTerminationTime")
        if seconds is None:
            raise self._bad_termination()
        topics = op.findtext(f"{{{tev}}}Filter/{{{wsnt}}}TopicExpression") or ""
        sub = Subscription(secrets.token_hex(6), time.monotonic() + seconds, topics.strip())
        self.subs[sub.sid] = sub
        self.dev.stats["subscriptions"] += 1
        if self.on_subscribe:
            self._queue(sub, self.initial())
        cur, term = self._times(seconds)
        return (
            "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
            f"<wsa:Address>{self.dev.base}/onvif/subscription/{sub.sid}</wsa:Address></tev:SubscriptionReference>"
            f"{cur}{term}</tev:CreatePullPointSubscriptionResponse>"
        )

    async def op_PullMessages(self, request: web.Request, op: ET.Element) -> str:
        sub = self._sub(request)
        self.dev.stats["pulls"] += 1
        tev = self.dev.ns["tev"]
        timeout = min(parse_duration(op.findtext(f"{{{tev}}}Timeout"), 10.0), 60.0)
        limit = int(op.findtext(f"{{{tev}}}MessageLimit") or 100)
        if not sub.queue:
            sub.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await sub.wake.wait()
        if self.subs.get(sub.sid) is not sub:
            raise SoapFault("Sender", ["ter:InvalidArgVal"], "unknown or expired subscription")
        msgs, sub.queue = sub.queue[:limit], sub.queue[limit:]
        now = self.dev.now()
        term = now + dt.timedelta(seconds=max(0.0, sub.expires - time.monotonic()))
        return (f"<tev:PullMessagesResponse><tev:CurrentTime>{iso(now)}</tev:CurrentTime>"
                f"<tev:TerminationTime>{iso(term)}</tev:TerminationTime>{''.join(msgs)}"
                "</tev:PullMessagesResponse>")

    async def op_Renew(self, request: web.Request, op: ET.Element) -> str:
        sub = self._sub(request)
        if self.drop_renew > 0:
            self.drop_renew -= 1
            self.dev.stats["dropped_renews"] += 1
            del self.subs[sub.sid]
            sub.wake.set()
            raise SoapFault("Sender", ["ter:InvalidArgVal"], "unknown or expired subscription")
        seconds = self._termination(op, f"{{{self.dev.ns['wsnt']}}}TerminationTime")
        if seconds is None:
            raise self._bad_termination()
        self.dev.stats["renews"] += 1
        sub.expires = time.monotonic() + seconds
        cur, term = self._times(seconds, renew=True)
        return f"<wsnt:RenewResponse>{term}{cur}</wsnt:RenewResponse>"

    async def op_Unsubscribe(self, request: web.Request, _op: ET.Element) -> str:
        sub = self._sub(request)
        del self.subs[sub.sid]
        sub.wake.set()
        return "<wsnt:UnsubscribeResponse/>"

    async def op_SetSynchronizationPoint(self, request: web.Request, _op: ET.Element) -> str:
        sub = self._sub(request)
        self.dev.stats["sync_points"] += 1
        self._queue(sub, self.initial())
        return "<tev:SetSynchronizationPointResponse/>"

    def stats(self) -> dict[str, Any]:
        return {"subscriptions_live": len(self.subs), "ops": dict(self.dev.ops)}
