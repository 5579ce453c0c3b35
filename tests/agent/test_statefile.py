"""The state files (alerts.state_file, outbox.path) at start-up, through `agentctl run` as a real
process: damaged, empty, unwritable, not ours, or on a full disk. Each case is one clear line and
a decision — started with the file moved aside (logged and counted), or refused (exit 1) — never
a traceback, never silent loss (issue 11, item 10; decisions in agent/statefile.py)."""

from __future__ import annotations

import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.statefile import open_state_file
from agent.statehealth import StateFileHealth
from alerts.engine import Silence
from alerts.store import AlertStore
from lab.ports import free_port
from tests.conftest import SmallFs

T0 = 1_700_000_000.0


def config_text(port: int, state_dir: Path, outbox: Path | None = None) -> str:
    closed = free_port()  # nothing listens there: the check fails, the exporter and notifier retry
    return f"""
agent: {{listen: "127.0.0.1:{port}", shutdown_timeout: 3s}}
checks:
  - {{name: web, type: tcp, host: 127.0.0.1, port: {closed}, interval: 500ms, timeout: 300ms}}
outbox: {{path: {outbox or state_dir / "outbox.db"}}}
exporters:
  - {{name: bus, type: mqtt, host: 127.0.0.1, port: {closed}}}
notifiers:
  - {{name: hook, type: webhook, url: "http://127.0.0.1:{closed}/hook"}}
alerts:
  state_file: {state_dir / "alerts.db"}
  rules: [{{name: down, check: "*", status: critical}}]
  routes: {{critical: [hook]}}
"""


