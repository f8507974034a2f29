"""Chunks of a configuration bundle larger than one message (docs/remote.md): unsigned ``push-chunk`` commands
carry the parts, the signed ``push`` names how many there are and their sha256, so a chunk cannot be forged or
swapped. Held in memory, bounded in count, size and age."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

MAX_CHUNKS = 64
MAX_TOTAL = 4 * 1024 * 1024  # characters of all parts held at once
MAX_PUSHES = 4  # bundles being assembled at once
CHUNK_TTL = 120.0  # s a part waits for its push
WAIT = 30.0  # s a signed push waits for its missing parts


class ChunkError(Exception):
    pass


@dataclass
class _Parts:
    of: int
    parts: dict[int, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


class ChunkStore:
    def __init__(self) -> None:
        self.pushes: dict[str, _Parts] = {}
        self.arrived = asyncio.Event()

    def _expire(self) -> None:
        now = time.monotonic()
        for k in [k for k, p in self.pushes.items() if now - p.at > CHUNK_TTL]:
            del self.pushes[k]

    def add(self, args: dict[str, Any]) -> None:
        """One part; ChunkError with why it is not kept."""
        push, n, of, data = args.get("push"), args.get("n"), args.get("of"), args.get("data")
        if not (isinstance(push, str) and 1 <= len(push) <= 64 and push.isprintable()):
            raise ChunkError("args.push must name the push's id (1-64 printable characters)")
        if not (isinstance(of, int) and 2 <= of <= MAX_CHUNKS and isinstance(n, int) and 0 <= n < of):
            raise ChunkError(f"args.n and args.of: part n (0-based) of 2-{MAX_CHUNKS}")
        if not isinstance(data, str):
            raise ChunkError("args.data must be text")
        self._expire()
        p = self.pushes.get(push)
        if p is None:
            if len(self.pushes) >= MAX_PUSHES:
                raise ChunkError(f"at most {MAX_PUSHES} chunked pushes are assembled at once")
            p = self.pushes[push] = _Parts(of)
        if p.of != of:
            raise ChunkError(f"push {push}: {of} parts announced, {p.of} before")
        held = sum(len(x) for q in self.pushes.values() for x in q.parts.values())
        if held + len(data) > MAX_TOTAL:
            raise ChunkError(f"chunks over {MAX_TOTAL} characters held at once")
        p.parts[n] = data
        self.arrived.set()

    async def assemble(self, push: str, of: int, digest: str, wait: float | None = None) -> str:
        """The bundle text once every part is in and its sha256 is the signed one; ChunkError otherwise."""
        wait = WAIT if wait is None else wait
        deadline = time.monotonic() + wait
        while True:
            p = self.pushes.get(push)
            have = p.parts if p is not None and p.of == of else {}
            if len(have) == of:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [i for i in range(of) if i not in have]
                self.pushes.pop(push, None)
                raise ChunkError(f"missing chunk(s) {', '.join(map(str, missing[:10]))} of {of} after {wait:g} s")
            self.arrived.clear()
            try:
                async with asyncio.timeout(min(left, 1.0)):
                    await self.arrived.wait()
            except TimeoutError:
                pass
        text = "".join(have[i] for i in range(of))
        self.pushes.pop(push, None)
        if hashlib.sha256(text.encode()).hexdigest() != digest:
            raise ChunkError("the chunks do not hash to the signed chunks_hash")
        return text
