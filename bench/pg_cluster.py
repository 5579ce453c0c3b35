"""One `postgres` check over a primary and its standby against postgres_exporter on the same pair,
in the same run: what each costs (client CPU, the Postgres backends serving it, queries), and
which lag each reports when the primary is idle and when the link is cut.

Set-up, all on 127.0.0.1, every process our child and stopped by its PID:

- `lab.postgres.PgLab`: a real PostgreSQL 15 primary and streaming standby in a temp dir.
  Before measuring, `pg_stat_statements` is preloaded on both servers (ALTER SYSTEM through the
  superuser socket, then a restart of each) and two empty databases are created: `exporter`
  (where the exporters connect) and `bench` (where this benchmark's own queries run), so that
  pg_stat_statements tells the agent's queries (database `postgres`, where its heartbeat table
  is) from the exporters' (database `exporter`), both as the role `mamori` (pg_monitor).
- The agent (`python -m agent.cli run`) with one check, `type: postgres`, both nodes, interval
  1 s, timeout 1 s, heartbeat on, expected standby `standby1`. /metrics scraped once a second and
  counted in its CPU.
- Two postgres_exporters, one per node (as deployed), as `mamori` with `application_name=
  postgres_exporter`, default collectors plus the `pg_replication` query of the package's
  examples/queries.yaml (0.11 has no replication-lag metric without it), scraped once a second,
  half an interval after the agent's runs start.

Phases, in order:
1. cost (`--seconds`, default 60, after `--warmup` 5 s): idle primary, only the heartbeat commits.
   CPU of each client process (user + sys); CPU of the Postgres processes serving each, found by
   their process title (`postgres: mamori postgres …` = the agent, `postgres: mamori exporter …`
   = the exporters; cross-checked against pg_stat_activity's application_name); queries from
   pg_stat_statements deltas. Lag sampled every 5 s.
2. idle without heartbeat (`--idle-seconds`, default 120): the agent restarted with
   `heartbeat: false` and the lab reset so that nothing at all commits.
3. heartbeat back on (5 s), then the link cut (`--cut-seconds`, default 30) with one write a
   second on the primary, then restored (15 s); lag sampled every 5 s.

"Behind" (the truth) is measured by the benchmark itself: bytes = the primary's current WAL
position − the standby's replay position; seconds = how long WAL the standby has not replayed
has existed on the primary (from the primary's position read every second: 1 s resolution).

    python -m bench.pg_cluster [--seconds 60] [--idle-seconds 120] [--cut-seconds 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench import lab as benchlab
from bench.common import (
    KeepAliveClient,
    agent_process,
    cpu_seconds,
    exit_on_sigterm,
    http_get,
    save,
    series,
    stop_process,
    tail,
)
from lab.ports import free_port
from lab.postgres import PgLab, PgNode
from lab.wait import wait_until_sync

NAME = "pg_cluster"
CHECK = "pair"
INTERVAL = 1.0
TIMEOUT = 1.0  # a check's timeout may not exceed its interval; a run takes ~10 ms here
STANDBY_APP = "standby1"  # the standby's application_name (the lab's slot name)
AGENT_DB = "postgres"  # where the lab's monitoring SQL created mamori.heartbeat
EXPORTER_DB = "exporter"
BENCH_DB = "bench"
EXPORTER_APP = "postgres_exporter"
EXPORTER_BIN = "prometheus-postgres-exporter"
EXPORTER_EXAMPLE_QUERIES = Path("/usr/share/doc/prometheus-postgres-exporter/examples/queries.yaml")
# The `pg_replication` entry of postgres_exporter 0.11's examples/queries.yaml, used only if the
# package's copy is missing (the file is read at run time so the version's own query is used).
_FALLBACK_REPLICATION_QUERY = """\
pg_replication:
  query: "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 ELSE GREATEST (0, EXTRACT(EPOCH FROM \
(now() - pg_last_xact_replay_timestamp()))) END AS lag"
  master: true
  metrics:
    - lag:
        usage: "GAUGE"
        description: "Replication lag behind master in seconds"
"""
SCRAPE_PHASE = 0.5  # scrapes half an interval after the agent's runs start: never during a run
SAMPLE_EVERY = 5  # ticks (seconds) between two rows of the lag table
BACK_ON_TICKS = 5
RESTORED_SECONDS = 15.0
STATUS = ("ok", "warning", "critical", "unknown")

COLUMNS = [
    "t_s",  # seconds since the phase began
    "behind_s",  # truth: how long WAL the standby has not replayed has existed (1 s resolution)
    "behind_bytes",  # truth: primary's current LSN - standby's replay LSN
    "agent_heartbeat_delay_s",  # mamori_pg_heartbeat_delay_seconds{node="standby"}
    "agent_status",  # mamori_check_status, and its reason when not ok
    "agent_replay_lag_s",  # mamori_pg_standby_lag_seconds{stage="replay"} (pg_stat_replication)
    "agent_replay_age_s",  # mamori_pg_last_xact_replay_age_seconds{node="standby"}
    "agent_rpo_exposure_s",  # mamori_pg_rpo_exposure_seconds
    "exporter_replication_lag_s",  # pg_replication_lag of the standby's exporter
    "exporter_replay_lsn_diff_bytes",  # pg_stat_replication_pg_wal_lsn_diff of the primary's
    "exporter_slot_lsn_diff_bytes",  # pg_replication_slots_pg_wal_lsn_diff{slot_name="standby1"}
    "sql_replay_age_s",  # now() - pg_last_xact_replay_timestamp() on the standby, read directly
]


# --- Prometheus text ----------------------------------------------------------------------------


def one(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` carrying `labels`; None when there is none."""
    for have, value in series(text, name):
        if all(have.get(k) == v for k, v in labels.items()):
            return value
    return None


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


