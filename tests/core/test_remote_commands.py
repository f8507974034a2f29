"""Signed commands against a real Mosquitto and a real pymodbus peer, the agent running as in production
(in-process ``Agent``, its own MQTT session): what a signed command obeys, what an unsigned or badly signed one is
answered, and that nothing refused reaches the device."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from joserfc.jwk import OKPKey

from agent.remote.envelope import claims, sign
from tests.peers.mosquitto import Broker

from .agentkit import Collector, running_agent, write_site
from .test_write_path import _read_register

SITE = "t1"


class Operator:
    """An operator's tooling: keys, signed commands published to the broker, acks read back."""

    def __init__(self, tmp: Path) -> None:
        self.keys: dict[str, OKPKey] = {}
        entries = []
        for name, roles in (("alice", ["ops", "write"]), ("bob", ["config"]), ("carol", ["ops", "write"])):
            k = OKPKey.generate_key("Ed25519")
            self.keys[name] = k
            entries.append({**k.as_dict(private=False), "kid": name, "roles": roles})
        self.keys["mallory"] = OKPKey.generate_key("Ed25519")
        (tmp / "operators.json").write_text(json.dumps({"keys": entries, "revoked": ["carol"]}))
        self.n = 0

    def signed(self, cmd: str, args: dict[str, Any], *, key: str = "alice", kid: str | None = None,
               mid: str | None = None, **over: Any) -> tuple[str, bytes]:
        self.n += 1
        mid = mid or f"op-{os.getpid()}-{self.n}"
        c = claims(SITE, cmd, args, mid)
        c.update(over)
        token = sign(self.keys[key], kid or key, c)
        return mid, json.dumps({"id": mid, "cmd": cmd, "src": f"tool-{self.n}", "jws": token}).encode()


async def ack_of(col: Collector, mid: str, timeout: float = 10.0) -> dict[str, Any]:
    await col.wait(lambda: any(m["doc"].get("id") == mid for m in col.of("ack")), timeout, f"ack of {mid}")
    return next(m["doc"] for m in col.of("ack") if m["doc"].get("id") == mid)


def boiler_site(tmp: Path, broker: Broker, port: int, extra: str = "") -> Path:
    dev = (f"  - {{name: boiler, type: remeha-gtw08, interval: 0.3s, timeout: 1s, "
           f"connection: {{host: 127.0.0.1, port: {port}, unit: 4}}}}\n")
    return write_site(tmp, broker.url, site_id=SITE, devices=dev, extra=extra)


async def online(agent: Any, name: str = "boiler") -> None:
    async with asyncio.timeout(10):
        while not agent.health[name].available:
            await asyncio.sleep(0.05)


async def test_signed_write_reaches_the_modbus_peer_and_every_bad_one_is_refused(
        broker: Broker, modbus_sim: Callable[..., int], tmp_path: Path) -> None:
    port = modbus_sim("remeha-gtw08:4")
    site = boiler_site(tmp_path, broker, port)
    op = Operator(tmp_path)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        await online(agent)
        before = await _read_register(port, 4, 21022)
        args = {"device": "boiler", "point": "fallback_period", "value": 17}
        bad: list[tuple[str, bytes, str]] = []

        def add(reason: str, mid_payload: tuple[str, bytes]) -> None:
            bad.append((mid_payload[0], mid_payload[1], reason))

        add("unsigned", ("u1", json.dumps({"id": "u1", "cmd": "write", "args": args}).encode()))
        add("unknown key 'mallory'", op.signed("write", args, key="mallory"))
        add("bad signature", op.signed("write", args, key="mallory", kid="alice"))
        add("lacks the role 'write'", op.signed("write", args, key="bob"))
        add("revoked", op.signed("write", args, key="carol"))
        add("another site", op.signed("write", args, aud="school"))
        add("expired", op.signed("write", args, iat=1_700_000_000, exp=1_700_000_060))
        add("in the future", op.signed("write", args, iat=4_000_000_000, exp=4_000_000_060))
        add("malformed JWS", ("m1", json.dumps({"id": "m1", "cmd": "write", "jws": "a.b"}).encode()))
        add("unknown signed command 'shell'", op.signed("shell", {"line": "id"}))
        add("above the maximum 255", op.signed("write", {**args, "value": 256}))  # the Writer's own checks
        add("read-only", op.signed("write", {"device": "boiler", "point": "outside_temperature", "value": 3}))
        mid_ok, good = op.signed("write", args)
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            for _, payload, _ in bad:
                await c.publish(f"ea/v1/{SITE}/cmd", payload, qos=1)
            for mid, _, reason in bad:
                ack = await ack_of(col, mid)
                assert ack["ok"] is False and reason in ack["error"], (reason, ack)
            assert await _read_register(port, 4, 21022) == before  # nothing refused reached the device
            await c.publish(f"ea/v1/{SITE}/cmd", good, qos=1)
            ack = await ack_of(col, mid_ok, 15)
            assert ack["ok"] is True and ack["result"]["written"] == 17, ack
            assert await _read_register(port, 4, 21022) == 17
            # the very same message again: replayed, refused
            await c.publish(f"ea/v1/{SITE}/cmd", good, qos=1)
            await col.wait(lambda: sum(1 for m in col.of("ack") if m["doc"].get("id") == mid_ok) == 2, 10, "2nd")
            again = [m["doc"] for m in col.of("ack") if m["doc"].get("id") == mid_ok][1]
            assert again["ok"] is False and "replayed" in again["error"]
        await col.wait(lambda: any(m["doc"].get("kind") == "remote" for m in col.of("e")), 10, "audit event")
        audit = [m["doc"]["data"] for m in col.of("e") if m["doc"].get("kind") == "remote"]
        assert any(a["id"] == mid_ok and a["key"] == "alice" and a["ok"] for a in audit)
        assert agent.health["boiler"].available  # the running configuration kept running


