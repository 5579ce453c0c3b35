"""The agent's sqlite state files (`alerts.state_file`, `outbox.path`): opening one safely at
start-up, and knowing, while running, whether writes to it succeed.

Start-up (`open_state_file`) decides per case, in one line, never with a traceback:
- missing: created (a file we create ourselves may be empty; one we find empty may not), mode
  0600 with its `-wal` and `-shm`, in directories created 0700: it may hold text that targets and
  services sent. An existing directory is left as it is; an existing file that other users may
  access is opened with one WARNING (not chmod-ed: the operator may have meant it);
- empty (0 bytes) although it exists: its contents were lost (truncated, restored from a bad
  copy). Moved aside (below) and started empty, so the loss is visible;
- damaged (a SQLite file sqlite calls malformed, or that fails `PRAGMA quick_check`): moved aside
  to `<name>.damaged-<UTC time>` with its `-wal`, one WARNING naming both paths, counted in
  `mamori_state_file_recovered_total{file,reason}`; started empty. Alert state, silences and
  undelivered notifications (or results not yet exported) in it are lost, but the agent runs and
  says so; the file is kept for forensics;
- not a SQLite file at all: refused. It may not be ours (a config pointing at the wrong file), so
  it is never renamed;
- unwritable (permissions, read-only file system) or its directory not creatable: refused
  (`StartupError`: one line, exit 1). A start-up write probe finds these, not a first write
  minutes later;
- no space left: refused too — sqlite cannot even create a new file, or the `-shm` index of an
  existing one (systemd restarts the agent, Restart=on-failure, so it starts once there is
  space). Where sqlite can open it (its `-shm` survived a kill -9), a sound file is opened and
  its writes fail and are handled as when the disk fills while running (below).

Running: whether writes to the file succeed is `StateFileHealth`'s (agent/statehealth.py, which
does not import sqlite3: an agent with no state file never loads it).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import StartupError
from agent.statehealth import StateFileHealth, describe, loss_reason

log = logging.getLogger("mamori.statefile")

SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_LOW_SPACE = 64 * 1024  # bytes free under which a failure to open is put down to a full disk


def is_environmental(exc: BaseException) -> bool:
    """A failure of the disk or the file (full, unwritable, damaged), not of our SQL."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class _Damaged(Exception):
    """The file is a damaged SQLite database (moved aside when recovery is allowed)."""


