"""Commands from upstream (docs/mqtt.md): checked and rate-limited by ``agent.uplink.intake``, run, and
answered on the ack topic. ``ping``, ``rebirth`` and ``snapshot`` change nothing on site and may come unsigned;
every other command must be signed (docs/remote.md) and is verified and run by ``RemoteOps``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from agent import __version__
from agent.core.pipeline import Pipeline
from agent.core.remoteops import RemoteOps
from agent.errors import was_logged
from agent.remote.chunks import ChunkError, ChunkStore
from agent.remote.envelope import COMMAND_ROLES, Refused
from agent.uplink import intake
from agent.uplink.codec import dumps
from agent.uplink.mqtt import Uplink
from agent.uplink.topics import Topics

log = logging.getLogger("edge_agent")

Queue = Callable[[str, bytes, float], None]
Snapshot = Callable[[Any], Awaitable[dict[str, Any]]]  # device name -> where the picture went


class CommandChannel:
    def __init__(self, topics: Topics, uplink: Uplink, pipeline: Pipeline, queue: Queue, started: float,
                 snapshot: Snapshot | None = None, remote: RemoteOps | None = None,
                 chunks: ChunkStore | None = None) -> None:
        self.topics = topics
        self.uplink = uplink
        self.pipeline = pipeline
        self.queue = queue  # where acks go: the event queue of the outbox
        self.started = started
        self.gate = intake.Gate()
        self.snapshot = snapshot
        self.remote = remote
        self.chunks = chunks  # parts of a chunked configuration push
        self._slow: set[asyncio.Task[None]] = set()  # commands that take long (snapshots): answered when done

    async def handle(self, payload: bytes) -> None:
        """Every command is answered on the ack topic unless answers themselves are over their rate (a flood)."""
        if not payload:  # an empty (retained) message clears the topic; it is no command
            return
        self.gate.received += 1
        try:
            c = intake.parse(payload)
            self.gate.admit(c)
            if c.jws is not None or c.cmd in COMMAND_ROLES:
                self._start(self._signed(c), f"command:{c.cmd}")
                return
            if c.cmd == "push-chunk" and self.chunks is not None:
                try:
                    self.chunks.add(c.args)  # kept silently: the signed push is answered (a flood of acks saved)
                except ChunkError as exc:
                    raise intake.CommandRefused(str(exc), c.id, c.cmd) from None
                return
            if c.cmd == "snapshot" and self.snapshot is not None:
                # a camera may take seconds: answered when done, without holding up the commands behind it
                self._start(self._slow_command(c, self.snapshot), "command:snapshot")
                return
            result = self._run(c)
        except intake.CommandRefused as exc:
            self.gate.refused += 1
            if self.ack(exc.cid, False, error=exc.error, cmd=exc.cmd):
                log.warning("command refused: %s", exc.error)
        else:
            self.ack(c.id, True, result=result, cmd=c.cmd)

    def _start(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._slow.add(task)
        task.add_done_callback(self._slow.discard)

    async def _signed(self, c: intake.Command) -> None:
        """A signed command: verified (key, role, site, times, replay) and run, or refused with why."""
        cid: str | int | None = c.id
        try:
            if c.jws is None:
                role = COMMAND_ROLES.get(c.cmd, "?")
                raise Refused(f"unsigned: {c.cmd} changes or reveals the site and needs a signed message (jws) "
                              f"by a key with the role {role!r} (docs/remote.md)")
            if self.remote is None:
                raise Refused("signed commands are not enabled on this box")
            s = self.remote.verify(c.jws)
            if s.cmd != c.cmd or (c.id is not None and c.id != s.id):
                raise Refused(f"cmd/id outside the signature ({c.cmd!r}/{c.id!r}) differ from the signed "
                              f"{s.cmd!r}/{s.id!r}")
            cid = s.id
            result = await self.remote.run(s)
        except Refused as exc:
            self.gate.refused += 1
            if self.ack(cid, False, error=str(exc)[:intake.MAX_ERROR_CHARS], cmd=c.cmd) and not was_logged(exc):
                log.warning("signed command refused: %s", exc)
        except Exception as exc:  # a bug or the disk: answered, never a silent end of the task
            log.exception("signed %s failed", c.cmd)
            self.ack(cid, False, error=f"{c.cmd} failed: {type(exc).__name__}: {exc}"[:intake.MAX_ERROR_CHARS],
                     cmd=c.cmd)
        else:
            self.ack(cid, True, result=result, cmd=c.cmd)

    async def _slow_command(self, c: intake.Command, run: Snapshot) -> None:
        try:
            result = await run(c.args.get("device"))
        except intake.CommandRefused as exc:
            self.gate.refused += 1
            self.ack(c.id, False, error=exc.error, cmd=c.cmd)
        else:
            self.ack(c.id, True, result=result, cmd=c.cmd)

    def _run(self, c: intake.Command) -> dict[str, Any]:
        if c.cmd == "ping":
            return {"pong": True, "agent": __version__, "uptime": round(time.time() - self.started, 1)}
        if c.cmd == "rebirth":
            self.uplink.rebirth(reset=True)  # coalesced: at most one birth per REBIRTH_MIN_INTERVAL
            return {"gen": self.pipeline.gen}
        known = "ping, rebirth" + (", snapshot" if self.snapshot is not None else "")
        raise intake.CommandRefused(f"unknown command {c.cmd!r}; known: {known}", c.id, c.cmd)

    def ack(self, cid: str | int | None, ok: bool, *, cmd: str | None = None, result: Any = None,
            error: str | None = None) -> bool:
        """Queue an acknowledgement (strict JSON, bounded: ``cid`` and ``cmd`` are checked by ``intake``).
        False if the answer was dropped because answers are over their rate."""
        if not self.gate.may_answer():
            return False
        doc: dict[str, Any] = {"id": cid, "cmd": cmd, "ok": ok, "ts": round(time.time(), 3)}
        if ok:
            doc["result"] = result
        else:
            doc["error"] = error
            if result is not None:  # a refusal with details (a push rolled back: from, to, why)
                doc["result"] = result
        self.queue(self.topics.ack, dumps(doc), time.time())
        return True

    def stats(self) -> dict[str, Any]:
        return {**self.gate.stats(), "retained_ignored": self.uplink.retained_ignored}
