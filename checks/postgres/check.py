"""`postgres`: a PostgreSQL primary and its standbys — replication, WAL, archiving, slots — and the
cluster's verdict: split brain, RPO exposure, failover readiness.

One run, for a check of N nodes:

1. every node is probed concurrently, with one query on its one persistent connection
   (`queries.py`): role, system identifier, timeline, connections, wraparound; on a
   primary its WAL position, every standby it streams to, the archiver and the slots; on a
   standby its receive/replay positions, replay pause and WAL receiver;
2. the heartbeat: the primary upserts this cluster's row (`heartbeat_table`), then each standby
   reads its replayed copy; the delay is the primary's now() − the ts the standby sees, both on
   the primary's clock (the local monotonic clock only carries the primary's time from the write
   to the read), so server clock skew never enters, and the row moves every run even when the
   primary is idle;
3. `cluster.py` judges the states: status, reason, RPO exposure, failover readiness, and what
   the witnesses say of the primary (this agent's path, each standby's WAL receiver), with the
   stall grace measured from the end of the first run of a streak without a primary (`Memory`).

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
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

import psycopg
from psycopg import errors

from agent.model import CheckResult, Reason
from checks.base import Check, CheckConfig, CheckOutcome, PerfDatum
from checks.postgres.cluster import (
    ClusterVerdict,
    Heartbeat,
    Memory,
    NodeState,
    Policy,
    Role,
    judge,
)
from checks.postgres.config import PostgresConfig
from checks.postgres.connection import Conn, NodeConnection, connect, failure, release_frames
from checks.postgres.queries import PROBE, PROBE_WITHOUT_ARCHIVE_DIR, Probe, heartbeat_read, heartbeat_write
from checks.postgres.samples import samples_of
from checks.postgres.summary import render_summary

T = TypeVar("T")
PROBE_SHARE = 0.6  # of `timeout`, for the node probes
RUN_SHARE = 0.9  # of `timeout`, for the whole run (the harness stops it at timeout + 0.5 s)

# SQLSTATEs that mean "no heartbeat here" rather than "this node is broken".
_NO_HEARTBEAT = (errors.UndefinedTable, errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction)


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
    verdict: ClusterVerdict
    policy: Policy


class PostgresCheck(Check[PostgresConfig]):
    type_name: ClassVar[str] = "postgres"
    config_model: ClassVar[type[CheckConfig]] = PostgresConfig

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__(config)
        self._nodes = [NodeConnection(n) for n in config.nodes]
        self._policy = config.policy()
        self._table = config.table()
        self._memory = Memory()
        self._last: _Report | None = None
        # The primary's time of this check's first heartbeat: a standby that shows no row yet
        # is at least that far behind (a lower bound that keeps growing while the link is cut).
        self._first_beat: float | None = None
        # `heartbeat_interval`: the loop time and ts of this check's last heartbeat, and each
        # standby's delay measured with it (kept while the standby shows that heartbeat).
        self._last_write: float | None = None
        self._written: float | None = None
        self._beat_delays: dict[str, float] = {}
        # (node, slot) -> the loop time this check first saw the slot inactive.
        self._inactive_since: dict[tuple[str, str], float] = {}

    @property
    def target(self) -> str:
        hosts = ",".join(f"{n.host}:{n.port}" for n in self.config.nodes)
        return f"postgres://{hosts}/{self.config.dbname}"

    # --- run ---

    async def run(self) -> CheckOutcome:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        budget = self.time_left()  # less than `timeout` on a retry
        probe_end = t0 + budget * PROBE_SHARE
        end = t0 + budget * RUN_SHARE
        probed = await asyncio.gather(*(self._probe(node, probe_end) for node in self._nodes))
        states = self._slot_ages([state for state, _ in probed], loop.time())
        notes: list[str] = []
        if self.config.heartbeat:
            states = await self._heartbeat(states, [clock for _, clock in probed], end, notes)
        # The end of this run: the stall grace is measured between the ends of runs.
        verdict = judge(states, self._policy, self._memory, notes, now=loop.time())
        self._remember(states, verdict)
        self._last = _Report(tuple(states), verdict, self._policy)
        return CheckOutcome(
            verdict.status, verdict.reason, verdict.message, samples_of(states, verdict, self._policy)
        )

    async def _within(self, node: NodeConnection, work: Awaitable[T], deadline: float) -> T:
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

    async def _connection(self, node: NodeConnection) -> Conn:
        conn = node.usable()
        if conn is not None:
            return conn
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                conn = await connect(self.config, node.config)
        except TimeoutError as exc:
            # The abandoned attempt's socket is owned by frames that the exception's traceback
            # keeps alive (a reference cycle): release them now, or the socket stays open until
            # the garbage collector runs — one per run while a server is frozen.
            release_frames(exc)
            raise errors.ConnectionTimeout(f"no connection within {cfg.connect_timeout_s:g}s") from None
        node.conn = conn
        return conn

    async def _query_node(self, node: NodeConnection) -> tuple[Probe, float]:
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

    async def _probe(self, node: NodeConnection, deadline: float) -> tuple[NodeState, _Clock | None]:
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

    def _slot_ages(self, states: list[NodeState], now: float) -> list[NodeState]:
        """The states with each inactive slot's `inactive_for`: how long this check has seen it
        inactive (from 0 at the first sight). A node that is down keeps its slots' timers."""
        seen: dict[tuple[str, str], float] = {}
        out = []
        for state in states:
            if not state.up:
                seen.update((k, v) for k, v in self._inactive_since.items() if k[0] == state.name)
                out.append(state)
                continue
            slots = []
            for slot in state.slots:
                if not slot.active:
                    key = (state.name, slot.name)
                    since = seen[key] = self._inactive_since.get(key, now)
                    slot = replace(slot, inactive_for=now - since)
                slots.append(slot)
            out.append(replace(state, slots=tuple(slots)))
        self._inactive_since = seen
        return out

    def _down(self, node: NodeConnection, reason: Reason, text: str) -> NodeState:
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
        loop = asyncio.get_running_loop()
        due = self._beat_due(loop.time())
        if not standbys:
            # No standby configured here: keep the row fresh for whoever reads it on the
            # standbys (another check, another agent); a missing table matters only if some
            # standby streams from this primary.
            if primaries and due:
                streamed = any(states[i].replicas for i in primaries)
                await self._write(primaries, states, clocks, end, notes if streamed else [])
            return states
        clock: _Clock | None = None
        written: float | None = None
        if primaries and due:
            written, clock = await self._write(primaries, states, clocks, end, notes)
            if written is None and clock is None:
                return states  # no heartbeat table: pg_cluster falls back to replay_lag
        elif primaries:
            # Between heartbeats (`heartbeat_interval`): read only, on the probe's primary clock.
            clock = clocks[max(primaries, key=lambda i: states[i].timeline or 0)]
        stop = min(end, loop.time() + self.config.heartbeat_wait)
        newest = None if due else self._written
        beats = await asyncio.gather(
            *(
                self._read(
                    self._nodes[i], written, clock, stop, end, newest, self._beat_delays.get(states[i].name)
                )
                for i in standbys
            )
        )
        out = list(states)
        for i, beat in zip(standbys, beats, strict=True):
            out[i] = replace(out[i], heartbeat=beat)
            if written is not None and beat.delay is not None and beat.clock == "primary":
                self._beat_delays[states[i].name] = beat.delay
        return out

    def _beat_due(self, now: float) -> bool:
        """Whether this run writes the heartbeat: every run, or once per `heartbeat_interval`
        (half an interval early rather than a whole interval late)."""
        every = self.config.heartbeat_interval
        if every is None or self._last_write is None:
            return True
        return now - self._last_write >= every - self.config.interval / 2

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
                self._last_write, self._written = t1, ts
                if self._first_beat is None:
                    self._first_beat = ts
        return result

    def _no_table_note(self, node: NodeConnection, exc: BaseException) -> str:
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
        self,
        node: NodeConnection,
        written: float | None,
        clock: _Clock | None,
        stop: float,
        end: float,
        newest: float | None = None,
        kept: float | None = None,
    ) -> Heartbeat:
        """The heartbeat as this standby sees it. When this run wrote one, re-read (backing off)
        until it shows or `stop` passes, so a healthy standby reads a delay of milliseconds
        rather than one interval. Between heartbeats (`newest`: the ts of this check's last
        one), a standby that shows it keeps the delay it was measured with then (`kept`),
        capped by the heartbeat's age; one that does not reads a delay that grows. Never raises."""
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
            age = max(0.0, clock.at_time((t1 + t2) / 2) - ts)
            if newest is not None and kept is not None and ts >= newest:
                return Heartbeat(min(kept, age), "primary")
            return Heartbeat(age, "primary")
        standby_now = row.get("now") if row is not None else None
        if standby_now is None:
            return Heartbeat(None, note=f"{node.config.name} did not say its time")
        return Heartbeat(max(0.0, float(standby_now) - ts), "standby")

    def _remember(self, states: Sequence[NodeState], verdict: ClusterVerdict) -> None:
        roles: dict[str, Role] = dict(self._memory.roles)
        for s in states:
            if s.role is not None:
                roles[s.name] = s.role
        timeline = self._memory.primary_timeline
        if verdict.primary is not None and verdict.primary.timeline is not None:
            timeline = verdict.primary.timeline
        self._memory = Memory(roles, timeline, verdict.no_primary_since, verdict.receiver_lost_since)

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
