"""The `pg_backup` check with real directories, a real script as `command`, and a fake
`pgbackrest` executable that prints the documented `info --output=json` shape (and fails the
way pgBackRest fails: a non-zero exit with `ERROR: [NNN]: ...` on stderr)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent import config
from agent.config import ConfigError
from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.pg_backup import PgBackupCheck, PgBackupConfig, parse_time

HOUR = 3600.0
DAY = 86400.0


def backup_check(**values: Any) -> PgBackupCheck:
    return PgBackupCheck(
        PgBackupConfig.model_validate(
            {"name": "backups", "type": "pg_backup", "interval": 60, "timeout": 2, **values}
        )
    )


def value(result: CheckResult, name: str) -> float:
    (found,) = [s.value for s in result.samples if s.name == name]
    return found


def names(result: CheckResult) -> set[str]:
    return {s.name for s in result.samples}


def script(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(0o755)
    return path


# --- directory ---------------------------------------------------------------------------------


def make_backups(root: Path, ages_hours: list[float]) -> None:
    root.mkdir(exist_ok=True)
    now = time.time()
    for i, age in enumerate(ages_hours):
        entry = root / f"base-{i}"
        entry.mkdir()
        (entry / "base.tar").write_bytes(b"x")
        os.utime(entry, (now - age * HOUR, now - age * HOUR))


async def test_directory_newest_entry_is_fresh(tmp_path: Path) -> None:
    make_backups(tmp_path / "b", [50, 2, 26.5])
    result = await execute(backup_check(directory=str(tmp_path / "b")))
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert 2 * HOUR - 5 < value(result, "mamori_pg_backup_age_seconds") < 2 * HOUR + 5
    assert value(result, "mamori_pg_backups") == 3
    assert "mamori_pg_pitr_window_seconds" not in names(result)  # a directory cannot say
    assert result.message == "newest backup (base-1) is 2h00m old"
    assert result.target == str(tmp_path / "b")


async def test_directory_stale_empty_and_missing(tmp_path: Path) -> None:
    make_backups(tmp_path / "old", [27, 30])
    result = await execute(backup_check(directory=str(tmp_path / "old")))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.BACKUP_STALE)
    assert result.message == "newest backup (base-0) is 27h00m old, more than max_age 26h00m"
    (tmp_path / "empty").mkdir()
    result = await execute(backup_check(directory=str(tmp_path / "empty")))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.BACKUP_STALE)
    assert result.message == f"no backup found ({tmp_path / 'empty'})"
    result = await execute(backup_check(directory=str(tmp_path / "missing")))
    assert (result.status, result.reason) == (Status.UNKNOWN, Reason.UNAVAILABLE)
    assert result.message == f"cannot read {tmp_path / 'missing'}: No such file or directory"


# --- command -----------------------------------------------------------------------------------


async def test_command_prints_an_iso_timestamp_or_unix_seconds(tmp_path: Path) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 3 * HOUR))
    iso = script(tmp_path / "iso.sh", f"#!/bin/sh\necho '{stamp}'\n")
    result = await execute(backup_check(command=[str(iso)]))
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert 3 * HOUR - 5 < value(result, "mamori_pg_backup_age_seconds") < 3 * HOUR + 5
    assert result.target == "iso.sh"
    unix = script(tmp_path / "unix.sh", f"#!/bin/sh\necho {time.time() - 30 * HOUR:.0f}\necho ignored-not\n")
    result = await execute(backup_check(command=[str(unix)], pitr_window=None))
    assert (result.status, result.reason) == (Status.UNKNOWN, Reason.UNAVAILABLE)  # 2nd line: garbage
    unix.write_text(f"#!/bin/sh\necho {time.time() - 30 * HOUR:.0f}\n")
    result = await execute(backup_check(command=[str(unix)]))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.BACKUP_STALE)


async def test_command_second_line_is_the_oldest_restorable_point(tmp_path: Path) -> None:
    now = time.time()
    both = script(tmp_path / "both.sh", f"#!/bin/sh\necho {now - HOUR:.0f}\necho {now - 3 * DAY:.0f}\n")
    result = await execute(backup_check(command=[str(both), "ignored-arg"]))
    assert (result.status, result.reason) == (Status.WARNING, Reason.PITR_WINDOW_SHORT), result.message
    assert 3 * DAY - 5 < value(result, "mamori_pg_pitr_window_seconds") < 3 * DAY + 5
    assert "less than pitr_window 168h00m" in result.message
    result = await execute(backup_check(command=[str(both)], pitr_window="2d"))
    assert result.status is Status.OK and "; restorable window 7" in result.message  # 71h59m or 72h00m


async def test_command_failures_are_unknown_with_one_line(tmp_path: Path) -> None:
    cases = {
        "garbage.sh": ("#!/bin/sh\necho 'last backup: yesterday'\n",
                       "the command printed 'last backup: yesterday': "
                       "expected an ISO-8601 timestamp or unix seconds"),
        "empty.sh": ("#!/bin/sh\ntrue\n",
                     "the command printed nothing (expected a timestamp on its first line)"),
        "fails.sh": ("#!/bin/sh\necho 'no such bucket' >&2\necho 'second line' >&2\nexit 3\n",
                     "fails.sh exited with status 3: no such bucket"),
    }  # fmt: skip
    for name, (body, message) in cases.items():
        result = await execute(backup_check(command=[str(script(tmp_path / name, body))]))
        assert (result.status, result.reason, result.message) == (Status.UNKNOWN, Reason.UNAVAILABLE, message)
    result = await execute(backup_check(command=[str(tmp_path / "nope")]))
    assert (result.status, result.reason) == (Status.UNKNOWN, Reason.UNAVAILABLE)
    assert result.message == f"cannot run {tmp_path / 'nope'}: No such file or directory"


async def test_a_hanging_command_is_killed_at_the_deadline(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # A shell that waits on a child: the whole process group must die, not only the shell.
    hang = script(tmp_path / "hang.sh", f"#!/bin/sh\nsleep 30 &\necho $! > {pid_file}\nwait\n")
    began = time.monotonic()
    result = await execute(backup_check(command=[str(hang)]))
    assert time.monotonic() - began < 2.0
    assert (result.status, result.reason, result.message) == (
        Status.UNKNOWN,
        Reason.UNAVAILABLE,
        "hang.sh did not finish in time",
    )
    child = int(pid_file.read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_parse_time() -> None:
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_time("2023-11-14T23:13:20+01:00") == 1700000000.0
    assert parse_time("2023-11-14 22:13:20") == 1700000000.0  # no offset: UTC
    with pytest.raises(ValueError):
        parse_time("yesterday")


# --- pgbackrest ----------------------------------------------------------------------------------


def fake_pgbackrest(tmp_path: Path, reply: Any, exit_code: int = 0, stderr: str = "") -> Path:
    """An executable that checks its argv like pgBackRest would and prints `reply` as JSON."""
    (tmp_path / "reply.json").write_text(json.dumps(reply))
    return script(
        tmp_path / "pgbackrest",
        f"""#!{sys.executable}
