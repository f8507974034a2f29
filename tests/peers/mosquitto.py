"""A real Mosquitto broker on loopback, started and stopped by the tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .common import free_port, port_open, stop_process, wait_for

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class Broker:
    """A Mosquitto process with a fixed port that can be stopped and started again."""

    workdir: Path
    port: int = field(default_factory=free_port)
    tls: dict[str, str] | None = None  # {"ca": ..., "cert": ..., "key": ..., "require_certificate": "true"}
    proc: subprocess.Popen[bytes] | None = None
    persistence: bool = False  # retained messages and sessions survive stop()/start()
    extra: list[str] = field(default_factory=list)  # more configuration lines (password_file, ...)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        lines = [
            f"persistence {'true' if self.persistence else 'false'}",
            f"allow_anonymous {'false' if any(x.startswith('password_file') for x in self.extra) else 'true'}",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "user root",
            f"listener {self.port} 127.0.0.1",
        ]
        lines += self.extra
        if self.persistence:
            lines += [f"persistence_location {self.workdir}/", f"persistence_file mosquitto-{self.port}.db"]
        if self.tls:
            lines += [
                f"cafile {self.tls['ca']}",
                f"certfile {self.tls['cert']}",
                f"keyfile {self.tls['key']}",
                f"require_certificate {self.tls.get('require_certificate', 'true')}",
                "tls_version tlsv1.2",
            ]
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> Broker:
        if not Path(MOSQUITTO).exists():
            pytest.fail("mosquitto is not installed: run scripts/test, which installs it")
        conf = self.write_config()
        self.log = open(self.workdir / f"mosquitto-{self.port}.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=self.log)
        wait_for(lambda: port_open("127.0.0.1", self.port) or self.proc.poll() is not None, 10, what="mosquitto")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(self.workdir / f'mosquitto-{self.port}.log').read_text()}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
            self.log.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    yield b
    b.stop()
