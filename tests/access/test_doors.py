"""Door commands through the running agent, against the simulated panel and a real Mosquitto: only a signed
command with the ``door`` role, allowed by the site file for that door and now, reaches the panel (checked with
the panel's own count of what it received); every outcome is acknowledged and audited. The local CLI likewise."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from joserfc.jwk import OKPKey

from agent.remote.envelope import claims, sign
from tests.core.agentkit import Collector, running_agent
from tests.peers.mosquitto import Broker
from tests.peers.panel import FAST, AccessPanel

from .test_agent import events, panel_site, values

SITE = "t1"
ROOT = Path(__file__).resolve().parents[2]


class Operator:
    """Operator keys in the box's operators.json: dora may command doors, alice may only write and operate."""

    def __init__(self, site_dir: Path) -> None:
        self.keys = {n: OKPKey.generate_key("Ed25519") for n in ("dora", "alice")}
        roles = {"dora": ["door"], "alice": ["ops", "write"]}
        entries = [{**k.as_dict(private=False), "kid": n, "roles": roles[n]} for n, k in self.keys.items()]
        (site_dir / "operators.json").write_text(json.dumps({"keys": entries, "revoked": []}))
        self.n = 0

    def signed(self, args: dict[str, Any], key: str = "dora", mid: str | None = None) -> tuple[str, bytes]:
        self.n += 1
        mid = mid or f"door-{os.getpid()}-{self.n}"
        token = sign(self.keys[key], key, claims(SITE, "door", args, mid))
        return mid, json.dumps({"id": mid, "cmd": "door", "src": key, "jws": token}).encode()


async def ack_of(col: Collector, mid: str, nth: int = 1, timeout: float = 15.0) -> dict[str, Any]:
    def acks() -> list[dict[str, Any]]:
        return [m["doc"] for m in col.of("ack") if m["doc"].get("id") == mid]
    await col.wait(lambda: len(acks()) >= nth, timeout, f"ack {nth} of {mid}")
    return acks()[nth - 1]


def other_day() -> str:
    """A weekday two days from now (UTC): a window on it is never open during the test."""
    return ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(dt.datetime.now(dt.UTC).weekday() + 2) % 7]


DOORS = ("        - {token: Door_1, name: main, label: Main entrance, commands: [access, lock, unlock]}\n"
         "        - {token: Door_2, name: staff, commands: [unlock], windows: ['" + other_day() + " 00:00-24:00']}\n")


async def online(agent: Any, *names: str) -> None:
    async with asyncio.timeout(15):
        while not all(agent.health[n].available for n in names):
            await asyncio.sleep(0.05)


