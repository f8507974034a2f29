"""Table-driven validation cases: each folder under testcases/ holds a site.yaml or profile.yaml and
expected.txt, one line per expected problem (the start of the line `edge-agent validate` must print), and
`# exit N` when validate must exit with N (78: `run` would refuse the site file; default 1 with problems)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.tools.cli import main

CASES = sorted(p for p in (Path(__file__).parent / "testcases").iterdir() if p.is_dir())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate_case(case: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(case)
    target = "site.yaml" if (case / "site.yaml").exists() else "profile.yaml"
    lines = (case / "expected.txt").read_text().splitlines()
    expected = [line for line in lines if line.strip() and not line.startswith("#")]
    exit_code = next((int(line.split()[-1]) for line in lines if line.startswith("# exit")), 1 if expected else 0)
    rc = main(["validate", target])
    out = capsys.readouterr()
    got = [line for line in out.out.splitlines() if line.strip()]
    assert "Traceback" not in out.err + out.out
    assert rc == exit_code, out
    assert len(got) == len(expected), f"got {got}"
    for exp in expected:
        assert any(g.startswith(exp) for g in got), f"missing {exp!r} in {got}"


def test_validate_json_output(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.chdir(Path(__file__).parent / "testcases" / "unknown-key")
    assert main(["validate", "--json", "site.yaml"]) == 78
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["refused"] == ["site.yaml"]
    assert doc["problems"] == [{"file": "site.yaml", "line": 6, "key": "uplink.brokr_port", "message": "unknown key"}]


def test_shipped_profiles_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """Every profile shipped in profiles/ validates, and each has points."""
    from agent.config import load_profile

    root = Path(__file__).resolve().parents[2] / "profiles"
    files = sorted(root.glob("*.yaml"))
    assert files, "no shipped profiles found"
    for f in files:
        prof = load_profile(f)
        assert prof.points, f"{f.name} has no points"
    assert main(["validate", str(root)]) == 0, capsys.readouterr().out


def test_secret_by_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import load_site

    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mqtt-password").write_text("s3cret\n")
    site = tmp_path / "site.yaml"
    site.write_text("site: {id: demo}\nuplink:\n  broker: mqtt://127.0.0.1:1883\n  username: u\n"
                    "  password: {credential: mqtt-password}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    s = load_site(site)
    assert s.secrets.password is not None and s.secrets.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s.secrets) and "s3cret" not in repr(s.model)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"site.yaml:5: uplink.password: credential 'mqtt-password' asked for"):
        load_site(site)


def test_run_mode_skips_only_broken_devices(tmp_path: Path) -> None:
    """A bad device entry is reported, the good ones still load (a bad profile never stops working devices)."""
    from agent.config import load_site

    site = tmp_path / "site.yaml"
    site.write_text("site: {id: demo}\nuplink: {broker: 'mqtt://127.0.0.1:1883'}\ndevices:\n"
                    "  - {name: a, type: edge-box}\n  - {name: b, type: nope}\n"
                    "  - {name: c, type: edge-box, interval: x}\n")
    s = load_site(site, strict=False)
    assert [d.name for d in s.devices] == ["a"]
    keys = sorted(p.key for p in s.problems)
    assert keys == ["devices[1].type", "devices[2].interval"]
