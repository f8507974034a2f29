"""The packaged agent under the real unit and a real systemd: the throwaway root with the package installed
and provisioned is booted with systemd-nspawn (sharing the host's network, so the agent reaches the test's
Mosquitto on 127.0.0.1). A probe unit inside records what systemd saw, then powers the container off.

Shows what `systemd-analyze` cannot: the sandbox still lets the agent start (READY=1 makes a Type=notify
unit active), publish, read its credential, feed the watchdog, reload, survive a package upgrade while running
and stop cleanly on SIGTERM. It also runs the heavy libraries under the sandbox (MemoryDenyWriteExecute,
SystemCallFilter, MemoryMax...): an ONVIF camera (the simulator on the host's loopback, its password as a
systemd credential, events and Pillow snapshots) and a motion camera (OpenCV with its FFmpeg decoding a
video file, numpy analysis, a snapshot).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.motion.clips import make_clip, write_clip
from tests.peers.common import free_port
from tests.peers.mosquitto import Broker
from tests.peers.onvif import OnvifCamera

from .conftest import ThrowawayRoot
from .test_deb import install

# The package is built once per run (conftest.once_per_run); the first test's time includes that build
# (minutes on a loaded 2-core machine).
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(900)]

SITE = "nspawn-site"

PROBE = r"""[Unit]
Description=test probe: record edge-agent's state, stop it, power off
After=edge-agent.service

[Service]
Type=oneshot
StandardOutput=file:/var/tmp/probe.txt
StandardError=inherit
ExecStart=/bin/sh -c '\
  sleep 40; \
  systemctl show edge-agent -p ActiveState,SubState,NRestarts,StatusText,WatchdogUSec; \
  systemctl show edge-agent -p WatchdogTimestampMonotonic,ActiveEnterTimestampMonotonic,MainPID; \
  pid=$(systemctl show edge-agent -p MainPID --value); \
  grep -E "^(Uid|Gid|Groups|CapEff|CapBnd|NoNewPrivs|Seccomp):" /proc/$pid/status | sed "s/^/proc_/; s/:\t*/=/"; \
  echo dialout_gid=$(getent group dialout | cut -d: -f3); \
  echo edge_agent_uid=$(id -u edge-agent); \
  echo creds=$(ls /run/credentials/edge-agent.service | tr "\n" " "); \
  echo wx_mappings=$(grep -cE "^[^ ]+ .wx" /proc/$pid/maps); \
  echo state_owner=$(stat -c %%U /var/lib/edge-agent); \
  echo etc_writable_by_root=$(nsenter -t $pid -m sh -c "touch /etc/x 2>/dev/null && echo yes || echo no"); \
  as_agent="nsenter -t $pid -m setpriv --reuid edge-agent --regid edge-agent --clear-groups"; \
  echo config_writable=$($as_agent sh -c "touch /etc/edge-agent/x 2>/dev/null && echo yes || echo no"); \
  echo state_writable=$($as_agent sh -c "touch /var/lib/edge-agent/x 2>/dev/null && echo yes || echo no"); \
  /opt/edge-agent/bin/python /opt/netcheck.py | sed "s/^/plain_/"; \
  systemctl start sandbox-check; sed "s/^/sandboxed_/" /run/netcheck.txt; \
  edge-agent status > /var/tmp/status.txt 2>&1; echo status_rc=$?; \
  journalctl -b -u edge-agent -p warning --no-pager -o cat | sed "s/^/warning_journal: /"; \
  systemctl reload edge-agent; echo reload_rc=$?; sleep 8; \
  systemctl show edge-agent -p ActiveState,MainPID,NRestarts | sed "s/^/after_reload_/"; \
  cp /etc/edge-agent/site.yaml /var/tmp/site.good; printf "uplink_typo: 1\\n" >> /etc/edge-agent/site.yaml; \
  systemctl reload edge-agent > /var/tmp/broken_reload.txt 2>&1; echo broken_reload_rc=$?; \
  systemctl show edge-agent -p ActiveState,MainPID,NRestarts | sed "s/^/after_broken_reload_/"; \
  echo broken_reload_logged=$(journalctl -u edge-agent --no-pager | grep -c "site.yaml:[0-9]*: uplink_typo"); \
  cp /var/tmp/site.good /etc/edge-agent/site.yaml; \
  echo outbox_before_upgrade=$(stat -c %%i /var/lib/edge-agent/outbox.sqlite); \
  dpkg -i /var/tmp/v2.deb > /var/tmp/upgrade.txt 2>&1 && echo upgrade=ok || echo upgrade=failed; \
  sleep 3; \
  systemctl show edge-agent -p ActiveState,SubState,MainPID | sed "s/^/after_upgrade_/"; \
  echo after_upgrade_version=$(dpkg -s edge-agent | sed -n "s/^Version: //p"); \
  echo outbox_after_upgrade=$(stat -c %%i /var/lib/edge-agent/outbox.sqlite); \
  systemctl stop edge-agent; \
  systemctl show edge-agent -p Result,ExecMainStatus | sed "s/^/after_stop_/"; \
  touch /etc/edge-agent/unprovisioned; systemctl start edge-agent; \
  systemctl show edge-agent -p ActiveState,ConditionResult | sed "s/^/held_/"; \
  journalctl -b -u edge-agent --no-pager -o cat | sed "s/^/journal: /"; \
  systemctl poweroff'

