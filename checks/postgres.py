"""`postgres`: a PostgreSQL primary and its standbys — replication, WAL, archiving, slots — and the
cluster's verdict: split brain, RPO exposure, failover readiness.

One run, for a check of N nodes:

1. every node is probed concurrently, with one query on its one persistent connection
   (`checks/pg_queries.py`): role, system identifier, timeline, connections, wraparound; on a
   primary its WAL position, every standby it streams to, the archiver and the slots; on a
   standby its receive/replay positions, replay pause and WAL receiver;
2. the heartbeat: the primary upserts this cluster's row (`heartbeat_table`), then each standby
   reads its replayed copy; the delay is the primary's now() − the ts the standby sees, both on
   the primary's clock (the local monotonic clock only carries the primary's time from the write
   to the read), so server clock skew never enters, and the row moves every run even when the
   primary is idle;
3. `checks/pg_cluster.py` judges the states: status, reason, RPO exposure, failover readiness.

Guarantees:
- `run()` never raises for anything a server does (refusal, FATAL, garbage, a frozen process,
  a statement timeout): a node that fails is a node state with a reason.
- At most one connection per node, opened on first use, kept between runs, closed at once on any
  error (the next run reconnects) and by `aclose()`. A query outliving its deadline is never
  cancelled through the server (psycopg's cancel path waits up to 10 s on a frozen server): its
  socket is closed first, so a frozen node costs its deadline and nothing more.
- Deadlines inside `timeout`: node probes get 60% of it, the heartbeat the rest up to 90%, so
  a frozen node is reported as `timeout` by the check itself, with every other node's data.
- Samples carry bounded labels only (`node`, `standby`, `slot`, `stage`, `state`, `status`,
  `wal_status`, `cluster`, `reason`): node and cluster names from the config, application and
  slot names from the server; never an address, never error text.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, TypeVar

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from pydantic import Field, SecretStr, field_validator, model_validator

from agent.model import CheckResult, Reason, Sample
from agent.text import seconds
from agent.types import ByteSize, Duration, Model, Port, secret_value
from checks.base import Check, CheckConfig, Outcome, PerfDatum
from checks.pg_cluster import (
    READY_REASONS,
    RECOMMENDED_REASONS,
    WRAPAROUND_LIMIT,
    Heartbeat,
    Memory,
    NodeState,
    Policy,
    Role,
    Stage,
    Verdict,
    judge,
    size,
)
from checks.pg_queries import PROBE, PROBE_WITHOUT_ARCHIVE_DIR, Probe, heartbeat_read, heartbeat_write

T = TypeVar("T")
Conn = psycopg.AsyncConnection[dict[str, Any]]

APPLICATION_NAME = "mamori"
STAGES: tuple[Stage, ...] = ("write", "flush", "replay")
PROBE_SHARE = 0.6  # of `timeout`, for the node probes
RUN_SHARE = 0.9  # of `timeout`, for the whole run (the harness stops it at timeout + 0.5 s)

_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"
_TABLE = re.compile(r"^(?:([a-z_][a-z0-9_$]{0,62})\.)?([a-z_][a-z0-9_$]{0,62})$")

# Sample names (agent/catalog.py).
UP = "mamori_pg_up"
IN_RECOVERY = "mamori_pg_in_recovery"
TIMELINE = "mamori_pg_timeline"
CONNECTIONS = "mamori_pg_connections"
MAX_CONNECTIONS = "mamori_pg_max_connections"
XID_AGE = "mamori_pg_xid_age"
XID_AGE_RATIO = "mamori_pg_xid_age_ratio"
WAL_LSN = "mamori_pg_wal_lsn_bytes"
WAL_RATE = "mamori_pg_wal_rate_bytes_per_second"
STANDBY_STATE = "mamori_pg_standby_state"
STANDBY_LAG_BYTES = "mamori_pg_standby_lag_bytes"
STANDBY_LAG_SECONDS = "mamori_pg_standby_lag_seconds"
STANDBY_FEEDBACK_AGE = "mamori_pg_standby_feedback_age_seconds"
ARCHIVER_ENABLED = "mamori_pg_archiver_enabled"
ARCHIVER_FAILING = "mamori_pg_archiver_failing"
ARCHIVER_ARCHIVED = "mamori_pg_archiver_archived_total"
ARCHIVER_FAILED = "mamori_pg_archiver_failed_total"
ARCHIVER_LAST_AGE = "mamori_pg_archiver_last_archived_age_seconds"
ARCHIVER_READY = "mamori_pg_archiver_ready_files"
ARCHIVER_READY_AGE = "mamori_pg_archiver_ready_oldest_age_seconds"
ARCHIVER_READY_WARNING = "mamori_pg_archiver_ready_files_warning"
ARCHIVER_READY_AGE_WARNING = "mamori_pg_archiver_ready_oldest_age_warning_seconds"
SLOT_ACTIVE = "mamori_pg_slot_active"
SLOT_RETAINED = "mamori_pg_slot_retained_bytes"
SLOT_WAL_STATUS = "mamori_pg_slot_wal_status"
SLOT_SAFE_WAL_SIZE = "mamori_pg_slot_safe_wal_size_bytes"
RECEIVE_LSN = "mamori_pg_wal_receive_lsn_bytes"
REPLAY_LSN = "mamori_pg_wal_replay_lsn_bytes"
APPLY_BACKLOG = "mamori_pg_apply_backlog_bytes"
REPLAY_PAUSED = "mamori_pg_replay_paused"
RECEIVER_STATUS = "mamori_pg_wal_receiver_status"
RECEIVER_MSG_AGE = "mamori_pg_wal_receiver_last_message_age_seconds"
LAST_REPLAY_AGE = "mamori_pg_last_xact_replay_age_seconds"
HEARTBEAT_DELAY = "mamori_pg_heartbeat_delay_seconds"
CLUSTER_PRIMARIES = "mamori_pg_cluster_primaries"
CLUSTER_SYSID_MISMATCH = "mamori_pg_cluster_sysid_mismatch"
CLUSTER_TIMELINE_DIVERGENCE = "mamori_pg_cluster_timeline_divergence"
EXPECTED_STANDBY = "mamori_pg_expected_standby_connected"
RPO = "mamori_pg_rpo_seconds"
LAG_WARNING = "mamori_pg_lag_warning_seconds"
RPO_EXPOSURE = "mamori_pg_rpo_exposure_seconds"
RPO_STANDBY_GAP = "mamori_pg_rpo_standby_gap_seconds"
RPO_ARCHIVE_GAP = "mamori_pg_rpo_archive_gap_seconds"
FAILOVER_READY = "mamori_pg_failover_ready"
FAILOVER_RECOMMENDED = "mamori_pg_failover_recommended"

# SQLSTATEs that mean "no heartbeat here" rather than "this node is broken".
_NO_HEARTBEAT = (errors.UndefinedTable, errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction)


class PgNode(Model):
    name: str = Field(pattern=_NAME)
    host: str = Field(min_length=1)
    port: Port = 5432
    # How the primary's pg_stat_replication names this node when it is a standby (the
    # application_name in its primary_conninfo); default: the node's name.
    application_name: str | None = Field(default=None, min_length=1, max_length=63)

    @property
    def standby_name(self) -> str:
        return self.application_name or self.name


class PostgresConfig(CheckConfig):
    type: Literal["postgres"] = "postgres"
    nodes: tuple[PgNode, ...]
    user: str = Field(default="mamori", min_length=1)
    password: SecretStr | None = None
    dbname: str = Field(default="postgres", min_length=1)
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout: Duration | None = None  # default: 3s, or half of timeout if that is less
    statement_timeout: Duration | None = None  # default: 2s, or half of timeout if that is less
    cluster: str | None = Field(default=None, pattern=_NAME)
    expected_standbys: tuple[str, ...] = ()
    rpo: Duration = 900.0
    lag_warning: Duration | None = None  # default: 60s, or half of lag_critical if that is less
    lag_critical: Duration | None = None  # default: rpo
    heartbeat: bool = True
    heartbeat_table: str = "mamori.heartbeat"
    heartbeat_wait: Duration = 1.0
    archive_age_warning: Duration | None = None  # default: 5m, or half of archive_age_critical
    archive_age_critical: Duration | None = None  # default: rpo
    ready_backlog_warning: int = Field(default=10, ge=1)
    ready_backlog_critical: int = Field(default=100, ge=1)
    slot_retained_warning: ByteSize | None = 2**30
    slot_retained_critical: ByteSize | None = None
    wraparound_warning: float = Field(default=0.5, gt=0, lt=1)
    wraparound_critical: float = Field(default=0.75, gt=0, lt=1)
    connections_warning: float = Field(default=0.8, gt=0, le=1)
    connections_critical: float = Field(default=0.95, gt=0, le=1)

    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, nodes: tuple[PgNode, ...]) -> tuple[PgNode, ...]:
        if not nodes:
            raise ValueError("at least one node is needed")
        for what, values in (
            ("node names", [n.name for n in nodes]),
            ("application names", [n.standby_name for n in nodes]),
        ):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"{what} must be unique: {', '.join(dupes)}")
        return nodes

    @field_validator("expected_standbys")
    @classmethod
    def _unique_standbys(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expected standbys must be unique: {', '.join(dupes)}")
        if any(not n or len(n) > 63 for n in names):
            raise ValueError("an expected standby is an application_name of 1 to 63 characters")
        return names

    @field_validator("heartbeat_table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not _TABLE.match(value):
            raise ValueError(f"invalid table name {value!r}: expected e.g. mamori.heartbeat (lower case)")
        return value

    @model_validator(mode="after")
    def _orders(self) -> PostgresConfig:
        for key in ("connect_timeout", "statement_timeout"):
            value = getattr(self, key)
            if value is not None and value >= self.timeout:
                raise ValueError(f"{key} ({value:g}s) must be less than timeout ({self.timeout:g}s)")
        pairs: list[tuple[str, str, Callable[[Any], str]]] = [
            ("lag_warning", "lag_critical", seconds),
            ("archive_age_warning", "archive_age_critical", seconds),
            ("ready_backlog_warning", "ready_backlog_critical", str),
            ("slot_retained_warning", "slot_retained_critical", size),
            ("wraparound_warning", "wraparound_critical", str),
            ("connections_warning", "connections_critical", str),
        ]
        policy = self.policy()
        for warn_key, crit_key, show in pairs:
            warn, crit = getattr(policy, warn_key), getattr(policy, crit_key)
            if warn is None or crit is None or warn < crit:
                continue
            # Name the key that was given first, so the error points at its line.
            warn_text, crit_text = show(warn), show(crit)
            if warn_key not in self.model_fields_set:
                raise ValueError(f"{crit_key} ({crit_text}) must be more than {warn_key} ({warn_text})")
            if crit_key not in self.model_fields_set and crit_key in ("lag_critical", "archive_age_critical"):
                crit_text += ", the rpo"
            raise ValueError(f"{warn_key} ({warn_text}) must be less than {crit_key} ({crit_text})")
        return self

    @property
    def connect_timeout_s(self) -> float:
        return self.connect_timeout if self.connect_timeout is not None else min(3.0, self.timeout / 2)

    @property
    def statement_timeout_s(self) -> float:
        return self.statement_timeout if self.statement_timeout is not None else min(2.0, self.timeout / 2)

    @property
    def cluster_name(self) -> str:
        return self.cluster or self.name

    @property
    def lag_critical_s(self) -> float:
        return self.lag_critical if self.lag_critical is not None else self.rpo

    @property
    def archive_critical_s(self) -> float:
        return self.archive_age_critical if self.archive_age_critical is not None else self.rpo

    def policy(self) -> Policy:
        lag_critical, archive_critical = self.lag_critical_s, self.archive_critical_s
        return Policy(
            cluster=self.cluster_name,
            cluster_view=len(self.nodes) > 1 or bool(self.expected_standbys),
            rpo=self.rpo,
            lag_warning=self.lag_warning if self.lag_warning is not None else min(60.0, lag_critical / 2),
            lag_critical=lag_critical,
            expected_standbys=self.expected_standbys,
            archive_age_warning=(
                self.archive_age_warning
                if self.archive_age_warning is not None
                else min(300.0, archive_critical / 2)
            ),
            archive_age_critical=archive_critical,
            ready_backlog_warning=self.ready_backlog_warning,
            ready_backlog_critical=self.ready_backlog_critical,
            slot_retained_warning=self.slot_retained_warning,
            slot_retained_critical=self.slot_retained_critical,
            wraparound_warning=self.wraparound_warning,
            wraparound_critical=self.wraparound_critical,
            connections_warning=self.connections_warning,
            connections_critical=self.connections_critical,
        )

    def table(self) -> tuple[str, ...]:
        m = _TABLE.match(self.heartbeat_table)
        assert m is not None  # validated
        return tuple(part for part in m.groups() if part)


class _Node:
    """One configured node and its single connection."""

    def __init__(self, config: PgNode) -> None:
        self.config = config
        self.conn: Conn | None = None
        self.archive_dir = True  # False once pg_ls_archive_statusdir() was refused
        self.previous_lsn: tuple[int, float] | None = None  # (lsn, loop time) of the last probe

    def usable(self) -> Conn | None:
        conn = self.conn
        if conn is not None and (conn.closed or conn.broken):
            self.abort()
            return None
        return conn

    def abort(self) -> None:
        """Drop the connection now, without a round trip: safe while a query is in flight (the
        waiting coroutine then fails instead of asking a possibly frozen server to cancel)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.pgconn.finish()


