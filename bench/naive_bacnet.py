"""The naive BACnet baseline of bench/site_poll.py --bacnet, run as its own process: one ReadProperty per point
(no ReadPropertyMultiple), one JSON message per device per poll through aiomqtt QoS 1, with bacpypes3's
Application as a plain client (what a "one request per key" gateway does).

    python bench/naive_bacnet.py --broker-port 1883 --local 127.0.0.4/8 --device 3000@127.0.0.10:47808 ...

Each device has the bench profile of bench/site_poll.py (40 points). Runs until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
from bacpypes3.app import Application
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

sys.path.insert(0, str(Path(__file__).resolve().parent))


def points() -> list[tuple[str, str]]:
    from site_poll import bacnet_profile

    return [(p["name"], f"{p['object_type']},{p['instance']}") for p in bacnet_profile()["points"]]


def plain(v: Any) -> Any:
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    return str(v)


async def device(i: int, addr: str, app: Application, mq: aiomqtt.Client, interval: float) -> None:
    address = Address(addr)
    pts = [(name, ObjectIdentifier(oid)) for name, oid in points()]
    next_poll = time.monotonic() + (i % 10) / 10 * interval
    while True:
        await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
        values: dict[str, Any] = {}
        for name, oid in pts:
            try:
                values[name] = plain(await asyncio.wait_for(app.read_property(address, oid, "present-value"), 2))
            except Exception as exc:  # a baseline: note the failure, go on
                values[name] = f"error: {exc}"
        await mq.publish(f"naive/ahu{i}", json.dumps({"ts": time.time(), "values": values}), qos=1)
        next_poll += interval
        while next_poll < time.monotonic():
            next_poll += interval


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker-port", type=int, required=True)
    ap.add_argument("--local", default="127.0.0.4/8")
    ap.add_argument("--port", type=int, default=47809)
    ap.add_argument("--device", action="append", required=True, help="INSTANCE@IP:PORT")
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    app = Application.from_args(SimpleNamespace(
        name="naive-baseline", instance=3999, address=f"{args.local}:{args.port}", network=0,
        vendoridentifier=999, foreign=None, ttl=30, bbmd=None))
    async with aiomqtt.Client("127.0.0.1", args.broker_port, identifier="naive-bacnet") as mq:
        async with asyncio.TaskGroup() as tg:
            for i, dev in enumerate(args.device):
                tg.create_task(device(i, dev.partition("@")[2], app, mq, args.interval))


if __name__ == "__main__":
    asyncio.run(main())
