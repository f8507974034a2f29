"""Local status socket: one JSON request per line, one JSON answer per line, on a Unix socket only
reachable by root and the agent's group (the field tech's laptop uses ``edge-agent status`` over SSH or the
console). Requests: ``{"op": "status"}``, ``{"op": "write", "device": D, "point": P, "value": V}``,
``{"op": "retry", "device": D}`` (probe that device at once; answers with its status after the probe),
``{"op": "plan", "device": D}`` (the running driver's request plan), ``{"op": "door", "device": D, "door": DOOR,
"command": C}`` (a door command as the site file allows; audited with the caller's uid from the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Protocol

from agent.errors import EdgeAgentError
from agent.model import Value
from agent.obs.listener import close_listener


class StatusBackend(Protocol):
    """What the status socket asks of the agent (the Agent implements it; tests may use a small fake)."""

    def snapshot(self) -> dict[str, Any]: ...

    async def write(self, device: str, point: str, value: Value) -> Value: ...

    async def retry(self, device: str) -> dict[str, Any]:
        """Probe one device now; the answer carries ``finished`` and the device's status."""

    def plan(self, device: str) -> list[dict[str, Any]] | None:
        """The running driver's plan (device limits as answered, splits learned at run time)."""

    async def door(self, device: str, door: str, command: str, by: str) -> dict[str, Any]:
        """A door command (agent/core/doors.py); ``by`` names the local user."""


log = logging.getLogger("edge_agent.status")
MAX_REQUEST = 64 * 1024


class StatusServer:
    def __init__(self, path: Path, agent: StatusBackend) -> None:
        self.path = path
        self.agent = agent
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() or self.path.is_symlink():
                if agent_listening(self.path):
                    log.error("status socket %s is in use by another agent; status disabled", self.path)
                    return
                self.path.unlink()
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
            os.chmod(self.path, 0o660)
        except OSError as exc:
            log.error("status socket %s unavailable: %s", self.path, exc)

    async def stop(self) -> None:
        if self._server is not None:
            await close_listener(self._server, self.path)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(30):
                        line = await reader.readline()
                except (TimeoutError, ValueError, ConnectionError):
                    return
                if not line:
                    return
                answer = await self._answer(line, _peer(writer))
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes, peer: str = "local") -> dict[str, Any]:
        try:
            req = json.loads(line)
            op = req.get("op") if isinstance(req, dict) else None
        except ValueError as exc:
            return {"ok": False, "error": f"malformed request: {exc}"}
        try:
            if op == "status":
                return {"ok": True, "status": self.agent.snapshot()}
            if op == "retry":
                return await self.agent.retry(str(req.get("device")))
            if op == "plan":
                return {"ok": True, "plan": self.agent.plan(str(req.get("device")))}
            if op == "write":
                value = await self.agent.write(str(req.get("device")), str(req.get("point")), req.get("value"))
                return {"ok": True, "written": value}
            if op == "door":
                result = await self.agent.door(str(req.get("device")), str(req.get("door")), str(req.get("command")),
                                               peer)
                return {"ok": True, "result": result}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except EdgeAgentError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a driver bug must not leave the field tech without an answer
            log.exception("status request %r failed", op)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}


def _peer(writer: asyncio.StreamWriter) -> str:
    """Who is on the other end of the socket, for audit lines: ``local:NAME(uid)`` from SO_PEERCRED."""
    import pwd
    import struct

    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
    except (OSError, AttributeError, struct.error):
        return "local:unknown"
    try:
        return f"local:{pwd.getpwuid(uid).pw_name}({uid})"
    except KeyError:
        return f"local:uid {uid}"


def agent_listening(path: Path, timeout: float = 1.0) -> bool:
    """True if an agent accepts connections on this status socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def request(path: Path, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Client side (CLI): send one request, return the answer. OSError when no agent listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    try:
        answer: dict[str, Any] = json.loads(buf)
    except ValueError:
        return {"ok": False, "error": "the agent closed the connection without an answer (see its journal)"}
    return answer