@dataclass(frozen=True, slots=True)
class _Clock:
    """The primary's clock, read at loop time `at`: primary time at loop time t = now + t - at."""

    now: float
    at: float

    def at_time(self, t: float) -> float:
        return self.now + (t - self.at)


@dataclass(frozen=True, slots=True)
class _Report:
    states: tuple[NodeState, ...]
    verdict: Verdict
    policy: Policy


class PostgresCheck(Check[PostgresConfig]):
    type_name: ClassVar[str] = "postgres"
    config_model: ClassVar[type[CheckConfig]] = PostgresConfig

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__(config)
        self._nodes = [_Node(n) for n in config.nodes]
        self._policy = config.policy()
        self._table = config.table()
        self._memory = Memory()
        self._last: _Report | None = None
        # The primary's time of this check's first heartbeat: a standby that shows no row yet
        # is at least that far behind (a lower bound that keeps growing while the link is cut).
        self._first_beat: float | None = None

    @property
    def target(self) -> str:
        hosts = ",".join(f"{n.host}:{n.port}" for n in self.config.nodes)
        return f"postgres://{hosts}/{self.config.dbname}"

    # --- run ---

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        budget = self.time_left()  # less than `timeout` on a retry
        probe_end = t0 + budget * PROBE_SHARE
        end = t0 + budget * RUN_SHARE
        probed = await asyncio.gather(*(self._probe(node, probe_end) for node in self._nodes))
        states = [state for state, _ in probed]
        notes: list[str] = []
        if self.config.heartbeat:
            states = await self._heartbeat(states, [clock for _, clock in probed], end, notes)
        verdict = judge(states, self._policy, self._memory, notes)
        self._remember(states, verdict)
        self._last = _Report(tuple(states), verdict, self._policy)
        return Outcome(verdict.status, verdict.reason, verdict.message, self._samples(states, verdict))

    async def _within(self, node: _Node, work: Awaitable[T], deadline: float) -> T:
        """`work` on `node`'s connection, cut off at `deadline` (loop time). On timeout or
        cancellation the connection is dropped before the work is cancelled."""
        task = asyncio.ensure_future(work)
        try:
            remaining = deadline - asyncio.get_running_loop().time()
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, remaining))
        except BaseException:
            if not task.done():
                node.abort()
                task.cancel()
                await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: never "exception was never retrieved"
            raise

    async def _connection(self, node: _Node) -> Conn:
        conn = node.usable()
        if conn is not None:
            return conn
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                conn = await self._connect(node)
        except TimeoutError as exc:
            # The abandoned attempt's socket is owned by frames that the exception's traceback
            # keeps alive (a reference cycle): release them now, or the socket stays open until
            # the garbage collector runs — one per run while a server is frozen.
            _release_frames(exc)
            raise errors.ConnectionTimeout(f"no connection within {cfg.connect_timeout_s:g}s") from None
        node.conn = conn
        return conn

    async def _connect(self, node: _Node) -> Conn:
        cfg = self.config
        return await psycopg.AsyncConnection.connect(
            host=node.config.host,
            port=node.config.port,
            user=cfg.user,
            password=secret_value(cfg.password),
            dbname=cfg.dbname,
            sslmode=cfg.sslmode,
            # libpq counts whole seconds (at least 2); the asyncio timeout above is exact.
            connect_timeout=max(2, math.ceil(cfg.connect_timeout_s)),
            application_name=APPLICATION_NAME,
            # synchronous_commit=local: the heartbeat is flushed (and so sent to standbys) at
            # once, and never waits for a synchronous standby that may be the one down.
            options=(
                f"-c statement_timeout={max(1, round(cfg.statement_timeout_s * 1000))} "
                "-c synchronous_commit=local"
            ),
            autocommit=True,
            row_factory=dict_row,
        )

    async def _query_node(self, node: _Node) -> tuple[Probe, float]:
        reused = node.usable() is not None
        conn = await self._connection(node)
        loop = asyncio.get_running_loop()
        t1 = loop.time()
        try:
            cur = await conn.execute(PROBE if node.archive_dir else PROBE_WITHOUT_ARCHIVE_DIR)
        except errors.InsufficientPrivilege:
            if not node.archive_dir:
                raise
            node.archive_dir = False  # the role lacks pg_monitor: no archive backlog from now on
            t1 = loop.time()
            cur = await conn.execute(PROBE_WITHOUT_ARCHIVE_DIR)
        except psycopg.OperationalError:
            if not reused or not conn.broken:
                raise
            # The kept connection died while idle (a server restart, a failover, a proxy's idle
            # timeout): say what a new connection finds, not how the old one ended.
            node.abort()
            conn = await self._connection(node)
            t1 = loop.time()
            cur = await conn.execute(PROBE if node.archive_dir else PROBE_WITHOUT_ARCHIVE_DIR)
        row = await cur.fetchone()
        t2 = loop.time()
        if row is None:
            raise errors.ProtocolViolation("the probe returned no row")
        return Probe(row), (t1 + t2) / 2

    async def _probe(self, node: _Node, deadline: float) -> tuple[NodeState, _Clock | None]:
        """The node's state, and its clock (now() read at a loop time). Never raises."""
        cfg = node.config
        try:
            probe, at = await self._within(node, self._query_node(node), deadline)
        except TimeoutError:
            node.abort()
            budget = self.config.timeout * PROBE_SHARE
            return self._down(node, Reason.TIMEOUT, f"no answer within {budget:g}s"), None
        except (psycopg.Error, OSError, ValueError, KeyError, TypeError) as exc:
            node.abort()
            reason, text = failure(exc)
            return self._down(node, reason, text), None
        rate = None
        if probe.in_recovery or probe.lsn is None:
            node.previous_lsn = None
        else:
            previous = node.previous_lsn
            if previous is not None and probe.lsn >= previous[0] and at > previous[1]:
                rate = (probe.lsn - previous[0]) / (at - previous[1])
            node.previous_lsn = (probe.lsn, at)
        state = NodeState(
            name=cfg.name,
            application_name=cfg.standby_name,
            up=True,
            in_recovery=probe.in_recovery,
            sysid=probe.sysid,
            timeline=probe.timeline,
            connections=probe.connections,
            max_connections=probe.max_connections,
            xid_age=probe.xid_age,
            lsn=probe.lsn,
            wal_rate=rate,
            replicas=probe.replicas if not probe.in_recovery else (),
            archiver=probe.archiver if not probe.in_recovery else None,
            receive_lsn=probe.receive_lsn,
            replay_lsn=probe.replay_lsn,
            last_replay_age=probe.last_replay_age,
            replay_paused=probe.replay_paused,
            receiver=probe.receiver,
            slots=probe.slots,
        )
        clock = _Clock(probe.now, at) if probe.now is not None else None
        return state, clock

    def _down(self, node: _Node, reason: Reason, text: str) -> NodeState:
        return NodeState(
            name=node.config.name,
            application_name=node.config.standby_name,
            up=False,
            failure=reason,
            error=text,
        )

    # --- heartbeat ---

    async def _heartbeat(
        self,
        states: list[NodeState],
        clocks: list[_Clock | None],
        end: float,
        notes: list[str],
    ) -> list[NodeState]:
        """Write this run's heartbeat on the primary, read it on every standby; returns the states
        with each reachable standby's `heartbeat` filled in. Never raises."""
        primaries = [i for i, s in enumerate(states) if s.role == "primary"]
        standbys = [i for i, s in enumerate(states) if s.role == "standby"]
        if not standbys:
            # No standby configured here: keep the row fresh for whoever reads it on the
            # standbys (another check, another agent); a missing table matters only if some
            # standby streams from this primary.
            if primaries:
                streamed = any(states[i].replicas for i in primaries)
                await self._write(primaries, states, clocks, end, notes if streamed else [])
            return states
        clock: _Clock | None = None
        written: float | None = None
        if primaries:
            written, clock = await self._write(primaries, states, clocks, end, notes)
            if written is None and clock is None:
                return states  # no heartbeat table: pg_cluster falls back to replay_lag
        loop = asyncio.get_running_loop()
        stop = min(end, loop.time() + self.config.heartbeat_wait)
        beats = await asyncio.gather(
            *(self._read(self._nodes[i], written, clock, stop, end) for i in standbys)
        )
        out = list(states)
        for i, beat in zip(standbys, beats, strict=True):
            out[i] = replace(out[i], heartbeat=beat)
        return out

    async def _write(
        self,
        primaries: list[int],
        states: list[NodeState],
        clocks: list[_Clock | None],
        end: float,
        notes: list[str],
    ) -> tuple[float | None, _Clock | None]:
        """Upsert the heartbeat on every primary (in a split brain each gets its own copy); returns
        the written ts and the primary clock of the newest-timeline primary (the one standbys are
        compared with), or (None, None) when there is no heartbeat table."""
        best = max(primaries, key=lambda i: states[i].timeline or 0)
        loop = asyncio.get_running_loop()
        result: tuple[float | None, _Clock | None] = (None, clocks[best])
        for i in primaries:
            node = self._nodes[i]
            try:
                conn = node.usable()
                if conn is None:
                    continue
                t1 = loop.time()
                cur = await self._within(
                    node, conn.execute(heartbeat_write(self._table), [self._policy.cluster]), end
                )
                row = await self._within(node, cur.fetchone(), end)
                t2 = loop.time()
            except _NO_HEARTBEAT as exc:
                notes.append(self._no_table_note(node, exc))
                if i == best:
                    result = (None, None)
                continue
            except (TimeoutError, psycopg.Error, OSError) as exc:
                node.abort()
                notes.append(f"heartbeat not written on {node.config.name}: {failure(exc)[1]}")
                continue
            if i == best and row is not None and row.get("ts") is not None:
                ts = float(row["ts"])
                result = (ts, _Clock(ts, (t1 + t2) / 2))
                if self._first_beat is None:
                    self._first_beat = ts
        return result

    def _no_table_note(self, node: _Node, exc: BaseException) -> str:
        if isinstance(exc, errors.UndefinedTable):
            what = "does not exist"
        elif isinstance(exc, errors.InsufficientPrivilege):
            what = "is not writable by the role"
        else:
            what = "cannot be written (read-only)"
        return (
            f"heartbeat table {self.config.heartbeat_table} {what} on {node.config.name}: "
            "standby delays come from pg_stat_replication"
        )

    async def _read(
        self, node: _Node, written: float | None, clock: _Clock | None, stop: float, end: float
    ) -> Heartbeat:
        """The heartbeat as this standby sees it. When this run wrote one, re-read (backing off)
        until it shows or `stop` passes, so a healthy standby reads a delay of milliseconds
        rather than one interval. Never raises."""
        loop = asyncio.get_running_loop()
        query = heartbeat_read(self._table)
        pause = 0.005
        try:
            conn = node.usable()
            if conn is None:
                return Heartbeat(None, note=f"{node.config.name}: no connection for the heartbeat")
            while True:
                t1 = loop.time()
                cur = await self._within(node, conn.execute(query, [self._policy.cluster]), end)
                row = await self._within(node, cur.fetchone(), end)
                t2 = loop.time()
                ts = None if row is None or row.get("ts") is None else float(row["ts"])
                fresh = written is None or (ts is not None and ts >= written)
                if fresh or loop.time() + pause > stop:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.2)
        except _NO_HEARTBEAT as exc:
            return Heartbeat(None, note=self._no_table_note(node, exc))
        except (TimeoutError, psycopg.Error, OSError) as exc:
            node.abort()
            return Heartbeat(None, note=f"heartbeat not read on {node.config.name}: {failure(exc)[1]}")
        if ts is None:
            if clock is not None and self._first_beat is not None:
                # Not even our first heartbeat has arrived: behind by at least its age.
                return Heartbeat(max(0.0, clock.at_time((t1 + t2) / 2) - self._first_beat), "primary")
            return Heartbeat(
                None, note=f"no heartbeat row for {self._policy.cluster} on {node.config.name} yet"
            )
        if clock is not None:
            return Heartbeat(max(0.0, clock.at_time((t1 + t2) / 2) - ts), "primary")
        standby_now = row.get("now") if row is not None else None
        if standby_now is None:
            return Heartbeat(None, note=f"{node.config.name} did not say its time")
        return Heartbeat(max(0.0, float(standby_now) - ts), "standby")

    def _remember(self, states: Sequence[NodeState], verdict: Verdict) -> None:
        roles: dict[str, Role] = dict(self._memory.roles)
        for s in states:
            if s.role is not None:
                roles[s.name] = s.role
        timeline = self._memory.primary_timeline
        if verdict.primary is not None and verdict.primary.timeline is not None:
            timeline = verdict.primary.timeline
        self._memory = Memory(roles, timeline)

    # --- samples ---

    def _samples(self, states: Sequence[NodeState], verdict: Verdict) -> tuple[Sample, ...]:
        out: list[Sample] = []
        add = out.append
        for s in states:
            node = (("node", s.name),)
            add(Sample(UP, 1.0 if s.up else 0.0, node))
            if not s.up:
                continue
            _opt(out, IN_RECOVERY, None if s.in_recovery is None else float(s.in_recovery), node)
            _opt(out, TIMELINE, s.timeline, node)
            _opt(out, CONNECTIONS, s.connections, node)
            _opt(out, MAX_CONNECTIONS, s.max_connections, node)
            _opt(out, XID_AGE, s.xid_age, node)
            _opt(out, XID_AGE_RATIO, None if s.xid_age is None else s.xid_age / WRAPAROUND_LIMIT, node)
            if s.role == "primary":
                self._primary_samples(out, s, node)
            else:
                self._standby_samples(out, s, node)
            for slot in s.slots:
                labels = (*node, ("slot", slot.name))
                add(Sample(SLOT_ACTIVE, float(slot.active), labels))
                _opt(out, SLOT_RETAINED, slot.retained_bytes, labels)
                add(Sample(SLOT_WAL_STATUS, 1.0, (*labels, ("wal_status", slot.wal_status or "none"))))
                _opt(out, SLOT_SAFE_WAL_SIZE, slot.safe_wal_size, labels)
        if self._policy.cluster_view:
            self._cluster_samples(out, states, verdict)
        return tuple(out)

    def _primary_samples(self, out: list[Sample], s: NodeState, node: tuple[tuple[str, str], ...]) -> None:
        _opt(out, WAL_LSN, s.lsn, node)
        _opt(out, WAL_RATE, s.wal_rate, node)
        for r in s.replicas:
            labels = (*node, ("standby", r.name))
            out.append(Sample(STANDBY_STATE, 1.0, (*labels, ("state", r.state or "unknown"))))
            for stage, value in (
                ("sent", r.sent_bytes),
                ("write", r.write_bytes),
                ("flush", r.flush_bytes),
                ("replay", r.replay_bytes),
            ):
                _opt(out, STANDBY_LAG_BYTES, value, (*labels, ("stage", stage)))
            for lag_stage in STAGES:
                _opt(out, STANDBY_LAG_SECONDS, r.lag_seconds(lag_stage), (*labels, ("stage", lag_stage)))
            _opt(out, STANDBY_FEEDBACK_AGE, r.reply_age, labels)
        a = s.archiver
        if a is not None:
            out.append(Sample(ARCHIVER_ENABLED, float(a.enabled), node))
            if a.enabled:
                out.append(Sample(ARCHIVER_FAILING, float(a.failing), node))
                out.append(Sample(ARCHIVER_ARCHIVED, float(a.archived_count), node))
                out.append(Sample(ARCHIVER_FAILED, float(a.failed_count), node))
                _opt(out, ARCHIVER_LAST_AGE, a.last_archived_age, node)
                _opt(out, ARCHIVER_READY, a.ready_count, node)
                ready_age = None if a.ready_count is None else (a.ready_oldest_age or 0.0)
                _opt(out, ARCHIVER_READY_AGE, ready_age, node)
                # The thresholds of `archive_failing`, so that PostgresArchivingFailing judges
                # the backlog exactly as this check does (as mamori_pg_lag_warning_seconds does
                # for lag).
                out.append(Sample(ARCHIVER_READY_WARNING, float(self._policy.ready_backlog_warning), node))
                out.append(Sample(ARCHIVER_READY_AGE_WARNING, self._policy.archive_age_warning, node))

    def _standby_samples(self, out: list[Sample], s: NodeState, node: tuple[tuple[str, str], ...]) -> None:
        _opt(out, RECEIVE_LSN, s.receive_lsn, node)
        _opt(out, REPLAY_LSN, s.replay_lsn, node)
        _opt(out, APPLY_BACKLOG, s.apply_backlog, node)
        _opt(out, REPLAY_PAUSED, None if s.replay_paused is None else float(s.replay_paused), node)
        status = s.receiver.status if s.receiver is not None else "none"
        out.append(Sample(RECEIVER_STATUS, 1.0, (*node, ("status", status))))
        if s.receiver is not None:
            _opt(out, RECEIVER_MSG_AGE, s.receiver.last_msg_age, node)
        _opt(out, LAST_REPLAY_AGE, s.last_replay_age, node)
        if s.heartbeat is not None:
            _opt(out, HEARTBEAT_DELAY, s.heartbeat.delay, node)

    def _cluster_samples(self, out: list[Sample], states: Sequence[NodeState], verdict: Verdict) -> None:
        cluster = (("cluster", self._policy.cluster),)
        reasons = {i.reason for i in verdict.issues}
        out.append(Sample(CLUSTER_PRIMARIES, float(sum(s.role == "primary" for s in states)), cluster))
        out.append(Sample(CLUSTER_SYSID_MISMATCH, float(Reason.SYSID_MISMATCH in reasons), cluster))
        out.append(Sample(CLUSTER_TIMELINE_DIVERGENCE, float(Reason.TIMELINE_DIVERGENCE in reasons), cluster))
        for v in verdict.standbys:
            if v.expected:
                connected = v.replica is not None and v.replica.streaming
                out.append(Sample(EXPECTED_STANDBY, float(connected), (*cluster, ("standby", v.name))))
        out.append(Sample(RPO, self._policy.rpo, cluster))
        out.append(Sample(LAG_WARNING, self._policy.lag_warning, cluster))
        _opt(out, RPO_EXPOSURE, verdict.exposure, cluster)
        _opt(out, RPO_STANDBY_GAP, verdict.standby_gap, cluster)
        _opt(out, RPO_ARCHIVE_GAP, verdict.archive_gap, cluster)
        assert verdict.ready_reason in READY_REASONS
        assert verdict.recommended_reason in RECOMMENDED_REASONS
        out.append(Sample(FAILOVER_READY, float(verdict.ready), (*cluster, ("reason", verdict.ready_reason))))
        out.append(
            Sample(
                FAILOVER_RECOMMENDED,
                float(verdict.recommended),
                (*cluster, ("reason", verdict.recommended_reason)),
            )
        )

    # --- reporting ---

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        out = [PerfDatum("time", result.duration, "s", min=0)]
        report = self._last
        if report is not None and report.policy.cluster_view:
            v = report.verdict
            if v.standby_gap is not None:
                out.append(PerfDatum("standby_gap", v.standby_gap, "s", min=0))
            if v.exposure is not None:
                out.append(PerfDatum("rpo_exposure", v.exposure, "s", crit=report.policy.rpo, min=0))
        return out

    def summary(self, result: CheckResult) -> str | None:
        """The replication report of the last run (nodes, standbys, archiver, slots, RPO,
        failover readiness), or None before any run."""
        if self._last is None:
            return None
        return render_summary(self.name, result, self._last.states, self._last.verdict, self._last.policy)

    async def aclose(self) -> None:
        """Close every node's connection. Safe to call twice, and before any run."""
        for node in self._nodes:
            node.abort()