async def test_only_signed_allowed_door_commands_reach_the_panel(access_panel: AccessPanel, broker: Broker,
                                                                 tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    site = panel_site(tmp_path, broker, {"panel": access_panel}, DOORS)
    op = Operator(site.parent)
    unlock_main = {"device": "panel", "door": "main", "command": "unlock"}
    refusals: list[tuple[str, bytes, str]] = []
    refusals.append(("u1", json.dumps({"id": "u1", "cmd": "door", "args": unlock_main}).encode(),
                     "unsigned: door changes or reveals the site and needs a signed message (jws) by a key with "
                     "the role 'door'"))
    refusals.append((*op.signed(unlock_main, key="alice"), "key 'alice' lacks the role 'door' that door needs"))
    refusals.append((*op.signed({**unlock_main, "command": "block"}),
                     "door main: block not allowed by the site file (allowed: access, lock, unlock)"))
    refusals.append((*op.signed({**unlock_main, "door": "side"}), "unknown door 'side'"))
    refusals.append((*op.signed({**unlock_main, "door": "Door_3"}), "unknown door 'Door_3'"))
    refusals.append((*op.signed({**unlock_main, "door": "staff", "command": "lock"}),
                     "door staff: lock not allowed by the site file (allowed: unlock)"))
    refusals.append((*op.signed({**unlock_main, "door": "staff"}), f"door staff: unlock allowed only {other_day()} "
                     "00:00-24:00"))
    refusals.append((*op.signed({**unlock_main, "device": "nope"}), "no device named 'nope'"))
    refusals.append((*op.signed({**unlock_main, "command": "open"}), "unknown door command 'open'"))
    refusals.append((*op.signed({"device": "panel", "door": "main"}), "args.command must be a string"))
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        await online(agent, "panel")
        await col.wait(lambda: values(col, "panel", "main.mode") == ["Locked"], 15, "door points")
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            caplog.set_level(logging.WARNING)
            for _, payload, _ in refusals:
                await c.publish(f"ea/v1/{SITE}/cmd", payload, qos=1)
            for mid, _, why in refusals:
                ack = await ack_of(col, mid)
                assert ack["ok"] is False and why in ack["error"], (why, ack)
            for _, _, why in refusals:  # one warning line per refusal (the gate, remote and channel each logged)
                lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and
                         why in r.getMessage()]
                assert len(lines) == 1, lines
            stats = access_panel.stats()
            assert stats["door_commands"] == [], stats["door_commands"]  # nothing refused reached the panel
            assert agent.doors.sent == 0
            mid, good = op.signed(unlock_main)
            await c.publish(f"ea/v1/{SITE}/cmd", good, qos=1)
            ack = await ack_of(col, mid)
            assert ack["ok"] is True, ack
            assert ack["result"]["panel"] == "ok" and ack["result"]["state"]["mode"] == "Unlocked", ack
            assert ack["result"]["token"] == "Door_1"
            assert access_panel.state()["doors"]["Door_1"]["mode"] == "Unlocked"
            await col.wait(lambda: values(col, "panel", "main.mode")[-1:] == ["Unlocked"], 3, "the point follows")
            await c.publish(f"ea/v1/{SITE}/cmd", good, qos=1)  # the same message again
            again = await ack_of(col, mid, 2)
            assert again["ok"] is False and "replayed" in again["error"]
        await col.wait(lambda: any(e["data"]["result"] == "ok" for e in events(col, "panel", "door_command")), 5,
                       "audit event")
    cmds = access_panel.stats()["door_commands"]
    assert cmds == [{"op": "UnlockDoor", "door": "Door_1", "result": "ok"}]
    audit = events(col, "panel", "door_command")
    ok = [e for e in audit if e["data"]["result"] == "ok"]
    assert len(ok) == 1 and ok[0]["data"]["by"] == "key:dora" and ok[0]["data"]["via"] == "remote"
    assert ok[0]["data"]["command"] == "unlock" and ok[0]["data"]["door"] == "main"
    refused = [e for e in audit if e["data"]["result"] == "refused"]
    assert len(refused) == 6 and all(e["sev"] == "warning" for e in refused)  # the site file's refusals
    remote = [m["doc"]["data"] for m in col.of("e") if m["doc"].get("kind") == "remote" and
              m["doc"]["data"]["cmd"] == "door"]
    assert any(r["id"] == mid and r["ok"] and r["key"] == "dora" for r in remote)


async def test_missing_operation_and_panel_fault_are_clear_errors_others_unaffected(
        broker: Broker, tmp_path: Path) -> None:
    lacking = AccessPanel(tmp_path, extra=[*FAST, "--no-op", "LockDoor"]).start()
    other = AccessPanel(tmp_path, extra=FAST).start()
    try:
        site = panel_site(tmp_path, broker, {"old": lacking, "new": other})
        op = Operator(site.parent)
        async with Collector(broker.port) as col, running_agent(site) as agent:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            await online(agent, "old", "new")
            lacking.control("fail", op="UnlockDoor")
            lock_old = op.signed({"device": "old", "door": "main", "command": "lock"})
            unlock_old = op.signed({"device": "old", "door": "main", "command": "unlock"})
            unlock_new = op.signed({"device": "new", "door": "main", "command": "unlock"})
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                for _, payload in (lock_old, unlock_old, unlock_new):
                    await c.publish(f"ea/v1/{SITE}/cmd", payload, qos=1)
                a_lock, a_unlock, a_new = [await ack_of(col, mid) for mid, _ in (lock_old, unlock_old, unlock_new)]
            assert a_lock["ok"] is False
            assert "LockDoor: the panel says door 'Door_1' does not support it" in a_lock["error"], a_lock
            assert a_unlock["ok"] is False and "UnlockDoor: camera fault" not in a_unlock["error"], a_unlock
            assert "UnlockDoor: panel fault:" in a_unlock["error"], a_unlock
            assert a_new["ok"] is True and a_new["result"]["state"]["mode"] == "Unlocked"
            assert lacking.state()["doors"]["Door_1"]["mode"] == "Locked"
            assert other.state()["doors"]["Door_1"]["mode"] == "Unlocked"
            await asyncio.sleep(2.5)  # a poll cycle later: both devices still online
            assert agent.health["old"].available and agent.health["new"].available
        failed = [e["data"] for e in events(col, "old", "door_command") if e["data"]["result"] == "failed"]
        assert {f["command"] for f in failed} == {"lock", "unlock"}
        assert [c["op"] for c in lacking.stats()["door_commands"]] == ["UnlockDoor"]  # LockDoor never sent
    finally:
        lacking.stop()
        other.stop()