async def test_a_replay_is_refused_after_an_agent_restart(broker: Broker, tmp_path: Path) -> None:
    site = write_site(tmp_path, broker.url, site_id=SITE)
    op = Operator(tmp_path)
    mid, payload = op.signed("status", {})
    async with Collector(broker.port) as col:
        async with running_agent(site) as agent:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                await c.publish(f"ea/v1/{SITE}/cmd", payload, qos=1)
            ack = await ack_of(col, mid)
            assert ack["ok"] and ack["result"]["agent"]["site"] == SITE
        async with running_agent(site) as agent:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                await c.publish(f"ea/v1/{SITE}/cmd", payload, qos=1)
            await col.wait(lambda: sum(1 for m in col.of("ack") if m["doc"].get("id") == mid) == 2, 10, "replay ack")
            again = [m["doc"] for m in col.of("ack") if m["doc"].get("id") == mid][1]
            assert again["ok"] is False and "replayed" in again["error"]


async def test_ops_commands_answer_and_run_no_program(broker: Broker, modbus_sim: Callable[..., int],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """status, diag (device, broker), retry, log-tail (bounded, redacted), log-level (reverts by itself),
    reload; while they run, any attempt to start a program fails the test (fault injection on the OS calls)."""
    port = modbus_sim("remeha-gtw08:4")
    site = boiler_site(tmp_path, broker, port)
    op = Operator(tmp_path)
    spawned: list[str] = []

    def forbid(name: str) -> Callable[..., Any]:
        def call(*a: Any, **k: Any) -> Any:
            spawned.append(name)
            raise AssertionError(f"{name} called by a command")
        return call

    async with Collector(broker.port) as col, running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        await online(agent)
        for name in ("system", "execv", "execve", "posix_spawn", "fork"):
            monkeypatch.setattr(os, name, forbid(f"os.{name}"))
        monkeypatch.setattr(subprocess.Popen, "__init__", forbid("subprocess.Popen"))
        monkeypatch.setattr(asyncio, "create_subprocess_exec", forbid("create_subprocess_exec"))
        monkeypatch.setattr(asyncio, "create_subprocess_shell", forbid("create_subprocess_shell"))
        logging.getLogger("edge_agent").warning("connecting with password: hunter22 to mqtt://u:s3cret@h")
        cmds = [("status", {}), ("diag", {"device": "boiler"}), ("diag", {"target": "broker"}),
                ("retry", {"device": "boiler"}), ("log-tail", {"lines": 50}),
                ("log-level", {"level": "debug", "duration": 1}), ("log-tail", {"lines": 10_000}),
                ("diag", {"device": "../../etc/passwd"}), ("log-tail", {"lines": 5, "file": "/etc/shadow"})]
        sent = [op.signed(c, a) for c, a in cmds]
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            for _, payload in sent:
                await c.publish(f"ea/v1/{SITE}/cmd", payload, qos=1)
        acks = [await ack_of(col, mid, 20) for mid, _ in sent]
        st, diag_dev, diag_broker, retry, tail, level, too_many, bad_dev, ignored = acks
        assert st["ok"] and st["result"]["devices"]["boiler"]["state"] == "online"
        assert diag_dev["ok"] and diag_dev["result"]["state"]["state"] == "online"
        assert diag_broker["ok"] and diag_broker["result"]["broker"]["connected"] is True
        assert retry["ok"] and retry["result"]["device"]["available"]
        text = "\n".join(tail["result"]["lines"])
        assert tail["ok"] and "with password: <redacted>" in text and "hunter22" not in text and "s3cret" not in text
        assert level["ok"] and logging.getLogger().level == logging.DEBUG
        assert too_many["ok"] is False and "args.lines must be" in too_many["error"]
        assert bad_dev["ok"] is False and "no device named" in bad_dev["error"]
        assert ignored["ok"] and ignored["result"]["count"] <= 5  # unknown args name nothing to read
        await asyncio.sleep(1.3)
        assert logging.getLogger().level != logging.DEBUG  # reverted by itself
        mid, payload = op.signed("reload", {})
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.publish(f"ea/v1/{SITE}/cmd", payload, qos=1)
        assert (await ack_of(col, mid))["ok"]
        async with asyncio.timeout(10):
            await agent.stop_event.wait()  # the valid site file on disk: a clean stop to re-exec
        assert agent.restart
    assert spawned == []


async def test_operator_cli_cmd_signs_sends_and_prints_the_outcome(broker: Broker, modbus_sim: Callable[..., int],
                                                                   tmp_path: Path) -> None:
    from .test_write_path import cli

    port = modbus_sim("remeha-gtw08:4")
    site = boiler_site(tmp_path, broker, port)
    entries = []
    for name, roles in (("alice", "write,ops"), ("bob", "config")):
        r = await asyncio.to_thread(cli, "keys", "generate", "--name", name, "--roles", roles,
                                    "-o", str(tmp_path / f"{name}.jwk"))
        assert r.returncode == 0, r.stderr
        entries.append(json.loads(r.stdout))
    (tmp_path / "operators.json").write_text(json.dumps({"keys": entries}))
    base = ["cmd", "--broker", broker.url, "--site", SITE, "--timeout", "20"]
    async with running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        await online(agent)
        r = await asyncio.to_thread(cli, *base, "--key", str(tmp_path / "alice.jwk"),
                                    "write", "boiler", "fallback_period", "42")
        assert r.returncode == 0 and '"written": 42' in r.stdout, (r.stdout, r.stderr)
        assert await _read_register(port, 4, 21022) == 42
        r = await asyncio.to_thread(cli, *base, "--key", str(tmp_path / "bob.jwk"),
                                    "write", "boiler", "fallback_period", "43")
        assert r.returncode == 1 and "lacks the role 'write'" in r.stderr, r.stderr
        assert await _read_register(port, 4, 21022) == 42
        r = await asyncio.to_thread(cli, *base, "--key", str(tmp_path / "alice.jwk"), "status", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["result"]["devices"]["boiler"]["state"] == "online"
        r = await asyncio.to_thread(cli, *base, "--key", str(tmp_path / "alice.jwk"), "write", "boiler")
        assert r.returncode == 2 and "usage: write DEVICE POINT VALUE" in r.stderr
        # a support bundle, in parts, from what the agent knows (redacted)
        logging.getLogger("edge_agent").warning("token: hunter22xyz")
        out = tmp_path / "support.tar.gz"
        r = await asyncio.to_thread(cli, *base, "--key", str(tmp_path / "alice.jwk"), "bundle", "-o", str(out))
        assert r.returncode == 0, (r.stdout, r.stderr)
        with tarfile.open(out) as tar:
            names = set(tar.getnames())
            assert {"versions.json", "status.json", "validate.txt", "journal.txt", "site/site.yaml",
                    "site/operators.json"} <= names, names
            journal = tar.extractfile("journal.txt").read().decode()  # type: ignore[union-attr]
        assert "token: <redacted>" in journal and "hunter22xyz" not in journal
    r = await asyncio.to_thread(cli, "cmd", "--broker", "mqtt://127.0.0.1:9", "--site", SITE, "--key",
                                str(tmp_path / "alice.jwk"), "status")
    assert r.returncode == 3 and "cannot reach" in r.stderr and "Traceback" not in r.stderr
