"""Config loading: every golden bad config produces its exact error; good configs load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import config
from agent.config import ConfigError
from agent.yamldoc import interpolate

HERE = Path(__file__).parent
INVALID = sorted((HERE / "invalid_configs").glob("*.yml"))


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_gives_its_exact_error(path: Path) -> None:
    expected = path.with_suffix(".err").read_text().rstrip("\n").replace("{file}", str(path))
    with pytest.raises(ConfigError) as exc:
        config.load(path, env={})
    assert str(exc.value) == expected


def test_every_invalid_config_has_an_expected_error() -> None:
    assert len(INVALID) >= 15
    for path in INVALID:
        assert path.with_suffix(".err").exists(), path


def test_validate_cli_prints_errors_without_traceback() -> None:
    bad = HERE / "invalid_configs" / "several_errors.yml"
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "validate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 4
    assert proc.stdout == ""


def test_validate_cli_accepts_the_embedded_default_and_reports_missing_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("checks:\n  - {name: db, type: tcp, host: 127.0.0.1, port: 5432}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "validate", str(good), str(tmp_path / "missing.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == f"{good}: OK (1 checks)\n"
    assert proc.stderr == f"{tmp_path / 'missing.yml'}: (file): cannot read: No such file or directory\n"


def test_embedded_default_config_loads() -> None:
    cfg = config.load(None, env={})
    assert [c.type for c in cfg.checks] == ["host", "http"]
    assert cfg.agent.listen == "127.0.0.1:9630"
    assert cfg.check("self").url == "http://127.0.0.1:9630/healthz"  # type: ignore[attr-defined]


def test_defaults_flow_from_agent_section_to_checks(tmp_path: Path) -> None:
    cfg = config.parse(
        "agent:\n  interval: 1m\n  timeout: 2s\nchecks:\n"
        "  - {name: a, type: tcp, host: h, port: 1}\n"
        "  - {name: b, type: tcp, host: h, port: 1, interval: 10s, timeout: 250ms, tags: [db]}\n",
        "x.yml",
        env={},
    )
    a, b = cfg.checks
    assert (a.interval, a.timeout, a.tags) == (60.0, 2.0, ())
    assert (b.interval, b.timeout, b.tags) == (10.0, 0.25, ("db",))


def test_interpolation() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A}y", env) == "x1y"
    assert interpolate("${B:-dflt}", env) == "dflt"
    assert interpolate("${EMPTY:-dflt}", env) == "dflt"
    assert interpolate("$${A}", env) == "${A}"
    with pytest.raises(KeyError):
        interpolate("${B}", env)


def test_interpolated_values_are_validated_with_their_line() -> None:
    text = "agent:\n  name: a\n  interval: ${IVAL:-30s}\n"
    assert config.parse(text, "x.yml", env={"IVAL": "5s"}).agent.interval == 5.0
    with pytest.raises(ConfigError, match=r"^x.yml:3: agent.interval: invalid duration 'soon'"):
        config.parse(text, "x.yml", env={"IVAL": "soon"})


def test_merge_keys_and_anchors() -> None:
    text = (
        "x-db: &db {type: tcp, host: h, interval: 20s}\n"
        "checks:\n  - {<<: *db, name: a, port: 1}\n  - {<<: *db, name: b, port: 2, interval: 1m}\n"
    )
    cfg = config.parse(text, "x.yml", env={})
    assert [(c.name, c.interval) for c in cfg.checks] == [("a", 20.0), ("b", 60.0)]


def test_config_models_are_frozen() -> None:
    cfg = config.parse("checks:\n  - {name: a, type: tcp, host: h, port: 1}\n", "x.yml", env={})
    with pytest.raises(Exception, match="frozen"):
        cfg.checks[0].name = "b"  # type: ignore[misc]
