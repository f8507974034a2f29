"""The naive baseline of bench/site_poll.py, run as its own process: one request per point, one JSON message
per device per poll, through aiomqtt QoS 1 (what a "one request per key" gateway does).

    python bench/naive_poll.py --broker-port 1883 --port 5020 --port 5021 ... [--interval 1]

Every meter has the layout of bench/site_sim.py; values are decoded with pymodbus's own converter.
Runs until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from site_sim import layout


async def device(i: int, port: int, mq: aiomqtt.Client, gate: asyncio.Semaphore, interval: float) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    f32, u16 = client.DATATYPE.FLOAT32, client.DATATYPE.UINT16
    points = layout()
    next_poll = time.monotonic() + (i % 10) / 10 * interval
    while True:
        await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
        values: dict[str, float | int] = {}
        for p in points:
            rr = await client.read_holding_registers(p.address, count=p.count, device_id=1)
            v = client.convert_from_registers(rr.registers, f32 if p.type == "float32" else u16)
            values[p.name] = v  # type: ignore[assignment]
        async with gate:
            await mq.publish(f"naive/meter{i}", json.dumps({"ts": time.time(), "values": values}), qos=1)
        next_poll += interval
        while next_poll < time.monotonic():
            next_poll += interval


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker-port", type=int, required=True)
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    gate = asyncio.Semaphore(8)
    async with aiomqtt.Client("127.0.0.1", args.broker_port, identifier="naive-baseline") as mq:
        async with asyncio.TaskGroup() as tg:
            for i, port in enumerate(args.port):
                tg.create_task(device(i, port, mq, gate, args.interval))


if __name__ == "__main__":
    asyncio.run(main())
