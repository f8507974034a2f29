"""`edge-agent monitor` prints telemetry decoded even when it arrives before the birth of its generation (the
broker may deliver a live message before the retained birth right after the monitor subscribes)."""

from __future__ import annotations

import json

from agent.model import Sample
from agent.tools.monitor import Decoder, Holder
from agent.uplink.codec import encode_samples, frame

PREFIX = "ea/v1"
BIRTH = {"gen": 7, "devices": {"cam": {"points": [{"a": 0, "n": "online"}, {"a": 1, "n": "model"}]}}}


def _telemetry(seq: int, gen: int = 7) -> bytes:
    samples = [Sample("cam", "online", True, ts=1.0), Sample("cam", "model", "EA-CAM-1", ts=1.0)]
    return frame(seq, encode_samples(samples, {"online": 0, "model": 1}, gen))


def test_telemetry_before_its_birth_waits_for_it_and_is_printed_decoded() -> None:
    h = Holder(Decoder(), PREFIX)
    assert h.take(f"{PREFIX}/s1/t/cam", _telemetry(1), now=0.0) == []  # held: gen 7 not seen yet
    out = h.take(f"{PREFIX}/s1/birth", json.dumps(BIRTH).encode(), now=0.5)
    assert [m["kind"] for m in out] == ["birth", "t"]
    assert {s["point"]: s["value"] for s in out[1]["samples"]} == {"online": True, "model": "EA-CAM-1"}
    assert out[1]["known_gen"] is True and out[1]["seq"] == 1
    # once the generation is known, telemetry is printed at once
    out = h.take(f"{PREFIX}/s1/t/cam", _telemetry(2), now=1.0)
    assert [m["seq"] for m in out] == [2] and out[0]["samples"][1]["point"] == "model"


def test_a_birth_that_never_comes_does_not_hold_messages_forever() -> None:
    h = Holder(Decoder(), PREFIX, hold=5.0)
    assert h.take(f"{PREFIX}/s1/t/cam", _telemetry(1, gen=9), now=0.0) == []
    out = h.take(f"{PREFIX}/s1/status", b'{"online": true}', now=6.0)  # the next message, after the hold
    assert [m["kind"] for m in out] == ["t", "status"]
    assert out[0]["known_gen"] is False and out[0]["samples"][0]["point"] == "#0"  # as well as it can
    assert h.take(f"{PREFIX}/s1/t/cam", _telemetry(2, gen=9), now=6.5) == []
    [left] = h.expired(7.0, everything=True)  # what is held when the monitor stops is printed too
    assert left["seq"] == 2