def door_cli(site: Path, *words: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.tools.cli", "door", "--config", str(site), *words],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60)


async def test_local_cli_door_asks_confirmation_and_is_audited(access_panel: AccessPanel, broker: Broker,
                                                               tmp_path: Path) -> None:
    site = panel_site(tmp_path, broker, {"panel": access_panel}, DOORS)
    async with Collector(broker.port) as col, running_agent(site) as agent:
        await online(agent, "panel")
        r = await asyncio.to_thread(door_cli, site, "panel", "main", "lock")  # no terminal, no --yes
        assert r.returncode == 1 and "confirmation needed" in r.stderr and "not sent" in r.stderr, r
        r = await asyncio.to_thread(door_cli, site, "panel", "staff", "lock", "--yes")
        assert r.returncode == 1 and "refused:" in r.stderr and "lock not allowed by the site file" in r.stderr, r
        assert access_panel.stats()["door_commands"] == []
        r = await asyncio.to_thread(door_cli, site, "panel", "main", "access", "--yes")
        assert r.returncode == 0, r
        assert r.stdout.startswith("panel door main: access ok") and "mode=Accessed" in r.stdout, r
        await col.wait(lambda: any(e["data"]["result"] == "ok" for e in events(col, "panel", "door_command")), 5,
                       "audit event")
    assert [c["op"] for c in access_panel.stats()["door_commands"]] == ["AccessDoor"]
    ok = next(e["data"] for e in events(col, "panel", "door_command") if e["data"]["result"] == "ok")
    assert ok["via"] == "local" and ok["by"].startswith("local:") and "(" in ok["by"]


def cli(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.tools.cli", *words], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


async def test_operator_cli_cmd_door(access_panel: AccessPanel, broker: Broker, tmp_path: Path) -> None:
    site = panel_site(tmp_path, broker, {"panel": access_panel}, DOORS)
    entries = []
    for name, roles in (("dora", "door"), ("walt", "write,ops")):
        r = await asyncio.to_thread(cli, "keys", "generate", "--name", name, "--roles", roles,
                                    "-o", str(tmp_path / f"{name}.jwk"))
        assert r.returncode == 0, r.stderr
        entries.append(json.loads(r.stdout))
    (site.parent / "operators.json").write_text(json.dumps({"keys": entries}))
    base = ["cmd", "--broker", broker.url, "--site", SITE, "--timeout", "20"]
    async with running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        await online(agent, "panel")
        r = await asyncio.to_thread(cli, *base, "--key", str(tmp_path / "walt.jwk"), "door", "panel", "main", "lock")
        assert r.returncode == 1 and "lacks the role 'door'" in r.stderr, r
        r = await asyncio.to_thread(cli, *base, "--key", str(tmp_path / "dora.jwk"), "door", "panel", "main")
        assert r.returncode == 2 and "usage: door DEVICE DOOR COMMAND" in r.stderr, r
        assert access_panel.stats()["door_commands"] == []
        r = await asyncio.to_thread(cli, *base, "--key", str(tmp_path / "dora.jwk"), "--json", "door", "panel",
                                    "main", "lock")
        assert r.returncode == 0, r
        ack = json.loads(r.stdout)
        assert ack["ok"] and ack["result"]["state"]["mode"] == "Locked" and ack["result"]["panel"] == "ok"
    assert [c["op"] for c in access_panel.stats()["door_commands"]] == ["LockDoor"]


def door_cli_on_a_terminal(site: Path, answer: str, *words: str) -> tuple[int, str]:
    """``edge-agent door`` with a terminal on stdin (a pseudo-terminal): the question is asked, ``answer`` typed."""
    import pty

    main, sub = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-m", "agent.tools.cli", "door", "--config", str(site), *words],
                             stdin=sub, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, text=True)
        os.write(main, (answer + "\n").encode())
        out, _ = p.communicate(timeout=60)
        return p.returncode, out
    finally:
        os.close(main)
        os.close(sub)


async def test_local_cli_door_on_a_terminal_sends_only_after_yes(access_panel: AccessPanel, broker: Broker,
                                                                 tmp_path: Path) -> None:
    site = panel_site(tmp_path, broker, {"panel": access_panel}, DOORS)
    async with running_agent(site) as agent:
        await online(agent, "panel")
        rc, out = await asyncio.to_thread(door_cli_on_a_terminal, site, "n", "panel", "main", "unlock")
        assert rc == 1 and "send unlock to door main of panel? [y/N]" in out and "not sent" in out, out
        assert access_panel.stats()["door_commands"] == []
        rc, out = await asyncio.to_thread(door_cli_on_a_terminal, site, "y", "panel", "main", "unlock")
        assert rc == 0 and "panel door main: unlock ok" in out, out
    assert [c["op"] for c in access_panel.stats()["door_commands"]] == ["UnlockDoor"]
