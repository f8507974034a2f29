"""The ids of signed messages already obeyed, kept until they expire: a replayed message is refused, also after a
restart. Bounded: at most ``MAX_IDS`` live ids; when full (a flood of valid signed messages, which only an
operator key can produce) new messages are refused rather than an unexpired id forgotten."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from agent.remote.trust import write_atomic

log = logging.getLogger("edge_agent.remote")

MAX_IDS = 10_000


class ReplayFull(Exception):
    pass


class ReplayRecord:
    def __init__(self, path: Path, now: float | None = None) -> None:
        self.path = path
        self.ids: dict[str, float] = {}  # id -> when it may be forgotten (its expiry plus the tolerated skew)
        self.barrier = 0.0  # messages issued before this are refused (the record was lost then)
        self._load(time.time() if now is None else now)

    def _load(self, now: float) -> None:
        try:
            doc = json.loads(self.path.read_bytes())
            if not isinstance(doc, dict) or not isinstance(doc.get("ids"), dict):
                raise ValueError("not a replay record")
            self.ids = {str(k): float(v) for k, v in doc["ids"].items() if isinstance(v, int | float)}
            self.barrier = float(doc.get("barrier", 0.0))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError) as exc:
            # An unreadable record must not open the door to replays: the ids are unknown, so every message
            # issued before now is refused (they expire within MAX_LIFETIME anyway).
            log.error("replay record %s unreadable (%s): messages issued before now are refused", self.path, exc)
            self.barrier = now
            try:  # kept, so that the barrier is not moved later by the next restart
                self._save()
            except OSError as exc2:
                log.error("replay record %s cannot be rewritten: %s", self.path, exc2)

    def seen(self, mid: str, iat: float) -> bool:
        return iat < self.barrier or mid in self.ids

    def remember(self, mid: str, until: float, now: float | None = None) -> None:
        """Record ``mid`` durably (fsync) before the message is obeyed: a crash after this point never lets the
        same message run twice."""
        now = time.time() if now is None else now
        self.ids = {k: v for k, v in self.ids.items() if v > now}
        if len(self.ids) >= MAX_IDS:
            raise ReplayFull(f"replay record full ({MAX_IDS} unexpired ids): try again when older ones expire")
        self.ids[mid] = until
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"v": 1, "barrier": self.barrier, "ids": self.ids}
        write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode())

    def __len__(self) -> int:
        return len(self.ids)