# --- postgres_exporter --------------------------------------------------------------------------


def exporter_queries() -> tuple[str, str]:
    """The `pg_replication` entry of the package's examples/queries.yaml, and where it came from."""
    with contextlib.suppress(OSError):
        lines, inside = [], False
        for line in EXPORTER_EXAMPLE_QUERIES.read_text().splitlines():
            if line.startswith("pg_replication:"):
                inside = True
            elif inside and line and not line[0].isspace():
                break
            if inside:
                lines.append(line)
        if lines:
            return "\n".join(lines) + "\n", f"{EXPORTER_EXAMPLE_QUERIES} (its pg_replication entry)"
    return _FALLBACK_REPLICATION_QUERY, "a copy of 0.11's examples/queries.yaml pg_replication entry"


@contextlib.contextmanager
def postgres_exporter(
    node: PgNode, password: str, queries: Path, work: Path, *, database: str = EXPORTER_DB, port: int = 0
) -> Iterator[benchlab.Server]:
    """postgres_exporter for one node, as `mamori` on `database`, on `port` (a free one if 0);
    stopped by its PID when the block exits, even on error."""
    binary = shutil.which(EXPORTER_BIN)
    if binary is None:
        raise FileNotFoundError(f"{EXPORTER_BIN} not found: install prometheus-postgres-exporter")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATA_SOURCE"))}
    env["DATA_SOURCE_NAME"] = (
        f"postgresql://mamori:{password}@127.0.0.1:{node.port}/{database}"
        f"?sslmode=disable&application_name={EXPORTER_APP}"
    )
    port = port or free_port()
    log = work / f"exporter-{node.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}", f"--extend.query-path={queries}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=work,
        )
    server = benchlab.Server(f"postgres_exporter ({node.name})", proc, port, work)
    try:
        try:
            wait_until_sync(
                f"{server.name} /", lambda: http_get(server.url, 1.0)[0] == 200, 10, alive=server.alive
            )
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{server.name} did not start: {exc}\n{tail(log)}") from exc
        yield server
    finally:
        stop_process(proc)


def _exporter_ok(status: int, body: str) -> bool:
    return status == 200 and one(body, "pg_up") == 1 and one(body, "pg_exporter_last_scrape_error") == 0


# --- the agent ----------------------------------------------------------------------------------


def agent_config(lab: PgLab, password_file: Path, heartbeat: bool) -> str:
    return (
        "agent:\n"
        f"  interval: {INTERVAL:g}s\n"
        f"  timeout: {TIMEOUT:g}s\n"
        "checks:\n"
        f"  - name: {CHECK}\n"
        "    type: postgres\n"
        f"    interval: {INTERVAL:g}s\n"
        f"    timeout: {TIMEOUT:g}s\n"
        f"    cluster: {CHECK}\n"
        "    user: mamori\n"
        f"    password_file: {password_file}\n"
        f"    dbname: {AGENT_DB}\n"
        "    sslmode: disable\n"
        f"    heartbeat: {'true' if heartbeat else 'false'}\n"
        f"    expected_standbys: [{STANDBY_APP}]\n"
        "    nodes:\n"
        f"      - {{name: primary, host: 127.0.0.1, port: {lab.primary.port}}}\n"
        f"      - {{name: standby, host: 127.0.0.1, port: {lab.standby.port}, "
        f"application_name: {STANDBY_APP}}}\n"
    )


def _agent_status(text: str) -> str | None:
    for labels, value in series(text, "mamori_check_status"):
        if labels.get("check") == CHECK:
            status = STATUS[int(value)] if 0 <= value < len(STATUS) else f"status {value:g}"
            reason = labels.get("reason", "")
            return status if reason in ("", "ok") else f"{status} ({reason})"
    return None


# --- the servers' processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProcCpu:
    node: str
    kind: str
    cpu: float


ProcKey = tuple[str, int, float]  # node, pid, create time


def process_kind(title: str) -> str:
    """What a PostgreSQL child process serves, from its process title (`postgres: USER DB HOST
    ACTIVITY` for a client backend, `postgres: walsender …`, `postgres: checkpointer`, …)."""
    words = title.split()
    if len(words) < 2 or words[0] != "postgres:":
        return "unknown"  # a backend forked a moment ago still carries the postmaster's argv
    if words[1] == "mamori" and len(words) > 2:
        return {AGENT_DB: "agent", EXPORTER_DB: "exporter"}.get(words[2], "mamori (other database)")
    if words[1] == "postgres" and len(words) > 2:
        return "bench" if words[2] == BENCH_DB else "lab"
    return words[1]


