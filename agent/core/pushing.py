"""Configuration pushes (docs/remote.md): a signed bundle validated with the validator of ``edge-agent
validate``, written whole into the versioned store, switched to atomically and run (re-exec), then held to a
health gate: every device online before the push (and still configured) online again and the uplink connected
within the window, else an automatic rollback to the previous version. Acks name the version and its hash."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.config import Site
from agent.core.configstore import BASE, FILE_RE, LABEL_RE, MAX_FILES, ConfigStore, bundle_hash, file_hash
from agent.errors import ConfigError
from agent.model import DeviceHealth, Event, Severity
from agent.remote.chunks import ChunkError, ChunkStore
from agent.remote.envelope import Refused, Signed
from agent.remote.trust import TRUST_FILE, TrustStore, trust_path

log = logging.getLogger("edge_agent.config")

DEFAULT_WINDOW = 60.0
MIN_WINDOW, MAX_WINDOW = 5.0, 3600.0
MAX_BUNDLE_CHARS = 1024 * 1024
GATE_POLL = 0.25
RESTART_DELAY = 0.2  # s between the "accepted" ack and the re-exec (the ack is stored first)

Ack = Callable[..., bool]


class Pusher:
    def __init__(self, site: Site, running: str, base_file: Path, health: dict[str, DeviceHealth],
                 uplink_up: Callable[[], bool], ack: Ack, event: Callable[[Event], None],
                 restart: Callable[[], None], flush: Callable[[], Awaitable[None]]) -> None:
        self.site = site
        self.store = ConfigStore(site.state_dir, base_file)
        self.running = running  # the name of the version this process runs
        self.health = health
        self.uplink_up = uplink_up
        self.ack = ack
        self.event = event
        self.restart = restart
        self.flush = flush
        self.busy: str | None = None  # the id of a push being applied
        v = self.store.version(running)
        self.hash = v.hash if v is not None else file_hash(Path(site.file))
        self.gate_state: str | None = None
        self.chunks = ChunkStore()
        self._restarting: asyncio.Task[None] | None = None

    def info(self) -> dict[str, Any]:
        v = self.store.version(self.running)
        return {"version": self.running, "hash": self.hash, "label": v.label if v else None,
                "gate": self.gate_state}

    # ------------------------------------------------------------------------------------ a push

    async def push(self, s: Signed) -> dict[str, Any]:
        args = await self._unchunk(s) if "chunks" in s.args else s.args
        files, label, window = self._bundle(args)
        digest = bundle_hash(files)
        if "hash" in args and args["hash"] != digest:
            raise Refused(f"content hash mismatch: the bundle hashes to {digest}, the message says "
                          f"{str(args['hash'])[:64]}")
        if self.busy is not None:
            raise Refused(f"another push ({self.busy}) is being applied; try again when it is acknowledged")
        trial = self.store.read_json("trial.json")
        if trial is not None:
            raise Refused(f"push {trial.get('id')} is still under its health gate; try again when it is acknowledged")
        self.busy = s.id
        try:
            return await self._apply(s, files, label, digest, window)
        finally:
            self.busy = None

    async def _unchunk(self, s: Signed) -> dict[str, Any]:
        """A bundle in parts: ``chunks`` (how many) and ``chunks_hash`` (sha256 of their text joined) are signed;
        the parts (``push-chunk`` commands) carry the JSON text of ``files``."""
        of, digest = s.args.get("chunks"), s.args.get("chunks_hash")
        if not (isinstance(of, int) and not isinstance(of, bool) and isinstance(digest, str)):
            raise Refused("args.chunks (a count) and args.chunks_hash (sha256) are needed for a chunked bundle")
        try:
            text = await self.chunks.assemble(s.id, of, digest)
        except ChunkError as exc:
            raise Refused(f"chunked bundle: {exc}") from None
        try:
            files = json.loads(text)
        except ValueError as exc:
            raise Refused(f"chunked bundle: not JSON: {exc}"[:200]) from None
        return {**{k: v for k, v in s.args.items() if k not in ("chunks", "chunks_hash")}, "files": files}

    def _bundle(self, args: dict[str, Any]) -> tuple[dict[str, str], str, float]:
        files = args.get("files")
        if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
            raise Refused(f"args.files must be an object of 1-{MAX_FILES} files (name: text)")
        total = 0
        for name, text in files.items():
            if not (isinstance(name, str) and FILE_RE.match(name)):
                raise Refused(f"args.files: {str(name)[:80]!r} is not a bundle file name (site.yaml, "
                              "profiles/NAME.yaml, operators.json)")
            if not isinstance(text, str):
                raise Refused(f"args.files.{name}: the file's text is needed")
            total += len(text)
        if total > MAX_BUNDLE_CHARS:
            raise Refused(f"bundle too large: {total} characters (max {MAX_BUNDLE_CHARS})")
        label = args.get("version", "")
        if not (isinstance(label, str) and LABEL_RE.match(label)):
            raise Refused("args.version: a label of 1-64 letters, digits, '.', '_', '+' or '-' is needed")
        window = args.get("health_window", DEFAULT_WINDOW)
        number = isinstance(window, int | float) and not isinstance(window, bool)
        if not (number and MIN_WINDOW <= window <= MAX_WINDOW):
            raise Refused(f"args.health_window must be {MIN_WINDOW:g}-{MAX_WINDOW:g} seconds")
        return dict(files), label, float(window)

    async def _apply(self, s: Signed, files: dict[str, str], label: str, digest: str,
                     window: float) -> dict[str, Any]:
        files = await asyncio.to_thread(self._complete, files)
        stage = await asyncio.to_thread(self.store.stage, files, s.id)
        try:
            problems = await asyncio.to_thread(self._validate, stage)
        except BaseException:
            self.store.discard(stage)
            raise
        if problems:
            self.store.discard(stage)
            cut = [p.replace(str(stage) + "/", "") for p in problems]
            raise Refused("invalid bundle: " + "; ".join(cut[:10]) + (f" (+{len(cut) - 10} more)" if len(cut) > 10
                                                                        else ""))
        v = await asyncio.to_thread(self.store.commit, stage, label, digest, s.id)
        expect = sorted(n for n, h in self.health.items() if h.available)
        self.store.write_json("trial.json", {"id": s.id, "version": v.name, "previous": self.running,
                                             "hash": digest, "label": label, "window": window, "expect": expect,
                                             "starts": 0, "applied_acked": False, "ts": time.time()})
        self.store.switch(v.name)  # the switch: from here a restart runs the new version
        log.info("config: push %s by %s: version %s (%s) switched to; restarting with it", s.id, s.key, v.name,
                 label)
        # after this task has queued the "accepted" ack and the flusher has stored it (flush_now), so the ack
        # is in the outbox before the process re-executes itself
        self._restarting = asyncio.get_running_loop().create_task(self._restart_soon(), name="config:restart")
        return {"state": "accepted", "version": v.name, "label": label, "hash": digest, "previous": self.running,
                "health_window": window, "expect_online": expect}

    async def _restart_soon(self) -> None:
        await asyncio.sleep(RESTART_DELAY)
        await self.flush()
        self.restart()

    def _complete(self, files: dict[str, str]) -> dict[str, str]:
        """What the bundle leaves out carries over from the running version: the site file, the trust file
        (keys are replaced only by a push that names operators.json), the running version's own profiles."""
        files = dict(files)
        if "site.yaml" not in files:
            files["site.yaml"] = Path(self.site.file).read_text()
        if TRUST_FILE not in files:
            try:
                files[TRUST_FILE] = trust_path(self.site.file).read_text()
            except FileNotFoundError:
                pass
        if self.running != BASE:
            for p in sorted(Path(self.site.file).parent.glob("profiles/*.yaml")):
                files.setdefault(f"profiles/{p.name}", p.read_text())
        return files

    def _validate(self, stage: Path) -> list[str]:
        """Exactly ``edge-agent validate``'s checks, plus what a push must keep: the site id, the state dir
        (where this store lives), and at least one key that can push again."""
        from agent.core.sitechecks import load_site_checked

        try:
            new = load_site_checked(stage / "site.yaml", strict=True)
        except ConfigError as exc:
            return [str(p) for p in exc.problems]
        problems = [str(p) for p in new.problems]  # any problem refuses a push (a broken profile too)
        if new.id != self.site.id:
            problems.append(f"site.yaml: site.id: {new.id!r}: a push cannot change the site id ({self.site.id!r})")
        if new.state_dir.resolve() != self.site.state_dir.resolve():
            problems.append(f"site.yaml: state_dir: {new.state_dir}: a push cannot move the state directory "
                            f"({self.site.state_dir})")
        try:
            trust = TrustStore.load(stage / TRUST_FILE)
        except ConfigError as exc:
            problems.extend(str(p) for p in exc.problems)
        else:
            if not any("config" in k.roles and not trust.is_revoked(k.name) for k in trust.keys.values()):
                problems.append(f"{TRUST_FILE}: no usable key with the role 'config' would be left: the box could "
                                "never be pushed to again")
        return problems

    # ------------------------------------------------------------------------------ at start: acks, gate

    def local_trial(self, before: dict[str, str]) -> None:
        """A local edit of the provisioned files is being applied: what ran before it is stored as a version
        (site file, trust file, site-local profiles/) and the edit is held to the same health gate, with that
        version to fall back to. No acks (nobody upstream asked); ``config`` events say what happened."""
        stage = self.store.stage(before, f"local-{int(time.time())}")
        v = self.store.commit(stage, "before-local-edit", bundle_hash(before), None)
        expect = sorted(n for n, h in self.health.items() if h.available)
        self.store.write_json("trial.json", {"id": None, "local": True, "version": BASE, "previous": v.name,
                                             "hash": "", "label": "local edit", "window": DEFAULT_WINDOW,
                                             "expect": expect, "starts": 0, "applied_acked": True,
                                             "ts": time.time()})
        log.info("config: local edit applied under a %g s health gate; %s keeps what ran before", DEFAULT_WINDOW,
                 v.name)

    def _answer(self, doc: dict[str, Any], ok: bool, **kw: Any) -> None:
        if not doc.get("local"):
            self.ack(doc.get("id"), ok, cmd="push", **kw)

    async def resume(self) -> None:
        """Acknowledge what a previous process left (a rollback), and hold a pending push to its gate."""
        rb = self.store.read_json("rollback.json")
        if rb is not None:
            reason = str(rb.get("reason", ""))[:150]
            self._answer(rb, False, error=f"rolled back to {rb.get('to')}: {reason}",
                         result={"state": "rolled_back", "from": rb.get("from"), "to": rb.get("to"), "reason": reason,
                             "running": self.running, "hash": self.hash})
            self.event(Event("agent", "config", {"result": "rolled_back", **rb}, Severity.ALARM))
            await self.flush()
            self.store.remove("rollback.json")
        trial = self.store.read_json("trial.json")
        if trial is None:
            return
        if trial.get("version") != self.running:  # died between writing the trial and the switch
            self._answer(trial, False, error=f"interrupted before the switch; running {self.running}",
                         result={"state": "interrupted", "running": self.running, "hash": self.hash})
            await self.flush()
            self.store.remove("trial.json")
            return
        if not trial.get("applied_acked"):
            self.ack(trial.get("id"), True, cmd="push",
                     result={"state": "applied", "version": self.running, "hash": self.hash,
                             "label": trial.get("label"), "health_window": trial.get("window")})
            await self.flush()
            trial["applied_acked"] = True
            self.store.write_json("trial.json", trial)
        await self._gate(trial)

    async def _gate(self, trial: dict[str, Any]) -> None:
        window = float(trial.get("window", DEFAULT_WINDOW))
        expect = [n for n in trial.get("expect", []) if n in self.health]  # still configured
        self.gate_state = "pending"
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            if self.uplink_up() and all(self.health[n].available for n in expect):
                self.gate_state = "passed"
                self._answer(trial, True,
                             result={"state": "healthy", "version": self.running, "hash": self.hash,
                                 "online": expect})
                self.event(Event("agent", "config", {"result": "applied", "version": self.running,
                                                     "hash": self.hash, "id": trial.get("id"),
                                                     "local": bool(trial.get("local"))}, Severity.INFO))
                await self.flush()
                self.store.remove("trial.json")
                self.store.prune({self.running, str(trial.get("previous"))})
                return
            await asyncio.sleep(GATE_POLL)
        bad = [f"{n}: {self.health[n].state} ({self.health[n].last_error or 'no error'})"
               for n in expect if not self.health[n].available]
        if not self.uplink_up():
            bad.append("uplink not connected")
        reason = f"health gate failed after {window:g} s: " + "; ".join(bad)
        prev = str(trial.get("previous", BASE))
        log.error("config: %s; rolling back from %s to %s", reason, self.running, prev)
        self.gate_state = "failed"
        self.store.write_json("rollback.json", {"id": trial.get("id"), "from": self.running, "to": prev,
                                                "reason": reason[:500], "local": bool(trial.get("local"))})
        self.store.switch(prev)
        self.store.remove("trial.json")
        self.restart()

