"""Local edits hot-reloaded (watchdog), the agent as a process: an editor-style save (write a temp file, rename
it over the profile) of a broken profile is refused with its located problems and the running configuration
keeps running; a burst of writes is one check; a good save is applied (same PID, new birth)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.peers.mosquitto import Broker

from .agentkit import ROOT, Collector, start_agent_process, write_site
from .test_write_path import cli


def editor_save(path: Path, text: str) -> None:
    """What vim/nano/VS Code do: write a sibling file, then rename it over the original."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_events(col: Collector) -> list[dict]:  # type: ignore[type-arg]
    return [m["doc"] for m in col.of("e") if m["doc"].get("kind") == "config"]


async def test_saved_edits_are_checked_broken_refused_good_applied(broker: Broker, tmp_path: Path) -> None:
    prof_dir = tmp_path / "profiles"
    prof_dir.mkdir()
    good_profile = (ROOT / "profiles" / "edge-box.yaml").read_text()
    (prof_dir / "my-box.yaml").write_text(good_profile)
    site = write_site(tmp_path, broker.url, extra="profiles_dirs: [profiles]\n",
                      devices="  - {name: box, type: my-box, interval: 0.2s}\n")
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await col.wait(lambda: any(m["doc"]["state"] == "online" for m in col.of("status")), 15, "online")
            births = len(col.of("birth"))
            # a broken profile, saved the way an editor does
            editor_save(prof_dir / "my-box.yaml", good_profile.replace("source: load1,", "source: [load1],"))
            await col.wait(lambda: len(config_events(col)) >= 1, 10, "refusal event")
            ev = config_events(col)[0]
            assert ev["data"]["result"] == "refused", ev
            assert any("my-box" in p for p in ev["data"]["problems"]), ev["data"]
            assert proc.poll() is None
            # a burst of writes is one check
            for i in range(5):
                (prof_dir / "my-box.yaml").write_text(good_profile.replace("source: load1,", f"source: [{i}],"))
                time.sleep(0.05)
            await col.wait(lambda: len(config_events(col)) >= 2, 10, "second refusal")
            time.sleep(1.5)
            assert len(config_events(col)) == 2, config_events(col)
            st = json.loads(cli("status", "--json", "-c", str(site)).stdout)  # still running the old one
            assert st["devices"]["box"]["state"] == "online" and st["agent"]["pid"] == proc.pid
            # a good edit of the site file: a second device; applied (re-exec, same PID), new birth
            editor_save(site, site.read_text() + "  - {name: box2, type: edge-box, interval: 1s}\n")
            editor_save(prof_dir / "my-box.yaml", good_profile)
            await col.wait(lambda: any("box2" in m["doc"].get("devices", {}) for m in col.of("birth")[births:]), 20,
                           "birth with box2")
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(10)
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log
    assert "a local edit was saved" in log


async def test_a_saved_edit_that_breaks_a_device_is_rolled_back_by_the_health_gate(
        broker: Broker, modbus_sim: Callable[..., int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, each restart done as `run` does it (resolve the version, then a new Agent)."""
    from agent.config import load_site
    from agent.core import pushing
    from agent.core.app import Agent
    from agent.core.configstore import resolve

    monkeypatch.setattr(pushing, "DEFAULT_WINDOW", 3.0)
    port = modbus_sim("remeha-gtw08:4")
    dev = (f"  - {{name: boiler, type: remeha-gtw08, interval: 0.3s, timeout: 0.5s, retries: 0, "
           f"connection: {{host: 127.0.0.1, port: {port}, unit: 4}}}}\n")
    site = write_site(tmp_path, broker.url, devices=dev)
    good = site.read_text()

    async def run_once(until: Callable[[Agent], bool], edit: Callable[[], None] | None = None) -> Agent:
        path, name = resolve(tmp_path / "state", site)
        agent = Agent(load_site(path, strict=False), version=name, base_file=str(site))
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(20):
                while not until(agent) and not task.done():
                    if edit is not None and agent.health["boiler"].available:
                        edit()
                        edit = None
                    await asyncio.sleep(0.05)
        finally:
            agent.stop_event.set()
            await asyncio.wait_for(task, 20)
        return agent

    async with Collector(broker.port) as col:
        a1 = await run_once(lambda a: a.restart, lambda: editor_save(site, good.replace(f"port: {port}", "port: 9")))
        assert a1.restart and a1.pusher.running == "base"  # the edit was valid: applied by a restart
        a2 = await run_once(lambda a: a.restart)  # runs the edit; the gate fails within 3 s: rolled back
        assert a2.pusher.running == "base" and a2.pusher.gate_state == "failed"
        a3 = await run_once(lambda a: a.health["boiler"].available)  # what ran before the edit, from the store
        assert a3.pusher.running.startswith("0001-") and a3.health["boiler"].available
        await col.wait(lambda: any(e["data"].get("result") == "rolled_back" for e in config_events(col)), 10,
                       "rolled_back event")
        ev = next(e for e in config_events(col) if e["data"].get("result") == "rolled_back")
        assert ev["data"]["local"] is True and "boiler" in ev["data"]["reason"]
    assert site.read_text() != good  # the technician's file is left as saved; the box says what it runs
