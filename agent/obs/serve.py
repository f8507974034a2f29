"""Where the metrics go: a loopback (or Unix socket) HTTP listener answering ``GET /metrics``, and a
node-exporter textfile rewritten atomically. Both run in the agent's event loop, so a scrape reads the agent's
state between two of its steps (no locks, no threads touching live objects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent.obs.listener import close_listener
from agent.obs.metrics import Metrics
from agent.types import parse_listen

log = logging.getLogger("edge_agent.metrics")

MAX_HEADER = 16 * 1024
READ_TIMEOUT = 5.0


class MetricsServer:
    def __init__(self, metrics: Metrics, listen: str | None, textfile: str | None, interval: float) -> None:
        self.metrics = metrics
        self.listen = listen
        self.textfile = Path(textfile) if textfile else None
        self.interval = interval
        self._server: asyncio.AbstractServer | None = None
        self.address: str | None = None  # where it listens, once started (port 0 resolved)

    async def start(self) -> None:
        """Open the listener; a failure is logged and metrics stay off (the agent's job is the data)."""
        if not self.listen:
            return
        where = parse_listen(self.listen)
        try:
            if isinstance(where, str):
                os.makedirs(os.path.dirname(where), exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(where)
                self._server = await asyncio.start_unix_server(self._serve, path=where, limit=MAX_HEADER)
                os.chmod(where, 0o660)
                self.address = f"unix:{where}"
            else:
                self._server = await asyncio.start_server(self._serve, where[0], where[1], limit=MAX_HEADER)
                host, port = self._server.sockets[0].getsockname()[:2]
                self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            log.info("metrics on %s/metrics", self.address)
        except OSError as exc:
            log.error("metrics listener %s unavailable: %s", self.listen, exc)

    async def stop(self) -> None:
        if self._server is not None:
            unix = self.address[len("unix:"):] if self.address and self.address.startswith("unix:") else None
            await close_listener(self._server, unix)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                request = await reader.readline()
                while (await reader.readline()).strip():  # headers: not needed
                    pass
            parts = request.decode("latin-1").split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"only GET /metrics\n"
            elif parts[1].split("?")[0] not in ("/metrics", "/"):
                status, ctype, body = "404 Not Found", "text/plain", b"see /metrics\n"
            else:
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.metrics.exposition()
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head if parts and parts[0] == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def write_textfile(self) -> None:
        """Write the scrape next to the target and rename it over: node exporter never reads half a file."""
        if self.textfile is None:
            return
        data = self.metrics.exposition()
        await asyncio.to_thread(_atomic_write, self.textfile, data)

    async def run_textfile(self) -> None:
        """Rewrite the textfile every ``interval`` seconds; write failures are logged once per change."""
        last_error = ""
        while True:
            try:
                await self.write_textfile()
                if last_error:
                    log.info("metrics textfile %s written again", self.textfile)
                last_error = ""
            except OSError as exc:
                if str(exc) != last_error:
                    log.error("metrics textfile %s: %s", self.textfile, exc)
                last_error = str(exc)
            await asyncio.sleep(self.interval)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
