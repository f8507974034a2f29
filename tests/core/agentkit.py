"""Test helpers for the core: write site files, run the agent in-process or as a process, collect MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt

from agent.config import load_site
from agent.core.app import Agent
from agent.tools.monitor import Decoder, handle

ROOT = Path(__file__).resolve().parents[2]


def write_site(tmp: Path, broker_url: str, *, site_id: str = "t1", extra_uplink: str = "", extra: str = "",
               devices: str | None = None, interval: str = "0.1s", silence: str = "15m") -> Path:
    devices = devices if devices is not None else (
        f"  - {{name: box, type: edge-box, interval: {interval}}}\n"
    )
    text = (
        f"site: {{id: {site_id}}}\n"
        f"state_dir: {tmp / 'state'}\n"
        f"status: {{socket: {tmp / 'agent.sock'}}}\n"
        f"pipeline: {{max_silence: {silence}}}\n"
        "uplink:\n"
        f"  broker: {broker_url}\n"
        "  batch_interval: 0.1s\n"
        "  backoff: {initial: 0.2s, max: 1s}\n"
        "  connect_timeout: 3s\n"
        "  publish_timeout: 3s\n"
        f"{extra_uplink}"
        f"{extra}"
        "devices:\n"
        f"{devices}"
    )
    path = tmp / "site.yaml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def running_agent(site_path: Path, **kw: Any) -> AsyncIterator[Agent]:
    agent = Agent(load_site(site_path, strict=False), **kw)
    task = asyncio.create_task(agent.run(), name="agent-under-test")
    try:
        async with asyncio.timeout(10):
            while agent.outbox.stats()["last_seq"] == 0 and not task.done():  # the run's birth is queued first
                await asyncio.sleep(0.01)
        yield agent
    finally:
        agent.stop_event.set()
        async with asyncio.timeout(20):
            await task


class Collector:
    """Subscribes to everything under the prefix and keeps decoded messages (persistent session)."""

    def __init__(self, port: int, prefix: str = "ea/v1", client_id: str | None = None) -> None:
        self.port = port
        self.prefix = prefix
        self.client_id = client_id or f"collector-{time.time_ns()}"
        self.messages: list[dict[str, Any]] = []
        self.decoder = Decoder()
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id,
                                          clean_session=False, timeout=3) as c:
                    await c.subscribe(f"{self.prefix}/#", qos=1)
                    self.connected.set()
                    async for msg in c.messages:
                        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                        m = handle(self.decoder, str(msg.topic), payload, self.prefix)
                        m["retain"] = msg.retain
                        m["raw"] = payload
                        self.messages.append(m)
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.1)

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self.connected.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["kind"] == kind]

    def seqs(self) -> set[int]:
        out = set()
        for m in self.messages:
            if m["kind"] == "t" and "seq" in m:
                out.add(m["seq"])
            elif m["kind"] in ("e", "ack", "birth") and isinstance(m.get("doc"), dict) and "seq" in m["doc"]:
                out.add(m["doc"]["seq"])
        return out

    async def wait(self, pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or pred}; got {len(self.messages)} messages")
            await asyncio.sleep(0.02)


def start_agent_process(site: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    e.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen([sys.executable, "-m", "agent.tools.cli", "run", "--config", str(site)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=e, cwd=ROOT)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
