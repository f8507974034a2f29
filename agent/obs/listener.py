"""Closing a listener the agent serves (the status socket, the metrics listener) in bounded time.

Why bounded: a client that keeps its connection open (a stuck ``status`` over SSH, a scraper) must not hold
the agent's stop past its budget; from Python 3.12 on ``wait_closed`` waits for every open connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

CLOSE_BUDGET = 2.0  # seconds a stop waits for the listener's connections to end


async def close_listener(server: asyncio.AbstractServer, unix_path: str | os.PathLike[str] | None = None,
                         budget: float = CLOSE_BUDGET) -> None:
    """Stop accepting, wait at most ``budget`` seconds for open connections, then remove the Unix socket file
    (if ``unix_path``) so that the next start does not take it for a live agent."""
    server.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(budget):
            await server.wait_closed()
    if unix_path is not None:
        with contextlib.suppress(OSError):
            os.unlink(unix_path)
