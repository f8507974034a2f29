"""Commands from upstream (docs/mqtt.md): checked and rate-limited by ``agent.uplink.intake``, run, and
answered on the ack topic. Remote operations (signed pushes, writes) grow here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.core.pipeline import Pipeline
from agent.uplink import intake
from agent.uplink.codec import dumps
from agent.uplink.mqtt import Uplink
from agent.uplink.topics import Topics

log = logging.getLogger("edge_agent")

Queue = Callable[[str, bytes, float], None]


class CommandChannel:
    def __init__(self, topics: Topics, uplink: Uplink, pipeline: Pipeline, queue: Queue, started: float) -> None:
        self.topics = topics
        self.uplink = uplink
        self.pipeline = pipeline
        self.queue = queue  # where acks go: the event queue of the outbox
        self.started = started
        self.gate = intake.Gate()

    async def handle(self, payload: bytes) -> None:
        """Every command is answered on the ack topic unless answers themselves are over their rate (a flood)."""
        if not payload:  # an empty (retained) message clears the topic; it is no command
            return
        self.gate.received += 1
        try:
            c = intake.parse(payload)
            self.gate.admit(c)
            result = self._run(c)
        except intake.CommandRefused as exc:
            self.gate.refused += 1
            if self.ack(exc.cid, False, error=exc.error, cmd=exc.cmd):
                log.warning("command refused: %s", exc.error)
        else:
            self.ack(c.id, True, result=result, cmd=c.cmd)

    def _run(self, c: intake.Command) -> dict[str, Any]:
        if c.cmd == "ping":
            return {"pong": True, "agent": __version__, "uptime": round(time.time() - self.started, 1)}
        if c.cmd == "rebirth":
            self.uplink.rebirth(reset=True)  # coalesced: at most one birth per REBIRTH_MIN_INTERVAL
            return {"gen": self.pipeline.gen}
        raise intake.CommandRefused(f"unknown command {c.cmd!r}; known: ping, rebirth", c.id, c.cmd)

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
        self.queue(self.topics.ack, dumps(doc), time.time())
        return True

    def stats(self) -> dict[str, Any]:
        return {**self.gate.stats(), "retained_ignored": self.uplink.retained_ignored}
