"""Snapshots: fetch the camera's JPEG, downscale and bound it, rate-limited per camera.

The picture goes on its own topic (``<prefix>/<site>/s/<device>/<ref>``, docs/mqtt.md), ``ref`` being the id
of the event that asked for it (or of the command). Decoding and re-encoding run in a worker thread: a 4K
JPEG takes tens of milliseconds that the event loop must not lose.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from typing import Any

from agent.errors import DeviceBusy, DriverError, ProtocolError

from . import OnvifSnapshots
from .session import CameraSession, DeviceAuthFailed

log = logging.getLogger(__name__)


def shrink(jpeg: bytes, width: int, quality: int, max_bytes: int) -> bytes:
    """The picture at most ``width`` wide, re-encoded at ``quality`` or lower until it fits ``max_bytes``."""
    from PIL import Image, UnidentifiedImageError

    try:
        opened = Image.open(io.BytesIO(jpeg))
        opened.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ProtocolError(f"snapshot: the camera sent no readable picture ({len(jpeg)} bytes)") from exc
    img: Image.Image = opened.convert("RGB")
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.Resampling.LANCZOS)
    q = quality
    while True:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q, optimize=True)
        out = buf.getvalue()
        if len(out) <= max_bytes:
            return out
        if q > 30:
            q = max(30, q - 15)
        elif img.width > 32:
            img = img.resize((max(16, img.width * 3 // 4), max(1, img.height * 3 // 4)), Image.Resampling.LANCZOS)
        else:
            raise ProtocolError(f"snapshot: cannot fit the picture in {max_bytes} bytes")


class Snapshotter:
    def __init__(self, session: CameraSession, cfg: OnvifSnapshots) -> None:
        self.session, self.cfg = session, cfg
        self.last = 0.0  # monotonic time of the last fetch
        self.basic: bool | None = {"auto": None, "digest": False, "basic": True}[cfg.auth]
        self.taken = 0
        self.skipped = 0
        self._lock = asyncio.Lock()

    def ready(self) -> bool:
        return self.cfg.enabled and time.monotonic() - self.last >= self.cfg.min_interval

    async def _fetch(self, token: str, basic: bool) -> bytes | None:
        cam: Any = self.session.raw()
        budget = self.session.timeout * 2
        data: bytes | None = await self.session.call(
            "snapshot", cam.get_snapshot(token, basic_auth=basic, timeout=budget), budget + 1)
        return data

    async def take(self, ref: str | None = None) -> tuple[str, bytes]:
        """Fetch, shrink and return (ref, jpeg). DeviceBusy when rate-limited, DriverError when it failed."""
        if not self.cfg.enabled:
            raise DeviceBusy("snapshots are disabled in the camera's profile")
        async with self._lock:
            wait = self.cfg.min_interval - (time.monotonic() - self.last)
            if wait > 0:
                self.skipped += 1
                raise DeviceBusy(f"snapshot rate limit: next one in {wait:.0f} s")
            self.last = time.monotonic()
            stream = self.session.stream(self.cfg.stream)
            if stream is None:
                await self.session.streams()
                stream = self.session.stream(self.cfg.stream)
            if stream is None:
                raise ProtocolError("snapshot: the camera has no media profile")
            basic = bool(self.basic)
            try:
                raw = await self._fetch(stream.token, basic)
            except DeviceAuthFailed:
                if self.basic is not None:
                    raise
                basic = True
                raw = await self._fetch(stream.token, basic)  # digest refused: the camera may want basic
            if not raw:
                raise ProtocolError("snapshot: the camera offers no snapshot (no URI, or an HTTP error)")
            self.basic = basic
            jpeg = await asyncio.to_thread(shrink, raw, self.cfg.width, self.cfg.quality, self.cfg.max_bytes)
            self.taken += 1
            return ref or secrets.token_hex(8), jpeg


class SnapshotQueue:
    """Event-driven snapshots: at most one waiting per camera (later ones are skipped and counted)."""

    def __init__(self, device: str, snap: Snapshotter, publish: Any) -> None:
        self.device, self.snap, self.publish = device, snap, publish
        self.queue: asyncio.Queue[str] = asyncio.Queue(1)
        self._warned = False

    def offer(self, kind: str, ref: str) -> bool:
        """Queue a snapshot for this event; False when not wanted, rate-limited or one is already waiting."""
        if kind not in self.snap.cfg.kinds or not self.snap.ready():
            return False
        try:
            self.queue.put_nowait(ref)
        except asyncio.QueueFull:
            self.snap.skipped += 1
            return False
        return True

    async def run(self) -> None:
        while True:
            ref = await self.queue.get()
            try:
                ref, jpeg = await self.snap.take(ref)
            except DeviceBusy:
                continue
            except DriverError as exc:
                if not self._warned:
                    log.warning("%s: snapshot failed: %s", self.device, exc)
                    self._warned = True
                continue
            self._warned = False
            self.publish(self.device, ref, jpeg, self.snap.cfg.retain)