def task_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a single-threaded process at nanosecond resolution (the scheduler's
    sum_exec_runtime, /proc/PID/schedstat), else user + system time (10 ms units)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{proc.pid}/schedstat").read_text().split()[0]) / 1e9
    return cpu_seconds(proc)


class ServerCpu:
    """CPU of every process of both servers, by what it serves, at each `scan()`. A process that
    exits keeps its last reading; one born and gone between two scans is missed (the number of
    sessions opened is checked separately, from pg_stat_database). PostgreSQL processes are
    single-threaded, so `task_cpu` reads their CPU to the nanosecond: a backend serving one
    check uses a few ms a second, which 10 ms /proc/PID/stat units would not resolve."""

    def __init__(self, lab: PgLab) -> None:
        self._lab = lab
        self.seen: dict[ProcKey, ProcCpu] = {}

    def scan(self) -> None:
        for node in (self._lab.primary, self._lab.standby):
            postmaster = node.pid
            if postmaster is None:
                continue
            try:
                root = psutil.Process(postmaster)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    with proc.oneshot():
                        key = (node.name, proc.pid, proc.create_time())
                        kind = (
                            "postmaster" if proc.pid == postmaster else process_kind(" ".join(proc.cmdline()))
                        )
                        cpu = task_cpu(proc)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                old = self.seen.get(key)
                if kind == "unknown" and old is not None:
                    kind = old.kind
                self.seen[key] = ProcCpu(node.name, kind, cpu)

    def snapshot(self) -> dict[ProcKey, ProcCpu]:
        return dict(self.seen)


def cpu_by_kind(a: dict[ProcKey, ProcCpu], b: dict[ProcKey, ProcCpu]) -> dict[str, dict[str, float]]:
    """CPU seconds between two snapshots, and processes seen, by kind."""
    out: dict[str, dict[str, float]] = {}
    for key, proc in b.items():
        base = a[key].cpu if key in a else 0.0
        entry = out.setdefault(proc.kind, {"cpu_s": 0.0, "processes": 0})
        entry["cpu_s"] += proc.cpu - base
        entry["processes"] += 1
    return out


# --- one run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    calls: float
    exec_ms: float
    query: str


@dataclass
class Snapshot:
    t: float
    agent_cpu: float
    exporter_cpu: dict[str, float]
    runs: dict[str, float]
    skipped: float
    scrapes: int
    scrapes_ok: int
    procs: dict[ProcKey, ProcCpu]
    statements: dict[tuple[str, str, int, bool], Statement]  # node, database, queryid, toplevel
    databases: dict[tuple[str, str], tuple[float, float]]  # node, database -> commits, sessions


@dataclass
class Phase:
    name: str
    description: str
    rows: list[list[Any]] = field(default_factory=list)