def _release_frames(exc: BaseException | None) -> None:
    """Clear the tracebacks of `exc` and of every exception it was raised from or during."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__context__ or exc.__cause__


def _opt(out: list[Sample], name: str, value: float | None, labels: tuple[tuple[str, str], ...]) -> None:
    if value is not None:
        out.append(Sample(name, float(value), labels))


# --- failures ---------------------------------------------------------------------------------

_MESSAGE_PREFIX = re.compile(
    r'^(?:connection failed: )?(?:connection to server at "[^"]*", port \d+ failed: )?'
)
_BY_TEXT: tuple[tuple[str, Reason], ...] = (
    ("password authentication failed", Reason.AUTH_FAILED),
    ("no pg_hba.conf entry", Reason.AUTH_FAILED),
    ("authentication failed", Reason.AUTH_FAILED),
    ("does not exist", Reason.AUTH_FAILED),  # FATAL: database/role "x" does not exist
    ("too many clients", Reason.TOO_MANY_CONNECTIONS),
    ("connection slots are reserved", Reason.TOO_MANY_CONNECTIONS),
    ("refused", Reason.REFUSED),
    ("no route to host", Reason.UNREACHABLE),
    ("network is unreachable", Reason.UNREACHABLE),
    ("failed to resolve host", Reason.DNS),
    ("could not translate host name", Reason.DNS),
    ("name or service not known", Reason.DNS),
    ("timeout", Reason.TIMEOUT),
    ("timed out", Reason.TIMEOUT),
    ("closed the connection", Reason.CONNECTION_RESET),
    ("connection reset", Reason.CONNECTION_RESET),
    ("broken pipe", Reason.CONNECTION_RESET),
    ("the connection is lost", Reason.CONNECTION_RESET),
    ("the connection is closed", Reason.CONNECTION_RESET),
    ("eof detected", Reason.CONNECTION_RESET),
    ("starting up", Reason.UNAVAILABLE),
    ("shutting down", Reason.UNAVAILABLE),
)


def failure(exc: BaseException) -> tuple[Reason, str]:
    """The reason and a one-line description of why talking to a node failed."""
    text = _MESSAGE_PREFIX.sub("", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    text = text.replace("FATAL:  ", "").strip() or type(exc).__name__
    if isinstance(exc, TimeoutError | errors.ConnectionTimeout | errors.QueryCanceled):
        return Reason.TIMEOUT, "timed out" if isinstance(exc, TimeoutError) else text
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate.startswith("28") or sqlstate == "3D000":
        return Reason.AUTH_FAILED, text
    if sqlstate == "53300":
        return Reason.TOO_MANY_CONNECTIONS, text
    if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02"):
        return Reason.CONNECTION_RESET, text
    if sqlstate == "57P03":
        return Reason.UNAVAILABLE, text
    if not sqlstate:
        lowered = text.lower()
        for needle, reason in _BY_TEXT:
            if needle in lowered:
                return reason, text
    return Reason.UNAVAILABLE, text


# --- the summary ------------------------------------------------------------------------------


def _lsn(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def render_summary(
    name: str, result: CheckResult, states: Sequence[NodeState], verdict: Verdict, policy: Policy
) -> str:
    """A readable multi-line report of one run, for `agentctl check -c FILE NAME`."""
    lines = [f"{name}: {result.status.name} ({result.reason.value}) — cluster {policy.cluster}"]
    lines.append("nodes:")
    for s in states:
        if not s.up:
            lines.append(f"  {s.name:<12} DOWN      {s.failure.value}: {s.error}")
            continue
        head = f"  {s.name:<12} {s.role or '?':<9} timeline {s.timeline}"
        conns = f"connections {s.connections}/{s.max_connections}"
        xid = "" if s.xid_age is None else f", xid age {s.xid_age:,} ({s.xid_age / WRAPAROUND_LIMIT:.1%})"
        if s.role == "primary":
            rate = "" if s.wal_rate is None else f", WAL {size(s.wal_rate)}/s"
            lines.append(f"{head}  lsn {_lsn(s.lsn)}{rate}; {conns}{xid}")
        else:
            receiver = s.receiver.status if s.receiver is not None else "not running"
            msg = (
                ""
                if s.receiver is None or s.receiver.last_msg_age is None
                else f" (last message {seconds(s.receiver.last_msg_age)} ago)"
            )
            paused = "paused" if s.replay_paused else "running"
            lines.append(
                f"{head}  receive {_lsn(s.receive_lsn)} replay {_lsn(s.replay_lsn)} "
                f"(backlog {size(s.apply_backlog)}); {conns}{xid}"
            )
            lines.append(
                f"  {'':<12} WAL receiver {receiver}{msg}; replay {paused}; last replayed commit "
                f"{seconds(s.last_replay_age)} old (grows when the primary is idle: not lag)"
            )
    if verdict.standbys:
        if verdict.primary is not None:
            lines.append(f"standbys (as {verdict.primary.name} sees them, and their heartbeat):")
        else:
            lines.append("standbys (no primary reachable: delays on the standbys' own clocks):")
        for v in verdict.standbys:
            r = v.replica
            if r is None:
                where = "not connected to the primary" if verdict.primary is not None else "-"
            else:
                lag_b = " ".join(
                    f"{k} {size(b)}"
                    for k, b in (
                        ("sent", r.sent_bytes),
                        ("write", r.write_bytes),
                        ("flush", r.flush_bytes),
                        ("replay", r.replay_bytes),
                    )
                )
                lag_s = " ".join(f"{k} {seconds(r.lag_seconds(k))}" for k in STAGES)
                where = f"{r.state} {r.sync_state or ''}; behind by {lag_b}; lag {lag_s}".replace("  ", " ")
            delay = f"delay {seconds(v.delay)}" + (f" ({v.delay_source})" if v.delay_source else "")
            mark = "expected, " if v.expected else ""
            lines.append(f"  {v.name:<12} {mark}{where}; {delay}; failover: {v.problem or 'ready'}")
    for s in states:
        a = s.archiver
        if a is None:
            continue
        if not a.enabled:
            lines.append(f"archiver ({s.name}): archive_mode off")
            continue
        waiting = a.waiting_age or 0.0
        behind = (a.ready_count or 0) >= policy.ready_backlog_warning or waiting >= policy.archive_age_warning
        state = "FAILING" if a.failing else "BEHIND" if behind else "ok"
        if a.ready_count is None:
            ready = "unknown .ready (no pg_monitor)"
        elif a.ready_count:
            ready = f"{a.ready_count} .ready (oldest {seconds(a.ready_oldest_age)})"
        else:
            ready = "0 .ready"
        lines.append(
            f"archiver ({s.name}): {state}; {a.archived_count} archived, {a.failed_count} failed, "
            f"last {seconds(a.last_archived_age)} ago; {ready}"
        )
    for s in states:
        for slot in s.slots:
            safe = "unlimited" if slot.safe_wal_size is None else size(slot.safe_wal_size)
            lines.append(
                f"slot {slot.name} ({s.name}): {slot.slot_type}, {'active' if slot.active else 'inactive'}, "
                f"wal_status {slot.wal_status or '-'}, retains {size(slot.retained_bytes)}, safe size {safe}"
            )
    if policy.cluster_view:
        lines.append(
            f"RPO: exposure {seconds(verdict.exposure)} of {seconds(policy.rpo)} "
            f"(standby gap {seconds(verdict.standby_gap)}, archive gap {seconds(verdict.archive_gap)})"
        )
        recommended = "yes" if verdict.recommended else "no"
        lines.append(
            f"failover: {'ready' if verdict.ready else 'NOT ready'} ({verdict.ready_reason}); "
            f"recommended from here: {recommended} ({verdict.recommended_reason})"
        )
    if verdict.issues:
        lines.append("problems:")
        lines.extend(f"  {i.status.name:<8} {i.reason.value}: {i.text}" for i in verdict.issues)
    if verdict.notes:
        lines.append("notes:")
        lines.extend(f"  {n}" for n in verdict.notes)
    return "\n".join(lines)