def agentctl(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Run:
    """`agentctl run` on a config in `state_dir`; `wait_ready()` or `exit()`."""

    def __init__(self, tmp_path: Path, state_dir: Path, outbox: Path | None = None) -> None:
        self.port = free_port()
        path = tmp_path / "agent.yml"
        path.write_text(config_text(self.port, state_dir, outbox))
        self.proc = agentctl("run", "-c", str(path))

    def exit(self, timeout: float = 30) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def wait_ready(self, timeout: float = 30) -> str:
        """Wait for /ready, return /metrics."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited {self.proc.returncode}: {self.proc.communicate()[1]}")
            try:
                if get(f"http://127.0.0.1:{self.port}/ready")[0] == 200:
                    return get(f"http://127.0.0.1:{self.port}/metrics")[1]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the agent never became ready")
            time.sleep(0.1)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[list[Run]]:
    runs: list[Run] = []
    try:
        yield runs
    finally:
        for r in runs:
            r.kill()


def start(runs: list[Run], tmp_path: Path, state_dir: Path, outbox: Path | None = None) -> Run:
    r = Run(tmp_path, state_dir, outbox)
    runs.append(r)
    return r


def make_alerts_db(path: Path) -> None:
    """A real alert state file with a few pages (silences), closed cleanly."""
    store = AlertStore(path)
    for i in range(300):
        store.add_silence(Silence(f"s{i:03d}", (("check", f"web-{i}-" + "x" * 60),), T0, T0 + 10**9))
    store.close()


def make_outbox_db(path: Path) -> None:
    from tests.exporters.test_outbox import result

    box = Outbox(path, 10**7, ["bus"])
    box.append([result(i) for i in range(300)])
    box.close()


def damage(path: Path) -> None:
    """Overwrite pages in the middle of the file, as a bad disk or a torn copy would."""
    size = path.stat().st_size
    assert size >= 8 * 4096, size
    with path.open("r+b") as f:
        f.seek(3 * 4096)
        f.write(os.urandom(3 * 4096))


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", ["alerts.db", "outbox.db"])
def test_a_damaged_state_file_is_moved_aside_logged_counted_and_the_agent_starts(
    tmp_path: Path, run: list[Run], name: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (make_alerts_db if name == "alerts.db" else make_outbox_db)(state / name)
    damage(state / name)
    agent = start(run, tmp_path, state)
    metrics = agent.wait_ready()
    assert f'mamori_state_file_recovered_total{{file="{state / name}",reason="damaged"}} 1.0' in metrics
    assert f'mamori_durability_degraded{{file="{state / name}"}} 0.0' in metrics
    err = agent.stop()
    assert "Traceback" not in err
    asides = sorted(p.name for p in state.iterdir() if ".damaged-" in p.name)
    assert len(asides) == 1 and re.fullmatch(re.escape(name) + r"\.damaged-\d{8}T\d{6}Z", asides[0]), asides
    warnings = [line for line in err.splitlines() if "WARNING" in line and "moved aside" in line]
    assert len(warnings) == 1, err
    assert f"{state / name} was damaged (" in warnings[0] and str(state / asides[0]) in warnings[0]
    with sqlite3.connect(state / name) as db:  # the new file is sound
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)


def test_empty_state_files_are_moved_aside_and_counted_not_taken_for_new(
    tmp_path: Path, run: list[Run]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "alerts.db").write_bytes(b"")
    (state / "outbox.db").write_bytes(b"")
    agent = start(run, tmp_path, state)
    metrics = agent.wait_ready()
    for name in ("alerts.db", "outbox.db"):
        assert f'mamori_state_file_recovered_total{{file="{state / name}",reason="empty"}} 1.0' in metrics
    err = agent.stop()
    assert len([line for line in err.splitlines() if "was empty (0 bytes): moved aside to" in line]) == 2, err
    assert sorted(p.name.split(".damaged-")[0] for p in state.iterdir() if ".damaged-" in p.name) == [
        "alerts.db",
        "outbox.db",
    ]


def test_a_second_start_on_its_own_new_files_moves_nothing(tmp_path: Path, run: list[Run]) -> None:
    state = tmp_path / "state"
    for _ in range(2):
        agent = start(run, tmp_path, state)
        metrics = agent.wait_ready()
        assert 'reason="damaged"} 0.0' in metrics and 'reason="empty"} 0.0' in metrics
        assert "moved aside" not in agent.stop()
    assert sorted(p.name for p in state.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        "alerts.db",
        "outbox.db",
    ]


def test_an_unwritable_alert_state_file_refuses_to_start_in_one_line(
    small_fs: SmallFs, tmp_path: Path, run: list[Run]
) -> None:
    """It used to end in a traceback."""
    make_alerts_db(small_fs.path / "alerts.db")
    small_fs.read_only()  # EROFS: unwritable for root too
    code, err = start(run, tmp_path, small_fs.path, tmp_path / "outbox.db").exit()
    assert code == 1
    assert one_line(err) == (
        f"agentctl: cannot open the alert state file {small_fs.path / 'alerts.db'}: unable to open "
        "database file (its file system is read-only)"
    )


def test_an_unwritable_outbox_refuses_to_start_in_one_line(
    small_fs: SmallFs, tmp_path: Path, run: list[Run]
) -> None:
    """It used to open read-only and let the agent drop every result."""
    make_outbox_db(small_fs.path / "outbox.db")
    small_fs.read_only()
    code, err = start(run, tmp_path, tmp_path / "state", small_fs.path / "outbox.db").exit()
    assert code == 1
    assert one_line(err) == (
        f"agentctl: cannot open the outbox {small_fs.path / 'outbox.db'}: unable to open database file "
        "(its file system is read-only)"
    )


def test_an_unwritable_directory_refuses_to_start_in_one_line(
    small_fs: SmallFs, tmp_path: Path, run: list[Run]
) -> None:
    small_fs.read_only()  # no file yet, and none can be created
    code, err = start(run, tmp_path, small_fs.path).exit()
    assert code == 1
    line = one_line(err)
    assert line.startswith(f"agentctl: cannot open the alert state file {small_fs.path / 'alerts.db'}: "), (
        line
    )
    assert line.endswith("(its file system is read-only)"), line


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path, run: list[Run]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    text = "checks: []\n" * 500  # e.g. state_file pointed at a config file by mistake
    (state / "alerts.db").write_text(text)
    code, err = start(run, tmp_path, state).exit()
    assert code == 1
    line = one_line(err)
    assert line == (
        f"agentctl: the alert state file {state / 'alerts.db'} is not a SQLite database: not touching it "
        "(check the path in the config, or move the file away)"
    )
    assert (state / "alerts.db").read_text() == text and not list(state.glob("*.damaged-*"))


def test_a_full_disk_at_start_refuses_in_one_line_and_leaves_no_empty_file(
    small_fs: SmallFs, tmp_path: Path, run: list[Run]
) -> None:
    small_fs.fill()
    code, err = start(run, tmp_path, small_fs.path).exit()
    assert code == 1
    line = one_line(err)
    assert line.startswith(f"agentctl: cannot write the alert state file {small_fs.path / 'alerts.db'}: "), (
        line
    )
    assert "no space left" in line, line
    # No 0-byte file left behind that the next start would take for a lost one.
    assert not (small_fs.path / "alerts.db").exists()
    small_fs.free()
    agent = start(run, tmp_path, small_fs.path)
    assert 'reason="empty"} 0.0' in agent.wait_ready()
    agent.stop()


def test_the_cli_reports_a_damaged_alert_state_file_in_one_line_and_moves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    make_alerts_db(state / "alerts.db")
    damage(state / "alerts.db")
    path = tmp_path / "agent.yml"
    path.write_text(config_text(free_port(), state))
    before = (state / "alerts.db").read_bytes()
    for args in (
        ["alerts"],
        ["silence", "list"],
        ["silence", "add", "--match", "check=web", "--duration", "1h", "--comment", "deploy"],
    ):
        proc = agentctl(*args, "-c", str(path))
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1, (args, out, err)
        assert one_line(err) == (
            f"agentctl: the alert state file {state / 'alerts.db'} is damaged (database disk image is "
            "malformed): the agent moves it aside and starts empty when it next starts"
        ), args
    assert (state / "alerts.db").read_bytes() == before and not list(state.glob("*.damaged-*"))


def test_open_state_file_unit_cases(tmp_path: Path) -> None:
    """The decisions without a process: empty and damaged are moved aside (counted), the same
    files are refused without `recover`, a missing file is created and not counted."""
    health = StateFileHealth(tmp_path / "x.db", "test file")

    def setup(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS t (x)")

    db = open_state_file(tmp_path / "x.db", "test file", setup, health=health)
    db.executemany("INSERT INTO t VALUES (?)", [("y" * 500,) for _ in range(200)])
    db.close()
    assert health.recovered == {}
    damage(tmp_path / "x.db")
    with pytest.raises(
        Exception, match=r"^the test file .*/x.db is damaged \(.*\): the agent moves it aside"
    ):
        open_state_file(tmp_path / "x.db", "test file", setup, recover=False)
    open_state_file(tmp_path / "x.db", "test file", setup, health=health).close()
    assert health.recovered == {"damaged": 1}
    (tmp_path / "y.db").write_bytes(b"")
    open_state_file(tmp_path / "y.db", "test file", setup, health=health).close()
    assert health.recovered == {"damaged": 1, "empty": 1}
    assert len(list(tmp_path.glob("x.db.damaged-*"))) == 1 and len(list(tmp_path.glob("y.db.damaged-*"))) == 1


def test_sound_state_files_on_a_full_disk_refuse_to_start_in_one_line(
    small_fs: SmallFs, tmp_path: Path, run: list[Run]
) -> None:
    """sqlite cannot open a WAL file without creating its -shm index: refused, with the reason."""
    make_alerts_db(small_fs.path / "alerts.db")
    small_fs.fill()
    code, err = start(run, tmp_path, small_fs.path, tmp_path / "outbox.db").exit()
    assert code == 1
    line = one_line(err)
    assert line.startswith(f"agentctl: cannot write the alert state file {small_fs.path / 'alerts.db'}: "), (
        line
    )
    assert line.endswith("(no space left on its file system)"), line
    assert not list(small_fs.path.glob("*.damaged-*"))


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_new_state_files_are_0600_with_their_wal_and_shm_in_0700_directories(
    tmp_path: Path, umask: int
) -> None:
    """They may hold text that targets and services sent (issue 12, item 11). sqlite alone makes
    them 0644 less the umask; with umask 0, 0666."""
    existing = tmp_path / "existing"
    existing.mkdir()
    existing.chmod(0o755)
    old = os.umask(umask)
    try:
        alerts = AlertStore(existing / "new" / "dir" / "alerts.db")
        alerts.add_silence(Silence("s1", (("check", "web"),), T0, T0 + 60))
        box = Outbox(existing / "outbox" / "outbox.db", 10**7, ["bus"])
        from tests.exporters.test_outbox import result

        box.append([result(1)])
        files = [
            Path(f"{db}{suffix}")
            for db in (existing / "new" / "dir" / "alerts.db", existing / "outbox" / "outbox.db")
            for suffix in ("", "-wal", "-shm")
        ]
        modes = {str(p.relative_to(existing)): oct(p.stat().st_mode & 0o777) for p in files}
        alerts.close()
        box.close()
    finally:
        os.umask(old)
    assert set(modes.values()) == {"0o600"}, modes
    for directory in ("new", "new/dir", "outbox"):
        assert oct((existing / directory).stat().st_mode & 0o777) == "0o700", directory
    assert oct(existing.stat().st_mode & 0o777) == "0o755"  # the operator's: left as it is


def test_an_existing_state_file_others_may_read_is_opened_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def setup(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS t (x)")

    open_state_file(tmp_path / "x.db", "test file", setup).close()
    (tmp_path / "x.db").chmod(0o644)  # as an older agent made it
    with caplog.at_level(logging.WARNING, "mamori.statefile"):
        open_state_file(tmp_path / "x.db", "test file", setup).close()
        open_state_file(tmp_path / "x.db", "test file", setup, recover=False, probe=False).close()  # the CLI
    assert [r.getMessage() for r in caplog.records] == [
        f"the test file {tmp_path / 'x.db'} is accessible to other users (mode 0644); it may hold text "
        "that checked targets and notification services sent: chmod 600 it"
    ]
    assert oct((tmp_path / "x.db").stat().st_mode & 0o777) == "0o644"  # not changed behind the operator
