"""Where the CPU went, from a py-spy raw (collapsed) profile: shares by area and the top functions by own time.

    .venv/bin/py-spy record -p PID -r 1000 -f raw -o agent.spy -d 30 --nonblocking
    .venv/bin/python bench/spy_summary.py agent.spy

Each sample goes to the first area whose marker appears anywhere in its stack (deepest areas first: decoding
sits inside the Modbus read, so it is tested before it).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

AREAS = [
    ("register decoding", ("codec.py", "._decode ", "_decode_block", "_short_float32")),
    ("report-by-exception pipeline", ("pipeline.py",)),
    ("SQLite outbox", ("outbox/", "outbox.py", "sqlite")),
    ("MQTT publish", ("aiomqtt", "paho", "uplink/")),
    ("status socket", ("status.py",)),
    ("Modbus request/response path", ("pymodbus", "drivers/modbus", "supervisor.py")),
]


def summarise(path: Path, top: int = 25) -> str:
    areas: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        if "EpollSelector.select" in frames[-1]:  # waiting in epoll: py-spy's idle detection misses some
            idle += count
            continue
        own[frames[-1].split(" (")[0] + " (" + frames[-1].split(" (")[-1].split(":")[0] + ")"] += count
        for name, markers in AREAS:
            if any(m in stack for m in markers):
                areas[name] += count
                break
        else:
            areas["event loop and the rest"] += count
    total -= idle
    out = [f"{total} samples (plus {idle} in epoll_wait, left out)"]
    for name, n in areas.most_common():
        out.append(f"  {100 * n / total:5.1f} %  {name}")
    out.append("top functions by own time:")
    for fn, n in own.most_common(top):
        out.append(f"  {100 * n / total:5.1f} %  {fn}")
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1])))
