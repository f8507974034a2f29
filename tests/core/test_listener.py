"""The bounded close shared by the status socket and the metrics listener: a client that keeps its connection
open does not hold the stop past the budget, and the Unix socket file is removed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.obs.listener import close_listener


async def test_close_is_bounded_with_a_client_that_keeps_its_connection(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    served = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.set()
        try:
            await reader.read()  # the client never sends EOF
        finally:
            writer.close()

    server = await asyncio.start_unix_server(hang, path=str(path))
    _reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        async with asyncio.timeout(5):
            await served.wait()
        t0 = time.monotonic()
        await close_listener(server, path, budget=0.3)
        assert time.monotonic() - t0 < 2.0
        assert not path.exists()
        assert not server.is_serving()
    finally:
        writer.close()
