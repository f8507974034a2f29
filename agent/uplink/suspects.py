"""Rows the broker refuses by dropping the connection.

With MQTT 3.1.1 a broker cannot refuse one QoS 1 message: it acknowledges it or closes the connection (a
packet over its ``max_packet_size``, a topic its ACL or a plugin rejects with a disconnect). Such a row
comes back first after every reconnect (events go first) and blocks the queue forever. So a row whose
publish failed is a *suspect*. A suspect is published alone, once the session has been up for ``SETTLE``
seconds; it is blamed only when the connection is lost within ``QUICK`` seconds of that publish, and set
aside like a row the client refuses after ``LIMIT`` such failures. A link that drops for other reasons
(flapping, another client taking over the session) does not drop at those moments each time, so it does
not get innocent rows set aside.
"""

from __future__ import annotations

from agent.outbox import Stored

LIMIT = 2
SETTLE = 2.0
QUICK = 1.0
_MAX_TRACKED = 1000


class Suspects:
    """Failed-publish counts per seq; decides what the next batch may contain."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._fails: dict[int, int] = {}

    def failed(self, seq: int, *, blamed: bool) -> None:
        """The publish of ``seq`` failed; ``blamed``: it was alone in flight and the loss came at once."""
        if len(self._fails) >= _MAX_TRACKED:
            self._fails.clear()  # bounded: a long outage fails many rows; they start over
        self._fails[seq] = self._fails.get(seq, 0) + (1 if blamed else 0)

    def is_suspect(self, seq: int) -> bool:
        return seq in self._fails

    def delivered(self, seqs: list[int]) -> None:
        for s in seqs:
            self._fails.pop(s, None)

    def forget(self, seq: int) -> None:
        self._fails.pop(seq, None)

    def split(self, rows: list[Stored]) -> tuple[list[Stored], list[Stored], Stored | None]:
        """(rows to publish now, rows to hand back, a row to set aside).

        Without suspects the batch goes as it is. Otherwise the first suspect goes alone, so that a failure
        can be blamed on it, and everything else waits; once it has failed ``limit`` times it is set aside.
        """
        suspect = next((r for r in rows if r.seq in self._fails), None)
        if suspect is None:
            return rows, [], None
        others = [r for r in rows if r is not suspect]
        if self._fails[suspect.seq] >= self.limit:
            return [], others, suspect
        return [suspect], others, None

    def count(self, seq: int) -> int:
        return self._fails.get(seq, 0)
