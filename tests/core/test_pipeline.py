"""Report-by-exception: deadbands, quality changes, heartbeat, batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_site
from agent.core.pipeline import Pipeline, changed_enough
from agent.model import Quality, Sample
from agent.uplink.codec import decode_telemetry, frame


@pytest.mark.parametrize(
    ("prev", "new", "db", "expect"),
    [
        (10.0, 10.4, (0.5, False), False),
        (10.0, 10.5, (0.5, False), True),
        (10.0, 9.4, (0.5, False), True),
        (200.0, 203.0, (2.0, True), False),  # 2 % of 200 = 4
        (200.0, 204.0, (2.0, True), True),
        (1.0, 1.0000001, None, True),
        (1.0, 1.0, None, False),
        (True, False, (5.0, False), True),
        ("a", "a", None, False),
        (float("nan"), float("nan"), None, False),
        (0.0, 0.01, (1.0, True), True),  # % of zero: any change
    ],
)
def test_changed_enough(prev: object, new: object, db: tuple[float, bool] | None, expect: bool) -> None:
    assert changed_enough(prev, new, db) is expect  # type: ignore[arg-type]


def _pipeline(tmp_path: Path, silence: str = "15m") -> Pipeline:
    f = tmp_path / "site.yaml"
    f.write_text("site: {id: demo}\nuplink: {broker: 'mqtt://127.0.0.1:1883'}\n"
                 f"pipeline: {{max_silence: {silence}}}\n"
                 "devices:\n  - {name: box, type: edge-box, overrides: {load1: {deadband: 0.5, max_silence: 0.2s}}}\n")
    site = load_site(f)
    return Pipeline(site.devices, site.model.pipeline.max_silence)


def test_report_by_exception_and_batching(tmp_path: Path) -> None:
    pl = _pipeline(tmp_path)
    t = 1_795_000_000.0
    assert pl.offer("box", [Sample("box", "load1", 1.0, ts=t), Sample("box", "cpu_temp", 50.0, ts=t)]) == 2
    assert pl.offer("box", [Sample("box", "load1", 1.2, ts=t + 1)]) == 0  # within deadband 0.5
    assert pl.offer("box", [Sample("box", "load1", 1.6, ts=t + 2)]) == 1
    assert pl.offer("box", [Sample("box", "load1", None, Quality.ERROR, t + 3, "timeout")]) == 1
    assert pl.offer("box", [Sample("box", "load1", None, Quality.ERROR, t + 4, "timeout")]) == 0
    assert pl.offer("box", [Sample("box", "load1", 1.6, ts=t + 5)]) == 1  # quality back to good
    assert pl.offer("nope", [Sample("nope", "x", 1)]) == 0
    drained = pl.drain()
    assert len(drained) == 1
    dev, body, oldest = drained[0]
    assert dev == "box" and oldest == t
    d = decode_telemetry(frame(1, body))
    assert d.gen == pl.gen
    alias = {p["n"]: p["a"] for p in pl.birth()["devices"]["box"]["points"]}  # type: ignore[index]
    got = [(a, v, q) for a, _, v, q, _ in d.samples]
    assert got == [(alias["load1"], 1.0, Quality.GOOD), (alias["cpu_temp"], 50.0, Quality.GOOD),
                   (alias["load1"], 1.6, Quality.GOOD), (alias["load1"], None, Quality.ERROR),
                   (alias["load1"], 1.6, Quality.GOOD)]
    assert pl.drain() == []
    live = pl.channels["box"].live["load1"]
    assert live.value == 1.6 and live.last_error == "timeout"


def test_max_silence_resends(tmp_path: Path) -> None:
    import time

    pl = _pipeline(tmp_path)
    assert pl.offer("box", [Sample("box", "load1", 1.0)]) == 1
    assert pl.offer("box", [Sample("box", "load1", 1.0)]) == 0
    time.sleep(0.25)
    assert pl.offer("box", [Sample("box", "load1", 1.0)]) == 1  # heartbeat after max_silence 0.2 s
    assert pl.offer("box", [Sample("box", "cpu_temp", 40.0)]) == 1
    assert pl.offer("box", [Sample("box", "cpu_temp", 40.0)]) == 0  # site max_silence 15 m


def test_alias_generation_changes_with_point_list(tmp_path: Path) -> None:
    a = _pipeline(tmp_path).gen
    f = tmp_path / "site.yaml"
    f.write_text(f.read_text().replace("name: box", "name: box2"))
    site = load_site(f)
    assert Pipeline(site.devices, 900).gen != a


def test_check_write_refuses_text_for_numeric_points(tmp_path: Path) -> None:
    from agent.contract.driver import check_write
    from agent.errors import WriteRefused

    f = tmp_path / "site.yaml"
    prof = tmp_path / "p"
    prof.mkdir()
    (prof / "w.yaml").write_text("driver: system\npoints:\n"
                                 "  - {name: sp, source: load1, access: read-write, min: 5, max: 30}\n")
    f.write_text(f"site: {{id: demo}}\nuplink: {{broker: 'mqtt://127.0.0.1:1883'}}\nprofiles_dirs: [{prof}]\n"
                 "devices:\n  - {name: d, type: w}\n")
    dev = load_site(f).devices[0]
    with pytest.raises(WriteRefused, match="expects a number"):
        check_write(dev, "sp", "9")
    with pytest.raises(WriteRefused, match="above the maximum 30"):
        check_write(dev, "sp", 31)
    with pytest.raises(WriteRefused, match="must be finite"):
        check_write(dev, "sp", float("nan"))
    assert check_write(dev, "sp", 21.5).name == "sp"


def test_same_value_object_updates_live_state_and_keeps_the_heartbeat(tmp_path: Path) -> None:
    """A driver hands back the very value object of an unchanged block: not reported again, but the live
    state (what status shows) follows every sample, and max_silence still resends on schedule."""
    import time

    pl = _pipeline(tmp_path)
    t = 1_795_000_000.0
    v = 1.0
    assert pl.offer("box", [Sample("box", "load1", v, ts=t)]) == 1
    assert pl.offer("box", [Sample("box", "load1", v, ts=t + 1)]) == 0
    live = pl.channels["box"].live["load1"]
    assert live.ts == t + 1 and live.last_good == t + 1 and live.value is v
    time.sleep(0.25)  # load1 has max_silence 0.2 s
    assert pl.offer("box", [Sample("box", "load1", v, ts=t + 2)]) == 1
    assert pl.offer("box", [Sample("box", "load1", v, ts=t + 3)]) == 0
    assert pl.offer("box", [Sample("box", "load1", None, Quality.ERROR, t + 4, "timeout")]) == 1
    assert pl.offer("box", [Sample("box", "load1", v, ts=t + 5)]) == 1
