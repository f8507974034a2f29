"""The MQTT session: connect (TCP or mutual TLS), announce, drain the outbox with PUBACK-gated deletes,
take commands; reconnect forever after a random delay (``reconnect_delay``).

Delivery: each outbox row is published with QoS 1 and acknowledged in the outbox only after the broker's
PUBACK (aiomqtt's ``publish(qos=1)`` returns then). A lost connection releases the leased rows, which are
published again after reconnecting: at least once, duplicates recognisable by ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from agent import __version__
from agent.config import Secrets, UplinkConfig
from agent.outbox import Kind, Outbox, Stored
from agent.uplink.codec import dumps, frame, with_seq
from agent.uplink.suspects import QUICK, SETTLE, Suspects
from agent.uplink.topics import Topics

log = logging.getLogger("edge_agent.uplink")

CommandHandler = Callable[[bytes], Awaitable[None]]

# Rebirths asked by commands are coalesced: at most one per this many seconds (a flood of `rebirth` commands
# becomes one birth at the end of the window instead of one birth each). A new generation is not delayed.
REBIRTH_MIN_INTERVAL = 5.0
MAX_QUEUED_COMMANDS = 100  # received, not yet handled; beyond, paho's queue discards (bounded memory)


def reconnect_delay(initial: float, longest: float, rnd: random.Random | None = None) -> float:
    """Wait before a reconnect attempt: uniform in [initial, longest] (1-15 s by default), at every attempt.

    Why not exponential: when the operator's broker restarts, every site loses its session in the same second.
    Doubling delays (the old 1 s .. 60 s) keep the first retries of all sites together (a herd in the first
    seconds) and, after a long outage, leave a box waiting up to 60 s (median ~20 s) after the broker answers
    again. A fixed random window spreads 2,000 sites over it (at most ~12 % of them in any second) and bounds
    the added downtime: median ~5 s, at most ``longest``. Retries against a dead broker cost one TCP SYN."""
    return (rnd or random).uniform(initial, max(initial, longest))
ACK_BATCH = 256  # delivered rows deleted together at most (while more rows wait to be published)
REFUSED_FOR_GOOD = (ValueError, TypeError)
"""What paho raises from ``publish`` for a message it will never send (a wildcard or empty topic, an
oversized payload): such a row is set aside alone instead of failing the session and coming back first."""


@dataclass
class UplinkState:
    connected: bool = False
    state: str = "starting"  # starting | connecting | online | offline
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    connects: int = 0
    published: int = 0
    publish_failures: int = 0
    refused: int = 0  # rows set aside because the client refuses them (wildcard topic, ...)
    last_publish: float | None = None
    next_retry: float | None = None


class _NamedTLSContext(ssl.SSLContext):
    """Verifies the broker certificate against a configured name (``uplink.tls.server_hostname``) rather
    than the host of the URL: brokers reached by IP address, or through a tunnel, with a certificate for
    their public name. paho passes the URL host to ``wrap_socket``; this context substitutes the name."""

    expected_name = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = self.expected_name
        return super().wrap_socket(sock, *args, **kwargs)


def client_tls_context(ca_file: str | None = None, server_hostname: str | None = None) -> ssl.SSLContext:
    """A verifying TLS client context (system CAs or ``ca_file``), TLS 1.2 at least."""
    if server_hostname:
        ctx: ssl.SSLContext = _NamedTLSContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.expected_name = server_hostname  # type: ignore[attr-defined]
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def build_tls_context(cfg: UplinkConfig, secrets: Secrets) -> ssl.SSLContext | None:
    if not cfg.uses_tls:
        return None
    tls = cfg.tls
    ctx = client_tls_context(tls.ca_file if tls else None, tls.server_hostname if tls else None)
    if secrets.cert_file and secrets.key_file:
        ctx.load_cert_chain(secrets.cert_file, secrets.key_file)
    return ctx


class Uplink:
    def __init__(self, cfg: UplinkConfig, secrets: Secrets, topics: Topics, outbox: Outbox,
                 birth: Callable[[], dict[str, Any]], on_command: CommandHandler,
                 on_reset: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.secrets = secrets
        self.topics = topics
        self.outbox = outbox
        self.birth = birth
        self.on_command = on_command
        self.state = UplinkState()
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._rebirth = asyncio.Event()
        self._reset_points = False  # a rebirth command asked for every point to be sent again
        self._urgent = asyncio.Event()  # the next birth is a new generation: no coalescing wait
        self.on_reset = on_reset
        self._last_birth = -REBIRTH_MIN_INTERVAL  # monotonic time of the last birth published
        self.retained_ignored = 0
        self.status_extra: dict[str, Any] = {}  # more members of the online status (the configuration version)
        self._suspects = Suspects()
        self.progress = time.monotonic()  # watchdog: last time the publisher loop was seen alive
        self.on_puback: Callable[[float, int], None] | None = None  # metrics: (seconds to PUBACK, payload bytes)

    # -------------------------------------------------------------------------------------- session

    def _client_for(self) -> aiomqtt.Client:
        cfg = self.cfg
        will = aiomqtt.Will(self.topics.status, dumps({"state": "offline", "reason": "lost"}), qos=1, retain=True)
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id or f"edge-agent-{self.topics.site}",
            username=cfg.username,
            password=self.secrets.password.get_secret_value() if self.secrets.password else None,
            will=will,
            clean_session=True,
            keepalive=int(cfg.keepalive),
            timeout=cfg.connect_timeout,
            tls_context=build_tls_context(cfg, self.secrets),
            max_inflight_messages=cfg.max_inflight,
            max_queued_incoming_messages=MAX_QUEUED_COMMANDS,  # a command flood is dropped, not buffered
            logger=logging.getLogger("edge_agent.uplink.paho"),
        )

    async def run(self) -> None:
        """Connect and serve forever; only cancellation ends it."""
        while True:
            self.state.state = "connecting"
            try:
                client = self._client_for()
                async with client:
                    self._client = client
                    self.state.connects += 1
                    await self._announce(client)
                    self.state.connected, self.state.state, self.state.since = True, "online", time.time()
                    self.state.next_retry = None
                    self.connected.set()
                    log.info("connected to %s:%s", self.cfg.host, self.cfg.port)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._commands(client), name="uplink:commands")
                        tg.create_task(self._rebirther(client), name="uplink:rebirth")
                        # The body waits in the publisher, not in the group's exit: on Python 3.11 (Debian
                        # bookworm's) a child failing while the body already waits in TaskGroup.__aexit__
                        # leaves its cancel request counted on this task, which would read as a stop below.
                        await self._publisher(client)
            except asyncio.CancelledError:
                raise
            except BaseException as raw:  # the session died: log once per transition and retry
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # cancelled while the session failed (the broker dropped during the stop): the session's
                    # error, or its task group, took the place of the CancelledError; stop anyway
                    raise asyncio.CancelledError() from raw
                exc = raw
                while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                    exc = exc.exceptions[0]
                if not isinstance(exc, Exception):
                    raise
                reason = _describe(exc)
                if self.state.connected or self.state.last_error != reason:
                    log.warning("uplink down: %s", reason)
                self.state.last_error = reason
            finally:
                self._client = None
                self.outbox.release_all()
                if self.state.connected:
                    self.state.since = time.time()
                self.state.connected = False
                self.connected.clear()
            self.state.state = "offline"
            delay = reconnect_delay(self.cfg.backoff.initial, self.cfg.backoff.max)
            self.state.next_retry = time.time() + delay
            self.progress = time.monotonic() + delay
            await asyncio.sleep(delay)

    async def _announce(self, client: aiomqtt.Client) -> None:
        t = self.cfg.publish_timeout
        await client.subscribe(self.topics.command, qos=1, timeout=t)
        self._rebirth.clear()  # this birth answers any rebirth requested while offline
        self._urgent.clear()
        await self._publish_birth(client)
        await client.publish(self.topics.status, dumps({"state": "online", "ts": round(time.time(), 3),
                                                        "agent": __version__, **self.status_extra}),
                             qos=1, retain=True, timeout=t)

    def birth_doc(self) -> dict[str, Any]:
        return {"v": 1, "site": self.topics.site, "agent": __version__, "ts": round(time.time(), 3),
                "epoch": self.outbox.epoch, **self.birth()}

    def rebirth(self, reset: bool = False, urgent: bool = False) -> None:
        """Publish the birth again, coalesced unless ``urgent`` (a new generation); ``reset``: then send every
        point again at its next read."""
        self._reset_points = self._reset_points or reset
        if urgent:
            self._urgent.set()
        self._rebirth.set()

    async def _publish_birth(self, client: aiomqtt.Client) -> None:
        if self._reset_points:
            self._reset_points = False
            if self.on_reset is not None:
                self.on_reset()
        self._last_birth = time.monotonic()
        await client.publish(self.topics.birth, dumps(self.birth_doc()), qos=1, retain=True,
                             timeout=self.cfg.publish_timeout)

    async def _rebirther(self, client: aiomqtt.Client) -> None:
        while True:
            await self._rebirth.wait()
            # Requests that arrive while we wait out the window are answered by this one birth.
            with contextlib.suppress(TimeoutError):  # an urgent request ends the wait
                async with asyncio.timeout(max(0.0, self._last_birth + REBIRTH_MIN_INTERVAL - time.monotonic())):
                    await self._urgent.wait()
            self._rebirth.clear()
            self._urgent.clear()
            await self._publish_birth(client)

    async def goodbye(self) -> None:
        """Graceful shutdown: say offline (retained) before disconnecting; bounded."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await client.publish(self.topics.status, dumps({"state": "offline", "reason": "shutdown",
                                                                "ts": round(time.time(), 3)}), qos=1, retain=True)

    # ------------------------------------------------------------------------------------ publishing

    def payload(self, row: Stored) -> bytes:
        if row.kind == Kind.TELEMETRY:
            return frame(row.seq, row.body)
        if row.topic.startswith(self.topics.pictures):
            return row.body  # a camera picture (JPEG) as it is: the event id in its topic identifies it
        return with_seq(row.seq, row.body)

    async def _publisher(self, client: aiomqtt.Client) -> None:
        session_start = time.monotonic()
        sem = asyncio.Semaphore(self.cfg.max_inflight)
        acked: list[int] = []
        failure: list[BaseException] = []

        refused: dict[str, list[Stored]] = {}

        alone: list[int] = []  # the suspect published alone in this batch, if any
        unacked = 0  # rows acknowledged by the broker, marked delivered, not deleted yet

        def blamed(started: float, row: Stored) -> bool:
            return row.seq in alone and time.monotonic() - started < QUICK

        async def one(row: Stored) -> None:
            started = time.monotonic()
            payload = b""
            try:
                payload = self.payload(row)
                await client.publish(row.topic, payload, qos=1, retain=self.topics.retained(row.topic),
                                     timeout=self.cfg.publish_timeout)
            except asyncio.CancelledError:  # the session died while this row was in flight (or shutdown)
                self._suspects.failed(row.seq, blamed=blamed(started, row))
                raise
            except REFUSED_FOR_GOOD as exc:  # the client itself refuses this message: it will at every try
                refused.setdefault(str(exc) or type(exc).__name__, []).append(row)
                self.state.refused += 1
            except Exception as exc:
                self.outbox.release([row.seq])
                self.state.publish_failures += 1
                self._suspects.failed(row.seq, blamed=blamed(started, row))
                failure.append(exc)
            else:
                acked.append(row.seq)
                self.progress = time.monotonic()  # watchdog: every PUBACK is progress, however slow the link
                if self.on_puback is not None:
                    self.on_puback(self.progress - started, len(payload))
            finally:
                sem.release()

        while True:
            self.progress = time.monotonic()
            if not self.outbox.is_open:  # not opened yet (full disk at start): the agent retries the open
                await asyncio.sleep(1.0)
                continue
            if not self.outbox.has_pending():  # nothing to take: no round trip to the store's thread
                if self.outbox.ack_failing_since is not None or unacked:
                    await self.outbox.ack([])  # retry the deletes of delivered rows
                    unacked = 0
                await self.outbox.wait(timeout=1.0)
                continue
            # Small takes: a new event never waits behind more than a few round trips of backlog.
            rows = await self.outbox.take(self.cfg.max_inflight * 4)
            if not rows:
                if self.outbox.ack_failing_since is not None or unacked:
                    await self.outbox.ack([])  # retry the deletes of delivered rows
                    unacked = 0
                await self.outbox.wait(timeout=1.0)
                continue
            rows, back, poison = self._suspects.split(rows)
            self.outbox.release(r.seq for r in back)
            if poison is not None:
                n = self._suspects.count(poison.seq)
                self._suspects.forget(poison.seq)
                self.state.refused += 1
                await self.outbox.set_aside([poison], f"the connection was lost at once at {n} publishes of it "
                                                      "alone: the broker refuses it")
                continue
            alone[:] = [rows[0].seq] if self._suspects.is_suspect(rows[0].seq) else []
            if alone and (wait := SETTLE - (time.monotonic() - session_start)) > 0:
                await asyncio.sleep(wait)  # a session that dies right after connecting blames no row
            tasks: list[asyncio.Task[None]] = []
            for row in rows:
                await sem.acquire()
                if failure:
                    sem.release()
                    self.outbox.release([r.seq for r in rows[len(tasks):]])
                    break
                tasks.append(asyncio.create_task(one(row)))
            if tasks:
                await asyncio.gather(*tasks)
            for reason, bad in list(refused.items()):
                del refused[reason]
                await self.outbox.set_aside(bad, reason)
            if acked:
                done = list(acked)
                acked.clear()
                self._suspects.delivered(done)
                unacked += len(done)
                if failure or unacked >= ACK_BATCH or not self.outbox.has_pending():
                    # one delete for every batch acknowledged since the last one; a failed delete keeps the rows
                    # as delivered: no session reset
                    await self.outbox.ack(done)
                    unacked = 0
                else:  # more rows to publish first: delete these with the next ones (one commit, not one each)
                    self.outbox.delivered(done)
                self.state.published += len(done)
                self.state.last_publish = time.time()
            if failure:
                raise failure[0]

    async def _commands(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload or "").encode()
            if msg.retain:
                # The broker replays a retained message at every subscription, i.e. at every reconnect: a
                # command is obeyed only when sent live.
                self.retained_ignored += 1
                log.warning("ignoring a retained message on %s (%d B): commands must not be published with "
                            "retain; clear it with an empty retained message", msg.topic, len(payload))
                continue
            try:
                await self.on_command(payload)
            except Exception:  # a bad command must never take the session down
                log.exception("command handling failed")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiomqtt.MqttCodeError):
        return f"MQTT error: {exc}"
    if isinstance(exc, aiomqtt.MqttError):
        return f"MQTT: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"network: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"
