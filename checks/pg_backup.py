"""`pg_backup`: is there a recent enough base backup, and how far back can we restore?

One source, exactly one of:

- `directory`: the newest modification time among the directory's entries (e.g. the target
  directories of `pg_basebackup -D DIR/$(date +%F)`), not recursive;
- `command`: an argv list run without a shell; its first output line is the newest backup's
  time (ISO-8601, or unix seconds), an optional second line the oldest point it can restore to;
- `pgbackrest`: `pgbackrest --stanza=S [--config=F] --output=json info`; the newest backup's
  `timestamp.stop`, and the oldest restorable point: the `timestamp.stop` of the oldest backup
  whose WAL (`archive.start`) is still in the archive (`archive[].min`).

The newest backup's age is held against `max_age` (CRITICAL `backup_stale`), the restorable
window against `pitr_window` when the source can say (WARNING `pitr_window_short`).

Guarantees: `run()` never raises for anything a source does; a command that fails, hangs,
or prints garbage is UNKNOWN `unavailable` with a one-line reason, and is killed (its whole
process group) at the deadline or when the run is cancelled. No shell is ever involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from agent.fields import Duration, Model
from agent.model import CheckResult, Reason, Sample, Status
from agent.text import seconds
from checks.base import Check, CheckConfig, CheckOutcome, PerfDatum

RUN_SHARE = 0.9  # of `timeout`: the command is killed after this much

# Sample names (agent/catalog.py).
AGE = "mamori_pg_backup_age_seconds"
LAST = "mamori_pg_backup_last_timestamp_seconds"
COUNT = "mamori_pg_backups"
PITR_WINDOW = "mamori_pg_pitr_window_seconds"

_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


class PgBackRest(Model):
    stanza: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    command: str = Field(default="pgbackrest", min_length=1)
    config: str | None = Field(default=None, min_length=1)

    def argv(self) -> list[str]:
        extra = [f"--config={self.config}"] if self.config else []
        return [self.command, f"--stanza={self.stanza}", *extra, "--output=json", "info"]


class PgBackupConfig(CheckConfig):
    type: Literal["pg_backup"] = "pg_backup"
    directory: str | None = Field(default=None, min_length=1)
    command: tuple[str, ...] | None = Field(default=None, min_length=1)
    pgbackrest: PgBackRest | None = None
    max_age: Duration = 26 * 3600.0
    pitr_window: Duration | None = 7 * 86400.0

    @model_validator(mode="after")
    def _one_source(self) -> PgBackupConfig:
        given = [k for k in ("directory", "command", "pgbackrest") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            raise ValueError(f"give exactly one source: directory, command or pgbackrest (got {got})")
        if self.command is not None and not self.command[0]:
            raise ValueError("command: the program (the first item) must not be empty")
        return self


class SourceError(Exception):
    """The source could not say: the message is one line, for the result."""


@dataclass(frozen=True, slots=True)
class Backups:
    newest: float  # unix seconds: when the newest backup finished
    oldest_restorable: float | None = None  # unix seconds; None: the source cannot say
    count: int | None = None
    label: str = ""  # the newest backup's name, for the message


class PgBackupCheck(Check[PgBackupConfig]):
    type_name: ClassVar[str] = "pg_backup"
    config_model: ClassVar[type[CheckConfig]] = PgBackupConfig

    @property
    def target(self) -> str:
        cfg = self.config
        if cfg.directory is not None:
            return cfg.directory
        if cfg.pgbackrest is not None:
            return f"pgbackrest:{cfg.pgbackrest.stanza}"
        assert cfg.command is not None
        return Path(cfg.command[0]).name

    async def run(self) -> CheckOutcome:
        cfg = self.config
        deadline = asyncio.get_running_loop().time() + self.time_left() * RUN_SHARE
        try:
            if cfg.directory is not None:
                found = await _from_directory(Path(cfg.directory), deadline)
            elif cfg.pgbackrest is not None:
                output = await _output(cfg.pgbackrest.argv(), deadline)
                found = _from_pgbackrest(output, cfg.pgbackrest.stanza)
            else:
                assert cfg.command is not None
                found = _from_command(await _output(list(cfg.command), deadline))
        except SourceError as exc:
            return CheckOutcome(Status.UNKNOWN, Reason.UNAVAILABLE, str(exc))
        if found is None:
            return CheckOutcome(Status.CRITICAL, Reason.BACKUP_STALE, f"no backup found ({self.target})")
        return self._verdict(found, time.time())

    def _verdict(self, found: Backups, now: float) -> CheckOutcome:
        cfg = self.config
        age = max(0.0, now - found.newest)
        samples = [Sample(AGE, age), Sample(LAST, found.newest)]
        if found.count is not None:
            samples.append(Sample(COUNT, float(found.count)))
        window = None if found.oldest_restorable is None else max(0.0, now - found.oldest_restorable)
        if window is not None:
            samples.append(Sample(PITR_WINDOW, window))
        label = f" ({found.label})" if found.label else ""
        text = f"newest backup{label} is {seconds(age)} old"
        window_text = "" if window is None else f"; restorable window {seconds(window)}"
        if age > cfg.max_age:
            return CheckOutcome(
                Status.CRITICAL,
                Reason.BACKUP_STALE,
                f"{text}, more than max_age {seconds(cfg.max_age)}{window_text}",
                tuple(samples),
            )
        if window is not None and cfg.pitr_window is not None and window < cfg.pitr_window:
            return CheckOutcome(
                Status.WARNING,
                Reason.PITR_WINDOW_SHORT,
                f"{text}; the oldest restorable point is {seconds(window)} ago, "
                f"less than pitr_window {seconds(cfg.pitr_window)}",
                tuple(samples),
            )
        return CheckOutcome(Status.OK, Reason.OK, f"{text}{window_text}", tuple(samples))

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        values = {s.name: s.value for s in result.samples}
        out = [PerfDatum("time", result.duration, "s", min=0)]
        if AGE in values:
            out.append(PerfDatum("backup_age", values[AGE], "s", crit=self.config.max_age, min=0))
        if PITR_WINDOW in values:
            out.append(PerfDatum("pitr_window", values[PITR_WINDOW], "s", min=0))
        return out


# --- sources ------------------------------------------------------------------------------------


async def _from_directory(directory: Path, deadline: float) -> Backups | None:
    def scan() -> Backups | None:
        newest: tuple[float, str] | None = None
        count = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                count += 1
                mtime = entry.stat(follow_symlinks=False).st_mtime
                if newest is None or mtime > newest[0]:
                    newest = (mtime, entry.name)
        if newest is None:
            return None
        return Backups(newest=newest[0], count=count, label=newest[1])

    try:
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        # A thread, bounded: a dead network mount blocks stat() in the kernel.
        return await asyncio.wait_for(asyncio.to_thread(scan), remaining)
    except TimeoutError:
        raise SourceError(f"cannot read {directory}: no answer from the filesystem in time") from None
    except OSError as exc:
        raise SourceError(f"cannot read {directory}: {exc.strerror or exc}") from None


async def _output(argv: list[str], deadline: float) -> str:
    """Run argv (no shell); return its stdout. SourceError on a failure to start, a non-zero exit,
    or no exit before `deadline`; the process group is killed whenever we stop waiting."""
    name = Path(argv[0]).name
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: killed with its children
        )
    except OSError as exc:
        raise SourceError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout_at(deadline):
            out, err = await proc.communicate()
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise SourceError(f"{name} did not finish in time") from None
        raise
    if proc.returncode != 0:
        why = _first_line(err) or _first_line(out) or "no output"
        raise SourceError(f"{name} exited with status {proc.returncode}: {why}")
    return out.decode("utf-8", errors="replace")


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            text = line.strip()
            return text if len(text) <= 200 else text[:197] + "..."
    return ""


def parse_time(text: str) -> float:
    """ISO-8601 (no offset means UTC) or unix seconds → unix seconds. ValueError otherwise."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _from_command(output: str) -> Backups:
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise SourceError("the command printed nothing (expected a timestamp on its first line)")
    try:
        newest = parse_time(lines[0])
        oldest = parse_time(lines[1]) if len(lines) > 1 else None
    except ValueError:
        shown = lines[0].strip()[:60]
        raise SourceError(
            f"the command printed {shown!r}: expected an ISO-8601 timestamp or unix seconds"
        ) from None
    return Backups(newest=newest, oldest_restorable=oldest)


