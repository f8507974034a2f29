"""The agent against a real Mosquitto: payloads, availability and last will, commands, mutual TLS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.peers.mosquitto import Broker

from .agentkit import Collector, kill9, running_agent, start_agent_process, write_site


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


async def test_system_samples_arrive_with_correct_payloads(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await col.wait(lambda: any(m["kind"] == "t" and m.get("known_gen") for m in col.messages), 10, "telemetry")
        births = col.of("birth")
        assert births, "birth delivered"
        birth = births[-1]["doc"]
        assert birth["site"] == "t1" and birth["gen"] == agent.pipeline.gen
        names = [p["n"] for p in birth["devices"]["box"]["points"]]
        assert names[:3] == ["load1", "mem_available", "mem_used_pct"]
        status = [m["doc"] for m in col.of("status")]
        assert status[-1]["state"] == "online"
        tel = next(m for m in col.messages if m["kind"] == "t" and m.get("known_gen"))
        assert tel["topic"] == "ea/v1/t1/t/box" and tel["device"] == "box"
        vals = {s["point"]: s for s in tel["samples"]}
        assert abs(vals["load1"]["value"] - os.getloadavg()[0]) < 2.0
        assert vals["mem_available"]["unit"] == "B"
        assert abs(vals["mem_available"]["value"] - _meminfo_available()) < 512 * 1024 * 1024
        st = os.statvfs(tmp_path / "state")
        assert abs(vals["disk_free"]["value"] - st.f_bavail * st.f_frsize) < 1024**3
        up = float(Path("/proc/uptime").read_text().split()[0])
        assert abs(vals["uptime"]["value"] - up) < 30
        assert all(s["quality"] in ("good", "error") for s in tel["samples"])
        assert vals["outbox_dropped"]["value"] == 0
        # the first telemetry seq is > 0 and strictly increasing across messages
        seqs = [m["seq"] for m in col.of("t")]
        assert seqs == sorted(seqs) and seqs[0] > 0


async def test_commands_ping_rebirth_and_garbage(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", broker.port) as op:
            await op.publish("ea/v1/t1/cmd", json.dumps({"id": "c1", "cmd": "ping"}), qos=1)
            await op.publish("ea/v1/t1/cmd", b"\xff not json", qos=1)
            await op.publish("ea/v1/t1/cmd", json.dumps({"id": "c3", "cmd": "format-disk"}), qos=1)
            births_before = len(col.of("birth"))
            await op.publish("ea/v1/t1/cmd", json.dumps({"id": "c4", "cmd": "rebirth"}), qos=1)
        await col.wait(lambda: len(col.of("ack")) >= 4, 10, "acks")
        acks = {m["doc"]["id"]: m["doc"] for m in col.of("ack")}
        assert acks["c1"]["ok"] is True and acks["c1"]["result"]["pong"] is True
        assert acks[None]["ok"] is False and "malformed command" in acks[None]["error"]
        assert acks["c3"]["ok"] is False and "unknown command 'format-disk'" in acks["c3"]["error"]
        assert acks["c4"]["ok"] is True and acks["c4"]["result"]["gen"] == agent.pipeline.gen
        await col.wait(lambda: len(col.of("birth")) > births_before, 5, "rebirth")
        assert all("seq" in a for a in acks.values())
        assert agent.uplink.state.connected  # garbage did not take the session down


async def test_availability_online_then_last_will_on_kill(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url)
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await col.wait(lambda: any(m["doc"]["state"] == "online" for m in col.of("status")), 15, "online")
            kill9(proc)
            await col.wait(lambda: col.of("status")[-1]["doc"]["state"] == "offline", 10, "last will")
            assert col.of("status")[-1]["doc"]["reason"] == "lost"
        finally:
            if proc.poll() is None:
                proc.kill()
    # retained: a newcomer sees offline at once
    async with Collector(broker.port) as late:
        await late.wait(lambda: bool(late.of("status")), 5, "retained status")
        assert late.of("status")[-1]["doc"]["state"] == "offline" and late.of("status")[-1]["retain"]


async def test_sigterm_says_offline_and_exits_zero(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url)
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        await col.wait(lambda: any(m["doc"]["state"] == "online" for m in col.of("status")), 15, "online")
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 15)
        assert rc == 0, (tmp_path / "agent.log").read_text()
        await col.wait(lambda: col.of("status")[-1]["doc"]["state"] == "offline", 5, "offline")
        assert col.of("status")[-1]["doc"]["reason"] == "shutdown"


# ---------------------------------------------------------------------------------------- mutual TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, cn in (("server", "127.0.0.1"), ("client", "t1")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:broker.test\n" if name == "server"
                       else "extendedKeyUsage=clientAuth\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.crt", "-extfile", str(ext), cwd=d)
    for f in d.iterdir():
        f.chmod(0o644)
    return d


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path):  # type: ignore[no-untyped-def]
    b = Broker(tmp_path, tls={"ca": str(pki / "ca.crt"), "cert": str(pki / "server.crt"),
                              "key": str(pki / "server.key")}).start()
    yield b
    b.stop()


async def test_mutual_tls_connects(tls_broker: Broker, pki: Path, tmp_path: Path) -> None:
    tls = (f"  tls: {{ca_file: {pki / 'ca.crt'}, cert_file: {pki / 'client.crt'}, "
           f"key_file: {{file: {pki / 'client.key'}}}}}\n")
    site = write_site(tmp_path, tls_broker.url, extra_uplink=tls)
    async with running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        await asyncio.sleep(0.5)
        assert agent.uplink.state.published > 0  # birth/status/telemetry went through TLS


async def test_mutual_tls_refused_without_client_certificate(tls_broker: Broker, pki: Path, tmp_path: Path) -> None:
    site = write_site(tmp_path, tls_broker.url, extra_uplink=f"  tls: {{ca_file: {pki / 'ca.crt'}}}\n")
    async with running_agent(site) as agent:
        await asyncio.sleep(4)
        assert not agent.uplink.state.connected and agent.uplink.state.connects == 0
        assert agent.uplink.state.last_error
        assert agent.snapshot()["uplink"]["state"] in ("offline", "connecting")
        # it keeps collecting into the outbox meanwhile
        assert agent.outbox.stats()["depth"] > 0


async def test_sighup_refuses_bad_config_and_applies_good_one(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url)
    good = site.read_text()
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await col.wait(lambda: any(m["doc"]["state"] == "online" for m in col.of("status")), 15, "online")
            site.write_text(good.replace("type: edge-box", "type: edge-box, interval: soon"))
            proc.send_signal(signal.SIGHUP)
            await col.wait(lambda: any(m["doc"].get("kind") == "config" for m in col.of("e")), 10, "refusal event")
            ev = next(m["doc"] for m in col.of("e") if m["doc"].get("kind") == "config")
            assert ev["data"]["result"] == "refused"
            assert any("site.yaml:" in p and "devices[0].interval" in p for p in ev["data"]["problems"])
            assert proc.poll() is None
            n = len(col.of("t"))
            await col.wait(lambda: len(col.of("t")) > n, 10, "still publishing with the old configuration")
            # a valid change: a second device; same process (re-exec), new birth with both devices
            site.write_text(good + "  - {name: box2, type: edge-box, interval: 1s}\n")
            proc.send_signal(signal.SIGHUP)
            await col.wait(lambda: any("box2" in m["doc"].get("devices", {}) for m in col.of("birth")), 20,
                           "birth with box2")
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(10)


async def test_telemetry_queued_under_an_old_config_stays_decodable(tmp_path: Path) -> None:
    """Run 1 collects offline with config A; run 2 starts with config B (another alias map) and a broker:
    every telemetry message, old and new, arrives with its alias map (birth of its generation)."""
    broker = Broker(tmp_path)  # not started during run 1
    site = write_site(tmp_path, broker.url)
    async with running_agent(site) as agent:
        await asyncio.sleep(1.0)
        gen_a = agent.pipeline.gen
        assert agent.outbox.stats()["telemetry"] >= 1
    site.write_text(site.read_text() + "  - {name: box2, type: edge-box, interval: 0.5s}\n")
    broker.start()
    try:
        async with Collector(broker.port) as col, running_agent(site) as agent:
            gen_b = agent.pipeline.gen
            assert gen_a != gen_b
            await col.wait(lambda: {m["gen"] for m in col.of("t")} >= {gen_a, gen_b}, 10, "both generations")
            await asyncio.sleep(0.3)
            tel = col.of("t")
            assert all(m["known_gen"] for m in tel), [m["gen"] for m in tel if not m["known_gen"]]
            assert {m["doc"]["gen"] for m in col.of("birth")} >= {gen_a, gen_b}
    finally:
        broker.stop()


async def test_event_reaches_broker_fast_even_with_slow_telemetry_batches(broker: Broker, tmp_path: Path) -> None:
    import time

    from agent.model import Event, Severity

    site = write_site(tmp_path, broker.url)
    site.write_text(site.read_text().replace("batch_interval: 0.1s", "batch_interval: 30s"))
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        agent.event(Event("door-2", "door", {"state": "forced"}, Severity.ALARM))
        await col.wait(lambda: any(m["doc"].get("kind") == "door" for m in col.of("e")), 1.0, "door event")
        latency = time.monotonic() - t0
        print(f"event to broker: {latency * 1000:.1f} ms")
        assert latency < 1.0
        assert not col.of("t"), "telemetry is still held by the 30 s batch"


async def test_event_overtakes_a_long_replay(tmp_path: Path) -> None:
    """During the replay of a large backlog, a new event still reaches the broker in under 1 s."""
    import time

    from agent.model import Event, Severity
    from agent.outbox import Kind, Record

    broker = Broker(tmp_path)
    site = write_site(tmp_path, broker.url)
    async with running_agent(site) as agent:
        body = b"\x00" + bytes(60)  # stored telemetry body: flags, gen, content (not decoded by this test)
        for _ in range(10):
            await agent.outbox.append([Record(Kind.TELEMETRY, "ea/v1/t1/t/box", body, time.time())
                                       for _ in range(2000)])
        broker.start()
        try:
            async with Collector(broker.port) as col:
                await col.wait(lambda: len(col.of("t")) > 500, 15, "replay under way")
                assert agent.outbox.stats()["depth"] > 5000, "the replay should still be long"
                t0 = time.monotonic()
                agent.event(Event("door-3", "door", {"state": "forced"}, Severity.ALARM))
                await col.wait(lambda: any(m["doc"].get("kind") == "door" for m in col.of("e")), 1.0, "door")
                print(f"event during replay: {(time.monotonic() - t0) * 1000:.0f} ms, "
                      f"backlog left {agent.outbox.stats()['depth']}")
        finally:
            broker.stop()


@pytest.mark.parametrize(("name", "connects"), [("broker.test", True), ("other.test", False)])
async def test_server_hostname_is_what_the_certificate_is_checked_against(
        tls_broker: Broker, pki: Path, tmp_path: Path, name: str, connects: bool) -> None:
    tls = (f"  tls: {{ca_file: {pki / 'ca.crt'}, cert_file: {pki / 'client.crt'}, "
           f"key_file: {pki / 'client.key'}, server_hostname: {name}}}\n")
    site = write_site(tmp_path, tls_broker.url, extra_uplink=tls)
    async with running_agent(site) as agent:
        try:
            await asyncio.wait_for(agent.uplink.connected.wait(), 4)
        except TimeoutError:
            pass
        assert agent.uplink.state.connected is connects
        if not connects:
            assert "other.test" in (agent.uplink.state.last_error or ""), agent.uplink.state.last_error


async def test_reload_not_blocked_by_a_device_that_was_already_broken(broker: Broker, tmp_path: Path) -> None:
    """A site that starts with one broken device entry can still be reloaded; breaking a running device can't."""
    site = write_site(tmp_path, broker.url)
    base = site.read_text()
    site.write_text(base + "  - {name: meter, type: no-such-meter}\n")
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await col.wait(lambda: any(m["doc"]["state"] == "online" for m in col.of("status")), 15, "online")
            # breaking the running device is refused
            broken = base.replace("edge-box, interval: 0.1s", "edge-box, interval: never")
            site.write_text(broken + "  - {name: meter, type: no-such-meter}\n")
            proc.send_signal(signal.SIGHUP)
            def refusals() -> list[dict[str, Any]]:  # the start-up event says `skipped`
                return [m["doc"] for m in col.of("e") if m["doc"].get("kind") == "config"
                        and m["doc"]["data"]["result"] == "refused"]

            await col.wait(lambda: bool(refusals()), 10, "refusal")
            ev = refusals()[0]
            assert any("devices[0].interval" in p for p in ev["data"]["problems"])
            assert not any("devices[1]" in p for p in ev["data"]["problems"]), ev["data"]
            # adding box2 while meter stays broken is applied
            site.write_text(base + "  - {name: meter, type: no-such-meter}\n"
                            "  - {name: box2, type: edge-box, interval: 1s}\n")
            proc.send_signal(signal.SIGHUP)
            await col.wait(lambda: any("box2" in m["doc"].get("devices", {}) for m in col.of("birth")), 20, "box2")
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(10)
