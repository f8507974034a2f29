"""`edge-agent monitor` reaches the site's own broker: --config reuses the uplink settings; the URL scheme is
honoured; connection problems are one clear line."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

from tests.peers.mosquitto import Broker

from .agentkit import ROOT, running_agent, write_site
from .test_uplink import pki, tls_broker  # noqa: F401  (fixtures)


async def _monitor(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.tools.cli", "monitor", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _tls_site(tmp_path: Path, broker: Broker, pki: Path, extra: str = "") -> Path:  # noqa: F811
    tls = (f"  tls: {{ca_file: {pki / 'ca.crt'}, cert_file: {pki / 'client.crt'}, "
           f"key_file: {{file: {pki / 'client.key'}}}{extra}}}\n")
    return write_site(tmp_path, broker.url, extra_uplink=tls)


async def test_monitor_config_connects_with_the_site_tls_client_certificate(
        tls_broker: Broker, pki: Path, tmp_path: Path) -> None:  # noqa: F811
    site = _tls_site(tmp_path, tls_broker, pki, ", server_hostname: broker.test")
    async with running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        rc, out, err = await _monitor("--config", str(site), "--count", "2", "--json")
    assert rc == 0, err
    msgs = [json.loads(line) for line in out.splitlines()]
    assert len(msgs) == 2 and all(m["site"] == "t1" for m in msgs)
    assert {m["kind"] for m in msgs} <= {"birth", "status", "t", "e"}
    assert f"connected to mqtts://127.0.0.1:{tls_broker.port}" in err


async def test_monitor_mqtts_url_is_tls(tls_broker: Broker, pki: Path, tmp_path: Path) -> None:  # noqa: F811
    # mqtts:// without the site's CA: TLS is attempted and the test CA is not trusted (one line, exit 1)
    rc, out, err = await _monitor("--broker", f"mqtts://127.0.0.1:{tls_broker.port}", "--timeout", "5")
    assert rc == 1 and not out
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "TLS" in err and "certificate verify failed" in err, err
    # --broker with --config: the URL is replaced, the site's TLS settings (CA, client certificate) stay
    site = _tls_site(tmp_path, tls_broker, pki)
    async with running_agent(site) as agent:
        await asyncio.wait_for(agent.uplink.connected.wait(), 10)
        other = tmp_path / "other"
        other.mkdir()
        moved = _tls_site(other, tls_broker, pki)
        moved.write_text(moved.read_text().replace(tls_broker.url, "mqtts://127.0.0.9:1"))  # closed loopback port
        rc, out, err = await _monitor("--config", str(moved), "--broker", f"mqtts://127.0.0.1:{tls_broker.port}",
                                      "--site", "t1", "--count", "1", "--timeout", "5")
    assert rc == 0, err
    assert f"connected to mqtts://127.0.0.1:{tls_broker.port}" in err and out.count("\n") == 1


async def test_monitor_broker_without_scheme_is_an_error(broker: Broker) -> None:
    rc, out, err = await _monitor("--broker", f"127.0.0.1:{broker.port}")
    assert rc == 2 and not out
    assert err.count("\n") == 1 and "mqtt://HOST:PORT" in err and "Traceback" not in err, err


async def test_monitor_timeout_is_one_clear_line(tmp_path: Path) -> None:
    """A listener that accepts and never answers (a firewall or a wrong service): one line within the budget."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    try:
        t0 = time.monotonic()
        rc, out, err = await _monitor("--broker", f"mqtt://127.0.0.1:{port}", "--timeout", "1.5")
        elapsed = time.monotonic() - t0
    finally:
        srv.close()
    assert rc == 1 and not out
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"no MQTT session with mqtt://127.0.0.1:{port} within 1.5 s" in err
    assert elapsed < 6, elapsed


async def test_monitor_refused_is_one_clear_line() -> None:
    from tests.peers.common import free_port

    port = free_port()
    rc, _, err = await _monitor("--broker", f"mqtt://127.0.0.1:{port}", "--timeout", "3")
    assert rc == 1 and err.count("\n") == 1 and "Connection refused" in err, err


async def test_monitor_config_uses_the_site_credentials(tmp_path: Path) -> None:
    import subprocess

    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "site-t1", "s3cret"], check=True, capture_output=True)
    pw.chmod(0o644)
    broker = Broker(tmp_path, extra=[f"password_file {pw}"]).start()
    try:
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret")
        site = write_site(tmp_path, broker.url,
                          extra_uplink=f"  username: site-t1\n  password: {{file: {secret}}}\n")
        async with running_agent(site) as agent:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            rc, out, err = await _monitor("--config", str(site), "--count", "1", "--timeout", "5")
            assert rc == 0 and out.count("\n") == 1, err
            # the same broker without the site's credentials: refused, one line
            rc, out, err = await _monitor("--broker", broker.url, "--count", "1", "--timeout", "5")
            assert rc == 1 and not out and err.count("\n") == 1 and "Traceback" not in err, err
            assert "not authorized" in err.lower() or "refused" in err.lower(), err
    finally:
        broker.stop()
