"""The versioned configuration store under the state directory (docs/remote.md, "Configuration push"):

    <state_dir>/config/versions/<NNNN>-<hash12>/site.yaml (+ profiles/*.yaml, meta.json)
    <state_dir>/config/current      the running version's name, or "base" (the provisioned site file)
    <state_dir>/config/trial.json   a push under its health gate: id, version, previous, devices to expect
    <state_dir>/config/rollback.json a rollback to acknowledge (why, from which version)

Crash safety: a version is written whole (every file fsynced, then the folder renamed into place, the parent
fsynced) before ``current`` is replaced by an atomic rename. After a ``kill -9`` or a power loss at any point,
``current`` names the old or the new version, each complete: never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.remote.trust import write_atomic

log = logging.getLogger("edge_agent.config")

BASE = "base"
KEEP = 5  # versions kept (besides the current and the previous one)
FILE_RE = re.compile(r"^(site\.yaml|profiles/[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.yaml|operators\.json)$")
MAX_FILES = 200
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def bundle_hash(files: dict[str, str]) -> str:
    """sha256 over the files in name order (name, NUL, content, NUL): what the operator's tool computes too."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Version:
    name: str
    label: str
    hash: str
    ts: float
    push_id: str | None

    @property
    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "hash": self.hash, "ts": self.ts, "push_id": self.push_id}


class ConfigStore:
    def __init__(self, state_dir: Path, base_file: Path) -> None:
        self.root = state_dir / "config"
        self.versions = self.root / "versions"
        self.base_file = base_file

    # ------------------------------------------------------------------------------ pointers

    def current(self) -> str:
        try:
            name = (self.root / "current").read_text().strip()
        except FileNotFoundError:
            return BASE
        except OSError as exc:
            log.error("config: cannot read %s: %s; running the provisioned site file", self.root / "current", exc)
            return BASE
        return name if name == BASE or (self.versions / name / "site.yaml").is_file() else BASE

    def switch(self, name: str) -> None:
        """The one atomic step of an apply or a rollback."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "current", name.encode() + b"\n", mode=0o644)

    def site_file(self, name: str) -> Path:
        return self.base_file if name == BASE else self.versions / name / "site.yaml"

    def read_json(self, what: str) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.root / what).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("config: %s unreadable (%s): ignored", self.root / what, exc)
            return None
        return doc if isinstance(doc, dict) else None

    def write_json(self, what: str, doc: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / what, json.dumps(doc).encode())

    def remove(self, what: str) -> None:
        try:
            (self.root / what).unlink()
            _fsync_dir(self.root)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------------------ versions

    def stage(self, files: dict[str, str], push_id: str) -> Path:
        """The files written (fsynced) into a staging folder that ``commit`` renames into place."""
        self.versions.mkdir(parents=True, exist_ok=True)
        stage = self.versions / f".stage-{re.sub(r'[^A-Za-z0-9_-]', '_', push_id)[:64]}"
        shutil.rmtree(stage, ignore_errors=True)
        for name, text in files.items():
            path = stage / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        for d in {stage, *(stage / n for n in {str(Path(f).parent) for f in files} if n != ".")}:
            _fsync_dir(d)
        return stage

    def commit(self, stage: Path, label: str, digest: str, push_id: str | None) -> Version:
        existing = sorted(self._names())
        n = int(existing[-1].split("-", 1)[0]) + 1 if existing else 1
        v = Version(f"{n:04d}-{digest[:12]}", label, digest, round(time.time(), 3), push_id)
        meta = stage / "meta.json"
        stored = bundle_hash(read_files(stage))  # what is on disk, carried-over files included
        write_atomic(meta, json.dumps({**v.doc, "stored": stored}).encode(), mode=0o640)
        os.replace(stage, self.versions / v.name)
        _fsync_dir(self.versions)
        return v

    def discard(self, stage: Path) -> None:
        shutil.rmtree(stage, ignore_errors=True)

    def _names(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return [p.name for p in self.versions.iterdir() if re.match(r"^\d{4}-[0-9a-f]{12}$", p.name)]

    def version(self, name: str) -> Version | None:
        if name == BASE:
            return Version(BASE, "provisioned", file_hash(self.base_file), 0.0, None)
        try:
            doc = json.loads((self.versions / name / "meta.json").read_bytes())
            return Version(name, str(doc.get("label", "")), str(doc.get("hash", "")), float(doc.get("ts", 0.0)),
                           doc.get("push_id"))
        except (OSError, ValueError, TypeError):
            return None

    def history(self) -> list[Version]:
        out = [v for v in (self.version(n) for n in sorted(self._names())) if v is not None]
        return out

    def prune(self, keep: set[str]) -> None:
        names = sorted(self._names())
        for n in names[:-KEEP] if len(names) > KEEP else []:
            if n not in keep:
                shutil.rmtree(self.versions / n, ignore_errors=True)
        for p in self.versions.glob(".stage-*") if self.versions.is_dir() else []:
            shutil.rmtree(p, ignore_errors=True)


def read_files(folder: Path) -> dict[str, str]:
    """The bundle files of a version folder (meta.json aside)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != "meta.json":
            out[rel] = p.read_text()
    return out


def file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def resolve(state_dir: Path, base_file: Path) -> tuple[Path, str]:
    """At start: the site file to run (the current version's, else the provisioned one) and its name. A trial
    whose process started too often without passing its gate (a crash loop) is rolled back here."""
    store = ConfigStore(state_dir, base_file)
    trial = store.read_json("trial.json")
    name = store.current()
    if trial is not None and trial.get("version") == name:
        starts = int(trial.get("starts", 0)) + 1
        if starts > MAX_TRIAL_STARTS:
            prev = str(trial.get("previous", BASE))
            reason = f"the agent restarted {starts - 1} times under the health gate of {name}"
            log.error("config: %s: rolling back to %s", reason, prev)
            store.write_json("rollback.json", {"id": trial.get("id"), "from": name, "to": prev, "reason": reason})
            store.switch(prev)
            store.remove("trial.json")
            name = prev
        else:
            store.write_json("trial.json", {**trial, "starts": starts})
    return store.site_file(name), name


MAX_TRIAL_STARTS = 3


def fail_version(state_dir: Path, base_file: Path, name: str, reason: str) -> tuple[Path, str]:
    """The version ``name`` cannot run: back to the one before it (the trial's previous, else the provisioned
    file), with a rollback to acknowledge. Returns what to run now."""
    store = ConfigStore(state_dir, base_file)
    trial = store.read_json("trial.json") or {}
    prev = str(trial.get("previous", BASE)) if trial.get("version") == name else BASE
    store.write_json("rollback.json", {"id": trial.get("id"), "from": name, "to": prev,
                                       "reason": f"the version does not load: {reason}"[:500]})
    store.switch(prev)
    store.remove("trial.json")
    return store.site_file(prev), prev
