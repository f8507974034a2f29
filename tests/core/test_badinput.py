"""Hostile and broken configuration (issue 9): the corpus under badinput/ plus the files generated here.

- ``refused/`` and the generated files: site files that `run` refuses with exit 78 and a located error, in
  bounded time and memory (peak RSS of the subprocess, VmHWM), never a traceback; `validate` agrees
  (exit 78, same first line).
- ``skipped/``: site files whose only problem is one device entry: `run` starts without that device,
  `validate` exits 1; neither refuses.
- ``profiles/``: broken profiles (and a stray site file) in a profile folder: `validate FOLDER` reports each
  one located; a site using that folder is accepted by `validate` and by `run`, `plan` works.
- A running agent given every refused and skipped file by SIGHUP stays up on its old configuration, still
  publishes, and publishes a `config` event with the located refusal for each.

EDGE_AGENT_TEST_FIGURES=1 prints the time and peak RSS of every refusal.
``expected.tsv`` holds, per corpus file, the start of the first line `validate` prints after the file name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.core.sitechecks import load_site_checked as load_site  # what run, validate and a reload use
from agent.errors import ConfigError
from agent.tools.cli import main
from tests.peers.mosquitto import Broker

from .agentkit import ROOT, Collector, start_agent_process, write_site

CORPUS = Path(__file__).parent / "badinput"
EXPECTED: dict[str, str] = {}
for _line in (CORPUS / "expected.tsv").read_text().splitlines():
    if _line and not _line.startswith("#"):
        _name, _, _exp = _line.partition("\t")
        EXPECTED[_name] = _exp

# CPU seconds (not wall time: the suite runs on parallel workers of a loaded machine) to refuse one file,
# interpreter start included (measured: ~0.3 s); a hang is caught by run_once's wall-clock timeout
MAX_SECONDS = 5.0
MAX_RSS_KB = 80 * 1024  # peak RSS of `run` refusing one file (measured: 39-53 MiB, most of it the imports)

HEAD = "site: {id: corpus}\nuplink:\n  broker: mqtt://127.0.0.1:1\n"
DEV = "devices:\n  - {name: box, type: edge-box}\n"


def _laughs() -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    return ("\n".join(lines) + "\n" + HEAD + DEV).encode()


def _devices(n: int, label: str = "") -> bytes:
    extra = f", labels: {{note: {label}}}" if label else ""
    return (HEAD + "devices:\n" + "".join(f"  - {{name: d{i}, type: edge-box{extra}}}\n" for i in range(n))).encode()


# name -> (content, start of the first line after the file name); generated, not committed (size, bytes)
GENERATED: dict[str, tuple[Callable[[], bytes], str]] = {
    "huge-10mb": (lambda: (HEAD + DEV).encode() + b"#" * 10 * 1024 * 1024, ": file too large: 10485"),
    "devices-100k": (lambda: _devices(100_000), ": file too large:"),
    "devices-2001-near-1mib": (lambda: _devices(2001, "x" * 440), ":4: devices: 2001 devices; the limit is 2000"),
    "client-id-70000": (lambda: (HEAD + f"  client_id: {'c' * 70000}\n" + DEV).encode(),
                        ":4: uplink.client_id: client_id is 70000 bytes long; the limit is 256"),
    "billion-laughs": (_laughs, ":6: aliases expand to more than 100000 values"),
    "deep-flow-3000": (lambda: (HEAD + "labels: " + "[" * 3000 + "]" * 3000 + "\n" + DEV).encode(),
                       ":4: YAML syntax error: exceeded maximum nesting depth"),
    "deep-block-3000": (lambda: (HEAD + DEV + "".join(" " * i + f"k{i}:\n" for i in range(3000))).encode(),
                        ": file too large: 4518"),  # 3000 levels of block indentation are 4.5 MB
    "deep-block-1000": (lambda: (HEAD + DEV + "".join(" " * i + f"k{i}:\n" for i in range(1000))).encode(),
                        ":38: nested deeper than 32 levels"),
    "deep-seq-3000": (lambda: (HEAD + DEV + "labels:\n  " + "- " * 3000 + "x\n").encode(),
                      ":7: nested deeper than 32 levels"),
    "latin1": (lambda: "site: {id: corpus, name: Mairie d'Évry}\n".encode("latin-1") + (HEAD + DEV).encode()[19:],
               ":1: not UTF-8: byte 0xC9 at column 35"),
    "nul-byte": (lambda: (HEAD + DEV).encode().replace(b"uplink:", b"up\x00link:"), ":2: NUL byte at column 3"),
    "utf16": (lambda: (HEAD + DEV).encode("utf-16"), ":1: the file is UTF-16"),
    "utf32": (lambda: (HEAD + DEV).encode("utf-32"), ":1: the file is UTF-16 or UTF-32"),
    "empty": (lambda: b"", ":1: the file is empty: a site file needs site, uplink and devices"),
    "whitespace-only": (lambda: b"\n   \n\t\n", ":1: the file is empty"),
    "comments-only": (lambda: b"# site: {id: x}\n# uplink: ...\n", ":1: the file is only comments"),
    "number-5000-digits": (lambda: (HEAD + f"  keepalive: {'9' * 5000}\n" + DEV).encode(),
                           ":4: a number with 5000 characters"),
    "control-char": (lambda: (HEAD + DEV).encode().replace(b"corpus", b"cor\x07pus"),
                     ":1: YAML error: column 15: character '\\x07' (U+0007) is not allowed in YAML"),
    "site-id-70000": (lambda: (f"site: {{id: {'x' * 70000}}}\n" + HEAD[19:] + DEV).encode(),
                      f":1: site.id: '{'x' * 56}... is not allowed"),
    "key-70000": (lambda: (HEAD + DEV + f"{'k' * 70000}: 1\n").encode(),
                  ":6: YAML syntax error: could not find expected ':'"),  # YAML: a plain key is at most 1024
    "key-1000": (lambda: (HEAD + DEV + f"{'k' * 1000}: 1\n").encode(), f":6: {'k' * 61}...: unknown key"),
    "prefix-70000-wildcard": (lambda: (HEAD + f"  topic_prefix: {'+' * 70000}\n" + DEV).encode(),
                              ":4: uplink.topic_prefix: topic_prefix '+++"),
    "binary-garbage": (lambda: bytes(range(1, 256)) * 64, ":2: not UTF-8: byte 0x80 at column 118"),
}

REFUSED = sorted(f"refused/{p.name}" for p in (CORPUS / "refused").glob("*.yaml"))
SKIPPED = sorted(f"skipped/{p.name}" for p in (CORPUS / "skipped").glob("*.yaml"))
PROFILES = sorted(f"profiles/{p.name}" for p in (CORPUS / "profiles").glob("*.yaml"))


def _site_file(case: str, tmp: Path) -> tuple[Path, str]:
    """(a copy of the case in tmp, the expected start of its first problem line)."""
    path = tmp / "site.yaml"
    if case in GENERATED:
        make, exp = GENERATED[case]
        path.write_bytes(make())
        return path, exp
    shutil.copyfile(CORPUS / case, path)
    return path, EXPECTED[case]


# `edge-agent run` in a fresh interpreter that notes its own peak RSS (VmHWM of its address space) at exit.
# ru_maxrss from wait4 would also count the pytest process's pages shared with the child before exec.
_MEASURED_RUN = """
import atexit, pathlib, runpy, sys
out = pathlib.Path(sys.argv.pop(1))
def note():
    import os
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    t = os.times()
    out.write_text(f"{hwm.split()[1]} {t.user + t.system}")
