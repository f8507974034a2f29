"""Access panel configuration: doors by token, point expansion, command policy, privacy key (no panel needed)."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config import load_site
from agent.errors import ConfigError
from drivers.access import AccessConnection, AccessPanelPoint, Privacy, in_window, parse_window
from drivers.access.privacy import KEY_FILE, Redactor

PARIS = ZoneInfo("Europe/Paris")


def _site(tmp: Path, connection: str, extra_site: str = "") -> Path:
    path = tmp / "site.yaml"
    path.write_text(
        f"site: {{id: t1{extra_site}}}\n"
        f"state_dir: {tmp / 'state'}\n"
        "uplink: {broker: 'mqtt://127.0.0.1:1883'}\n"
        "devices:\n"
        "  - name: panel\n"
        "    type: generic-onvif-access-panel\n"
        "    connection:\n"
        f"{connection}"
    )
    return path


GOOD = (
    "      host: 127.0.0.1\n"
    "      doors:\n"
    "        - {token: Door1, name: main, label: Main entrance, commands: [access, lock],\n"
    "           windows: ['mon-fri 07:00-19:00']}\n"
    "        - {token: Door2}\n"
    "      access_points:\n"
    "        - {token: AP1, name: main-reader}\n"
)


def test_door_points_are_expanded_per_listed_door(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path, GOOD, ", timezone: Europe/Paris"))
    dev = site.devices[0]
    names = [p.name for p in dev.points]
    assert "online" in names and "doors" in names
    assert {"main.mode", "main.alarm", "main.door", "Door2.mode", "Door2.tamper", "main-reader.enabled"} <= set(names)
    assert "mode" not in names and "enabled" not in names  # templates are not points themselves
    mode = next(p for p in dev.points if p.name == "main.mode")
    assert isinstance(mode, AccessPanelPoint) and mode.token == "Door1"
    assert mode.description is not None and mode.description.startswith("Main entrance:")
    assert site.model.site.timezone == "Europe/Paris"


@pytest.mark.parametrize(("connection", "where", "message"), [
    ("      host: h\n      doors:\n        - {token: 'Door 1'}\n", "connection.doors[0]:",
     "cannot name points: give a name"),
    ("      host: h\n      doors:\n        - {token: D1, commands: [open]}\n", "connection.doors[0].commands[0]:",
     "'access'"),
    ("      host: h\n      doors:\n        - {token: D1, commands: [lock], windows: ['weekdays 7-19']}\n",
     "connection.doors[0].windows", "expected 'DAYS HH:MM-HH:MM'"),
    ("      host: h\n      doors:\n        - {token: D1}\n        - {token: D1, name: other}\n", "connection",
     "listed twice"),
    ("      host: h\n      privacy: {holder_name: pseudonym}\n", "connection.privacy.holder_name", "'omit'"),
    ("      host: h\n      doors:\n        - {token: D1, name: " + "x" * 31 + "}\n", "",
     "longer than 64 characters"),
])
def test_bad_door_settings_are_located(tmp_path: Path, connection: str, where: str, message: str) -> None:
    path = _site(tmp_path, connection)
    if "x" * 31 in connection:  # a name of 31 characters plus the longest point name passes 64 only with a long
        prof = tmp_path / "profiles"  # point name: a site-local profile with one
        prof.mkdir()
        text = (Path(__file__).resolve().parents[2] / "profiles" / "generic-onvif-access-panel.yaml").read_text()
        (prof / "long-panel.yaml").write_text(text.replace("name: mode,", "name: " + "m" * 40 + ","))
        path.write_text(path.read_text().replace("generic-onvif-access-panel", "long-panel")
                        .replace("devices:\n", f"profiles_dirs: [{prof}]\ndevices:\n"))
    with pytest.raises(ConfigError) as err:
        load_site(path)
    text = str(err.value)
    assert f"{path}:" in text and message in text, text
    assert where in text, text
    line = text.split(f"{path}:")[1].split(":")[0]
    assert line.isdigit() and int(line) >= 6, text


def test_unknown_timezone_is_located(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_site(_site(tmp_path, GOOD, ", timezone: Mars/Olympus"))
    assert ":1: site.timezone: " in str(err.value) and "unknown timezone" in str(err.value)


def test_token_in_a_profile_is_refused(tmp_path: Path) -> None:
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "p.yaml").write_text("driver: access\npoints:\n  - {name: m, fact: door_mode, token: Door1}\n")
    path = _site(tmp_path, GOOD)
    path.write_text(path.read_text().replace("generic-onvif-access-panel", "p")
                    .replace("devices:\n", f"profiles_dirs: [{prof}]\ndevices:\n"))
    with pytest.raises(ConfigError) as err:
        load_site(path)
    assert "p.yaml:3: points[0].token: set by the agent" in str(err.value)


@pytest.mark.parametrize(("window", "when", "inside"), [
    ("mon-fri 07:00-19:00", dt.datetime(2026, 12, 2, 7, 0, tzinfo=PARIS), True),  # a Wednesday
    ("mon-fri 07:00-19:00", dt.datetime(2026, 12, 2, 19, 0, tzinfo=PARIS), False),
    ("mon-fri 07:00-19:00", dt.datetime(2026, 12, 5, 10, 0, tzinfo=PARIS), False),  # Saturday
    ("sat,sun 09:00-12:00", dt.datetime(2026, 12, 6, 9, 30, tzinfo=PARIS), True),
    ("daily 22:00-06:00", dt.datetime(2026, 12, 2, 23, 0, tzinfo=PARIS), True),
    ("fri 22:00-06:00", dt.datetime(2026, 12, 5, 5, 59, tzinfo=PARIS), True),  # Saturday morning: Friday's night
    ("fri 22:00-06:00", dt.datetime(2026, 12, 4, 5, 59, tzinfo=PARIS), False),  # Friday morning: Thursday's
    ("07:00-19:00", dt.datetime(2026, 12, 6, 12, 0, tzinfo=PARIS), True),
    ("fri-mon 08:00-09:00", dt.datetime(2026, 12, 7, 8, 30, tzinfo=PARIS), True),  # Monday, a wrapping range
])
def test_windows(window: str, when: dt.datetime, inside: bool) -> None:
    assert in_window(window, when) is inside


@pytest.mark.parametrize("bad", ["mon-fry 07:00-19:00", "07:00-07:00", "25:00-26:00", "mon 7:00-19:00"])
def test_bad_windows(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_window(bad)


def test_policy_refuses_with_why() -> None:
    conn = AccessConnection.model_validate({"host": "h", "doors": [
        {"token": "Door1", "name": "main", "commands": ["access", "lock"], "windows": ["mon-fri 07:00-19:00"]},
        {"token": "Door2"}]})
    wed_noon = dt.datetime(2026, 12, 2, 12, 0, tzinfo=PARIS)
    assert conn.check_door("main", "access", wed_noon) == "Door1"
    assert conn.check_door("Door1", "lock", wed_noon) == "Door1"  # the token names it too
    for door, cmd, when, why in [
        ("main", "unlock", wed_noon, "unlock not allowed by the site file (allowed: access, lock)"),
        ("Door2", "access", wed_noon, "access not allowed by the site file (allowed: none)"),
        ("side", "access", wed_noon, "unknown door 'side'"),
        ("main", "open", wed_noon, "unknown door command 'open'"),
        ("main", "access", dt.datetime(2026, 12, 2, 20, 0, tzinfo=PARIS), "allowed only mon-fri 07:00-19:00"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            conn.check_door(door, cmd, when)


def test_pseudonyms_keyed_per_site_and_key_private(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    items = {"CredentialToken": "CRED-0042", "CredentialHolderName": "Jeanne Martin", "Reason": "CredentialExpired"}
    out = Redactor(Privacy(), a).items(items)
    assert "CredentialHolderName" not in out and out["Reason"] == "CredentialExpired"
    p1 = out["CredentialToken"]
    assert len(p1) == 16 and p1 != "CRED-0042" and int(p1, 16) >= 0
    mode = stat.S_IMODE(os.stat(a / KEY_FILE).st_mode)
    assert mode == 0o600
    assert Redactor(Privacy(), a).items(items)["CredentialToken"] == p1  # the same key: stable
    assert Redactor(Privacy(), b).items(items)["CredentialToken"] != p1  # another site: another pseudonym
    clear = Redactor(Privacy(credential="clear", holder_name="clear"), a).items(items)
    assert clear == items
    omitted = Redactor(Privacy(credential="omit"), a).items(items)
    assert omitted == {"Reason": "CredentialExpired"}


def test_overrides_name_the_profile_point_and_apply_to_every_door(tmp_path: Path) -> None:
    path = _site(tmp_path, GOOD)
    path.write_text(path.read_text() + "    overrides: {double_lock: {enabled: false}}\n")
    dev = load_site(path).devices[0]
    off = {p.name for p in dev.points if not p.enabled}
    assert off == {"main.double_lock", "Door2.double_lock"}