def _from_pgbackrest(output: str, stanza: str) -> Backups | None:
    try:
        doc = json.loads(output)
    except ValueError:
        raise SourceError("pgbackrest printed something that is not JSON") from None
    entry = next(
        (s for s in doc if isinstance(s, dict) and s.get("name") == stanza), None
    ) if isinstance(doc, list) else None  # fmt: skip
    if entry is None:
        raise SourceError(f"pgbackrest info has no stanza {stanza!r}")
    raw_status = entry.get("status")
    status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
    code = status.get("code")
    if code == 2:  # "no valid backups"
        return None
    if code not in (0, None):
        raise SourceError(f"pgbackrest stanza {stanza}: {status.get('message') or f'status {code}'}")
    backups = [b for b in entry.get("backup") or () if isinstance(b, dict) and _stop(b) is not None]
    if not backups:
        return None
    backups.sort(key=lambda b: _stop(b) or 0.0)
    newest = backups[-1]
    return Backups(
        newest=_stop(newest) or 0.0,
        oldest_restorable=_oldest_restorable(backups, entry.get("archive")),
        count=len(backups),
        label=str(newest.get("label") or ""),
    )


def _stop(backup: dict[str, Any]) -> float | None:
    stamp = backup.get("timestamp")
    value = stamp.get("stop") if isinstance(stamp, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _segment(name: Any) -> int | None:
    """A WAL segment name's position (log and segment, the timeline left out)."""
    if not isinstance(name, str) or not _SEGMENT.match(name):
        return None
    return int(name[8:], 16)


def _oldest_restorable(backups: list[dict[str, Any]], archive: Any) -> float | None:
    """The oldest point a restore can reach: the end (`timestamp.stop`) of the oldest backup whose
    first WAL segment is still in the archive. A backup is consistent only from its end, and
    replaying from it needs every segment from its start."""
    mins = [_segment(a.get("min")) for a in archive or () if isinstance(a, dict)]
    known = [m for m in mins if m is not None]
    if not known:
        return None  # no WAL archive: no point-in-time recovery to speak of
    first = min(known)
    for b in backups:  # oldest first
        wal = b.get("archive")
        start = _segment(wal.get("start")) if isinstance(wal, dict) else None
        if start is not None and start >= first:
            return _stop(b)
    return None
