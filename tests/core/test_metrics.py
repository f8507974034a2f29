"""Prometheus metrics of the running agent: scraped over real HTTP and from the node-exporter textfile, parsed
with prometheus_client's own parser, every documented metric present, figures consistent with status."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import load_site
from agent.errors import ConfigError, WriteRefused
from tests.peers.common import free_port
from tests.peers.modbus import ModbusPeer
from tests.peers.mosquitto import Broker

from . import fakedrivers
from .agentkit import ROOT, running_agent, write_site

DOCUMENTED = re.findall(r"^\| `([a-z_]+)` \|", (ROOT / "docs" / "observability.md").read_text(), re.M)


def _meter_tables() -> dict[int, dict[str, dict[int, int | bool]]]:
    from agent.config import load_profile

    regs: dict[int, int | bool] = {}
    for p in load_profile(ROOT / "profiles" / "socomec-countis-e34.yaml").points:
        regs.update({a: 1 for a in range(p.address, p.address + 2)})  # type: ignore[attr-defined]
    return {1: {"holding": regs}}


def _scrape(url: str) -> dict[str, Any]:
    """{family name: family} from a real HTTP GET, parsed by the library's parser."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {sample or family} {labels}")


def test_documented_list_is_not_empty() -> None:
    assert len(DOCUMENTED) >= 30


