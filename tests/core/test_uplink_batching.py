"""Issue 15: the publisher's round trips to the outbox thread. Rows acknowledged by the broker while more rows wait
are deleted together (one delete transaction for several takes), never offered again meanwhile, and every row
still reaches the broker exactly once in a session; nothing pending means no take at all."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agent.outbox import Kind, Record
from tests.peers.mosquitto import Broker

from .agentkit import Collector, running_agent, write_site

ROWS = 300


async def test_a_backlog_is_deleted_in_few_transactions_and_delivered_once(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    site = write_site(tmp_path, broker.url, interval="1s")
    try:
        async with running_agent(site) as agent:
            ops = agent.outbox._ops
            calls: dict[str, list[int]] = {"ack": [], "take": []}
            real_ack, real_take = ops.ack, ops.take

            def ack(conn: Any, seqs: list[int], **kw: Any) -> None:
                calls["ack"].append(len(seqs))
                real_ack(conn, seqs, **kw)

            def take(conn: Any, limit: int) -> Any:
                got = real_take(conn, limit)
                calls["take"].append(len(got))
                return got

            ops.ack, ops.take = ack, take  # type: ignore[method-assign]  # counting only: the calls go through
            body = b"\x00" + bytes(60)  # a stored telemetry body (not decoded by this test)
            await agent.outbox.append([Record(Kind.TELEMETRY, "ea/v1/t1/t/bulk", body, time.time())
                                       for _ in range(ROWS)])
            broker.start()
            async with Collector(broker.port) as col:
                await col.wait(lambda: sum(m["topic"] == "ea/v1/t1/t/bulk" for m in col.messages) >= ROWS, 20,
                               "backlog delivered")
                async with asyncio.timeout(10):
                    while agent.outbox.stats()["delivered_undeleted"] or agent.outbox.stats()["depth"] > 10:
                        await asyncio.sleep(0.05)
                bulk = [m["raw"] for m in col.messages if m["topic"] == "ea/v1/t1/t/bulk"]  # framed with its seq
                assert len(bulk) == len(set(bulk)) == ROWS  # each once: rows marked delivered are not sent again
                deleted = sum(calls["ack"])
                assert deleted >= ROWS
                # one take is max_inflight * 4 = 32 rows: before, one delete per take (10 for this backlog)
                takes_with_rows = sum(1 for n in calls["take"] if n)
                assert takes_with_rows >= ROWS // 32
                assert len(calls["ack"]) <= takes_with_rows // 3, calls
                assert not [n for n in calls["take"] if n == 0], "a take with nothing pending"
    finally:
        broker.stop()  # after the agent stopped: its shutdown runs with the broker up
