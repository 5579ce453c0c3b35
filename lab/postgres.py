"""`PgLab`: a real PostgreSQL 15 primary and streaming standby on 127.0.0.1, with fault switches.

    lab = PgLab(Path(tempfile.mkdtemp(prefix="mamori-pg-")))
    await lab.start()                      # initdb, slot, monitoring role, pg_basebackup -R: ~1 s
    lab.primary.dsn()                      # "host=127.0.0.1 port=... user=mamori password=..."
    await lab.cut_link(); await lab.restore_link()
    await lab.reset()                      # back to the healthy baseline from any fault
    await lab.stop()                       # everything down; the caller removes the directory

The standby streams from the primary through `LinkProxy` (lab/proxy.py), a TCP relay the lab
owns, so the link can be partitioned (`cut_link()`: bytes stop, sockets stay open) without
touching either server. The fault switches are `PgFaults` (lab/pg_faults.py), reached as
`lab.faults` or through PgLab's delegating methods. The standby uses the physical slot
`standby1`; the primary archives WAL into `DIRECTORY/archive` through a script whose failure is
one flag file away.

Processes: each postmaster runs in the foreground as our child (not daemonized by pg_ctl, but a
`lab.process.Child`), as the OS user `postgres` when we are root (initdb refuses root), started
through `setpriv` with a parent-death signal. So a postmaster is stopped by its PID (SIGINT =
`pg_ctl stop -m fast`, SIGQUIT = `-m immediate`), dies with SIGKILL if the Python thread that
started it dies (its backends follow: PostgreSQL children exit when the postmaster does), and an
atexit hook stops what is still running when Python exits normally. The limits: the thread that
calls `start()`, `start_primary()`, `start_standby()` or `reset()` must outlive the lab (an
event loop's thread does; a short-lived worker thread does not); and a Python killed with
SIGKILL while the primary is frozen leaves its stopped backends behind (the postmaster dies, its
SIGSTOPped children cannot notice until someone sends them SIGCONT).

Layout of `directory` (which must be reachable by the `postgres` user: a directory under /tmp
made with tempfile.mkdtemp is; pytest's tmp_path, under a 0700 root directory, is not):
`primary/`, `standby/` (data directories), `archive/` (archived WAL), `archive.sh` (the
archive_command), `archive.broken` (present = archiving fails), `primary.log`, `standby.log`
(each postmaster's stderr, i.e. the server log), and the Unix sockets `.s.PGSQL.PORT` unless the
path is too long for one (then they go to a short directory under /tmp, removed by `stop()`).
"""

from __future__ import annotations

import asyncio
import math
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, LiteralString

import psycopg
from psycopg import sql

from lab import REPO
from lab.ports import free_port
from lab.process import Child, ChildExited, command
from lab.proxy import LinkProxy
from lab.wait import wait_until

HOST = "127.0.0.1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"  # runs the servers, initdb and pg_basebackup when we are root
SUPERUSER = "postgres"  # the database superuser (trust on the Unix socket only)
MONITORING_USER = "mamori"
SLOT = "standby1"  # the standby's physical slot, also its application_name
LAGGING_SLOT = "lagging"
MONITORING_ROLE_SQL = REPO / "deploy" / "postgres" / "monitoring-role.sql"

StopMode = Literal["fast", "immediate"]

_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_START_TIMEOUT = 60.0  # a start after an immediate stop replays WAL first; normally ~0.2 s
_FAST_STOP_TIMEOUT = 15.0  # a walsender waits for its standby (up to wal_sender_timeout)
_KILL_TIMEOUT = 10.0
_POLL = 0.02


class PgLabError(RuntimeError):
    """A lab step failed; the message says which, with the command's or the server's output."""


def _clean_env(home: Path) -> dict[str, str]:
    """Our environment without PG* variables (a stray PGHOST/PGPASSWORD must not redirect a lab
    command), with C messages (server logs and errors are matched in English)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", HOME=str(home))
    return env


# --- one server --------------------------------------------------------------------------------------


@dataclass
class PgNode:
    """One PostgreSQL server of the lab: its name, port, data directory, and how to reach it.

    `dsn()` is what a check uses (TCP, password auth); `superuser_dsn()` is the Unix socket with
    trust auth, for tests and the lab itself. The port is kept across stops, starts and rebuilds.
    """

    name: str
    port: int
    data_dir: Path
    log_file: Path
    socket_dir: Path
    monitoring_password: str
    _started_once: bool = field(default=False, repr=False)
    # The postmaster: SIGQUIT (an immediate stop) is what the atexit hook sends it.
    _child: Child = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._child = Child(
            self.name, log_file=self.log_file, stop_signal=signal.SIGQUIT, grace=_KILL_TIMEOUT
        )

    def dsn(
        self,
        user: str = MONITORING_USER,
        *,
        password: str | None = None,
        dbname: str = "postgres",
        connect_timeout: int = 2,
    ) -> str:
        """A libpq conninfo over TCP: `host=127.0.0.1 port=P user=U password=W dbname=D
        connect_timeout=T`. The lab's generated password is filled in for `mamori`; other roles
        need `password` (or none)."""
        if password is None and user == MONITORING_USER:
            password = self.monitoring_password
        secret = f" password={password}" if password is not None else ""
        return (
            f"host={HOST} port={self.port} user={user}{secret} dbname={dbname} "
            f"connect_timeout={connect_timeout}"
        )

    def superuser_dsn(self, *, dbname: str = "postgres", connect_timeout: int = 2) -> str:
        """The superuser `postgres` on the Unix socket (trust; the only way in as superuser)."""
        return (
            f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname} "
            f"connect_timeout={connect_timeout}"
        )

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs, else None."""
        return self._child.pid

    @property
    def running(self) -> bool:
        """Whether the postmaster process is alive (a frozen one included)."""
        return self._child.running

    @property
    def frozen(self) -> bool:
        """Whether the postmaster and its children are stopped (SIGSTOP) by `freeze_primary()`."""
        return self._child.frozen


