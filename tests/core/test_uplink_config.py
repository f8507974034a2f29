"""The uplink settings the broker and the MQTT libraries can really use (issue 9 items 2 and 16).

No test here connects anywhere: sites with non-loopback brokers (203.0.113.x, documentation addresses) are
only validated, and an Agent built on one is never run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_site
from agent.core.app import Agent
from agent.errors import ConfigError
from agent.tools.commands import render_status


def _site(tmp: Path, uplink: str) -> Path:
    p = tmp / "site.yaml"
    p.write_text(f"site: {{id: t1}}\nstate_dir: {tmp / 'state'}\nuplink:\n{uplink}devices: []\n")
    return p


@pytest.mark.parametrize("broker", ["mqtt://127.0.0.1:1883", "mqtt://127.8.9.10", "mqtt://localhost:1883",
                                    "mqtt://[::1]:1883", "mqtt://[::ffff:127.0.0.1]:1883"])
def test_credentials_over_cleartext_to_loopback_are_fine(tmp_path: Path, broker: str) -> None:
    s = load_site(_site(tmp_path, f"  broker: {broker}\n  username: agent\n"))
    assert not s.model.uplink.uses_tls and s.model.uplink.loopback and not s.model.uplink.cleartext_credentials


@pytest.mark.parametrize(("broker", "host"), [
    ("mqtt://203.0.113.7", "203.0.113.7"), ("tcp://203.0.113.7:1883", "203.0.113.7"),
    ("mqtt://mqtt.example.net", "mqtt.example.net"), ("mqtt://[2001:db8::7]:1883", "2001:db8::7"),
    ("mqtt://[::ffff:203.0.113.7]", "::ffff:203.0.113.7"),
])
def test_credentials_over_cleartext_to_another_host_are_refused(tmp_path: Path, broker: str, host: str) -> None:
    site = _site(tmp_path, f"  broker: {broker}\n  username: agent\n")
    with pytest.raises(ConfigError) as ei:
        load_site(site, strict=False)
    assert [str(p) for p in ei.value.problems] == [
        f"{site}:5: uplink.username: credentials would be sent in cleartext to {host} (mqtt://): use mqtts://, "
        "or set uplink.allow_insecure: true to accept that"
    ]


def test_allow_insecure_accepts_cleartext_credentials_and_status_shows_it(tmp_path: Path) -> None:
    site = _site(tmp_path, "  broker: mqtt://203.0.113.7:1883\n  username: agent\n  allow_insecure: true\n")
    s = load_site(site, strict=False)
    assert s.model.uplink.cleartext_credentials
    agent = Agent(s)  # built, never run: nothing is sent to 203.0.113.7
    snap = agent.snapshot()
    assert snap["uplink"]["cleartext_credentials"] is True and snap["uplink"]["tls"] is False
    assert "INSECURE: credentials in cleartext" in render_status(snap)
    # the same site over TLS is not insecure and needs no allow_insecure
    site = _site(tmp_path, "  broker: mqtts://203.0.113.7\n  username: agent\n")
    s = load_site(site, strict=False)
    assert s.model.uplink.uses_tls and s.model.uplink.port == 8883 and not s.model.uplink.cleartext_credentials
    assert "INSECURE" not in render_status(Agent(s).snapshot())


def test_the_scheme_alone_decides_tls(tmp_path: Path) -> None:
    s = load_site(_site(tmp_path, "  broker: mqtts://127.0.0.1\n"))
    assert s.model.uplink.uses_tls and s.model.uplink.port == 8883
    site = _site(tmp_path, "  broker: mqtt://127.0.0.1\n  tls: {server_hostname: broker.test}\n")
    with pytest.raises(ConfigError, match=r"site.yaml:5: uplink.tls: tls: is set but the broker URL "
                                          r"'mqtt://127.0.0.1' is cleartext: use mqtts://"):
        load_site(site, strict=False)


@pytest.mark.parametrize(("setting", "message"), [
    ("keepalive: 1d", "keepalive of 86400 s is outside what MQTT allows (1s to 65535s"),
    ("keepalive: 65536", "keepalive of 65536 s is outside"),
    ("keepalive: 0.5s", "keepalive of 0.5 s is outside"),
    ("topic_prefix: ea/+/x", "holds an MQTT wildcard"),
    ("topic_prefix: ''", "must not be empty"),
    ("topic_prefix: ea/v1/", "has an empty level"),
    (f"client_id: {'x' * 70000}", "client_id is 70000 bytes long; the limit is 256"),
    ("client_id: ''", "client_id must not be empty"),
    ("max_message_bytes: 300MB", "less than or equal to 268369904"),
    ("connect_timeout: .inf", "duration inf is infinite: give a finite duration, at most 366d"),
    ("connect_timeout: 367d", "duration '367d' is longer than the limit of 366d"),
    ("publish_timeout: .nan", "got nan"),
])
def test_uplink_fields_the_protocol_cannot_carry_are_refused(tmp_path: Path, setting: str, message: str) -> None:
    site = _site(tmp_path, f"  broker: mqtt://127.0.0.1:1883\n  {setting}\n")
    with pytest.raises(ConfigError) as ei:
        load_site(site, strict=False)
    (p,) = ei.value.problems
    assert p.line == 5 and p.key == f"uplink.{setting.split(':')[0]}" and message in p.message, str(p)


@pytest.mark.parametrize(("setting", "value"), [
    ("keepalive: 65535", 65535.0), ("keepalive: 1s", 1.0), ("topic_prefix: a/b/c", "a/b/c"),
    (f"client_id: {'x' * 256}", "x" * 256), ("max_message_bytes: 256MB", 256_000_000),
])
def test_uplink_fields_at_the_limits_are_accepted(tmp_path: Path, setting: str, value: object) -> None:
    s = load_site(_site(tmp_path, f"  broker: mqtt://127.0.0.1:1883\n  {setting}\n"))
    assert getattr(s.model.uplink, setting.split(":")[0]) == value


def test_device_interval_inf_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: {id: t1}\nuplink: {broker: 'mqtt://127.0.0.1:1'}\n"
                    "devices:\n  - {name: box, type: edge-box, interval: .inf}\n")
    s = load_site(site, strict=False)
    assert not s.devices
    assert [str(p) for p in s.problems] == [f"{site}:4: devices[0].interval: duration inf is infinite: give a "
                                            "finite duration, at most 366d"]
