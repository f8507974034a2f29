"""End-to-end drain after an outage: a backlog of N telemetry messages in the outbox, then the real uplink
publishes them with QoS 1 to a real Mosquitto on loopback, deleting each row only after its PUBACK.

Baseline in the same run: the same number of messages published one at a time (await each PUBACK, then
delete that row in its own transaction), i.e. what a naive store-and-forward loop does.

    python bench/uplink_drain.py [--rows 100000] [--baseline-rows 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiomqtt
from outbox_drain import fill, make_records

from agent.config import Secrets, UplinkConfig
from agent.outbox import Outbox
from agent.uplink.mqtt import Uplink
from agent.uplink.topics import Topics

SAMPLES_PER_MESSAGE = 10  # a typical per-device batch: one message carries ~10 reported samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                    "max_queued_messages 0\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.02)
    raise SystemExit("mosquitto did not start")


async def uplink_drain(work: Path, port: int, rows: int) -> tuple[float, float]:
    ob = Outbox(work / "ob.sqlite", max_bytes=1 << 30, sync="normal")
    await ob.open()
    await fill(ob, rows)
    cfg = UplinkConfig.model_validate({"broker": f"mqtt://127.0.0.1:{port}", "max_inflight": 10})
    up = Uplink(cfg, Secrets(), Topics("bench", "site"), ob, lambda: {"gen": 0, "devices": {}}, _noop)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    task = asyncio.create_task(up.run())
    while ob.stats()["depth"] > 0:
        await asyncio.sleep(0.01)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ob.close()
    return dt, cpu


async def naive_drain(work: Path, port: int, rows: int) -> float:
    ob = Outbox(work / "naive.sqlite", max_bytes=1 << 30, sync="normal")
    await ob.open()
    await fill(ob, rows)
    t0 = time.perf_counter()
    async with aiomqtt.Client("127.0.0.1", port) as c:
        while True:
            batch = await ob.take(1)
            if not batch:
                break
            await c.publish(batch[0].topic, batch[0].body, qos=1)
            await ob.ack([batch[0].seq])
    dt = time.perf_counter() - t0
    await ob.close()
    return dt


async def _noop(_: bytes) -> None:
    return None


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--baseline-rows", type=int, default=5_000)
    args = ap.parse_args()
    make_records(10)  # warm imports
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        broker, port = start_broker(work)
        try:
            dt, cpu = await uplink_drain(work, port, args.rows)
            ndt = await naive_drain(work, port, args.baseline_rows)
        finally:
            broker.terminate()
            broker.wait(5)
    rate = args.rows / dt
    nrate = args.baseline_rows / ndt
    print(f"backlog: {args.rows} messages (~{SAMPLES_PER_MESSAGE} samples each), QoS 1 to Mosquitto on loopback")
    print(f"uplink drain: {dt:.2f} s -> {rate:,.0f} messages/s, ~{rate * SAMPLES_PER_MESSAGE:,.0f} samples/s "
          f"(agent CPU {cpu:.2f} s, {args.rows / max(cpu, 1e-9):,.0f} messages per CPU-second)")
    print(f"naive baseline (one publish at a time, delete per row), {args.baseline_rows} messages: "
          f"{nrate:,.0f} messages/s")
    print(f"ratio uplink/naive: {rate / nrate:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