atexit.register(note)
sys.argv[0] = "edge-agent"
runpy.run_module("agent.tools.cli", run_name="__main__", alter_sys=True)
"""


def run_once(site: Path, tmp: Path, timeout: float = 20.0) -> tuple[int, str, float, int]:
    """Run `edge-agent run` on a file that must be refused: (exit code, output, CPU seconds, peak RSS in KiB)."""
    log, hwm = tmp / "run.log", tmp / "run.hwm"
    env = {**os.environ, "STATE_DIRECTORY": str(tmp / "state"), "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _MEASURED_RUN, str(hwm), "run", "--config", str(site)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    rss, cpu = hwm.read_text().split() if hwm.exists() else ("0", "0")
    return rc, log.read_text(errors="replace"), float(cpu), int(rss)


def _assert_refused_in_process(site: Path) -> None:
    """Guard before any process runs the file: it must be refused, so nothing ever connects anywhere."""
    with pytest.raises(ConfigError):
        load_site(site, strict=False)


@pytest.mark.parametrize("case", REFUSED + sorted(GENERATED))
def test_run_and_validate_refuse_with_a_located_error(case: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    site, exp = _site_file(case, tmp_path)
    _assert_refused_in_process(site)
    rc, out, secs, rss = run_once(site, tmp_path)
    if os.environ.get("EDGE_AGENT_TEST_FIGURES"):  # the figures of every file, for the record
        with capsys.disabled():
            print(f"\n{case}: {site.stat().st_size} B refused in {secs:.2f} CPU-s, peak RSS {rss / 1024:.1f} MiB",
                  end="")
    assert "Traceback" not in out, out
    assert rc == 78, out
    first = out.splitlines()[0]
    assert first.startswith(f"{site}{exp}"), out
    assert secs < MAX_SECONDS and 0 < rss < MAX_RSS_KB, (secs, rss)
    # validate agrees: refused (78), same first line
    capsys.readouterr()
    assert main(["validate", str(site)]) == 78
    got = capsys.readouterr()
    assert "Traceback" not in got.out + got.err
    assert got.out.splitlines()[0] == first
    assert len(first) < 700  # a message never echoes a huge value


@pytest.mark.parametrize(("kind", "message"), [
    ("fifo", "not a regular file"), ("dev-zero", "not a regular file"), ("directory", "is a directory, not a file"),
    ("missing", "file not found"),
])
def test_special_files_are_refused_without_blocking(kind: str, message: str, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    if kind == "fifo":
        os.mkfifo(site)  # no writer: opening it for reading the usual way would block forever
    elif kind == "dev-zero":
        site.symlink_to("/dev/zero")  # endless
    elif kind == "directory":
        site.mkdir()
    rc, out, secs, rss = run_once(site, tmp_path, timeout=10)
    assert rc == 78 and out.splitlines()[0] == f"{site}: {message}" + (
        " (a FIFO or device?)" if message.startswith("not a") else ""), out
    assert secs < MAX_SECONDS and 0 < rss < MAX_RSS_KB


@pytest.mark.parametrize("case", SKIPPED)
def test_a_bad_device_entry_is_skipped_by_run_and_reported_by_validate(case: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    site, exp = _site_file(case, tmp_path)
    assert main(["validate", str(site)]) == 1
    got = capsys.readouterr()
    assert got.out.splitlines()[0].startswith(f"{site}{exp}")
    s = load_site(site, strict=False)
    assert not s.devices and any(str(p).startswith(f"{site}{exp}") for p in s.problems)
    # run starts (the broker address is loopback, port 1: nothing listens) and logs the located problem
    proc = start_agent_process(site, tmp_path / "run.log", env={"STATE_DIRECTORY": str(tmp_path / "state")})
    try:
        deadline = time.monotonic() + 20
        while f"config: {site}{exp}" not in (tmp_path / "run.log").read_text(errors="replace"):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        rc = proc.wait(15)
    log = (tmp_path / "run.log").read_text()
    assert rc == 0 and "Traceback" not in log, log


@pytest.mark.parametrize("case", PROFILES)
def test_validate_reports_each_broken_profile_located(case: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copy(CORPUS / case, folder)
    t0 = time.process_time()
    assert main(["validate", str(folder)]) == 1
    assert time.process_time() - t0 < MAX_SECONDS
    got = capsys.readouterr()
    assert "Traceback" not in got.out + got.err
    assert got.out.splitlines()[0].startswith(f"{folder / Path(case).name}{EXPECTED[case]}"), got.out


def test_broken_profiles_and_a_stray_site_file_never_stop_the_site(tmp_path: Path, broker: Broker,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 8 item 12: every broken profile of the corpus (a site backup, keys starting with site/uplink/
    outbox...) in the site's profile folder: validate says ok, run starts, plan and diag work."""
    shutil.copytree(CORPUS / "profiles", tmp_path / "profiles")
    site = write_site(tmp_path, broker.url, extra="profiles_dirs: [profiles]\n",
                      devices="  - {name: box, type: edge-box, interval: 0.1s}\n"
                              "  - {name: meter, type: socomec-countis-e34, connection: {host: 127.0.0.1, port: 1}}\n")
    assert main(["validate", str(site)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["plan", "meter", "--config", str(site)]) == 0
    assert "request(s) per" in capsys.readouterr().out
    assert main(["diag", "broker", "--config", str(site), "--timeout", "5"]) == 0, capsys.readouterr()
    s = load_site(site, strict=False)
    assert [d.name for d in s.devices] == ["box", "meter"]
    assert {Path(p.file).name for p in s.problems} == {Path(c).name for c in PROFILES}
    log = tmp_path / "run.log"
    proc = start_agent_process(site, log)
    try:
        deadline = time.monotonic() + 20
        while "ready:" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert proc.poll() is None
    finally:
        proc.terminate()
        rc = proc.wait(15)
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, text
    for case in PROFILES:
        assert f"config: {tmp_path / 'profiles' / Path(case).name}{EXPECTED[case]}" in text, case


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def test_a_running_agent_refuses_the_whole_corpus_by_reload(broker: Broker, tmp_path: Path) -> None:
    """One agent; every refused, generated and skipped file replaces its site file in turn, then SIGHUP:
    each is refused with a `config` event naming the located problem; the agent stays up and publishes."""
    site = write_site(tmp_path, broker.url, devices="  - {name: box, type: edge-box, interval: 0.1s, "
                      "overrides: {load1: {max_silence: 0.3s}}}\n")  # a heartbeat to see it publish
    good = site.read_bytes()
    cases = REFUSED + sorted(GENERATED) + SKIPPED
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await col.wait(lambda: any(m["doc"]["state"] == "online" for m in col.of("status")), 15, "online")
            hwm_before = _vm_hwm_kib(proc.pid)
            slowest = (0.0, "")
            for case in cases:
                scratch = tmp_path / "scratch"
                scratch.mkdir(exist_ok=True)
                candidate, exp = _site_file(case, scratch)
                if case not in SKIPPED:
                    _assert_refused_in_process(candidate)
                n = len([m for m in col.of("e") if m["doc"].get("kind") == "config"])
                site.write_bytes(candidate.read_bytes())
                t0 = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                await col.wait(lambda n=n: len([m for m in col.of("e") if m["doc"].get("kind") == "config"]) > n,
                               10, f"refusal of {case}")
                slowest = max(slowest, (time.monotonic() - t0, case))
                ev = [m["doc"] for m in col.of("e") if m["doc"].get("kind") == "config"][-1]
                assert ev["data"]["result"] == "refused", (case, ev)
                assert any(p.startswith(f"{site}{exp}") for p in ev["data"]["problems"]), (case, exp, ev["data"])
                assert proc.poll() is None, case
            hwm_after = _vm_hwm_kib(proc.pid)
            print(f"{len(cases)} files refused by reload; slowest {slowest[0] * 1000:.0f} ms ({slowest[1]}); "
                  f"agent peak RSS {hwm_before / 1024:.1f} MiB before, {hwm_after / 1024:.1f} MiB after")
            assert hwm_after - hwm_before < 60 * 1024, (hwm_before, hwm_after)
            # still alive on the old configuration, still publishing telemetry of its device
            n = len(col.of("t"))
            await col.wait(lambda: len(col.of("t")) > n + 2, 10, "still publishing")
            assert proc.poll() is None
            site.write_bytes(good)
        finally:
            proc.terminate()
            rc = proc.wait(15)
    text = (tmp_path / "agent.log").read_text()
    assert rc == 0 and "Traceback" not in text, text[-3000:]


def test_the_size_limit_is_exact_and_a_file_at_the_limits_loads_in_bounded_time(tmp_path: Path) -> None:
    """1 MiB loads; one byte more is refused before parsing. The largest accepted structure (just under the
    100,000-value budget) loads in bounded time."""
    from agent.config.yamlloc import MAX_FILE_BYTES, MAX_NODES, load_file

    body = (HEAD + DEV).encode()
    site = tmp_path / "site.yaml"
    site.write_bytes(body + b"#" * (MAX_FILE_BYTES - len(body)))
    assert load_site(site, strict=True).devices[0].name == "box"
    site.write_bytes(body + b"#" * (MAX_FILE_BYTES - len(body) + 1))
    with pytest.raises(ConfigError, match=r"site.yaml: file too large: 1048577 bytes, the limit is 1048576 bytes"):
        load_site(site)
    values = tmp_path / "values.yaml"
    values.write_text("v: [" + ", ".join("1" for _ in range(MAX_NODES - 3)) + "]\n")
    t0 = time.process_time()
    assert len(load_file(values).data["v"]) == MAX_NODES - 3
    assert time.process_time() - t0 < MAX_SECONDS
    values.write_text("v: [" + ", ".join("1" for _ in range(MAX_NODES)) + "]\n")
    with pytest.raises(ConfigError, match=r"values.yaml:1: the document expands to more than 100000 values"):
        load_file(values)


async def test_a_refusal_with_many_problems_still_fits_the_uplink(broker: Broker, tmp_path: Path) -> None:
    """With a 4 KiB message limit, a refusal listing 60 problems is cut to what fits (and says how many more)
    instead of being dropped as oversize: the platform always learns that a reload was refused."""
    site = write_site(tmp_path, broker.url, extra_uplink="  max_message_bytes: 4KiB\n")
    good = site.read_text()
    async with Collector(broker.port) as col:
        proc = start_agent_process(site, tmp_path / "agent.log")
        try:
            await col.wait(lambda: any(m["doc"]["state"] == "online" for m in col.of("status")), 15, "online")
            site.write_text(good + "".join(f"unknown_setting_number_{i:03d}_{'x' * 40}: 1\n" for i in range(60)))
            proc.send_signal(signal.SIGHUP)
            await col.wait(lambda: any(m["doc"].get("kind") == "config" for m in col.of("e")), 10, "refusal")
            msg = next(m for m in col.of("e") if m["doc"].get("kind") == "config")
            data = msg["doc"]["data"]
            assert data["result"] == "refused" and len(msg["raw"]) <= 4096
            assert data["problems"] and data["more"] == 60 - len(data["problems"])
            assert all(p.startswith(f"{site}:") and ": unknown key" in p for p in data["problems"])
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(15)