[Install]
WantedBy=multi-user.target
"""

# What BACnet/IP discovery does with sockets, kept on loopback: UDP broadcast (Who-Is) to 127.255.255.255 and
# interface listing over netlink. Run once plainly and once inside the unit's sandbox. (Multicast is not
# probed here: this box shares the host's network and no multicast group is loopback-only; the sandbox does
# not restrict it beyond AF_INET, which the broadcast probe exercises.)
NETCHECK = r"""
import errno
import socket

def check(name, fn):
    try:
        fn()
        print(f"{name}=ok")
    except Exception as exc:
        print(f"{name}={type(exc).__name__}: {exc}")

def broadcast():
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.255.255.255", 0))
    r.settimeout(3)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.sendto(b"who-is", ("127.255.255.255", r.getsockname()[1]))
    assert r.recv(100) == b"who-is"

def interfaces():
    assert any(name == "lo" for _, name in socket.if_nameindex())

def no_raw_sockets():
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EAFNOSUPPORT):  # RestrictAddressFamilies= answers EAFNOSUPPORT
            return
        raise
    raise AssertionError("packet socket allowed")

check("udp_broadcast", broadcast)
check("netlink_interfaces", interfaces)
check("no_packet_socket", no_raw_sockets)
"""


def sandbox_check_unit(unit_text: str) -> str:
    """The installed unit with its sandbox unchanged, running the network check instead of the agent."""
    keep = []
    for line in unit_text.splitlines():
        key = line.split("=", 1)[0]
        # Its own runtime directory: systemd removes a unit's RuntimeDirectory= when the unit stops.
        if key in ("Type", "NotifyAccess", "WatchdogSec", "Restart", "RestartSec", "ExecReload",
                   "ConditionPathExists", "ExecStart", "RuntimeDirectory"):
            continue
        keep.append(line)
        if line.strip() == "[Service]":
            keep += ["Type=oneshot", "ExecStart=/opt/edge-agent/bin/python /opt/netcheck.py",
                     "RuntimeDirectory=edge-agent-sandbox-check",
                     "StandardOutput=file:/run/netcheck.txt"]
    return "\n".join(keep) + "\n"


# Builds both packages when run alone (~45 s), boots a container and waits for the probe (~90 s): more than
# the suite's 120 s per test.
@pytest.mark.timeout(400)
def test_agent_runs_under_the_hardened_unit(throwaway_root: ThrowawayRoot, deb: Path, deb_v2: Path,
                                            broker: Broker, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn not installed (apt-get install systemd-container)")
    root = throwaway_root
    install(root, deb)
    pw = tmp_path / "pw"
    pw.write_text("probe-password\n")
    root.put(pw, "/var/tmp/pw")
    root.put(deb_v2, "/var/tmp/v2.deb")
    root.run(f"edge-agent provision -y --site-id {SITE} --broker {broker.url} --username agent "
             "--password-file /var/tmp/pw && rm /var/tmp/pw")
    # A meter nobody answers for (a closed port on the loopback): its outage must reach `journalctl -p warning`.
    # An ONVIF camera (the simulator on the host's loopback, motion every 3 s, its password a credential of
    # the unit given by a drop-in as docs/operations.md says) and a motion camera reading a video file.
    cam = OnvifCamera(tmp_path, extra=["--motion-every", "3"]).start()
    request.addfinalizer(cam.stop)
    (tmp_path / "cam-password").write_text(cam.password + "\n")
    root.put(tmp_path / "cam-password", "/etc/credstore/cam-password")
    root.run("chmod 0600 /etc/credstore/cam-password && mkdir -p /etc/systemd/system/edge-agent.service.d && "
             "printf '[Service]\\nLoadCredential=cam-password\\n' > /etc/systemd/system/edge-agent.service.d/cam.conf")
    root.put(write_clip(make_clip("person", 3), tmp_path / "door.avi", fps=15), "/opt/door.avi")
    root.run("printf '%s\\n' '- {name: dead-meter, type: socomec-countis-e34, interval: 5s, timeout: 1s, "
             f"connection: {{host: 127.0.0.1, port: {free_port()}, unit: 3}}}}' "
             "'- {name: cam, type: generic-onvif-camera, interval: 5s, timeout: 2s, connection: {host: 127.0.0.1, "
             f"port: {cam.port}, user: admin, password: {{credential: cam-password}}}}}}' "
             "'- {name: door, type: generic-motion-camera, interval: 2s, connection: {url: /opt/door.avi}}' "
             ">> /etc/edge-agent/site.yaml && edge-agent validate --config /etc/edge-agent/site.yaml")
    probe = tmp_path / "probe.service"
    probe.write_text(PROBE)
    root.put(probe, "/etc/systemd/system/probe.service")
    root.run("ln -s /etc/systemd/system/probe.service /etc/systemd/system/multi-user.target.wants/probe.service")
    (tmp_path / "netcheck.py").write_text(NETCHECK)
    root.put(tmp_path / "netcheck.py", "/opt/netcheck.py")
    installed_unit = root.run("cat /lib/systemd/system/edge-agent.service").stdout
    (tmp_path / "sandbox-check.service").write_text(sandbox_check_unit(installed_unit))
    root.put(tmp_path / "sandbox-check.service", "/etc/systemd/system/sandbox-check.service")
    # This machine is a container image whose policy-rc.d forbids maintainer scripts to start or stop
    # services; a site box has none.
    root.run("rm -f /usr/sbin/policy-rc.d")
    # nspawn brings its own /proc, /dev, /sys, /run and /tmp.
    r = root.host(f"umount -R {root.merged}/proc {root.merged}/dev {root.merged}/sys {root.merged}/run "
                  f"{root.merged}/tmp")
    assert r.returncode == 0, r.stderr

    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "#", "-v"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    t0 = time.monotonic()
    boot = root.host(
        f"systemd-nspawn -q -M ea-test-{os.getpid()} --keep-unit --register=no --link-journal=no "
        f"-D {root.merged} --boot",
        timeout=180,
    )
    took = time.monotonic() - t0
    sub.terminate()
    published, _ = sub.communicate(timeout=10)
    probe_out = root.host(f"cat {root.merged}/var/tmp/probe.txt").stdout
    print(f"\nnspawn boot + probe: {took:.0f}s\n{probe_out}")
    if "ActiveState=" not in probe_out:
        pytest.fail(f"the probe did not run: nspawn rc={boot.returncode}\n{boot.stdout[-3000:]}\n{boot.stderr}")
    got = dict(line.split("=", 1) for line in probe_out.splitlines() if "=" in line and
               not line.startswith(("journal: ", "warning_journal: ")))

    # Type=notify: "active" only after the agent sent READY=1; no restart since.
    assert got["ActiveState"] == "active" and got["SubState"] == "running", probe_out
    assert got["NRestarts"] == "0"
    # The watchdog is armed and was fed after start.
    assert got["WatchdogUSec"] == "1min"
    assert int(got["WatchdogTimestampMonotonic"]) > int(got["ActiveEnterTimestampMonotonic"]), probe_out
    # The sandbox as the process sees it: its own user, dialout for serial ports, no capabilities,
    # no new privileges, a seccomp filter, a read-only OS with the state directory writable.
    assert got["proc_Uid"].split()[0] == got["edge_agent_uid"]
    assert got["dialout_gid"] in got["proc_Groups"].split()
    assert int(got["proc_CapEff"], 16) == 0 and int(got["proc_CapBnd"], 16) == 0
    assert got["proc_NoNewPrivs"] == "1" and got["proc_Seccomp"] == "2"
    assert got["etc_writable_by_root"] == "no", "ProtectSystem=strict: the OS is read-only even for root"
    assert got["config_writable"] == "no" and got["state_writable"] == "yes"
    assert got["state_owner"] == "edge-agent"
    # LoadCredential=mqtt-password from /etc/credstore; the missing mqtt-key was skipped, not fatal; the
    # camera's password came through the drop-in.
    assert got["creds"].split() == ["cam-password", "mqtt-password"]
    # The sandbox keeps what BACnet/ONVIF discovery needs (as an unconfined process has it) and refuses
    # packet sockets (which root outside the sandbox may open).
    assert got["plain_udp_broadcast"] == "ok"
    for name in ("udp_broadcast", "netlink_interfaces", "no_packet_socket"):
        assert got[f"sandboxed_{name}"] == "ok", (name, got[f"sandboxed_{name}"], got.get(f"plain_{name}"))
    # `edge-agent status` (as root, outside the service) finds the service's socket in /run/edge-agent, and
    # as a health check exits 1: the dead meter is unhealthy.
    status_text = root.host(f"cat {root.merged}/var/tmp/status.txt").stdout
    assert got["status_rc"] == "1" and "dead-meter" in status_text, status_text
    # The journal knows the priority of each line: the dead meter is a warning, routine lines are not.
    warnings = [line for line in probe_out.splitlines() if line.startswith("warning_journal: ")]
    assert any("dead-meter: unavailable: unreachable" in line for line in warnings), probe_out
    assert not any(" ready: " in line for line in warnings), warnings
    # reload: the check of ExecReload= passes (it reads the credentials the site file refers to), then
    # SIGHUP: the same process re-reads its site file, no restart counted.
    assert got["reload_rc"] == "0", probe_out
    assert got["after_reload_ActiveState"] == "active"
    assert got["after_reload_MainPID"] == got["MainPID"] and got["after_reload_NRestarts"] == "0", probe_out
    # reload of a broken site file: ExecReload= validates first, so `systemctl reload` itself fails where it
    # was typed, the located problem is in the journal, and the agent runs on untouched (same PID).
    assert got["broken_reload_rc"] != "0", root.host(f"cat {root.merged}/var/tmp/broken_reload.txt").stdout
    assert "failed" in root.host(f"cat {root.merged}/var/tmp/broken_reload.txt").stdout
    assert got["after_broken_reload_ActiveState"] == "active", probe_out
    assert got["after_broken_reload_MainPID"] == got["MainPID"] and got["after_broken_reload_NRestarts"] == "0"
    assert int(got["broken_reload_logged"]) >= 1, probe_out
    # Upgrade while running: prerm stops it (outbox flushed), postinst starts the new version; same outbox.
    assert got["upgrade"] == "ok", root.host(f"cat {root.merged}/var/tmp/upgrade.txt").stdout
    assert got["after_upgrade_ActiveState"] == "active" and got["after_upgrade_SubState"] == "running"
    assert got["after_upgrade_MainPID"] != got["MainPID"], "a new process runs the new version"
    assert got["after_upgrade_version"].endswith("-2")
    assert got["outbox_after_upgrade"] == got["outbox_before_upgrade"], "the same outbox file"
    # SIGTERM: flushed and exited 0.
    assert got["after_stop_Result"] == "success" and got["after_stop_ExecMainStatus"] == "0", probe_out
    # An unprovisioned box does not start the agent: the unit's condition holds it back.
    assert got["held_ActiveState"] == "inactive" and got["held_ConditionResult"] == "no", probe_out
    # And it really published to the broker, under this site's id.
    assert f"/{SITE}/" in published, published[:2000]
    # Cameras under the sandbox: the ONVIF camera's facts, its own motion events and their Pillow snapshots;
    # the motion camera's OpenCV/FFmpeg decoding and numpy analysis (a motion start) and its snapshot. No
    # driver crashed or was disabled, no restart (NRestarts=0 above), and no memory both writable and
    # executable in the process (MemoryDenyWriteExecute= would have refused it).
    journal = "\n".join(line for line in probe_out.splitlines() if line.startswith("journal: "))
    for topic in (f"/{SITE}/t/cam", f"/{SITE}/s/cam/", f"/{SITE}/t/door", f"/{SITE}/s/door/"):
        assert topic in published, (topic, journal[-3000:])
    assert re.search(rf'/{SITE}/e/cam .*"kind": ?"motion"', published), journal[-3000:]
    assert re.search(rf'/{SITE}/e/door .*"kind": ?"motion".*"state": ?"start"', published), journal[-3000:]
    assert not re.search(r"(cam|door): (disabled|unavailable)|driver crashed", journal), journal[-3000:]
    assert got["wx_mappings"] == "0", probe_out