def open_state_file(
    path: Path,
    what: str,
    setup: Callable[[sqlite3.Connection], None],
    *,
    recover: bool = True,
    probe: bool = True,
    health: StateFileHealth | None = None,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """Open (or create) the sqlite file at `path` in WAL mode and run `setup` (schema,
    migrations) on it. See the module docstring for what happens to an empty, damaged or
    unwritable file. `recover=False` (the CLI, which must not move the running agent's file
    away) refuses a damaged or empty file instead; `probe=False` skips the write probe (a
    read-only use). Raises only `StartupError`."""
    try:
        _make_directory(path.parent)
    except (FileExistsError, NotADirectoryError):
        raise StartupError(
            f"cannot create the directory of the {what} {path}: {path.parent} or a parent is not a directory"
        ) from None
    except OSError as exc:
        raise StartupError(f"cannot create the directory of the {what} {path}: {describe(exc)}") from None
    problem = "empty (0 bytes)" if _is_empty(path) else ""
    reason = "empty"
    if not problem:
        try:
            db = _connect(path, setup, probe, check_same_thread)
        except _Damaged as exc:
            problem, reason = f"damaged ({exc})", "damaged"
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(_refusal(path, what, exc)) from None
        else:
            if recover:  # the agent's start-up, not the CLI's one-line reports
                _warn_if_readable(path, what)
            return db
    if not recover:
        raise StartupError(
            f"the {what} {path} is {problem}: the agent moves it aside and starts empty when it next starts"
        )
    try:
        aside = _move_aside(path)
    except OSError as exc:
        raise StartupError(
            f"the {what} {path} is {problem} and cannot be moved aside: {describe(exc)}"
        ) from None
    log.warning("the %s %s was %s: moved aside to %s; starting with an empty one", what, path, problem, aside)
    if health is not None:
        health.recovered[reason] += 1
    try:
        return _connect(path, setup, probe, check_same_thread)
    except (_Damaged, OSError, sqlite3.Error) as exc:
        raise StartupError(_refusal(path, what, exc)) from None


def _make_directory(directory: Path) -> None:
    """Create `directory` and any missing parent 0700: a state file may hold text that targets and
    services sent. A directory that exists is left as it is (the operator's to set)."""
    if directory.is_dir():
        return
    if directory.parent != directory:
        _make_directory(directory.parent)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        if not directory.is_dir():
            raise


def _warn_if_readable(path: Path, what: str) -> None:
    """One WARNING at start-up for a state file other users may read (made by an older agent, or
    by hand). Its mode is not changed: that is the operator's decision."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return  # missing (created 0600 below), or opening it reports the problem
    if mode & 0o077:
        log.warning(
            "the %s %s is accessible to other users (mode %04o); it may hold text that checked "
            "targets and notification services sent: chmod 600 it",
            what,
            path,
            mode,
        )


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return False
    except OSError:
        return False  # cannot tell: opening it reports the real problem


def _connect(
    path: Path, setup: Callable[[sqlite3.Connection], None], probe: bool, check_same_thread: bool
) -> sqlite3.Connection:
    existed = path.exists()
    if not existed:
        # sqlite would create it 0644 (less the umask). Created 0600 here, its -wal and -shm get the
        # same mode: sqlite gives them the database file's mode, whatever the umask.
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            existed = True  # created meanwhile (the CLI adding a silence): sqlite opens it as it is
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=check_same_thread)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=2000")  # the CLI may write (silences) meanwhile
            if existed:
                rows = db.execute("PRAGMA quick_check").fetchall()
                if rows != [("ok",)]:
                    raise _Damaged(f"quick_check: {'; '.join(str(r[0]) for r in rows[:3])}")
            setup(db)
        except sqlite3.DatabaseError as exc:
            if _damaged(exc, path):
                raise _Damaged(describe(exc)) from None
            raise
        if probe:
            try:
                _probe(db)
            except sqlite3.Error as exc:
                # A sound file on a full disk is opened: its writes fail and are handled as when
                # the disk fills while running (counted, /ready 503) until there is space.
                if not (existed and loss_reason(exc) == "disk_full"):
                    raise
    except BaseException:
        if db is not None:
            db.close()
        if not existed:  # ours, and unusable: leave nothing that would look like a lost file
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        raise
    assert db is not None  # connect() raised otherwise
    return db


def _probe(db: sqlite3.Connection) -> None:
    """A write, committed: finds a read-only file, directory or file system now rather than at
    the first result. (user_version is the schema version: rewritten unchanged.)"""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"PRAGMA user_version = {version}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _damaged(exc: sqlite3.DatabaseError, path: Path) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_CORRUPT:
        return True
    if code == _SQLITE_NOTADB:  # damaged only if it was a SQLite file; else it may not be ours
        try:
            with path.open("rb") as f:
                return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
        except OSError:
            return False
    return False


def _refusal(path: Path, what: str, exc: BaseException) -> str:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_NOTADB:
        return (
            f"the {what} {path} is not a SQLite database: not touching it "
            "(check the path in the config, or move the file away)"
        )
    if isinstance(exc, _Damaged):
        return f"the {what} {path} is still damaged after starting it empty: {exc}"
    text = describe(exc)
    directory = path.parent
    try:
        fs = os.statvfs(directory)
    except OSError:
        fs = None
    # sqlite says "disk I/O error" when it cannot even create the -shm file of a full disk
    if loss_reason(exc) == "disk_full" or (fs is not None and fs.f_bavail * fs.f_frsize < _LOW_SPACE):
        return f"cannot write the {what} {path}: {text} (no space left on its file system)"
    if fs is not None and fs.f_flag & os.ST_RDONLY:
        return f"cannot open the {what} {path}: {text} (its file system is read-only)"
    if path.exists() and not os.access(path, os.W_OK):
        return f"cannot write the {what} {path}: {text} (the file is not writable by this user)"
    if not os.access(directory, os.W_OK):
        return f"cannot write the {what} {path}: {text} (its directory {directory} is not writable)"
    return f"cannot open the {what} {path}: {text}"


def _move_aside(path: Path) -> Path:
    """Rename `path` (and its -wal) to `<name>.damaged-<UTC time>`; remove its -shm (an index)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.rename(path, aside)
    wal = Path(f"{path}-wal")
    if wal.exists():
        os.rename(wal, Path(f"{aside}-wal"))
    Path(f"{path}-shm").unlink(missing_ok=True)
    return aside
