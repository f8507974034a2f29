"""The agent's stop never waits forever on the uplink: when the MQTT session dies while the uplink is being
cancelled (the broker drops during shutdown, so a child of the session turns the cancellation into an MQTT
error), ``Uplink.run`` must still end instead of swallowing the cancellation and sleeping towards a
reconnect. Found by the issue-15 bench: stopping the broker during the agent's stop hung the shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt

from agent.config import load_site
from agent.core.app import Agent
from tests.peers.mosquitto import Broker

from .agentkit import write_site


async def test_stop_ends_when_the_session_fails_while_it_is_cancelled(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    broker.start()
    site = write_site(tmp_path, broker.url, interval="1s")
    agent = Agent(load_site(site, strict=False))
    uplink = agent.uplink
    real = uplink._rebirther

    async def rebirther_that_errs_when_cancelled(client: aiomqtt.Client) -> None:
        try:
            await real(client)
        except asyncio.CancelledError:  # fault injection: the connection breaks as the session is torn down
            raise aiomqtt.MqttError("Disconnected during message iteration") from None

    uplink._rebirther = rebirther_that_errs_when_cancelled  # type: ignore[method-assign]
    task = asyncio.create_task(agent.run(), name="agent-under-test")
    try:
        async with asyncio.timeout(10):
            await uplink.connected.wait()
        t0 = time.monotonic()
        agent.stop_event.set()
        async with asyncio.timeout(15):  # the reconnect backoff alone is up to 15 s; the stop must not wait on it
            await asyncio.shield(task)
        took = time.monotonic() - t0
        assert took < 5, f"the agent took {took:.1f} s to stop"
    finally:
        if not task.done():  # a hung stop: cancel once more, but never wait for it without a bound
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        broker.stop()