class Bench:
    """The servers of one run and what is measured on them. Not thread-safe; one event loop."""

    def __init__(self, lab: PgLab, exporters: dict[str, benchlab.Server], work: Path) -> None:
        self.lab = lab
        self.exporters = exporters
        self.work = work
        self.exporter_clients = {name: KeepAliveClient(s.port) for name, s in exporters.items()}
        self.agent_client: KeepAliveClient | None = None
        self.agent_proc: subprocess.Popen[bytes] | None = None
        self.agent_log = work / "agent.log"
        self.conns: dict[str, psycopg.AsyncConnection[tuple[Any, ...]]] = {}
        self.cpu = ServerCpu(lab)
        self.lsn_history: list[tuple[float, int]] = []  # (monotonic, primary's current LSN)
        self.agent_text = ""
        self.exporter_texts: dict[str, str] = {}
        self.scrapes = 0
        self.scrapes_ok = 0
        self.scrape_failures: list[str] = []
        self.phases: list[Phase] = []
        self.writes = 0

    async def open(self) -> None:
        for node in (self.lab.primary, self.lab.standby):
            self.conns[node.name] = await psycopg.AsyncConnection.connect(
                node.superuser_dsn(dbname=BENCH_DB), autocommit=True
            )

    async def close(self) -> None:
        """Safe to call twice."""
        for client in self.exporter_clients.values():
            client.close()
        if self.agent_client is not None:
            self.agent_client.close()
        for conn in self.conns.values():
            await conn.close()
        self.conns.clear()

    async def query(
        self, node: str, sql: Any, params: tuple[Any, ...] | None = None
    ) -> list[tuple[Any, ...]]:
        async with asyncio.timeout(10):
            cursor = await self.conns[node].execute(sql, params)
            return await cursor.fetchall()

    # --- the agent, restarted between phases ---

    @contextlib.contextmanager
    def agent(self, heartbeat: bool) -> Iterator[subprocess.Popen[bytes]]:
        """The agent with the one check (heartbeat on or off) on a fresh port, stopped by its PID
        when the block exits."""
        password_file = self.work / "password"
        password_file.write_text(self.lab.monitoring_password + "\n")
        cfg = self.work / f"agent-heartbeat-{'on' if heartbeat else 'off'}.yml"
        cfg.write_text(agent_config(self.lab, password_file, heartbeat))
        port = free_port()
        with agent_process(["-c", str(cfg), "--listen", f"127.0.0.1:{port}"], self.agent_log) as proc:
            self.agent_proc = proc
            self.agent_client = KeepAliveClient(port)
            try:
                yield proc
            finally:
                self.agent_client.close()
                self.agent_client = None
                self.agent_proc = None

    async def first_run(self) -> float:
        """Wait for the agent's first run; return the monotonic time its runs start at (mod 1 s)."""
        client, proc = self.agent_client, self.agent_proc
        assert client is not None and proc is not None
        for _ in range(int(30 / 0.2)):
            with contextlib.suppress(OSError):
                status, text = await asyncio.to_thread(client.get, "/metrics")
                started = one(text, "mamori_check_last_run_timestamp_seconds", check=CHECK)
                if status == 200 and started is not None:
                    self.agent_text = text
                    return started + (time.monotonic() - time.time())
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the agent's check did not run\n{tail(self.agent_log)}")

    # --- ticks: one a second, half an interval after the agent's runs start ---

    async def ticks(self, count: int, run_start: float, phase: Phase | None, sample_every: int) -> None:
        now = time.monotonic()
        first = now + (run_start + SCRAPE_PHASE * INTERVAL - now) % INTERVAL
        began = first - INTERVAL
        for k in range(1, count + 1):
            await asyncio.sleep(max(0.0, first + (k - 1) * INTERVAL - time.monotonic()))
            await self.tick(phase if k % sample_every == 0 else None, k * INTERVAL, began)

    async def tick(self, phase: Phase | None, t: float, began: float) -> None:
        client, proc = self.agent_client, self.agent_proc
        assert client is not None and proc is not None

        def get(c: KeepAliveClient) -> tuple[int, str]:
            try:
                return c.get("/metrics")
            except OSError as exc:
                return 0, str(exc)

        names = list(self.exporter_clients)
        answers = await asyncio.gather(
            asyncio.to_thread(get, client), *(asyncio.to_thread(get, self.exporter_clients[n]) for n in names)
        )
        status, self.agent_text = answers[0]
        if status != 200 or proc.poll() is not None:
            raise RuntimeError(f"agent /metrics answered {status}\n{tail(self.agent_log)}")
        ok = True
        for name, (code, body) in zip(names, answers[1:], strict=True):
            self.exporter_texts[name] = body
            if not _exporter_ok(code, body):
                ok = False
                if len(self.scrape_failures) < 5:
                    self.scrape_failures.append(f"{name}: HTTP {code}: {body[:200]}")
        self.scrapes += 1
        self.scrapes_ok += ok
        self.cpu.scan()
        primary_lsn = int((await self.query("primary", "SELECT pg_current_wal_lsn() - '0/0'"))[0][0])
        self.lsn_history.append((time.monotonic(), primary_lsn))
        if phase is not None:
            phase.rows.append(await self.row(t, primary_lsn))

    async def row(self, t: float, primary_lsn: int) -> list[Any]:
        (replay, replay_age), *_ = await self.query(
            "standby",
            "SELECT pg_last_wal_replay_lsn() - '0/0', "
            "extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
        )
        now = time.monotonic()
        behind_bytes = max(0, primary_lsn - int(replay))
        behind_s = 0.0
        if behind_bytes:
            behind_s = now - min(at for at, lsn in self.lsn_history if lsn > int(replay))
        agent, primary, standby = (
            self.agent_text,
            self.exporter_texts["primary"],
            self.exporter_texts["standby"],
        )
        values: dict[str, Any] = {
            "t_s": round(t),
            "behind_s": round(behind_s, 1),
            "behind_bytes": behind_bytes,
            "agent_heartbeat_delay_s": _r(one(agent, "mamori_pg_heartbeat_delay_seconds", node="standby")),
            "agent_status": _agent_status(agent),
            "agent_replay_lag_s": _r(one(agent, "mamori_pg_standby_lag_seconds", stage="replay")),
            "agent_replay_age_s": _r(one(agent, "mamori_pg_last_xact_replay_age_seconds", node="standby")),
            "agent_rpo_exposure_s": _r(one(agent, "mamori_pg_rpo_exposure_seconds")),
            "exporter_replication_lag_s": _r(one(standby, "pg_replication_lag")),
            "exporter_replay_lsn_diff_bytes": _r(
                one(primary, "pg_stat_replication_pg_wal_lsn_diff", application_name=STANDBY_APP), 0
            ),
            "exporter_slot_lsn_diff_bytes": _r(
                one(primary, "pg_replication_slots_pg_wal_lsn_diff", slot_name=STANDBY_APP), 0
            ),
            "sql_replay_age_s": _r(replay_age),
        }
        return [values[c] for c in COLUMNS]

    # --- snapshots of the cost window ---

    async def snapshot(self) -> Snapshot:
        assert self.agent_proc is not None
        t = time.monotonic()
        agent_cpu = cpu_seconds(psutil.Process(self.agent_proc.pid))
        exporter_cpu = {name: cpu_seconds(s.process) for name, s in self.exporters.items()}
        self.cpu.scan()
        procs = self.cpu.snapshot()
        runs: dict[str, float] = {}
        for labels, value in series(self.agent_text, "mamori_check_runs_total"):
            if labels.get("check") == CHECK:
                runs[labels.get("status", "?")] = value
        skipped = sum(v for lb, v in series(self.agent_text, "mamori_scheduler_skipped_runs_total"))
        statements: dict[tuple[str, str, int, bool], Statement] = {}
        databases: dict[tuple[str, str], tuple[float, float]] = {}
        for node in ("primary", "standby"):
            rows = await self.query(
                node,
                "SELECT d.datname, s.queryid, s.toplevel, s.calls, s.total_exec_time, s.query "
                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "JOIN pg_roles r ON r.oid = s.userid "
                "WHERE r.rolname = 'mamori' AND d.datname = ANY(%s)",
                ([AGENT_DB, EXPORTER_DB],),
            )
            for datname, queryid, toplevel, calls, exec_ms, text in rows:
                statements[(node, datname, int(queryid or 0), bool(toplevel))] = Statement(
                    float(calls), float(exec_ms), " ".join(str(text).split())
                )
            for datname, commits, sessions in await self.query(
                node,
                "SELECT datname, xact_commit, sessions FROM pg_stat_database WHERE datname = ANY(%s)",
                ([AGENT_DB, EXPORTER_DB],),
            ):
                databases[(node, datname)] = (float(commits), float(sessions))
        return Snapshot(
            t,
            agent_cpu,
            exporter_cpu,
            runs,
            skipped,
            self.scrapes,
            self.scrapes_ok,
            procs,
            statements,
            databases,
        )

    async def client_backends(self) -> list[dict[str, Any]]:
        """The client backends of both servers as pg_stat_activity names them, with the kind this
        benchmark gave each from its process title (a cross-check of the attribution)."""
        kinds = {(p.node, key[1]): p.kind for key, p in self.cpu.snapshot().items()}
        out = []
        for node in ("primary", "standby"):
            for pid, user, db, app in await self.query(
                node,
                "SELECT pid, usename, datname, application_name FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' ORDER BY pid",
            ):
                out.append(
                    {
                        "node": node,
                        "user": user,
                        "database": db,
                        "application_name": app,
                        "kind_from_title": kinds.get((node, pid), "not seen"),
                    }
                )
        return out

    async def writer(self, stop: asyncio.Event, limit: int) -> None:
        """One small committed write a second on the primary until `stop` (at most `limit`)."""
        for _ in range(limit):
            await self.lab.write_some()
            self.writes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if stop.is_set():
                return


