"""edge-agent diag: broker and device reachability, step by step, against real peers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.peers.common import free_port
from tests.peers.mosquitto import Broker

from .agentkit import ROOT, write_site


def diag(*args: str) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "agent.tools.cli", "diag", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    return p.returncode, p.stdout, p.stderr


def test_diag_broker_ok(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url)
    rc, out, err = diag("broker", "--config", str(site), "--json")
    assert rc == 0, out + err
    doc = json.loads(out)
    assert [s["name"] for s in doc["steps"]] == ["resolve name", "TCP connect", "MQTT session",
                                                 "subscribe command topic"]
    assert doc["ok"] is True and doc["steps"][3]["detail"] == "ea/v1/t1/cmd"


def test_diag_broker_refused_says_where(tmp_path: Path) -> None:
    site = write_site(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    rc, out, _ = diag("broker", "--config", str(site))
    assert rc == 1
    assert "FAIL TCP connect" in out and "Connection refused" in out and "result: FAILED" in out


def test_diag_device_reads_every_point_once(modbus_sim: Callable[..., int], tmp_path: Path) -> None:
    port = modbus_sim("socomec-countis-e34:3")
    dev = (f"  - {{name: kitchen, type: socomec-countis-e34, timeout: 1s, "
           f"connection: {{host: 127.0.0.1, port: {port}, unit: 3}}}}\n")
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=dev)
    rc, out, err = diag("device", "kitchen", "--config", str(site), "--json")
    assert rc == 0, out + err
    doc = json.loads(out)
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["TCP connect"]["ok"] and steps["read all points"]["ok"]
    assert steps["plan"]["detail"].endswith("point(s)")
    pts = {p["point"]: p for p in doc["points"]}
    assert pts["voltage_u12"]["quality"] == "good" and 340 < pts["voltage_u12"]["value"] < 460
    assert pts["voltage_u12"]["unit"] == "V"
    text = diag("device", "kitchen", "--config", str(site))[1]
    assert "voltage_u12" in text and "result:" in text


def test_diag_device_unreachable_and_unknown(tmp_path: Path) -> None:
    port = free_port()
    dev = f"  - {{name: meter, type: socomec-countis-e34, connection: {{host: 127.0.0.1, port: {port}, unit: 1}}}}\n"
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=dev)
    rc, out, _ = diag("device", "meter", "--config", str(site))
    assert rc == 1 and "FAIL TCP connect" in out and "Connection refused" in out
    rc, _, err = diag("device", "nope", "--config", str(site))
    assert rc == 2 and "no usable device named 'nope'" in err and "meter" in err


async def test_diag_device_refuses_beside_a_running_agent(tmp_path: Path) -> None:
    import asyncio

    from .agentkit import running_agent

    site = write_site(tmp_path, "mqtt://127.0.0.1:9")
    async with running_agent(site):
        await asyncio.sleep(0.3)
        rc, _, err = await asyncio.to_thread(diag, "device", "box", "--config", str(site))
        assert "the agent is running" in err and "edge-agent status --device box" in err
        # The refusal's exit code is the one docs/cli.md gives for it (it said 1 while the code returned 2).
        docs = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
        row = next(ln for ln in docs.splitlines() if ln.startswith("| `edge-agent diag device"))
        assert rc == 1 and "Exit 1 " in row and "refused" in row.split("Exit 1 ", 1)[1], (rc, row)
        rc, out, _ = await asyncio.to_thread(diag, "device", "box", "--config", str(site), "--force")
        assert rc == 0 and "load1" in out


def test_diag_broker_names_swapped_certificate_and_key(broker: Broker, tmp_path: Path) -> None:
    """The site's client certificate and key swapped: the TLS step says so, not `PEM lib (_ssl.c:...)`."""
    key, crt = tmp_path / "box.key", tmp_path / "box.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=box", "-keyout", str(key), "-out", str(crt)], check=True,
                   capture_output=True, timeout=30)
    tls = f"  tls: {{ca_file: {crt}, cert_file: {key}, key_file: {{file: {crt}}}}}\n"
    site = write_site(tmp_path, f"mqtts://127.0.0.1:{broker.port}", extra_uplink=tls)
    rc, out, err = diag("broker", "--config", str(site))
    assert rc == 1, out + err
    assert "FAIL TLS settings" in out and "certificate and key swapped" in out, out
    assert "PEM lib" not in out + err and "Traceback" not in err
