"""Topic names (docs/mqtt.md). One place, so the agent, the monitor and the tests agree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str
    site: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def birth(self) -> str:
        return f"{self.base}/birth"

    def telemetry(self, device: str) -> str:
        return f"{self.base}/t/{device}"

    def event(self, source: str) -> str:
        return f"{self.base}/e/{source}"

    @property
    def pictures(self) -> str:
        """Prefix of camera pictures: JPEG payloads, published as they are (no seq)."""
        return f"{self.base}/s/"

    def snapshot(self, device: str, ref: str) -> str:
        return f"{self.pictures}{device}/{ref}"

    def last_picture(self, device: str) -> str:
        """A camera's last picture, published retained (only for cameras configured so)."""
        return f"{self.pictures}{device}/last"

    def retained(self, topic: str) -> bool:
        """Outbox rows published retained: the last pictures."""
        return topic.startswith(self.pictures) and topic.endswith("/last")

    @property
    def command(self) -> str:
        return f"{self.base}/cmd"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"
