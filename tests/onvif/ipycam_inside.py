"""Run INSIDE a fresh network namespace (tests/onvif/test_ipycam.py starts it with ``unshare -n``).

Starts ipycam, Mosquitto and the real agent there, all on that namespace's 127.0.0.1, takes a snapshot by
command, and prints one JSON document on stdout: the facts that reached the broker, the picture's size
and topic, whether the password showed anywhere, and the peer's log tail. The outer test asserts on it.
Usage: python -m tests.onvif.ipycam_inside WORKDIR
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.core.agentkit import Collector, running_agent, write_site
from tests.motion.clips import make_clip, write_clip
from tests.peers.ipycam import IpyCam, in_namespace
from tests.peers.mosquitto import Broker

PASSWORD = "ipy-Pw-4c7e2"
FACTS = ("online", "manufacturer", "model", "firmware", "serial", "clock_offset", "profiles", "main_stream_uri",
         "main_resolution", "main_codec", "main_fps", "sub_stream_uri", "sub_resolution", "snapshot_supported",
         "ptz", "events_supported")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def main(work: Path) -> dict[str, Any]:
    import aiomqtt
    from PIL import Image

    logs = _Lines()
    logs.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(logs)
    logging.getLogger().setLevel(logging.DEBUG)
    clip = write_clip(make_clip("person", 1), work / "clip.avi", fps=10)
    broker = Broker(work).start()
    cam = IpyCam(work, clip, "viewer", PASSWORD, name="Hall Cam 2", manufacturer="IPyCam-Test", model="VirtualCam-T",
                 serial_number="PY-4242", main_width=640, main_height=360, main_fps=10, sub_width=320,
                 sub_height=180, sub_fps=5).start()
    out: dict[str, Any] = {"facts": {}, "errors": []}
    try:
        pw = work / "cam-password"
        pw.write_text(PASSWORD + "\n")
        bad = work / "bad-password"
        bad.write_text("not-the-password\n")
        devices = "".join(
            f"  - name: {name}\n    type: generic-onvif-camera\n    interval: 2s\n    slow_interval: 30s\n"
            f"    timeout: 3s\n    connection: {{host: 127.0.0.1, port: {cam.port}, user: viewer, "
            f"password: {{file: {path}}}}}\n" for name, path in (("ipy", pw), ("ipy-bad", bad)))
        site = write_site(work, broker.url, devices=devices)
        async with Collector(broker.port) as col, running_agent(site):
            def facts() -> dict[str, Any]:
                got: dict[str, Any] = {}
                for m in col.of("t"):
                    if m.get("device") == "ipy":
                        for s in m["samples"]:
                            got.setdefault(s["point"], s["value"])
                return got
            try:
                await col.wait(lambda: {"model", "sub_stream_uri", "events_supported"} <= set(facts()), 30, "facts")
            except AssertionError as exc:
                out["errors"].append(str(exc))
            out["facts"] = facts()
            async with aiomqtt.Client("127.0.0.1", broker.port) as op:
                await op.publish("ea/v1/t1/cmd", json.dumps({"id": "snap1", "cmd": "snapshot",
                                                             "args": {"device": "ipy"}}), qos=1)
                try:
                    await col.wait(lambda: any(m["doc"].get("id") == "snap1" for m in col.of("ack")), 20, "ack")
                    ack = next(m["doc"] for m in col.of("ack") if m["doc"].get("id") == "snap1")
                    out["ack"] = ack
                    if ack.get("ok"):
                        topic = ack["result"]["topic"]
                        await col.wait(lambda: any(m["topic"] == topic for m in col.messages), 10, "picture")
                        pic = next(m for m in col.messages if m["topic"] == topic)
                        img = Image.open(io.BytesIO(pic["raw"]))
                        out["picture"] = {"topic": topic, "bytes": len(pic["raw"]), "format": img.format,
                                          "size": [img.width, img.height], "retain": pic["retain"]}
                except AssertionError as exc:
                    out["errors"].append(str(exc))
            def availability(device: str) -> list[dict[str, Any]]:
                return [m["doc"]["data"] for m in col.of("e") if isinstance(m.get("doc"), dict)
                        and m["doc"].get("src") == device and m["doc"].get("kind") == "availability"]
            try:
                await col.wait(lambda: any(a.get("state") == "offline" for a in availability("ipy-bad")), 15,
                               "the wrong password reported")
            except AssertionError as exc:
                out["errors"].append(str(exc))
            out["availability"] = availability("ipy")
            out["availability_bad"] = availability("ipy-bad")
        # WS-Discovery: the namespace routes multicast on its loopback (test_ipycam.py sets it up)
        r = subprocess.run([sys.executable, "-m", "agent.tools.cli", "onvif", "discover", "--json", "--timeout", "1.5"],
                           capture_output=True, text=True, timeout=60)
        out["discover"] = {"rc": r.returncode, "found": json.loads(r.stdout) if r.returncode == 0 else None,
                           "stderr": r.stderr[-500:]}
        out["password_in_payloads"] = any(PASSWORD.encode() in m["raw"] for m in col.messages)
        out["password_in_logs"] = any(PASSWORD in line for line in logs.lines)
        out["messages"] = len(col.messages)
        out["agent_warnings"] = [line for line in logs.lines if "WARNING" in line or "ERROR" in line]
    finally:
        cam.stop()
        broker.stop()
        out["peer_log_tail"] = cam.log()[-2000:]
    return out


if __name__ == "__main__":
    if not in_namespace():
        sys.exit("refusing to run: not inside a network namespace with only the loopback (use unshare -n)")
    print(json.dumps(asyncio.run(main(Path(sys.argv[1]))), default=str))