# --- the lab -------------------------------------------------------------------------------------------


class PgLab:
    """A PG 15 primary, a hot standby streaming from it through `LinkProxy` on slot `standby1`,
    WAL archiving into `directory/archive`, and fault switches.

    `start()` returns once the standby streams and has replayed everything; a failed or
    cancelled `start()` stops whatever it started before raising. Every fault switch returns
    once its effect is real. `reset()` brings the pair back to that baseline from any mix of
    faults. `stop()` is safe twice and before `start()`. Not safe for concurrent use: one
    switch at a time (a `write_load()` may run while the test awaits something else).
    """

    def __init__(
        self,
        directory: Path,
        wal_receiver_timeout: str = "5s",
        archive: bool = True,
        *,
        wal_sender_timeout: str = "5s",
        max_slot_wal_keep_size: str = "64MB",
        bin_dir: Path = PG_BIN,
    ) -> None:
        self.directory = directory.absolute()
        self.wal_receiver_timeout = wal_receiver_timeout
        self.wal_sender_timeout = wal_sender_timeout
        self.archive = archive
        self.max_slot_wal_keep_size = max_slot_wal_keep_size
        self.bin_dir = bin_dir
        self.monitoring_password = secrets.token_hex(16)
        self.archive_dir = self.directory / "archive"
        self.archive_script = self.directory / "archive.sh"
        self.archive_flag = self.directory / "archive.broken"
        self._as_root = os.geteuid() == 0
        # A Unix socket path must fit in sun_path: the directory unless it is too long.
        self._own_socket_dir: Path | None = None
        socket_dir = self.directory
        if len(os.fsencode(self.directory / ".s.PGSQL.65535")) > _SOCKET_PATH_MAX:
            socket_dir = self._own_socket_dir = Path(tempfile.mkdtemp(prefix="mamori-pg-", dir="/tmp"))
        self.primary = self._node("primary", socket_dir)
        self.standby = self._node("standby", socket_dir)
        self._proxy: LinkProxy | None = None
        self._started = False
        self._pgbench_ready = False
        self._standby_promoted = False
        self.last_start_seconds: float | None = None
        self.last_reset_seconds: float | None = None
        from lab.pg_faults import PgFaults  # here, not at the top: it imports this module

        # The fault switches; each also has a delegating method below.
        self.faults = PgFaults(self)

    def _node(self, name: str, socket_dir: Path) -> PgNode:
        return PgNode(
            name=name,
            port=free_port(),
            data_dir=self.directory / name,
            log_file=self.directory / f"{name}.log",
            socket_dir=socket_dir,
            monitoring_password=self.monitoring_password,
        )

    async def __aenter__(self) -> PgLab:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def proxy(self) -> LinkProxy:
        """The standby's link to the primary (exists once start() has created it)."""
        if self._proxy is None:
            raise PgLabError("the Postgres lab is not started")
        return self._proxy

    @property
    def archiving_broken(self) -> bool:
        return self.archive_flag.exists()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> float:
        """initdb the primary, start it, create the slot and the monitoring role, build the
        standby with pg_basebackup -R through the slot, start it behind the link proxy; return
        the seconds taken (~1 s) once the standby streams and has replayed everything.

        Does nothing (returns 0) if started. On any failure (cancellation included), stops
        whatever it started, then raises (PgLabError with the failing command's output).
        """
        if self._started:
            return 0.0
        began = time.monotonic()
        self._pgbench_ready = False  # a start after stop() is a fresh initdb
        try:
            self._check_prerequisites()
            await self._prepare_directory()
            await self._initdb()
            await self._start_node(self.primary)
            await self._setup_primary()
            await self._quiesce()
            self._proxy = LinkProxy(self.primary.port)
            await self._build_standby()
            await self._report_caught_up()
        except BaseException:
            await self.stop()
            raise
        self._started = True
        self.last_start_seconds = time.monotonic() - began
        return self.last_start_seconds

    async def stop(self) -> None:
        """Immediate-stop both servers (frozen ones are continued first; SIGKILL after 10 s),
        close the link proxy. Safe twice and before start(). Removes only the socket directory
        the lab made itself; the caller removes `directory`."""
        self._started = False
        try:
            if self._proxy is not None:
                await asyncio.to_thread(self._proxy.close)
        finally:
            try:
                await self._stop_node(self.standby, "immediate")
            finally:
                try:
                    await self._stop_node(self.primary, "immediate")
                finally:
                    if self._own_socket_dir is not None:
                        shutil.rmtree(self._own_socket_dir, ignore_errors=True)

    async def reset(self) -> float:
        """Back to the baseline `start()` leaves, from any fault state; return the seconds taken.

        Restores the link, thaws and starts the primary, fixes archiving (and waits until no
        segment waits to be archived), drops the `lagging` slot, resumes replay, starts the
        standby — or rebuilds it with a fresh pg_basebackup if it was promoted, lost its slot,
        cannot start or does not stream within 10 s — empties mamori.heartbeat, zeroes
        pg_stat_archiver, does autovacuum's due work itself (so an idle primary commits
        nothing), commits once (remote_apply), and returns once the standby has replayed
        everything and the primary's pg_stat_replication says so. ~0.03 s
        from a healthy pair, ~0.5 s with a rebuild, up to ~0.9 s with autovacuum work due.
        Raises PgLabError before start() or after stop().
        """
        began = time.monotonic()
        if not self._started:
            raise PgLabError("the Postgres lab is not started")
        await self.restore_link()
        if self.primary.frozen:
            await self.thaw_primary()
        self.archive_flag.unlink(missing_ok=True)
        if not self.primary.running:
            await self.start_primary()
        await self.drop_lagging_slot()
        if self._standby_promoted or await self._standby_slot_lost():
            await self._rebuild_standby()
        else:
            if not self.standby.running:
                try:
                    await self.start_standby()
                except PgLabError:  # e.g. its data directory is gone or damaged
                    await self._rebuild_standby()
            state = await self._sql(self.standby, "SELECT pg_get_wal_replay_pause_state()")
            if state[0][0] != "not paused":
                await self.resume_replay()
            try:
                await self.wait_streaming(timeout=10.0)
            except TimeoutError:
                await self._rebuild_standby()
        if self.archive:  # so that no archiving counts after the stats are zeroed below
            await self._wait_archive_backlog_empty()
        # DELETE, not TRUNCATE: a TRUNCATE rewrites pg_class rows, which autovacuum then analyzes.
        await self._sql(
            self.primary, "DELETE FROM mamori.heartbeat; SELECT pg_stat_reset_shared('archiver')", fetch=False
        )
        await self._quiesce()
        await self._report_caught_up()
        # Connections the standby gave up on during a cut are closed once forwarded again.
        await wait_until(
            "the link to carry one connection", lambda: self.proxy.connections == 1, 5.0, interval=0.005
        )
        self.last_reset_seconds = time.monotonic() - began
        return self.last_reset_seconds

    # --- waiting for the pair ----------------------------------------------------------------------

    async def wait_streaming(self, timeout: float = 10.0) -> float:
        """Wait until the primary's pg_stat_replication shows `standby1` streaming; return the
        seconds waited. Raises TimeoutError naming what was seen last."""
        last = "nothing"

        async def streaming() -> bool:
            nonlocal last
            try:
                rows = await self._sql(
                    self.primary, "SELECT state FROM pg_stat_replication WHERE application_name = %s", (SLOT,)
                )
            except psycopg.Error as exc:
                last = f"no answer from the primary ({exc})"
                return False
            last = f"states {[row[0] for row in rows]}"
            return any(row[0] == "streaming" for row in rows)

        try:
            return await wait_until(f"{SLOT} to stream", streaming, timeout, interval=_POLL)
        except TimeoutError:
            raise TimeoutError(f"{SLOT} not streaming after {timeout:g} s: {last}") from None

    async def wait_replayed(self, lsn: str | None = None, timeout: float = 10.0) -> float:
        """Wait until the standby has replayed up to `lsn` (default: the end of all WAL inserted
        on the primary so far); return the seconds waited. Raises TimeoutError with both
        positions.

        The default comes from pg_current_wal_insert_lsn(), not pg_current_wal_lsn(): with the
        lab's synchronous_commit=off a commit sits in WAL buffers, before pg_current_wal_lsn(),
        until the WAL writer writes it (within 200 ms), and only then can it be sent."""
        if lsn is None:
            insert = (await self._sql(self.primary, "SELECT pg_current_wal_insert_lsn()::text"))[0][0]
            lsn = _end_of_wal(insert)
        target = lsn
        last = "nothing"

        async def replayed() -> bool:
            nonlocal last
            position, done = (
                await self._sql(
                    self.standby,
                    "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_replay_lsn() >= %s::pg_lsn",
                    (target,),
                )
            )[0]
            last = str(position)
            return bool(done)

        try:
            return await wait_until(f"the standby to replay {lsn}", replayed, timeout, interval=_POLL)
        except TimeoutError:
            raise TimeoutError(f"standby replayed {last}, not {lsn}, after {timeout:g} s") from None

    # --- fault switches (lab/pg_faults.py), one delegating method each: tests say pg.cut_link() --

    async def stop_primary(self, mode: StopMode = "fast") -> None:
        """`PgFaults.stop_primary`: a clean ("fast") or crash ("immediate") stop of the primary."""
        await self.faults.stop_primary(mode)

    async def start_primary(self) -> None:
        """`PgFaults.start_primary`: returns once the primary accepts connections."""
        await self.faults.start_primary()

    async def stop_standby(self, mode: StopMode = "fast") -> None:
        """`PgFaults.stop_standby`."""
        await self.faults.stop_standby(mode)

    async def start_standby(self) -> None:
        """`PgFaults.start_standby`: returns once it accepts read-only connections."""
        await self.faults.start_standby()

    async def freeze_primary(self) -> None:
        """`PgFaults.freeze_primary`: SIGSTOP the primary's processes."""
        await self.faults.freeze_primary()

    async def thaw_primary(self) -> None:
        """`PgFaults.thaw_primary`: SIGCONT them; returns once it answers again."""
        await self.faults.thaw_primary()

    async def pause_replay(self) -> None:
        """`PgFaults.pause_replay` on the standby."""
        await self.faults.pause_replay()

    async def resume_replay(self) -> None:
        """`PgFaults.resume_replay` on the standby."""
        await self.faults.resume_replay()

    async def promote_standby(self) -> None:
        """`PgFaults.promote_standby`: split brain until `reset()`."""
        await self.faults.promote_standby()

    async def cut_link(self) -> None:
        """`PgFaults.cut_link`: a partition (bytes stop, nothing is closed)."""
        await self.faults.cut_link()

    async def restore_link(self) -> None:
        """`PgFaults.restore_link`."""
        await self.faults.restore_link()

    async def reset_link(self) -> None:
        """`PgFaults.reset_link`: the standby's connections closed with a TCP RST."""
        await self.faults.reset_link()

    async def break_archiving(self) -> None:
        """`PgFaults.break_archiving`."""
        await self.faults.break_archiving()

    async def fix_archiving(self) -> None:
        """`PgFaults.fix_archiving`: returns once nothing waits to be archived."""
        await self.faults.fix_archiving()

    async def slot_behind(self, mb: int, *, checkpoint: bool = True) -> int:
        """`PgFaults.slot_behind`: the slot `lagging` holding `mb` MiB of WAL; the bytes it retains."""
        return await self.faults.slot_behind(mb, checkpoint=checkpoint)

    async def wait_standby_slot(self, timeout: float = 10.0) -> None:
        """`PgFaults.wait_standby_slot` (best effort, never raises)."""
        await self.faults.wait_standby_slot(timeout)

    async def drop_lagging_slot(self) -> None:
        """`PgFaults.drop_lagging_slot`."""
        await self.faults.drop_lagging_slot()

    # --- writes ---------------------------------------------------------------------------------------

    async def write_some(self, n_rows: int = 1) -> str:
        """Insert `n_rows` rows (~100 bytes each) into public.lab_writes on the primary and
        commit (locally flushed, so the walsender can send it at once); return the primary's
        WAL position after the commit, e.g. for `wait_replayed(lsn)`."""
        async with self._session(self.primary) as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS lab_writes "
                "(id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload text)"
            )
            # The lab runs synchronous_commit=off; "local" flushes at commit, so the walsender
            # can send this at once and the position returned below is already sendable.
            await conn.execute("SET synchronous_commit = local")
            await conn.execute(
                "INSERT INTO lab_writes (payload) SELECT repeat('x', 100) FROM generate_series(1, %s)",
                (n_rows,),
            )
            cursor = await conn.execute("SELECT pg_current_wal_lsn()::text")
            row = await cursor.fetchone()
        assert row is not None
        return str(row[0])

    async def write_load(self, seconds: float, clients: int = 2) -> int:
        """Run pgbench (TPC-B-like, `clients` connections) against the primary for `seconds`
        (rounded up to whole seconds); return the transactions processed. The first call runs
        `pgbench -i -s 1` (~0.3 s). Roughly 1-2 MB of WAL per second per client here."""
        primary = self.primary
        base = [str(self.bin_dir / "pgbench"), "-h", str(primary.socket_dir), "-p", str(primary.port)]
        base += ["-U", SUPERUSER]
        if not self._pgbench_ready:
            await self._run([*base, "-i", "-q", "-s", "1", "postgres"], as_postgres=False)
            self._pgbench_ready = True
        duration = max(1, math.ceil(seconds))
        out = await self._run(
            [*base, "-n", "-T", str(duration), "-c", str(clients), "-j", str(clients), "postgres"],
            as_postgres=False,
            timeout=duration + 30.0,
        )
        found = re.search(r"number of transactions actually processed: (\d+)", out)
        if found is None:
            raise PgLabError(f"pgbench printed no transaction count: {out}")
        return int(found.group(1))

    # --- building blocks ------------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        missing = [
            name
            for name in ("initdb", "postgres", "pg_basebackup", "pgbench", "psql")
            if not (self.bin_dir / name).is_file()
        ]
        if missing:
            raise PgLabError(
                f"PostgreSQL 15 binaries missing from {self.bin_dir}: {', '.join(missing)} "
                "(install the Debian package postgresql)"
            )
        if not MONITORING_ROLE_SQL.is_file():
            raise PgLabError(f"{MONITORING_ROLE_SQL} not found (the lab runs from a source checkout)")
        if self._as_root:
            try:
                pwd.getpwnam(OS_USER)
            except KeyError:
                raise PgLabError(f"no OS user {OS_USER!r} to run PostgreSQL as (we are root)") from None

    async def _prepare_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._own_socket_dir is not None:
            self._own_socket_dir.mkdir(mode=0o700, exist_ok=True)  # stop() removed it
        self.archive_dir.mkdir(exist_ok=True)
        self.archive_flag.unlink(missing_ok=True)
        self.archive_script.write_text(self._archive_script_text())
        self.archive_script.chmod(0o755)
        owned = [self.directory, self.archive_dir]
        if self._own_socket_dir is not None:
            owned.append(self._own_socket_dir)
        if self._as_root:
            for path in owned:
                shutil.chown(path, OS_USER, OS_USER)
            # Fail with a useful message rather than initdb's "Permission denied".
            check = ["test", "-w", str(self.directory), "-a", "-x", str(self.directory)]
            try:
                await self._run(check, as_postgres=True)
            except PgLabError:
                raise PgLabError(
                    f"the {OS_USER} user cannot reach {self.directory} (is a parent directory private, "
                    "like pytest's tmp_path?); use a directory under /tmp, e.g. tempfile.mkdtemp()"
                ) from None

    def _archive_script_text(self) -> str:
        flag, archive = shlex.quote(str(self.archive_flag)), shlex.quote(str(self.archive_dir))
        return f"""#!/bin/sh
# Written by lab/postgres.py: the lab primary's archive_command, called with "%p" "%f".
# break_archiving() creates the flag file and every attempt fails until fix_archiving().
if [ -e {flag} ]; then
    echo "mamori lab: archiving broken on purpose (break_archiving)" >&2
    exit 1
fi
dest={archive}/"$2"
if [ -e "$dest" ]; then
    # Archived before (a retry after a crash, or the promoted standby): succeed only if identical.
    exec cmp -s "$1" "$dest"
fi
cp "$1" "$dest.tmp" && mv "$dest.tmp" "$dest"
"""

    async def _initdb(self) -> None:
        shutil.rmtree(self.primary.data_dir, ignore_errors=True)
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.primary.data_dir), "-U", SUPERUSER]
        # trust only until the pg_hba.conf below replaces it; no fsync: a lab need not survive a crash
        initdb += ["--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"]
        await self._run(initdb, as_postgres=True)
        data = self.primary.data_dir
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(self._config_text())
        (data / "pg_hba.conf").write_text(
            "# Written by lab/postgres.py.\n"
            "# TYPE  DATABASE     USER      ADDRESS        METHOD\n"
            f"local   all          {SUPERUSER}                 trust\n"
            f"local   replication  {SUPERUSER}                 trust\n"
            f"host    all          {MONITORING_USER}    {HOST}/32   scram-sha-256\n"
            f"host    replication  {SUPERUSER}  {HOST}/32   trust\n"
        )

    def _config_text(self) -> str:
        archive_command = f"{shlex.quote(str(self.archive_script))} %p %f"
        settings: dict[str, str] = {
            "listen_addresses": HOST,
            "unix_socket_directories": str(self.primary.socket_dir),
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "archive_mode": "on" if self.archive else "off",
            "archive_command": archive_command,
            "archive_timeout": "0",
            "wal_keep_size": "0",
            "max_slot_wal_keep_size": self.max_slot_wal_keep_size,
            "hot_standby_feedback": "on",
            "track_commit_timestamp": "on",
            "wal_sender_timeout": self.wal_sender_timeout,
            "wal_receiver_timeout": self.wal_receiver_timeout,
            "wal_retrieve_retry_interval": "1s",
            "log_min_messages": "warning",
            "log_line_prefix": "%m [%p] %q%u@%d %a: ",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "on",
            "shared_buffers": "32MB",
        }
        lines = [f"{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in settings.items()]
        return "\n# --- written by lab/postgres.py (the standby copies it) ---\n" + "\n".join(lines) + "\n"

    async def _setup_primary(self) -> None:
        await self._sql(self.primary, "SELECT pg_create_physical_replication_slot(%s, true)", (SLOT,))
        await self.run_monitoring_sql()
        await self._sql(
            self.primary,
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(MONITORING_USER), sql.Literal(self.monitoring_password)
            ),
            fetch=False,
        )

    async def run_monitoring_sql(self, *variables: tuple[str, str]) -> str:
        """Run deploy/postgres/monitoring-role.sql on the primary with psql, as documented
        (`-X -v ON_ERROR_STOP=1`, plus `-v NAME=VALUE` for each variable); return psql's output."""
        command = [str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        for name, value in variables:
            command += ["-v", f"{name}={value}"]
        command += ["-h", str(self.primary.socket_dir), "-p", str(self.primary.port), "-U", SUPERUSER]
        command += ["-d", "postgres", "-f", str(MONITORING_ROLE_SQL)]
        return await self._run(command, as_postgres=False)

    async def _build_standby(self) -> None:
        standby = self.standby
        shutil.rmtree(standby.data_dir, ignore_errors=True)
        # Straight to the primary, not through the link (a rebuild works with the link cut).
        # -R writes standby.signal, primary_conninfo (replaced below) and primary_slot_name;
        # a fast checkpoint and no fsync keep it to ~0.2 s.
        backup = [str(self.bin_dir / "pg_basebackup"), "-D", str(standby.data_dir), "-U", SUPERUSER]
        backup += ["-h", HOST, "-p", str(self.primary.port), "-R", "-S", SLOT, "-X", "stream"]
        backup += ["--checkpoint=fast", "--no-sync"]
        await self._run(backup, as_postgres=True)
        auto = standby.data_dir / "postgresql.auto.conf"
        kept = [line for line in auto.read_text().splitlines() if not line.startswith("primary_conninfo")]
        # Through the proxy, so the link can fail; application_name names the walsender.
        conninfo = (
            f"host={HOST} port={self.proxy.port} user={SUPERUSER} application_name={SLOT} "
            "connect_timeout=2 sslmode=disable"
        )
        auto.write_text("\n".join([*kept, f"primary_conninfo = '{conninfo}'", ""]))
        self._standby_promoted = False
        await self._start_node(standby)
        await self.wait_streaming()
        await self.wait_replayed()

    async def _rebuild_standby(self) -> None:
        """A fresh standby from a new base backup, on a re-created slot."""
        await self._stop_node(self.standby, "immediate")
        # The slot may still show the old walsender for a moment after the standby's exit.
        await self._until_sql(
            self.primary,
            "SELECT NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'standby1' AND active)",
            "slot standby1 inactive",
        )
        await self._sql(
            self.primary,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            (SLOT,),
        )
        await self._sql(self.primary, "SELECT pg_create_physical_replication_slot(%s, true)", (SLOT,))
        await self._build_standby()

    async def _quiesce(self) -> None:
        """Do now what autovacuum would do at its next round, in every database that accepts
        connections (template1 too), so that a primary left idle commits nothing at all.

        An autoanalyze is a transaction with a commit record, and so is a VACUUM that truncates
        a table (its lock is WAL-logged under a transaction id): on a primary the test believes
        idle, either would move the standby's pg_last_xact_replay_timestamp() about a minute
        after earlier writes (or, on a new cluster, after initdb's own catalog writes). So:
        ANALYZE the tables due for an autoanalyze, then VACUUM those due for an autovacuum, by
        autovacuum's own thresholds. ~10 ms when nothing is due, ~0.5 s after a pgbench run.
        """
        databases = await self._sql(
            self.primary, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1"
        )
        for (dbname,) in databases:
            async with self._session(self.primary, dbname=dbname) as conn:
                for command, due in (("ANALYZE", _ANALYZE_DUE), ("VACUUM", _VACUUM_DUE)):
                    rows = await (await conn.execute(due)).fetchall()
                    if not rows:
                        continue
                    if command == "VACUUM":
                        await self._fresh_standby_xmin()
                    tables = sql.SQL(", ").join(sql.Identifier(schema, name) for schema, name in rows)
                    await conn.execute(sql.SQL("{} {}").format(sql.SQL(command), tables))
                    # Publish this backend's counts before its next "ready for query", not up to a
                    # second later: the VACUUM pass must see the pg_statistic rows ANALYZE replaced.
                    await conn.execute("SELECT pg_stat_force_next_flush()")

    async def _report_caught_up(self, timeout: float = 5.0) -> None:
        """Commit once on the primary and wait until the standby has applied it *and the primary
        knows*: its pg_stat_replication shows write/flush/replay_lsn at that commit.

        A standby reports its positions when it receives WAL and every
        wal_receiver_status_interval, not when it applies it; right after a (re)connect the
        primary shows NULLs, and on an idle primary its replay_lsn trails until the next report
        (up to wal_sender_timeout / 2 here). A commit made with synchronous_commit = remote_apply
        asks the standby to report as soon as it has applied it (with no synchronous standby
        configured, the commit itself waits for nothing).
        """
        async with self._session(self.primary) as conn:
            await conn.execute("SET synchronous_commit = remote_apply")
            # A transaction that writes WAL (an xid alone writes none, and its commit would wait
            # for the WAL writer, ~200 ms): a transactional logical message, stored nowhere.
            await conn.execute("SELECT pg_logical_emit_message(true, 'mamori-lab', 'caught up?')")
            row = await (await conn.execute("SELECT pg_current_wal_insert_lsn()::text")).fetchone()
        assert row is not None
        target = _end_of_wal(str(row[0]))
        await self.wait_replayed(target, timeout=timeout)
        await self._until_sql(
            self.primary,
            sql.SQL(
                "SELECT coalesce(bool_and(replay_lsn >= {}::pg_lsn), false) FROM pg_stat_replication "
                "WHERE application_name = 'standby1'"
            ).format(sql.Literal(target)),
            "the primary to see the standby's replay",
            timeout=timeout,
        )

    async def _fresh_standby_xmin(self, timeout: float = 2.0) -> None:
        """Best effort: make slot standby1's xmin (hot_standby_feedback) current before a VACUUM.

        The standby reports its xmin every wal_receiver_status_interval (10 s), so right after
        writes the slot holds back the removal of the dead rows they left: VACUUM would leave
        them, and autovacuum would come back for them (and may truncate: a commit) once the
        feedback moves. A reload makes the WAL receiver send its feedback at once (~5 ms).
        """
        if not self.standby.running or self.standby.frozen:
            return
        with suppress(TimeoutError, psycopg.Error):
            await self.wait_replayed(timeout=timeout)
            horizon = (await self._sql(self.primary, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))[
                0
            ][0]
            await self._sql(self.standby, "SELECT pg_reload_conf()")
            # A lab never wraps around, so comparing xids as numbers is safe here.
            await self._until_sql(
                self.primary,
                sql.SQL(
                    "SELECT coalesce(bool_and(xmin IS NULL OR xmin::text::bigint >= {}), true) "
                    "FROM pg_replication_slots WHERE slot_name = 'standby1'"
                ).format(sql.Literal(int(horizon) % (1 << 32))),
                "the standby's feedback",
                timeout=timeout,
            )

    async def _standby_slot_lost(self) -> bool:
        rows = await self._sql(
            self.primary, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
        )
        return not rows or rows[0][0] == "lost"

    async def _wait_archive_backlog_empty(self, timeout: float = 15.0) -> None:
        backlog = "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
        if (await self._sql(self.primary, backlog))[0][0] == 0:
            return
        # After 3 failed tries in a row the archiver sleeps until the next segment or 60 s; a
        # reload wakes it (PG 15's archiver loop runs on every latch wakeup).
        await self._sql(self.primary, "SELECT pg_reload_conf()")
        await self._until_sql(
            self.primary,
            "SELECT count(*) = 0 FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
            "the archive backlog to empty",
            timeout=timeout,
        )

    def _require_archive(self) -> None:
        if not self.archive:
            raise PgLabError("this lab was created with archive=False")

    # --- processes ----------------------------------------------------------------------------------

    def _command(self, argv: list[str], *, as_postgres: bool) -> list[str]:
        """argv as the postgres OS user if asked and we are root, with a parent-death SIGKILL."""
        return command(argv, user=self._user(as_postgres))

    def _user(self, as_postgres: bool) -> str | None:
        return OS_USER if as_postgres and self._as_root else None

    async def _run(self, argv: list[str], *, as_postgres: bool, timeout: float = 60.0) -> str:
        """Run a short command to completion; return its output (stdout and stderr). Raises
        PgLabError with the output on a non-zero exit or a timeout; kills it if cancelled."""
        proc = await asyncio.create_subprocess_exec(
            *self._command(argv, as_postgres=as_postgres),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_clean_env(self.directory),
            cwd=self.directory,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                out, _ = await proc.communicate()
        except BaseException as exc:
            with suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise PgLabError(f"{Path(argv[0]).name} did not finish in {timeout:g} s") from None
            raise
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise PgLabError(f"{Path(argv[0]).name} exited with status {proc.returncode}: {text}")
        return text

    async def _start_node(self, node: PgNode) -> None:
        if node.running:
            return
        for attempt in range(3):
            argv = [str(self.bin_dir / "postgres"), "-D", str(node.data_dir), "-p", str(node.port)]
            # In this thread (not a worker): the parent-death signal follows the thread that forked.
            node._child.start(argv, env=_clean_env(self.directory), cwd=self.directory, user=self._user(True))
            try:
                await self._wait_ready(node, node._child.log_offset, _START_TIMEOUT)
            except PgLabError as exc:
                # The port was free when picked; if something took it since, pick another
                # (before the first successful start only: later, callers hold the port).
                if node._started_once or attempt == 2 or "could not bind" not in str(exc):
                    raise
                node.port = free_port()
                continue
            except BaseException:
                await self._stop_node(node, "immediate")
                raise
            node._started_once = True
            return

    async def _wait_ready(self, node: PgNode, log_offset: int, timeout: float) -> None:
        """Wait until `node` answers `SELECT 1` on its socket. Raises PgLabError with the new
        part of its log if it exits or does not answer in time (it is then stopped)."""

        async def answers() -> bool:
            try:
                await self._sql(node, "SELECT 1", connect_timeout=2)
            except psycopg.Error:
                return False
            return True

        try:
            await node._child.wait_ready(f"{node.name} to answer", answers, timeout, interval=_POLL)
        except ChildExited as exc:
            await node._child.stop()  # reaped already: forget it
            raise PgLabError(
                f"{node.name} exited with status {exc.returncode}: {self._log_since(node, log_offset)}"
            ) from None
        except TimeoutError:
            await self._stop_node(node, "immediate")
            raise PgLabError(
                f"{node.name} not ready after {timeout:g} s: {self._log_since(node, log_offset)}"
            ) from None

    @staticmethod
    def _log_since(node: PgNode, offset: int) -> str:
        try:
            with node.log_file.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace").strip()
        except OSError as exc:
            return f"(cannot read {node.log_file}: {exc})"
        return text[-4000:] or "(log empty)"

    async def _stop_node(self, node: PgNode, mode: StopMode) -> None:
        """Stop by PID: SIGINT (fast) or SIGQUIT (immediate), escalating to SIGQUIT after 15 s
        and SIGKILL of the whole tree after 10 s more (a frozen server is continued first).
        Signals go out before the first await, so a cancelled stop still stops the server; the
        next call finishes the wait."""
        if mode == "fast":
            await node._child.stop((signal.SIGINT, _FAST_STOP_TIMEOUT), (signal.SIGQUIT, _KILL_TIMEOUT))
        else:
            await node._child.stop((signal.SIGQUIT, _KILL_TIMEOUT))

    # --- SQL -------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _session(
        self, node: PgNode, *, dbname: str = "postgres", connect_timeout: int = 2, timeout: float = 30.0
    ) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
        """A fresh autocommit superuser connection to `node` on its Unix socket, closed at exit;
        everything inside must finish within `timeout` (a frozen server must not hang us)."""
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(
                node.superuser_dsn(dbname=dbname, connect_timeout=connect_timeout), autocommit=True
            )
            async with conn:
                yield conn

    async def _sql(
        self,
        node: PgNode,
        query: LiteralString | sql.SQL | sql.Composed,
        params: tuple[Any, ...] | None = None,
        *,
        fetch: bool = True,
        dbname: str = "postgres",
        connect_timeout: int = 2,
    ) -> list[tuple[Any, ...]]:
        """Run `query` as the superuser on `node` in its own connection; return the rows of its
        last statement (nothing when `fetch` is False). Without params, several statements run
        as one implicit transaction (the simple query protocol)."""
        async with self._session(node, dbname=dbname, connect_timeout=connect_timeout) as conn:
            cursor = await conn.execute(query, params)
            if not fetch or cursor.description is None:
                return []
            return await cursor.fetchall()

    async def _until_sql(
        self, node: PgNode, query: LiteralString | sql.Composed, what: str, timeout: float = 10.0
    ) -> None:
        """Poll a one-boolean query until it is true. Raises TimeoutError naming `what`."""

        async def holds() -> bool:
            return bool((await self._sql(node, query))[0][0])

        await wait_until(what, holds, timeout, interval=_POLL)


_WAL_PAGE = 8192  # XLOG_BLCKSZ
_WAL_SEGMENT = 16 << 20  # initdb's default --wal-segsize
_SHORT_PAGE_HEADER, _LONG_PAGE_HEADER = 24, 40  # SizeOfXLogShortPHD, SizeOfXLogLongPHD (64-bit)


def _end_of_wal(insert_lsn: str) -> str:
    """The replay position that corresponds to `insert_lsn`.

    pg_current_wal_insert_lsn() is where the next record will start: at the top of a page that
    is just past the page header. A standby's pg_last_wal_replay_lsn() is where the last record
    ended: the page boundary itself. (Right after pg_switch_wal() they differ by 40 bytes
    forever on an idle primary.) Remove the header so the two compare.
    """
    high, low = insert_lsn.split("/")
    position = (int(high, 16) << 32) | int(low, 16)
    if position % _WAL_SEGMENT == _LONG_PAGE_HEADER:
        position -= _LONG_PAGE_HEADER
    elif position % _WAL_PAGE == _SHORT_PAGE_HEADER:
        position -= _SHORT_PAGE_HEADER
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


# The tables autovacuum would analyze / vacuum at its next round (its default thresholds; the lab
# sets no per-table ones). pg_statistic is never analyzed (ANALYZE skips it, so does autovacuum).
_ANALYZE_DUE: LiteralString = (
    "SELECT s.schemaname, s.relname FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid "
    "WHERE s.schemaname <> 'pg_toast' AND s.relid <> 'pg_catalog.pg_statistic'::regclass "
    "AND s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8 "
    "+ current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0) "
    "ORDER BY 1, 2"
)
_VACUUM_DUE: LiteralString = (
    "SELECT s.schemaname, s.relname FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid "
    "WHERE s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::float8 "
    "+ current_setting('autovacuum_vacuum_scale_factor')::float8 * greatest(c.reltuples, 0) "
    "OR s.n_ins_since_vacuum > current_setting('autovacuum_vacuum_insert_threshold')::float8 "
    "+ current_setting('autovacuum_vacuum_insert_scale_factor')::float8 * greatest(c.reltuples, 0) "
    "ORDER BY 1, 2"
)
