"""Command intake: what the agent accepts on its command topic and what it answers (docs/mqtt.md).

Anything on the command topic is hostile until checked. A payload costs the agent at most a bounded amount of
work and of uplink traffic: its size and nesting are checked before it is parsed (a 100k-deep array would
otherwise end in a ``RecursionError``), ``NaN``/``Infinity`` are refused (they are not JSON), ``id`` and
``cmd`` are checked before they are echoed in the acknowledgement, and commands are rate-limited per source,
with a global ceiling on the answers so that a flood never becomes a larger flood upstream.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("edge_agent.commands")

MAX_COMMAND_BYTES = 65536  # a signed configuration push is one message (docs/remote.md)
MAX_DEPTH = 8  # {"args": {...}} needs 2; anything deeper is not a command
MAX_ID_CHARS = 64
MAX_SRC_CHARS = 64
MAX_INT_ID = 2**53 - 1  # exactly representable in every JSON parser
MAX_ERROR_CHARS = 200
CMD_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# Per source: a burst of SOURCE_BURST commands, then one every 1/SOURCE_RATE s.
SOURCE_BURST = 10
SOURCE_RATE = 1.0
MAX_SOURCES = 256
# All sources together (``src`` is declared by the sender, so a flood could rotate it).
ALL_BURST = 30
ALL_RATE = 5.0
# All answers together (acks and refusals): beyond this, commands are dropped unanswered and counted.
ANSWER_BURST = 20
ANSWER_RATE = 2.0


class CommandRefused(Exception):
    """A command that is answered with ``ok: false``. ``cid``/``cmd`` are only set when they are safe to echo."""

    def __init__(self, error: str, cid: str | int | None = None, cmd: str | None = None) -> None:
        super().__init__(error)
        self.error = error[:MAX_ERROR_CHARS]
        self.cid = cid
        self.cmd = cmd


@dataclass(frozen=True)
class Command:
    id: str | int | None
    cmd: str
    src: str
    args: dict[str, Any]
    jws: str | None = None  # a signed command (docs/remote.md): its claims, not ``args``, are what is obeyed


def nesting_depth_exceeds(payload: bytes, limit: int) -> bool:
    """True if JSON ``payload`` nests arrays/objects deeper than ``limit`` (strings are skipped)."""
    depth = 0
    in_string = escaped = False
    for b in payload:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif b in (0x5D, 0x7D):
            depth -= 1
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _valid_id(v: Any) -> bool:
    if isinstance(v, str):
        return 1 <= len(v) <= MAX_ID_CHARS and v.isprintable()
    return isinstance(v, int) and not isinstance(v, bool) and -MAX_INT_ID <= v <= MAX_INT_ID


def parse(payload: bytes) -> Command:
    """A checked command, or ``CommandRefused`` with a short error that never echoes unbounded input."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRefused(f"command too large: {len(payload)} bytes (max {MAX_COMMAND_BYTES})")
    if nesting_depth_exceeds(payload, MAX_DEPTH):
        raise CommandRefused(f"command nested deeper than {MAX_DEPTH} levels")
    try:
        msg = json.loads(payload, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CommandRefused(f"malformed command: {exc}") from None
    if not isinstance(msg, dict):
        raise CommandRefused("malformed command: a command must be a JSON object")
    raw_cmd, raw_id = msg.get("cmd"), msg.get("id")
    cmd = raw_cmd if isinstance(raw_cmd, str) and CMD_RE.match(raw_cmd) else None
    cid = raw_id if _valid_id(raw_id) else None
    if raw_id is not None and cid is None:
        raise CommandRefused(f"id must be a string of 1-{MAX_ID_CHARS} printable characters or an integer "
                             f"within ±(2^53-1)", None, cmd)
    if cmd is None:
        what = "missing" if raw_cmd is None else "not a command name (a-z, 0-9, - and _, at most 32)"
        raise CommandRefused(f"cmd {what}", cid, None)
    src = msg.get("src", "-")
    if not (isinstance(src, str) and 1 <= len(src) <= MAX_SRC_CHARS and src.isprintable()):
        raise CommandRefused(f"src must be a string of 1-{MAX_SRC_CHARS} printable characters", cid, cmd)
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise CommandRefused("args must be a JSON object", cid, cmd)
    jws = msg.get("jws")
    if jws is not None and not isinstance(jws, str):
        raise CommandRefused("jws must be a string (a JWS in compact serialisation)", cid, cmd)
    return Command(cid, cmd, src, args, jws)


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Gate:
    """Rate limits: commands per source (``src`` member, ``-`` when absent) and from all sources; answers."""

    def __init__(self) -> None:
        self.sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self.answers = TokenBucket(ANSWER_RATE, ANSWER_BURST)
        self.all = TokenBucket(ALL_RATE, ALL_BURST)
        self.received = 0
        self.refused = 0
        self.rate_limited = 0
        self.unanswered = 0
        self._muted = False

    def admit(self, c: Command) -> None:
        """Raise ``CommandRefused`` if ``c``'s source is over its rate."""
        now = time.monotonic()
        bucket = self.sources.pop(c.src, None) or TokenBucket(SOURCE_RATE, SOURCE_BURST, at=now)
        self.sources[c.src] = bucket  # most recently used last
        while len(self.sources) > MAX_SOURCES:
            self.sources.popitem(last=False)
        if not bucket.take(now):
            self.rate_limited += 1
            raise CommandRefused(f"rate limited: at most {SOURCE_BURST} commands at once, then "
                                 f"{SOURCE_RATE:g} per second per source", c.id, c.cmd)
        if not self.all.take(now):
            self.rate_limited += 1
            raise CommandRefused(f"rate limited: at most {ALL_BURST} commands at once, then {ALL_RATE:g} per "
                                 "second from all sources", c.id, c.cmd)

    def may_answer(self) -> bool:
        """One answer's worth of budget; False (counted, logged once per flood) when the flood is too large."""
        if self.answers.take(time.monotonic()):
            if self._muted:
                log.warning("commands answered again; %d left unanswered so far", self.unanswered)
                self._muted = False
            return True
        self.unanswered += 1
        if not self._muted:
            log.warning("command flood: more than %d answers at once; further commands are dropped unanswered "
                        "until the rate falls below %g per second", ANSWER_BURST, ANSWER_RATE)
            self._muted = True
        return False

    def stats(self) -> dict[str, int]:
        return {"received": self.received, "refused": self.refused, "rate_limited": self.rate_limited,
                "unanswered": self.unanswered}