import sys
args = sys.argv[1:]
if args[-1] != "info" or "--output=json" not in args or not any(a.startswith("--stanza=") for a in args):
    print("ERROR: [031]: invalid command line " + repr(args), file=sys.stderr)
    sys.exit(31)
if {stderr!r}:
    print({stderr!r}, file=sys.stderr)
if {exit_code}:
    sys.exit({exit_code})
print(open({str(tmp_path / "reply.json")!r}).read())
""",
    )


def backup(label: str, start: float, stop: float, wal_start: str, kind: str = "full") -> dict[str, Any]:
    """One entry of `backup[]` as pgBackRest 2.x prints it (fields we do not read included)."""
    return {
        "archive": {"start": wal_start, "stop": wal_start},
        "backrest": {"format": 5, "version": "2.54.0"},
        "database": {"id": 1, "repo-key": 1},
        "error": False,
        "info": {"delta": 24316343, "repository": {"delta": 2969512, "size": 2969512}, "size": 24316343},
        "label": label,
        "lsn": {"start": "0/2000028", "stop": "0/2000100"},
        "prior": None,
        "reference": None,
        "timestamp": {"start": int(start), "stop": int(stop)},
        "type": kind,
    }


def stanza(
    backups: list[dict[str, Any]], archive_min: str | None, code: int = 0, message: str = "ok"
) -> list[Any]:
    archive = (
        []
        if archive_min is None
        else [
            {
                "database": {"id": 1, "repo-key": 1},
                "id": "15-1",
                "max": "000000010000000000000020",
                "min": archive_min,
            }
        ]
    )
    return [
        {
            "archive": archive,
            "backup": backups,
            "cipher": "none",
            "db": [{"id": 1, "repo-key": 1, "system-id": 7713362726707395095, "version": "15"}],
            "name": "demo",
            "repo": [{"cipher": "none", "key": 1, "status": {"code": code, "message": message}}],
            "status": {"code": code, "lock": {"backup": {"held": False}}, "message": message},
        }
    ]


async def test_pgbackrest_newest_stop_and_pitr_window(tmp_path: Path) -> None:
    now = time.time()
    reply = stanza(
        [
            backup("F1", now - 10 * DAY, now - 10 * DAY + 60, "000000010000000000000002"),  # WAL expired
            backup("F2", now - 8 * DAY, now - 8 * DAY + 60, "000000010000000000000005"),
            backup("F2_D1", now - 5 * HOUR - 60, now - 5 * HOUR, "000000010000000000000010", "diff"),
        ],
        archive_min="000000010000000000000005",
    )
    tool = fake_pgbackrest(tmp_path, reply)
    check = backup_check(pgbackrest={"stanza": "demo", "command": str(tool)})
    result = await execute(check)
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert 5 * HOUR - 5 < value(result, "mamori_pg_backup_age_seconds") < 5 * HOUR + 5
    # The oldest restorable point is F2's end: F1's first WAL segment is gone from the archive.
    assert 8 * DAY - 65 < value(result, "mamori_pg_pitr_window_seconds") < 8 * DAY - 55
    assert value(result, "mamori_pg_backups") == 3
    assert result.message == "newest backup (F2_D1) is 5h00m old; restorable window 191h59m"
    assert result.target == "pgbackrest:demo"
    perf = {p.label: p for p in check.perfdata(result)}
    assert perf["backup_age"].crit == 26 * HOUR and "pitr_window" in perf


async def test_pgbackrest_window_too_short_and_backups_stale(tmp_path: Path) -> None:
    now = time.time()
    short = stanza(
        [backup("F1", now - 2 * DAY - 60, now - 2 * DAY, "000000010000000000000002")],
        "000000010000000000000001",
    )
    tool = fake_pgbackrest(tmp_path, short)
    result = await execute(backup_check(pgbackrest={"stanza": "demo", "command": str(tool)}))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.BACKUP_STALE)  # 48 h > 26 h
    result = await execute(backup_check(pgbackrest={"stanza": "demo", "command": str(tool)}, max_age="3d"))
    assert (result.status, result.reason) == (Status.WARNING, Reason.PITR_WINDOW_SHORT)
    assert result.message.endswith("the oldest restorable point is 48h00m ago, less than pitr_window 168h00m")


async def test_pgbackrest_without_backups_and_with_errors(tmp_path: Path) -> None:
    none = stanza([], "000000010000000000000001", code=2, message="no valid backups")
    cfg = {"stanza": "demo", "command": str(fake_pgbackrest(tmp_path, none))}
    result = await execute(backup_check(pgbackrest=cfg))
    assert (result.status, result.reason, result.message) == (
        Status.CRITICAL,
        Reason.BACKUP_STALE,
        "no backup found (pgbackrest:demo)",
    )
    missing = stanza([], None, code=1, message="missing stanza path")
    fake_pgbackrest(tmp_path, missing)
    result = await execute(backup_check(pgbackrest=cfg))
    assert (result.status, result.reason, result.message) == (
        Status.UNKNOWN,
        Reason.UNAVAILABLE,
        "pgbackrest stanza demo: missing stanza path",
    )
    result = await execute(backup_check(pgbackrest={**cfg, "stanza": "other"}))
    assert result.message == "pgbackrest info has no stanza 'other'"
    fake_pgbackrest(
        tmp_path, None, exit_code=55, stderr="ERROR: [055]: unable to load info file '/repo/backup.info'"
    )
    result = await execute(backup_check(pgbackrest=cfg))
    assert (result.status, result.reason, result.message) == (
        Status.UNKNOWN,
        Reason.UNAVAILABLE,
        "pgbackrest exited with status 55: ERROR: [055]: unable to load info file '/repo/backup.info'",
    )
    (tmp_path / "pgbackrest").write_text("#!/bin/sh\necho '<html>'\n")
    result = await execute(backup_check(pgbackrest=cfg))
    assert result.message == "pgbackrest printed something that is not JSON"


async def test_pgbackrest_argv_carries_the_stanza_and_config(tmp_path: Path) -> None:
    log = tmp_path / "argv"
    tool = script(tmp_path / "pgbackrest", f"#!/bin/sh\necho \"$@\" > {log}\necho '[]'\n")
    await execute(
        backup_check(pgbackrest={"stanza": "demo", "command": str(tool), "config": "/etc/pgb.conf"})
    )
    assert log.read_text() == "--stanza=demo --config=/etc/pgb.conf --output=json info\n"


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("", "b.yml:2: checks[0]: give exactly one source: directory, command or pgbackrest (got none)"),
        ("    directory: /x\n    command: [date]\n",
         "b.yml:2: checks[0]: give exactly one source: directory, command or pgbackrest "
         "(got directory, command)"),
        ("    command: []\n",
         "b.yml:4: checks[0].command: Tuple should have at least 1 item after validation, not 0"),
        ("    command: 'date +%s'\n", "b.yml:4: checks[0].command: Input should be a valid tuple"),
        ("    pgbackrest: {command: pgbackrest}\n",
         "b.yml:4: checks[0].pgbackrest.stanza: required key is missing"),
        ("    directory: /x\n    max_age: soon\n",
         "b.yml:5: checks[0].max_age: invalid duration 'soon': expected a duration like 10s, 1m30s or 250ms"),
    ],
)  # fmt: skip
def test_config_errors(body: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse(f"checks:\n  - name: b\n    type: pg_backup\n{body}", "b.yml", env={})
    assert str(exc.value) == error


def test_config_defaults() -> None:
    cfg = config.parse("checks:\n  - {name: b, type: pg_backup, directory: /x}\n", "b.yml", env={}).checks[0]
    assert isinstance(cfg, PgBackupConfig)
    assert (cfg.max_age, cfg.pitr_window) == (26 * HOUR, 7 * DAY)