async def _status_json(site: Path) -> dict[str, Any]:
    """What `edge-agent status --json` prints (the real command, in its own process)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.tools.cli", "status", "--config",
                                                str(site), "--json", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return json.loads(out)  # type: ignore[no-any-return]


async def _quiet(agent: Any, pred: Any, what: str) -> None:
    deadline = time.monotonic() + 15
    while not pred(agent.snapshot()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {agent.snapshot()['outbox']}"
        await asyncio.sleep(0.1)


async def test_scrape_over_http_and_textfile_matches_status(broker: Broker, tmp_path: Path) -> None:
    """No box device and constant meter registers: after the first reads, report-by-exception sends nothing,
    so the figures hold still while the scrape and `status --json` are compared."""
    port = free_port()
    textfile = tmp_path / "tc" / "edge_agent.prom"
    textfile.parent.mkdir()
    peer = await ModbusPeer(_meter_tables()).start()
    dead = free_port()  # nothing listens: that device goes offline
    devices = (
        f"  - {{name: meter, type: socomec-countis-e34, interval: 0.3s, timeout: 0.5s, retries: 0, "
        f"connection: {{host: 127.0.0.1, port: {peer.port}, unit: 1}}}}\n"
        f"  - {{name: gone, type: socomec-countis-e34, interval: 0.3s, timeout: 0.3s, retries: 0, "
        f"connection: {{host: 127.0.0.1, port: {dead}, unit: 1}}}}\n"
    )
    extra = f"metrics: {{listen: '127.0.0.1:{port}', textfile: {textfile}, textfile_interval: 0.2s}}\n"
    site = write_site(tmp_path, broker.url, devices=devices, extra=extra, extra_uplink="  max_message_bytes: 4KiB\n")
    try:
        async with running_agent(site) as agent:
            await _quiet(agent, lambda s: s["devices"]["meter"]["state"] == "online"
                         and s["devices"]["gone"]["state"] in ("offline", "backoff")
                         and s["uplink"]["published"] > 3 and s["outbox"]["depth"] == 0, "first data delivered")
            # a drop of a kind status counts: an event too large for the broker (a refused write echoing a huge
            # value) is dropped alone and counted as oversize
            with pytest.raises(WriteRefused):
                await agent.write("no-such-device", "x", "v" * 6000)
            await _quiet(agent, lambda s: s["outbox"]["dropped_oversize"] == 1, "the oversize drop")
            # broker gone, then every point reported again: a backlog that stays put
            broker.stop()
            await _quiet(agent, lambda s: not s["uplink"]["connected"], "uplink down")
            agent.pipeline.forget()
            await _quiet(agent, lambda s: s["outbox"]["depth"] > 0, "a backlog")
            await asyncio.sleep(1.0)
            fams = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
            status = await _status_json(site)
            snap = agent.snapshot()
            await asyncio.sleep(0.5)
            filed = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    finally:
        await peer.stop()
    assert status["outbox"]["depth"] == snap["outbox"]["depth"] > 0  # it did hold still
    snap = status

    for fams_ in (fams, filed):
        names = {s.name for f in fams_.values() for s in f.samples} | set(fams_)
        missing = [m for m in DOCUMENTED if m not in names]
        assert not missing, f"documented but not exposed: {missing}"

    o = snap["outbox"]
    assert _value(fams, "edge_agent_outbox_backlog_messages") == o["depth"]
    assert _value(fams, "edge_agent_outbox_backlog_bytes") == o["bytes"]
    assert _value(fams, "edge_agent_outbox_dropped_messages", "edge_agent_outbox_dropped_messages_total",
                  kind="telemetry") == o["dropped_telemetry"]
    assert _value(fams, "edge_agent_outbox_dropped_messages", "edge_agent_outbox_dropped_messages_total",
                  kind="event") == o["dropped_events"]
    assert _value(fams, "edge_agent_outbox_dropped_messages", "edge_agent_outbox_dropped_messages_total",
                  kind="oversize") == o["dropped_oversize"] == 1
    online = sum(1 for d in snap["devices"].values() if d["available"])
    assert online == 1  # meter
    assert sum(s.value for s in fams["edge_agent_device_up"].samples) == online
    assert _value(fams, "edge_agent_device_state", state="online", device="meter") == 1
    assert _value(fams, "edge_agent_device_state", state="online", device="gone") == 0
    assert _value(fams, "edge_agent_device_points", device="meter") == snap["devices"]["meter"]["points_total"] == 21
    assert _value(fams, "edge_agent_device_points_good", device="meter") == 21
    assert _value(fams, "edge_agent_uplink_connected") == 0  # the broker was stopped before the scrape
    assert _value(fams, "edge_agent_uplink_published_messages", "edge_agent_uplink_published_messages_total") \
        == snap["uplink"]["published"]
    # instruments fed by the hooks
    assert _value(fams, "edge_agent_uplink_puback_latency_seconds",
                  "edge_agent_uplink_puback_latency_seconds_count") == snap["uplink"]["published"]
    assert _value(fams, "edge_agent_uplink_sent_bytes", "edge_agent_uplink_sent_bytes_total") > 0
    assert _value(fams, "edge_agent_device_cycle_duration_seconds",
                  "edge_agent_device_cycle_duration_seconds_count", device="meter") >= 2
    reqs = _value(fams, "edge_agent_device_requests_per_cycle", "edge_agent_device_requests_per_cycle_sum",
                  device="meter")
    cycles = _value(fams, "edge_agent_device_requests_per_cycle", "edge_agent_device_requests_per_cycle_count",
                    device="meter")
    assert cycles >= 2 and reqs >= cycles  # at least one request per cycle
    gone_errors = [s for s in fams["edge_agent_device_errors"].samples
                   if s.labels.get("device") == "gone" and s.name.endswith("_total")]
    assert gone_errors and {s.labels["kind"] for s in gone_errors} <= {"unreachable", "timeout"}
    assert _value(fams, "edge_agent_events", "edge_agent_events_total", kind="availability") == 2  # on, off
    assert _value(fams, "edge_agent_events", "edge_agent_events_total", kind="write") == 1
    assert _value(fams, "process_resident_memory_bytes") > 1e6
    info = next(s for f in fams.values() for s in f.samples if s.name == "edge_agent_config_info")
    assert info.labels["site"] == "t1" and re.fullmatch(r"[0-9a-f]{12}", info.labels["version"])
    assert _value(fams, "edge_agent_config_generation") == snap["pipeline"]["gen"]


def _series(fams: dict[str, Any]) -> int:
    return sum(len(f.samples) for n, f in fams.items() if n.startswith("edge_agent_"))


async def _series_with_points(tmp_path: Path, n: int) -> tuple[int, int]:
    profiles = tmp_path / "profiles"
    fakedrivers.install(str(profiles))
    pts = "".join(f"  - {{name: p{i:03d}}}\n" for i in range(n))
    (profiles / "many.yaml").write_text(f"driver: fake\npoints:\n{pts}")
    port = free_port()
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", devices=(
        "  - {name: big, type: many, interval: 0.1s, connection: {behaviour: ok}}\n"
        "  - {name: bad, type: many, interval: 0.1s, timeout: 0.1s, retries: 0, connection: {behaviour: dead}}\n"),
        extra=f"profiles_dirs: [{profiles}]\nmetrics: {{listen: 'localhost:{port}'}}\n")
    async with running_agent(site) as agent:
        deadline = time.monotonic() + 10
        while agent.health["big"].state != "online" or agent.health["bad"].state not in ("offline", "backoff"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        fams = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
    assert _value(fams, "edge_agent_device_points", device="big") == n
    return _series(fams), len(fams)


async def test_series_do_not_grow_with_points(tmp_path: Path) -> None:
    few = await _series_with_points(tmp_path / "a", 2)
    many = await _series_with_points(tmp_path / "b", 200)
    assert few == many, f"2 points: {few} (series, families); 200 points: {many}"


@pytest.mark.parametrize("listen", ["10.0.0.5:9464", "0.0.0.0:9464", "203.0.113.7:9464", "127.0.0.1", "unix:x"])
def test_listen_must_be_loopback_and_is_a_located_error(tmp_path: Path, listen: str) -> None:
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", extra=f"metrics: {{listen: '{listen}'}}\n")
    with pytest.raises(ConfigError) as err:
        load_site(site)
    assert re.search(rf"{re.escape(str(site))}:\d+: metrics\.listen: ", str(err.value)), str(err.value)


def test_textfile_must_end_in_prom(tmp_path: Path) -> None:
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", extra="metrics: {textfile: /tmp/x.txt}\n")
    with pytest.raises(ConfigError, match=r"metrics\.textfile: .*\.prom"):
        load_site(site)


async def test_unix_socket_listener_and_a_textfile_that_cannot_be_written(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """unix: listener answers GET /metrics (404 elsewhere); an unwritable textfile is logged once and the
    agent keeps running; both stop with the agent (socket closed)."""
    import socket

    sock = tmp_path / "run" / "metrics.sock"
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the directory should be")
    site = write_site(tmp_path, "mqtt://127.0.0.1:9", extra=(
        f"metrics: {{listen: 'unix:{sock}', textfile: {blocked / 'x.prom'}, textfile_interval: 0.1s}}\n"))

    def get(path: str) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        return buf

    async with running_agent(site) as agent:
        await asyncio.sleep(0.6)  # several textfile attempts
        ok = await asyncio.to_thread(get, "/metrics")
        missing = await asyncio.to_thread(get, "/nope")
        assert agent.snapshot()["devices"]["box"]["state"] in ("starting", "online")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"edge_agent_outbox_backlog_messages" in body
    assert missing.startswith(b"HTTP/1.1 404")
    errors = [r for r in caplog.records if "metrics textfile" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelname == "ERROR", [r.getMessage() for r in errors]
    assert not sock.exists()  # removed with the agent
