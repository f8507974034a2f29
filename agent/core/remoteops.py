"""Signed commands (docs/remote.md): verified by ``agent.remote.envelope`` (key, role, site, times, replay),
then run from an allow-list of typed handlers. No handler runs a program or reads a file: each one calls the
running agent's own code (the Writer for writes, the runner for a probe, the Reloader for reloads, the status
snapshot, the in-memory log ring). Each obeyed command that changes something is a ``remote`` event (an audit
trail upstream) and a log line."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Site
from agent.errors import EdgeAgentError, mark_logged, was_logged
from agent.model import Event, Severity, Value
from agent.remote.envelope import Refused, Signed, verify
from agent.remote.logring import LogRing
from agent.remote.replay import ReplayRecord
from agent.remote.trust import TrustStore, trust_path
from agent.uplink.codec import dumps

log = logging.getLogger("edge_agent.remote")

LOG_TAIL_MAX = 500  # lines one log-tail may ask for
LOG_LEVEL_MAX = 3600.0  # s a temporary log level may last
LOG_LEVEL_DEFAULT = 600.0
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
CHANGES = {"write", "retry", "reload", "log-level", "push", "door"}  # obeyed commands that are audit events


@dataclass
class Hooks:
    """What the running agent offers to signed commands (wired by ``Agent``)."""

    write: Callable[[str, str, Value], Awaitable[Value]]
    retry: Callable[[str], Awaitable[dict[str, Any]]]
    reload: Callable[[], None]
    snapshot: Callable[[], dict[str, Any]]
    event: Callable[[Event], None]
    push: Callable[[Signed], Awaitable[dict[str, Any]]] | None = None
    send: Callable[[dict[str, Any]], None] | None = None  # an ack-shaped message without the answer budget
    config: Callable[[], dict[str, Any]] | None = None  # the configuration version that runs
    # a door command (device, door, command, by) through the agent's DoorGate (site file policy, audit)
    door: Callable[[str, str, str, str], Awaitable[dict[str, Any]]] | None = None


class RemoteOps:
    def __init__(self, site: Site, hooks: Hooks, budget: int) -> None:
        self.site = site
        self.hooks = hooks
        self.budget = budget  # bytes an ack's result may take (it must fit what the uplink sends)
        self.trust_error: str | None = None
        try:
            self.trust = TrustStore.load(trust_path(site.file))
        except EdgeAgentError as exc:
            self.trust_error = str(exc)
            log.error("remote: trust file refused, every signed message is refused: %s", exc)
            self.trust = TrustStore.empty(trust_path(site.file))
        self.record = ReplayRecord(site.state_dir / "remote" / "replay.json")
        self.ring = LogRing()
        secrets = [s.get_secret_value() for s in (site.secrets.password,) if s is not None]
        self.ring.add_secrets(secrets)
        self._level_reset: asyncio.TimerHandle | None = None
        self._saved_level: int | None = None

    def attach_log(self) -> None:
        logging.getLogger().addHandler(self.ring)

    def detach_log(self) -> None:
        logging.getLogger().removeHandler(self.ring)
        if self._level_reset is not None:
            self._level_reset.cancel()
            self._restore_level()

    def verify(self, token: str) -> Signed:
        if self.trust_error is not None:
            raise Refused(f"the box's trust file is broken: {self.trust_error}"[:200])
        return verify(token, self.trust, self.site.id, self.record)

    async def run(self, s: Signed) -> dict[str, Any]:
        """The result of an obeyed command, or Refused with why (nothing changed)."""
        handler = getattr(self, "_cmd_" + s.cmd.replace("-", "_"), None)
        if handler is None or (s.cmd == "push" and self.hooks.push is None) or \
                (s.cmd == "door" and self.hooks.door is None):
            raise Refused(f"{s.cmd} is not available on this box yet")
        try:
            if s.cmd == "push" and self.hooks.push is not None:
                result: dict[str, Any] = await self.hooks.push(s)
            elif s.cmd == "bundle":
                result = await self._bundle(s)
            elif s.cmd == "door":
                result = await self._door(s)
            else:
                result = await handler(s.args)
        except Refused as exc:
            self._audit(s, False, str(exc))
            mark_logged(exc)
            raise
        except EdgeAgentError as exc:
            self._audit(s, False, str(exc), quiet=was_logged(exc))  # e.g. the door gate logged it with more
            raise mark_logged(Refused(f"{s.cmd}: {exc}"[:200])) from None
        self._audit(s, True, None)
        return result

    def _audit(self, s: Signed, ok: bool, error: str | None, quiet: bool = False) -> None:
        """The log line (unless a lower layer already logged the failure) and, for commands that change the
        site, the ``remote`` event."""
        if not quiet:
            level = logging.INFO if ok else logging.WARNING
            log.log(level, "signed %s %s by %s: %s", s.cmd, s.id, s.key, "obeyed" if ok else f"failed: {error}")
        if s.cmd not in CHANGES:
            return
        shown = {k: v for k, v in list(s.args.items())[:8] if k != "files"}  # a bundle is named by its hash
        data: dict[str, Any] = {"cmd": s.cmd, "id": s.id, "key": s.key, "ok": ok, "args": shown}
        if error is not None:
            data["error"] = error[:200]
        self.hooks.event(Event("agent", "remote", data, Severity.INFO if ok else Severity.WARNING))

    # ------------------------------------------------------------------------------------- handlers

    @staticmethod
    def _text(args: dict[str, Any], name: str) -> str:
        v = args.get(name)
        if not (isinstance(v, str) and 1 <= len(v) <= 128):
            raise Refused(f"args.{name} must be a string of 1-128 characters")
        return v

    async def _cmd_write(self, args: dict[str, Any]) -> dict[str, Any]:
        device, point = self._text(args, "device"), self._text(args, "point")
        if "value" not in args:
            raise Refused("args.value missing")
        value = args["value"]
        if not (value is None or isinstance(value, bool | int | str) or
                (isinstance(value, float) and math.isfinite(value))):
            raise Refused("args.value must be a number, a boolean, a text or null (relinquish)")
        if isinstance(value, str) and len(value) > 256:
            raise Refused("args.value: text longer than 256 characters")
        if "priority" in args:
            raise Refused("args.priority: per-write BACnet priority is not supported; the point's profile sets it")
        written = await self.hooks.write(device, point, value)  # the same checks as the local CLI
        return {"device": device, "point": point, "written": written}

    async def _cmd_push(self, args: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("push is run by run() with the whole signed message")

    async def _cmd_door(self, args: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("door is run by run() with the whole signed message (the key is audited)")

    async def _door(self, s: Signed) -> dict[str, Any]:
        """A door command: the site file's policy and the panel's answer (agent/core/doors.py)."""
        device, door, command = (self._text(s.args, k) for k in ("device", "door", "command"))
        assert self.hooks.door is not None
        return await self.hooks.door(device, door, command, f"key:{s.key}")

    async def _cmd_bundle(self, args: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("bundle is run by run() with the whole signed message")

    async def _bundle(self, s: Signed) -> dict[str, Any]:
        """The support bundle as parts (acks with ``part``, ``of``, ``data``), then this summary."""
        from agent.core import supportbundle

        if self.hooks.send is None:
            raise Refused("bundle is not available on this box")
        config = self.hooks.config() if self.hooks.config is not None else {}
        archive = await asyncio.to_thread(supportbundle.build, self.site, self.ring, self.hooks.snapshot(), config)
        part = max(1024, min(48 * 1024, (self.budget - 512) * 3 // 4))
        return supportbundle.send(s.id, archive, part, self.hooks.send)

    async def _cmd_retry(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.hooks.retry(self._text(args, "device"))

    async def _cmd_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        self.hooks.reload()
        return {"requested": True, "note": "checked like SIGHUP: a refusal is a config event, else the agent "
                                           "restarts with the site file on disk"}

    async def _cmd_diag(self, args: dict[str, Any]) -> dict[str, Any]:
        target = args.get("device")
        snap = self.hooks.snapshot()
        if target is None:
            if args.get("target", "broker") != "broker":
                raise Refused("diag: args.device NAME, or args.target 'broker'")
            return {"broker": snap["uplink"], "outbox": {k: snap["outbox"].get(k) for k in
                                                        ("depth", "bytes", "dropped", "oldest_age")}}
        probe = await self.hooks.retry(self._text(args, "device"))
        dev = dict(probe["device"])
        dev["points"] = {n: {k: p[k] for k in ("value", "quality", "last_error")}
                         for n, p in list(dev.get("points", {}).items())[:200]}
        return self._fit({"device": target, "finished": probe.get("finished"), "state": dev})

    async def _cmd_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._fit(self.hooks.snapshot())

    async def _cmd_log_tail(self, args: dict[str, Any]) -> dict[str, Any]:
        n = args.get("lines", 100)
        if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= LOG_TAIL_MAX):
            raise Refused(f"args.lines must be a whole number 1-{LOG_TAIL_MAX}")
        lines = self.ring.tail(n, max(1024, self.budget - 512))
        return {"lines": lines, "count": len(lines), "asked": n}

    async def _cmd_log_level(self, args: dict[str, Any]) -> dict[str, Any]:
        level = args.get("level")
        if level not in LEVELS:
            raise Refused(f"args.level must be one of {', '.join(LEVELS)}")
        duration = args.get("duration", LOG_LEVEL_DEFAULT)
        number = isinstance(duration, int | float) and not isinstance(duration, bool)
        if not (number and 1 <= duration <= LOG_LEVEL_MAX):
            raise Refused(f"args.duration must be 1-{LOG_LEVEL_MAX:g} seconds")
        root = logging.getLogger()
        if self._saved_level is None:
            self._saved_level = root.level
        if self._level_reset is not None:
            self._level_reset.cancel()
        root.setLevel(LEVELS[str(level)])
        self._level_reset = asyncio.get_running_loop().call_later(float(duration), self._restore_level)
        return {"level": level, "reverts_in": duration,
                "reverts_to": logging.getLevelName(self._saved_level).lower()}

    def _restore_level(self) -> None:
        if self._saved_level is not None:
            logging.getLogger().setLevel(self._saved_level)
            log.info("log level back to %s", logging.getLevelName(self._saved_level).lower())
        self._saved_level = None
        self._level_reset = None

    def _fit(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A result cut to fit the ack's budget: device points go first, then devices (and it says so)."""
        if len(dumps(doc)) <= self.budget:
            return doc
        devices = doc.get("devices")
        if isinstance(devices, dict):
            doc = {**doc, "devices": {n: {k: v for k, v in d.items() if k != "points"} for n, d in devices.items()},
                   "cut": "points left out to fit the uplink's message size"}
            if len(dumps(doc)) <= self.budget:
                return doc
            doc = {k: v for k, v in doc.items() if k != "devices"}
            doc["cut"] = "devices left out to fit the uplink's message size"
            return doc
        return {"cut": f"the result ({len(dumps(doc))} bytes) does not fit the uplink's message size"}