async def _prepare(lab: PgLab) -> str:
    """Preload pg_stat_statements on both servers (a restart each), create the `exporter` and
    `bench` databases and the extension in `bench`; return the server version."""
    for node in (lab.primary, lab.standby):
        async with await psycopg.AsyncConnection.connect(node.superuser_dsn(), autocommit=True) as conn:
            await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    await lab.stop_primary()
    await lab.start_primary()
    await lab.stop_standby()
    await lab.start_standby()
    await lab.wait_streaming()
    async with await psycopg.AsyncConnection.connect(lab.primary.superuser_dsn(), autocommit=True) as conn:
        for db in (EXPORTER_DB, BENCH_DB):
            await conn.execute(f"CREATE DATABASE {db}")
        version = (await (await conn.execute("SHOW server_version")).fetchall())[0][0]
    async with await psycopg.AsyncConnection.connect(
        lab.primary.superuser_dsn(dbname=BENCH_DB), autocommit=True
    ) as conn:
        await conn.execute("CREATE EXTENSION pg_stat_statements")
    await lab.wait_replayed()
    return str(version)


async def _measure(
    seconds: float, idle_seconds: float, cut_seconds: float, warmup: float
) -> tuple[dict[str, Any], Snapshot, Snapshot, dict[str, Any]]:
    lab_dir = Path(tempfile.mkdtemp(prefix="mamori-bench-pg-"))
    work = Path(tempfile.mkdtemp(prefix="mamori-bench-pg-work-"))
    lab = PgLab(lab_dir)
    try:
        await lab.start()
        version = await _prepare(lab)
        queries_text, queries_from = exporter_queries()
        queries = work / "queries.yaml"
        queries.write_text(queries_text)
        with contextlib.ExitStack() as stack:
            exporters = {
                node.name: stack.enter_context(
                    postgres_exporter(node, lab.monitoring_password, queries, work)
                )
                for node in (lab.primary, lab.standby)
            }
            bench = Bench(lab, exporters, work)
            try:
                await bench.open()
                result = await _phases(bench, seconds, idle_seconds, cut_seconds, warmup)
            finally:
                await bench.close()
        info = {"postgres": version, "exporter_queries_from": queries_from}
        return info, *result
    finally:
        try:
            await lab.stop()
        finally:
            shutil.rmtree(lab_dir, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


async def _phases(
    bench: Bench, seconds: float, idle_seconds: float, cut_seconds: float, warmup: float
) -> tuple[Snapshot, Snapshot, dict[str, Any]]:
    lab = bench.lab
    window = max(1, round(seconds / INTERVAL))
    extra: dict[str, Any] = {}

    # 1. The cost window: idle primary, the heartbeat on (its upsert is the only commit).
    idle_on = Phase("idle_heartbeat_on", "primary idle; the agent's heartbeat upsert is the only commit")
    with bench.agent(heartbeat=True):
        run_start = await bench.first_run()
        await bench.ticks(max(1, round(warmup / INTERVAL)), run_start, None, SAMPLE_EVERY)
        a = await bench.snapshot()
        await bench.ticks(window, run_start, idle_on, SAMPLE_EVERY)
        b = await bench.snapshot()
        extra["client_backends"] = await bench.client_backends()
    bench.phases.append(idle_on)

    # 2. Idle, heartbeat off: nothing at all commits (reset() also analyzes what autovacuum would).
    idle_off = Phase("idle_heartbeat_off", "primary idle, the agent without heartbeat: nothing commits")
    await lab.reset()
    with bench.agent(heartbeat=False):
        run_start = await bench.first_run()
        bench.cpu.scan()
        before, t0 = bench.cpu.snapshot(), time.monotonic()
        await bench.ticks(max(1, round(idle_seconds / INTERVAL)), run_start, idle_off, SAMPLE_EVERY)
        extra["background_heartbeat_off"] = (cpu_by_kind(before, bench.cpu.snapshot()), time.monotonic() - t0)
    bench.phases.append(idle_off)

    # 3. The heartbeat back on, then the link cut with a write a second, then restored.
    back_on = Phase("heartbeat_back_on", "the agent restarted with its heartbeat; still no other write")
    cut = Phase("cut", "cut_link(); one write_some() a second on the primary")
    restored = Phase("restored", "restore_link(); writes stopped")
    with bench.agent(heartbeat=True):
        run_start = await bench.first_run()
        await bench.ticks(BACK_ON_TICKS, run_start, back_on, 1)
        await lab.cut_link()
        stop = asyncio.Event()
        writer = asyncio.create_task(bench.writer(stop, limit=int(cut_seconds) + 5))
        try:
            await bench.ticks(max(1, round(cut_seconds / INTERVAL)), run_start, cut, SAMPLE_EVERY)
        finally:
            stop.set()
            await writer
            await lab.restore_link()
        await bench.ticks(round(RESTORED_SECONDS / INTERVAL), run_start, restored, SAMPLE_EVERY)
    bench.phases += [back_on, cut, restored]
    extra["phases"] = bench.phases
    extra["writes"] = bench.writes
    extra["scrape_failures"] = bench.scrape_failures
    extra["series"] = {
        name: sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        for name, text in (("agent", bench.agent_text), *bench.exporter_texts.items())
    }
    extra["exporter_scrapes_total"] = {
        name: one(text, "pg_exporter_scrapes_total") for name, text in bench.exporter_texts.items()
    }
    return a, b, extra


# --- figures --------------------------------------------------------------------------------------


def _queries(a: Snapshot, b: Snapshot, database: str, per: float) -> dict[str, Any]:
    calls = exec_ms = 0.0
    by_query: dict[str, float] = {}
    for key, st in b.statements.items():
        if key[1] != database:
            continue
        base = a.statements.get(key, Statement(0.0, 0.0, ""))
        calls += st.calls - base.calls
        exec_ms += st.exec_ms - base.exec_ms
        if st.calls > base.calls:
            label = f"{key[0]}: {st.query[:90]}"
            by_query[label] = by_query.get(label, 0.0) + st.calls - base.calls
    commits = sum(
        b.databases[k][0] - a.databases.get(k, (0.0, 0.0))[0] for k in b.databases if k[1] == database
    )
    sessions = sum(
        b.databases[k][1] - a.databases.get(k, (0.0, 0.0))[1] for k in b.databases if k[1] == database
    )
    top = sorted(by_query.items(), key=lambda kv: -kv[1])[:20]
    return {
        "calls": calls,
        "per_run_or_scrape": round(calls / per, 2) if per else None,
        "exec_ms_per_run_or_scrape": round(exec_ms / per, 3) if per else None,
        "commits_approx": commits,
        "sessions_opened": sessions,
        "by_query": [
            {"node_and_query": q, "calls": c, "per_run_or_scrape": round(c / per, 2)} for q, c in top
        ],
    }


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x is not None and y else None


def figures(
    info: dict[str, Any],
    a: Snapshot,
    b: Snapshot,
    extra: dict[str, Any],
    seconds: float,
    idle_seconds: float,
    cut_seconds: float,
    warmup: float,
) -> dict[str, Any]:
    window = b.t - a.t
    runs_by_status = {s: b.runs.get(s, 0.0) - a.runs.get(s, 0.0) for s in sorted(b.runs)}
    runs = sum(runs_by_status.values())
    scrapes = b.scrapes - a.scrapes
    scrapes_ok = b.scrapes_ok - a.scrapes_ok
    agent_cpu = b.agent_cpu - a.agent_cpu
    exporter_cpu = {n: b.exporter_cpu[n] - a.exporter_cpu[n] for n in b.exporter_cpu}
    exporter_total = sum(exporter_cpu.values())
    kinds = cpu_by_kind(a.procs, b.procs)
    zero = {"cpu_s": 0.0, "processes": 0}
    agent_srv, exporter_srv = kinds.get("agent", zero), kinds.get("exporter", zero)

    def ms(cpu: float, n: float) -> float | None:
        return round(1000 * cpu / n, 3) if n else None

    agent_q = _queries(a, b, AGENT_DB, runs)
    exporter_q = _queries(a, b, EXPORTER_DB, scrapes)
    background = {k: v for k, v in kinds.items() if k not in ("agent", "exporter", "bench", "lab")}
    off_kinds, off_window = extra["background_heartbeat_off"]
    off_background = {k: v for k, v in off_kinds.items() if k not in ("agent", "exporter", "bench", "lab")}

    def per_s(kinds_: dict[str, dict[str, float]], span: float) -> dict[str, Any]:
        total = sum(v["cpu_s"] for v in kinds_.values())
        return {
            "cpu_ms_per_s": round(1000 * total / span, 3),
            "by_process": {k: round(1000 * v["cpu_s"] / span, 3) for k, v in sorted(kinds_.items())},
        }

    agent_ms, exporter_ms = ms(agent_cpu, runs), ms(exporter_total, scrapes)
    agent_srv_ms, exporter_srv_ms = ms(agent_srv["cpu_s"], runs), ms(exporter_srv["cpu_s"], scrapes)
    phases: list[Phase] = extra["phases"]
    lag = {
        "columns": COLUMNS,
        "phases": [{"name": p.name, "description": p.description, "rows": p.rows} for p in phases],
    }
    flags = []
    if runs_by_status.get("ok", 0.0) != runs or not runs:
        flags.append(f"not every run OK in the cost window: {runs_by_status}")
    if b.skipped - a.skipped:
        flags.append(f"{b.skipped - a.skipped:g} agent runs skipped")
    if scrapes_ok != scrapes:
        flags.append(f"{scrapes - scrapes_ok} of {scrapes} exporter scrapes failed")
    if agent_srv["processes"] != 2:
        flags.append(f"{agent_srv['processes']:g} agent backends seen (2 expected)")
    if not exporter_srv["processes"]:
        flags.append("no exporter backend seen")
    for who, q in (("agent", agent_q), ("exporter", exporter_q)):
        if q["sessions_opened"]:
            flags.append(
                f"{who} opened {q['sessions_opened']:g} connections in the window "
                "(short-lived backends may be missing from its server CPU)"
            )
    idx = {c: i for i, c in enumerate(COLUMNS)}
    if any(r[idx["exporter_replication_lag_s"]] is None for p in phases for r in p.rows):
        flags.append("pg_replication_lag missing from some scrapes")
    cut_rows = next(p.rows for p in phases if p.name == "cut")
    if cut_rows and cut_rows[-1][idx["agent_heartbeat_delay_s"]] is None:
        flags.append("no heartbeat delay at the end of the cut")

    def last(name: str, column: str) -> Any:
        rows = next(p.rows for p in phases if p.name == name)
        return rows[-1][idx[column]] if rows else None

    return {
        "parameters": {
            "check": "one `postgres` check: both nodes, heartbeat on, expected standby standby1",
            "interval_s": INTERVAL,
            "check_timeout_s": TIMEOUT,
            "seconds": seconds,
            "warmup_s": warmup,
            "idle_seconds": idle_seconds,
            "cut_seconds": cut_seconds,
            "restored_seconds": RESTORED_SECONDS,
            "sample_every_s": SAMPLE_EVERY * INTERVAL,
            "scrape_phase_after_run_start_s": SCRAPE_PHASE * INTERVAL,
            "postgres": info["postgres"],
            "postgres_exporter": benchlab.version(EXPORTER_BIN),
            "exporter_setup": (
                "one per node, role mamori (pg_monitor), database `exporter`, default collectors + "
                "--extend.query-path with the pg_replication query"
            ),
            "exporter_queries_from": info["exporter_queries_from"],
            "agent_setup": "role mamori (pg_monitor + heartbeat grants), database `postgres`",
            "query_counts_from": "pg_stat_statements (preloaded on both servers), by database",
        },
        "window_s": round(window, 3),
        "agent": {
            "runs": runs,
            "runs_by_status": runs_by_status,
            "skipped_runs": b.skipped - a.skipped,
            "scrapes_of_metrics": scrapes,
            "cpu_s": round(agent_cpu, 3),
            "cpu_ms_per_run": agent_ms,
            "cpu_percent": round(100 * agent_cpu / window, 2),
            "server": {
                "backends": agent_srv["processes"],
                "cpu_s": round(agent_srv["cpu_s"], 3),
                "cpu_ms_per_run": agent_srv_ms,
            },
            "queries": agent_q,
        },
        "postgres_exporter": {
            "scrapes": scrapes,
            "scrapes_ok": scrapes_ok,
            "scrape_failures": extra["scrape_failures"],
            "cpu_s": round(exporter_total, 3),
            "cpu_s_by_exporter": {n: round(v, 3) for n, v in exporter_cpu.items()},
            "cpu_ms_per_scrape": exporter_ms,
            "cpu_percent": round(100 * exporter_total / window, 2),
            "scrapes_total_reported": extra["exporter_scrapes_total"],
            "server": {
                "backends": exporter_srv["processes"],
                "cpu_s": round(exporter_srv["cpu_s"], 3),
                "cpu_ms_per_scrape": exporter_srv_ms,
            },
            "queries": exporter_q,
        },
        "ratios_agent_to_exporter": {
            "client_cpu": _ratio(agent_ms, exporter_ms),
            "server_cpu": _ratio(agent_srv_ms, exporter_srv_ms),
            "queries": _ratio(agent_q["per_run_or_scrape"], exporter_q["per_run_or_scrape"]),
            "server_exec_time": _ratio(
                agent_q["exec_ms_per_run_or_scrape"], exporter_q["exec_ms_per_run_or_scrape"]
            ),
        },
        "server_background": {
            "heartbeat_on": per_s(background, window),
            "heartbeat_off": per_s(off_background, off_window),
        },
        "series_per_scrape": extra["series"],
        "client_backends": extra["client_backends"],
        "lag": lag,
        "lag_at_end": {
            "idle_heartbeat_off": {
                c: last("idle_heartbeat_off", c)
                for c in ("behind_s", "sql_replay_age_s", "exporter_replication_lag_s", "agent_replay_lag_s")
            },
            "cut": {
                c: last("cut", c)
                for c in (
                    "behind_s",
                    "agent_heartbeat_delay_s",
                    "agent_status",
                    "exporter_replication_lag_s",
                    "exporter_replay_lsn_diff_bytes",
                    "sql_replay_age_s",
                )
            },
        },
        "writes_during_cut": extra["writes"],
        "flags": flags,
    }


def run(
    seconds: float = 60.0, idle_seconds: float = 120.0, cut_seconds: float = 30.0, warmup: float = 5.0
) -> dict[str, Any]:
    info, a, b, extra = asyncio.run(_measure(seconds, idle_seconds, cut_seconds, warmup))
    return figures(info, a, b, extra, seconds, idle_seconds, cut_seconds, warmup)


def _s(value: Any) -> str:
    return "absent" if value is None else f"{value:g} s"


def summary(r: dict[str, Any]) -> str:
    ag, ex, ratio = r["agent"], r["postgres_exporter"], r["ratios_agent_to_exporter"]
    idle, cut = r["lag_at_end"]["idle_heartbeat_off"], r["lag_at_end"]["cut"]
    p = r["parameters"]
    return (
        f"pg_cluster: one postgres check (2 nodes, every {p['interval_s']:g} s) "
        f"{ag['cpu_ms_per_run']:.2f} ms/run + {ag['server']['cpu_ms_per_run']:.2f} ms in Postgres, "
        f"{ag['queries']['per_run_or_scrape']:g} queries/run vs 2 postgres_exporters "
        f"{ex['cpu_ms_per_scrape']:.2f} ms/scrape + {ex['server']['cpu_ms_per_scrape']:.2f} ms in Postgres, "
        f"{ex['queries']['per_run_or_scrape']:g} queries/scrape: ratios client {ratio['client_cpu']:.2f}, "
        f"server {ratio['server_cpu']:.2f}, queries {ratio['queries']:.2f}; "
        f"idle {p['idle_seconds']:g} s without heartbeat: behind {_s(idle['behind_s'])}, "
        f"pg_replication_lag {_s(idle['exporter_replication_lag_s'])}; "
        f"link cut {p['cut_seconds']:g} s: behind {_s(cut['behind_s'])}, heartbeat delay "
        f"{_s(cut['agent_heartbeat_delay_s'])}, pg_replication_lag {_s(cut['exporter_replication_lag_s'])}, "
        f"pg_stat_replication lsn diff {cut['exporter_replay_lsn_diff_bytes'] or 'absent'}"
        + "".join(f" [FLAG: {f}]" for f in r["flags"])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="cost window (default 60)")
    parser.add_argument("--idle-seconds", type=float, default=120.0, help="idle phase (default 120)")
    parser.add_argument("--cut-seconds", type=float, default=30.0, help="cut-link phase (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (default 5)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    result = run(args.seconds, args.idle_seconds, args.cut_seconds, args.warmup)
    print(summary(result))
    print(f"  -> {save(NAME, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
