"""The `postgres` check.

Part 1, fast and pure: the cluster verdict (checks/postgres/cluster.py) on hand-built node states —
precedence, NULL handling, readiness and recommendation reasons — plus config validation and
the failure classification.

Part 2, against the real PostgreSQL 15 pair of lab/postgres.py (tests/pg.py), connecting
as the least-privileged `mamori` role: the healthy baseline and every fault switch, each
changing the expected metric and reason within one interval; a frozen primary under the real
scheduler; no connection leak over 500 runs; the idle primary for two minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.catalog import READY_REASONS, RECOMMENDED_REASONS
from agent.config import ConfigError
from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from agent.scheduler import Scheduler
from agent.telemetry import AgentMetrics
from checks.postgres.check import PostgresCheck
from checks.postgres.cluster import (
    PRECEDENCE,
    Archiver,
    ClusterVerdict,
    Heartbeat,
    Issue,
    Memory,
    NodeState,
    Policy,
    Receiver,
    Replica,
    Slot,
    _archive_issues,
    judge,
)
from checks.postgres.config import PostgresConfig
from checks.postgres.connection import failure
from checks.postgres.samples import samples_of
from lab.postgres import PgLab
from tests.agent.fakes import SleepCheck, SleepConfig
from tests.pg import fixture_pg_cluster, fixture_pg_pair, one, query  # noqa: F401  (fixtures)

HOST = "127.0.0.1"
STANDBY_APP = "standby1"  # the lab standby's application_name
lab_test = pytest.mark.asyncio(loop_scope="session")

# ============================================================================================
# Part 1: the verdict, on hand-built states
# ============================================================================================

POLICY = Policy(cluster="main", cluster_view=True, expected_standbys=("pg2",), rpo=900.0)


def replica(name: str = "pg2", **kw: Any) -> Replica:
    values: dict[str, Any] = dict(
        state="streaming",
        sync_state="async",
        sent_bytes=0,
        write_bytes=0,
        flush_bytes=0,
        replay_bytes=0,
        reply_age=0.5,
    )
    values.update(kw)
    return Replica(name, **values)


def primary(name: str = "pg1", **kw: Any) -> NodeState:
    base = NodeState(
        name=name,
        application_name=name,
        up=True,
        in_recovery=False,
        sysid=7,
        timeline=1,
        connections=5,
        max_connections=100,
        xid_age=1000,
        lsn=10_000,
        replicas=(replica(),),
        archiver=Archiver(enabled=True, archived_count=3, ready_count=0, last_archived_age=5.0),
    )
    return replace(base, **kw)


def standby(name: str = "pg2", delay: float | None = 0.01, **kw: Any) -> NodeState:
    base = NodeState(
        name=name,
        application_name=name,
        up=True,
        in_recovery=True,
        sysid=7,
        timeline=1,
        connections=3,
        max_connections=100,
        xid_age=1000,
        receive_lsn=10_000,
        replay_lsn=10_000,
        last_replay_age=400.0,
        replay_paused=False,
        receiver=Receiver("streaming", 1, 0.5),
        heartbeat=Heartbeat(delay),
    )
    return replace(base, **kw)


def down(name: str, reason: Reason = Reason.REFUSED, error: str = "Connection refused") -> NodeState:
    return NodeState(name=name, application_name=name, up=False, failure=reason, error=error)


def verdict(*nodes: NodeState, policy: Policy = POLICY, memory: Memory | None = None) -> ClusterVerdict:
    v = judge(nodes, policy, memory or Memory())
    assert v.ready_reason in READY_REASONS
    assert v.recommended_reason in RECOMMENDED_REASONS
    return v


@pytest.mark.parametrize(
    ("row", "stage", "expected"),
    [
        (replica(replay_lag=0.25), "replay", 0.25),
        (replica(write_lag=-0.001), "write", 0.0),  # clock granularity: never negative
        (replica(), "replay", 0.0),  # NULL, streaming, replayed up to the current LSN: caught up
        (replica(replay_bytes=8192), "replay", None),  # NULL but behind: unknown, never 0
        (replica(replay_bytes=None), "replay", None),  # NULL and no position: unknown
        (replica(state="catchup"), "flush", None),  # NULL and not streaming: unknown
        (replica(state=None), "write", None),
    ],
)
def test_null_lag_is_zero_only_when_streaming_and_caught_up(
    row: Replica, stage: Any, expected: float | None
) -> None:
    assert row.lag_seconds(stage) == expected


def test_a_healthy_pair_is_ok_and_ready() -> None:
    v = verdict(primary(), standby())
    assert (v.status, v.reason) == (Status.OK, Reason.OK)
    assert (v.ready, v.ready_reason) == (True, "ready")
    assert (v.recommended, v.recommended_reason) == (False, "primary_reachable")
    assert v.standby_gap == 0.01 and v.archive_gap == 5.0 and v.exposure == 0.01
    assert [s.delay_source for s in v.standbys] == ["heartbeat"]
    assert "failover ready" in v.message and "standby pg2 streaming" in v.message


def test_split_brain_beats_every_other_problem() -> None:
    promoted = primary("pg2", timeline=2, replicas=(), archiver=Archiver(enabled=True, failing=True))
    v = verdict(primary(replicas=()), promoted, primary("pg3", sysid=8, replicas=()))
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.SPLIT_BRAIN)
    assert (v.ready, v.ready_reason) == (False, "split_brain")
    assert v.primary is not None and v.primary.name == "pg2"  # the newest timeline
    assert v.message.startswith("3 primaries: pg1 (timeline 1), pg2 (timeline 2), pg3 (timeline 1)")
    assert [i.reason for i in v.issues][:2] == [Reason.SPLIT_BRAIN, Reason.SYSID_MISMATCH]
    assert v.recommended_reason == "primary_reachable"


def test_a_node_of_another_cluster_is_a_sysid_mismatch() -> None:
    v = verdict(primary(), standby(sysid=99))
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.SYSID_MISMATCH)
    assert "pg2 has 99, expected 7" in v.message
    assert (v.ready, v.ready_reason) == (False, "sysid_mismatch")


@pytest.mark.parametrize(
    ("failure_reason", "expected", "recommendation"),
    [
        (Reason.REFUSED, Reason.PRIMARY_DOWN, (True, "primary_down_standby_ready")),
        (Reason.UNREACHABLE, Reason.PRIMARY_DOWN, (True, "primary_down_standby_ready")),
        (Reason.CONNECTION_RESET, Reason.PRIMARY_DOWN, (True, "primary_down_standby_ready")),
        # "the database system is shutting down"
        (Reason.UNAVAILABLE, Reason.PRIMARY_DOWN, (True, "primary_down_standby_ready")),
        # frozen: we do not know that it is down (within the stall grace: see the witness tests)
        (Reason.TIMEOUT, Reason.TIMEOUT, (False, "primary_unknown")),
        # it answered: our credentials are wrong, or it is full; alive either way
        (Reason.AUTH_FAILED, Reason.AUTH_FAILED, (False, "primary_reachable")),
        (Reason.TOO_MANY_CONNECTIONS, Reason.TOO_MANY_CONNECTIONS, (False, "primary_reachable")),
    ],
)
def test_an_unreachable_primary_names_its_failure(
    failure_reason: Reason, expected: Reason, recommendation: tuple[bool, str]
) -> None:
    # The standby's WAL receiver cannot stream from a dead primary: that must not count against it.
    lonely = standby(receiver=Receiver("waiting"), heartbeat=Heartbeat(30.0, "standby"))
    memory = Memory(roles={"pg1": "primary", "pg2": "standby"}, primary_timeline=1)
    v = verdict(down("pg1", failure_reason), lonely, memory=memory)
    assert (v.status, v.reason) == (Status.CRITICAL, expected)
    assert v.message.startswith("no primary: pg1 ")
    assert (v.ready, v.ready_reason) == (True, "ready")
    assert (v.recommended, v.recommended_reason) == recommendation
    assert "pg2: delay measured with the standby's clock (no primary)" in v.message
    assert v.exposure == 30.0 and v.archive_gap is None


def test_a_primary_unreachable_from_here_leaves_the_standbys_unknown_not_missing() -> None:
    """Issue 15 item 1: this agent's path to the primary is cut; the standby still streams from it
    and nobody here writes the heartbeat, so the standby's delay (on its own clock) passes the
    RPO. Unknown from here: no standby_missing, no replication_lag, no rpo_exceeded, and no
    mamori_pg_expected_standby_connected claiming 0; the message says the primary may only be
    unreachable from this agent."""
    memory = Memory(roles={"pg1": "primary", "pg2": "standby"}, primary_timeline=1)
    streaming = standby(heartbeat=Heartbeat(1000.0, "standby"))
    cut = down("pg1", Reason.TIMEOUT, "no answer within 3s")
    v = verdict(cut, streaming, memory=memory)
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.TIMEOUT)
    assert [i.reason for i in v.issues] == [Reason.TIMEOUT], v.message
    assert v.message.startswith("no primary: pg1 does not answer (no answer within 3s: ")
    assert "yet standby pg2 (last message 0.5s ago) still streams from a primary: " in v.message
    assert "pg1 may only be unreachable from this agent" in v.message
    samples = {(s.name, tuple(sorted(s.labels))): s.value for s in samples_of([cut, streaming], v, POLICY)}
    assert not any(name == "mamori_pg_expected_standby_connected" for name, _ in samples)
    assert samples[("mamori_pg_up", (("node", "pg1"),))] == 0
    assert samples[("mamori_pg_cluster_primaries", (("cluster", "main"),))] == 0
    # A standby whose receiver lost its upstream too: nothing vouches for the primary.
    lonely = standby(receiver=Receiver("waiting"), heartbeat=Heartbeat(1000.0, "standby"))
    v = verdict(down("pg1", Reason.TIMEOUT, "no answer within 3s"), lonely, memory=memory)
    assert [i.reason for i in v.issues] == [Reason.TIMEOUT] and "still streams" not in v.message
    # The same standby seen from an agent that reaches the primary: it lags, and says so.
    v = verdict(primary(), standby(heartbeat=Heartbeat(1000.0)))
    assert [i.reason for i in v.issues] == [Reason.REPLICATION_LAG]
    # And an expected standby the reachable primary does not stream to is missing (0), as before.
    v = verdict(primary(replicas=()), standby(receiver=Receiver("waiting")))
    values = {s.name: s.value for s in samples_of([primary(replicas=())], v, POLICY)}
    assert values["mamori_pg_expected_standby_connected"] == 0


def test_the_presumed_primary_is_the_one_last_seen_as_primary() -> None:
    memory = Memory(roles={"pg1": "standby", "pg2": "primary"})
    v = verdict(down("pg1", Reason.REFUSED), down("pg2", Reason.TIMEOUT), standby("pg3"), memory=memory)
    assert v.reason is Reason.TIMEOUT and "no primary: pg2 does not answer" in v.message
    assert {s.name: s.problem for s in v.standbys} == {
        "pg1": "standby_down",
        "pg3": None,
        "pg2": "standby_down",
    }


def test_primary_down_with_a_standby_not_ready_is_not_recommended() -> None:
    paused = standby(replay_paused=True)
    v = verdict(down("pg1"), paused, memory=Memory(roles={"pg1": "primary"}))
    assert (v.ready, v.ready_reason) == (False, "replay_paused")
    assert (v.recommended, v.recommended_reason) == (False, "primary_down_standby_not_ready")
    behind = standby(heartbeat=Heartbeat(1000.0, "standby"))
    v = verdict(down("pg1"), behind, memory=Memory(roles={"pg1": "primary"}))
    assert (v.ready_reason, v.recommended_reason) == ("lag_exceeds_rpo", "primary_down_standby_not_ready")


def test_a_single_node_that_is_down_keeps_its_connection_reason() -> None:
    alone = Policy(cluster="db", cluster_view=False)
    for reason in (Reason.REFUSED, Reason.TIMEOUT, Reason.DNS, Reason.AUTH_FAILED):
        v = verdict(down("db", reason, "why"), policy=alone)
        assert (v.status, v.reason, v.message) == (Status.CRITICAL, reason, "db: why")
    v = verdict(primary("db", replicas=()), policy=alone)
    assert (v.status, v.ready_reason) == (Status.OK, "no_standby")


def test_nothing_answers() -> None:
    v = verdict(down("pg1", Reason.TIMEOUT, "no answer within 6s"), down("pg2"))
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.TIMEOUT)
    assert v.message.startswith("no node answers; primary pg1: no answer within 6s")
    # A timeout within the stall grace: not yet down (see the witness tests).
    assert (v.ready_reason, v.recommended_reason) == ("standby_down", "primary_unknown")
    v = verdict(down("pg1"), down("pg2"))
    assert v.reason is Reason.PRIMARY_DOWN
    assert (v.ready_reason, v.recommended_reason) == ("standby_down", "primary_down_standby_not_ready")


def test_a_standby_that_is_down_is_missing_and_not_ready() -> None:
    v = verdict(primary(replicas=()), down("pg2"))
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.STANDBY_MISSING)
    assert v.message == "standby pg2 is down (Connection refused)"
    assert (v.ready, v.ready_reason) == (False, "standby_down")
    assert v.standby_gap is None and v.exposure == 5.0  # what came since the last archived segment


def test_a_standby_whose_receiver_does_not_stream_is_missing() -> None:
    v = verdict(primary(replicas=()), standby(receiver=None, heartbeat=Heartbeat(40.0)))
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.STANDBY_MISSING)
    assert "WAL receiver not running" in v.message and "delay 40s" in v.message
    assert v.ready_reason == "receiver_down"
    v = verdict(primary(), standby(receiver=Receiver("waiting")))
    assert v.reason is Reason.STANDBY_MISSING and "WAL receiver waiting" in v.message


def test_expected_standbys_seen_only_by_the_primary() -> None:
    policy = replace(POLICY, expected_standbys=("pg2", "pg3"))
    v = verdict(primary(replicas=(replica("pg2"),)), policy=policy)
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.STANDBY_MISSING)
    assert v.message == "expected standby pg3 is not connected to pg1"
    assert {s.name: (s.problem, s.delay, s.delay_source) for s in v.standbys} == {
        "pg2": (None, 0.0, "replay_lag"),
        "pg3": ("standby_down", None, ""),
    }
    assert (v.ready, v.ready_reason) == (True, "ready")  # pg2 could take over
    v = verdict(primary(replicas=(replica("pg2", state="catchup", replay_bytes=10),)), policy=POLICY)
    assert v.ready_reason == "receiver_down" and v.status is Status.OK


def test_an_unexpected_standby_is_judged_too() -> None:
    v = verdict(primary(replicas=(replica("pg2"), replica("other", replay_lag=70.0))), standby())
    assert (v.status, v.reason) == (Status.WARNING, Reason.REPLICATION_LAG)
    assert v.message == "standby other delay 1m10s (replay_lag) >= 1m00s"


def test_paused_replay_is_a_warning_until_its_delay_is_critical() -> None:
    v = verdict(primary(), standby(replay_paused=True, heartbeat=Heartbeat(5.0)))
    assert (v.status, v.reason) == (Status.WARNING, Reason.REPLAY_PAUSED)
    assert v.message == "replay is paused on standby pg2; delay 5s (heartbeat)"
    assert v.ready_reason == "replay_paused"
    v = verdict(primary(), standby(replay_paused=True, heartbeat=Heartbeat(901.0)))
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.REPLAY_PAUSED)
    assert [i.reason for i in v.issues] == [Reason.REPLAY_PAUSED]  # once, under its cause


@pytest.mark.parametrize(
    ("delay", "status", "ready_reason"),
    [
        (59.9, Status.OK, "ready"),
        (60.0, Status.WARNING, "ready"),
        (899.0, Status.WARNING, "ready"),
        (900.0, Status.CRITICAL, "ready"),  # lag_critical = rpo; "exceeds" means more than
        (900.5, Status.CRITICAL, "lag_exceeds_rpo"),
        (None, Status.OK, "ready"),  # unknown: no lag verdict either way
    ],
)
def test_lag_thresholds(delay: float | None, status: Status, ready_reason: str) -> None:
    v = verdict(primary(replicas=(replica(replay_bytes=100),)), standby(heartbeat=Heartbeat(delay)))
    assert v.status is status
    assert v.reason is (Reason.OK if status is Status.OK else Reason.REPLICATION_LAG)
    assert v.ready_reason == ready_reason


def test_timeline_divergence() -> None:
    v = verdict(primary(timeline=3), standby(timeline=2))
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.TIMELINE_DIVERGENCE)
    assert v.message.startswith("pg2 is on timeline 2, not primary pg1's 3")
    assert v.ready_reason == "timeline_mismatch"
    # Primary down: the standbys are held against the last primary timeline seen.
    memory = Memory(roles={"pg1": "primary"}, primary_timeline=3)
    v = verdict(down("pg1"), standby(timeline=2), memory=memory)
    assert v.ready_reason == "timeline_mismatch" and v.recommended_reason == "primary_down_standby_not_ready"
    assert any(i.reason is Reason.TIMELINE_DIVERGENCE for i in v.issues)
    # Never seen a primary: standbys that disagree among themselves.
    v = verdict(down("pg1"), standby("pg2", timeline=2), standby("pg3", timeline=3))
    assert any(i.text == "standbys on different timelines: pg2 on 2, pg3 on 3" for i in v.issues)


def test_rpo_exposure_is_the_smaller_gap() -> None:
    late = Archiver(enabled=True, ready_count=3, ready_oldest_age=1200.0)
    v = verdict(primary(archiver=late), standby(heartbeat=Heartbeat(2.0)))
    assert (v.standby_gap, v.archive_gap, v.exposure) == (2.0, 1200.0, 2.0)
    assert v.reason is Reason.ARCHIVE_FAILING and v.status is Status.CRITICAL  # 1200 s >= rpo
    v = verdict(primary(archiver=late), standby(heartbeat=Heartbeat(1000.0)))
    assert (v.status, v.reason, v.exposure) == (Status.CRITICAL, Reason.RPO_EXCEEDED, 1000.0)
    assert v.message.startswith("RPO exposure 16m40s exceeds the RPO of 15m00s")
    off = Archiver(enabled=False)
    v = verdict(primary(archiver=off), standby(heartbeat=Heartbeat(10.0)))
    assert (v.archive_gap, v.exposure) == (None, 10.0)
    assert verdict(primary(archiver=off, replicas=()), down("pg2")).exposure is None
    # Nothing waits to be archived, but nothing was archived for 20 minutes: the segment being
    # written (no archive_timeout) holds 20 minutes of commits the archive does not have. With
    # the standby down too, that is the exposure — but archiving itself is not failing.
    quiet = Archiver(enabled=True, ready_count=0, last_archived_age=1200.0)
    v = verdict(primary(archiver=quiet, replicas=()), down("pg2"))
    assert (v.archive_gap, v.exposure, v.reason) == (1200.0, 1200.0, Reason.RPO_EXCEEDED)
    assert Reason.ARCHIVE_FAILING not in {i.reason for i in v.issues}


# `archive_failing` is the archiver failing or WAL waiting for it, on the policy's thresholds
# (backlog 10 / 100 files, oldest .ready 300 s / 900 s): never the time since the last archived
# segment, which grows on an idle primary (PostgreSQL's default archive_timeout = 0).
IDLE_FOR = 7200.0  # two hours since the last archived segment, nothing waiting, nothing failed


@pytest.mark.parametrize(
    ("archiver", "status", "text"),
    [
        # idle: a healthy archiver with nothing to do, however long
        (Archiver(enabled=True, archived_count=3, ready_count=0, last_archived_age=IDLE_FOR),
         Status.OK, None),
        (Archiver(enabled=True, archived_count=3, ready_count=0, last_archived_age=300.0),
         Status.OK, None),
        (Archiver(enabled=True, ready_count=None, last_archived_age=IDLE_FOR),  # no pg_monitor
         Status.OK, None),
        (Archiver(enabled=True, ready_count=0, last_archived_age=None), Status.OK, None),  # never
        (Archiver(enabled=False, failing=True, ready_count=500), Status.OK, None),  # archive_mode off
        # failing
        (Archiver(enabled=True, failing=True, failed_count=4, ready_count=1, ready_oldest_age=2.0),
         Status.WARNING, "pg1: archiving is failing (4 failures)"),
        (Archiver(enabled=True, failing=True, ready_count=None, last_archived_age=IDLE_FOR),
         Status.WARNING, "pg1: archiving is failing (0 failures)"),
        # backlog
        (Archiver(enabled=True, ready_count=9, ready_oldest_age=20.0, last_archived_age=IDLE_FOR),
         Status.OK, None),
        (Archiver(enabled=True, ready_count=10, ready_oldest_age=20.0),
         Status.WARNING, "pg1: 10 WAL segments wait to be archived"),
        (Archiver(enabled=True, ready_count=100, ready_oldest_age=20.0),
         Status.CRITICAL, "pg1: 100 WAL segments wait to be archived"),
        # old .ready
        (Archiver(enabled=True, ready_count=1, ready_oldest_age=299.0, last_archived_age=IDLE_FOR),
         Status.OK, None),
        (Archiver(enabled=True, ready_count=1, ready_oldest_age=300.0),
         Status.WARNING, "pg1: 1 WAL segment waits to be archived, the oldest for 5m00s"),
        (Archiver(enabled=True, ready_count=2, ready_oldest_age=900.0),
         Status.CRITICAL, "pg1: 2 WAL segments wait to be archived, the oldest for 15m00s"),
        # all at once: the worst decides, every problem is said
        (Archiver(enabled=True, failing=True, failed_count=9, ready_count=12, ready_oldest_age=1000.0),
         Status.CRITICAL,
         "pg1: archiving is failing (9 failures), "
         "12 WAL segments wait to be archived, the oldest for 16m40s"),
    ],
)  # fmt: skip
def test_archive_issues(archiver: Archiver, status: Status, text: str | None) -> None:
    policy = Policy(cluster="main", cluster_view=True, archive_age_warning=300.0, archive_age_critical=900.0)
    issues = _archive_issues(primary(archiver=archiver), policy)
    if text is None:
        assert issues == [] and status is Status.OK
    else:
        assert issues == [Issue(status, Reason.ARCHIVE_FAILING, text)]


@pytest.mark.parametrize(
    ("archiver", "status", "text"),
    [
        (Archiver(enabled=True, failing=True, failed_count=4, ready_count=1, ready_oldest_age=2.0),
         Status.WARNING, "pg1: archiving is failing (4 failures)"),
        (Archiver(enabled=True, ready_count=10, ready_oldest_age=20.0),
         Status.WARNING, "pg1: 10 WAL segments wait to be archived"),
        (Archiver(enabled=True, ready_count=2, ready_oldest_age=301.0),
         Status.WARNING, "pg1: 2 WAL segments wait to be archived, the oldest for 5m01s"),
    ],
)  # fmt: skip
def test_archiving(archiver: Archiver, status: Status, text: str) -> None:
    v = verdict(primary(archiver=archiver), standby())
    assert (v.status, v.reason, v.message) == (status, Reason.ARCHIVE_FAILING, text)
    assert v.ready  # archiving does not stop a failover


def test_an_idle_primary_with_a_streaming_standby_is_ok() -> None:
    """Issue 11 item 2: nothing written but the heartbeat, archive_timeout = 0, hours after the
    last archived segment: OK. The archive gap is still exported (it is the RPO exposure's
    archive half), but a streaming standby's delay is the exposure."""
    idle = Archiver(enabled=True, archived_count=3, ready_count=0, last_archived_age=IDLE_FOR)
    v = verdict(primary(archiver=idle), standby(heartbeat=Heartbeat(0.004)))
    assert (v.status, v.reason, v.issues) == (Status.OK, Reason.OK, ())
    assert (v.archive_gap, v.standby_gap, v.exposure) == (IDLE_FOR, 0.004, 0.004)
    # A single-node check (no cluster view, no RPO verdict) is OK too.
    alone = Policy(cluster="main", cluster_view=False)
    assert verdict(primary(archiver=idle, replicas=()), policy=alone).status is Status.OK


def test_archiving_is_judged_on_primaries_only() -> None:
    stale = Archiver(enabled=True, failing=True, ready_count=50)
    v = verdict(primary(), standby(archiver=stale))
    assert v.status is Status.OK


@pytest.mark.parametrize(
    ("slot", "status", "text"),
    [
        (Slot("s", wal_status="reserved", retained_bytes=2**30),
         Status.WARNING, "inactive slot s retains 1.0 GiB"),
        (Slot("s", active=True, wal_status="unreserved", retained_bytes=10),
         Status.WARNING, "active slot s its WAL is unreserved (about to be removed)"),
        (Slot("s", wal_status="lost"), Status.CRITICAL, "inactive slot s its WAL is lost"),
        (Slot("s", wal_status="extended", retained_bytes=2**20), Status.OK, ""),
        (Slot("s"), Status.OK, ""),  # never reserved: NULL everywhere
    ],
)  # fmt: skip
def test_slots(slot: Slot, status: Status, text: str) -> None:
    v = verdict(primary(slots=(slot,)), standby())
    assert v.status is status
    if status is not Status.OK:
        assert v.reason is Reason.SLOT_RETENTION and text in v.message
    critical = replace(POLICY, slot_retained_critical=2**20)
    v = verdict(primary(slots=(Slot("s", retained_bytes=2**20),)), standby(), policy=critical)
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.SLOT_RETENTION)


def test_wraparound_and_connections() -> None:
    v = verdict(primary(xid_age=2**30 + 1), standby())
    assert (v.status, v.reason) == (Status.WARNING, Reason.WRAPAROUND)
    assert "50% of the way to wraparound" in v.message
    v = verdict(primary(xid_age=int(0.8 * 2**31)), standby())
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.WRAPAROUND)
    v = verdict(primary(connections=80), standby())
    assert (v.status, v.reason, v.message) == (
        Status.WARNING,
        Reason.TOO_MANY_CONNECTIONS,
        "pg1: 80/100 connections in use",
    )
    v = verdict(primary(), standby(connections=95))
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.TOO_MANY_CONNECTIONS)


def test_the_worst_status_wins_then_precedence_and_the_message_lists_all_worst_first() -> None:
    v = verdict(
        primary(connections=99, slots=(Slot("s", wal_status="unreserved"),)),
        standby(replay_paused=True, heartbeat=Heartbeat(70.0)),
    )
    # CRITICAL too_many_connections beats WARNING replay_paused, though replay_paused ranks first.
    assert (v.status, v.reason) == (Status.CRITICAL, Reason.TOO_MANY_CONNECTIONS)
    assert [(i.status, i.reason) for i in v.issues] == [
        (Status.CRITICAL, Reason.TOO_MANY_CONNECTIONS),
        (Status.WARNING, Reason.REPLAY_PAUSED),
        (Status.WARNING, Reason.SLOT_RETENTION),
    ]
    assert v.message.split("; ")[0] == "pg1: 99/100 connections in use"


def test_precedence_covers_every_postgres_reason_once() -> None:
    assert len(set(PRECEDENCE)) == len(PRECEDENCE)
    postgres = {
        Reason.PRIMARY_DOWN, Reason.SPLIT_BRAIN, Reason.SYSID_MISMATCH, Reason.TIMELINE_DIVERGENCE,
        Reason.RPO_EXCEEDED, Reason.STANDBY_MISSING, Reason.REPLAY_PAUSED, Reason.REPLICATION_LAG,
        Reason.ARCHIVE_FAILING, Reason.SLOT_RETENTION, Reason.WRAPAROUND, Reason.TOO_MANY_CONNECTIONS,
        Reason.AUTH_FAILED,
    }  # fmt: skip
    assert postgres <= set(PRECEDENCE)


def test_readiness_is_the_best_standbys() -> None:
    policy = replace(POLICY, expected_standbys=())
    three = (
        primary(replicas=()),
        down("pg2"),
        standby("pg3", replay_paused=True),
        standby("pg4", timeline=9),
    )
    v = verdict(*three, policy=policy)
    assert {s.name: s.problem for s in v.standbys} == {
        "pg2": "standby_down",
        "pg3": "replay_paused",
        "pg4": "timeline_mismatch",
    }
    assert v.ready_reason == "replay_paused"  # the closest to ready
    v = verdict(*three, standby("pg5"), policy=policy)
    assert (v.ready, v.ready_reason) == (True, "ready")


def test_no_standby() -> None:
    v = verdict(primary(replicas=()), policy=replace(POLICY, expected_standbys=()))
    assert (v.ready, v.ready_reason, v.status) == (False, "no_standby", Status.OK)


def test_a_promoted_standby_is_no_longer_a_standby() -> None:
    v = verdict(primary(), primary("pg2", timeline=2, replicas=()))
    assert v.reason is Reason.SPLIT_BRAIN
    assert [(s.name, s.replica is None) for s in v.standbys] == [("pg2", True)]


def test_heartbeat_notes_say_why_a_delay_is_unknown() -> None:
    v = judge([primary(), standby(heartbeat=Heartbeat(None, note="no heartbeat row for main on pg2 yet"))],
              POLICY, Memory(), ["heartbeat table mamori.heartbeat does not exist on pg1"])  # fmt: skip
    assert v.message.endswith(
        "(heartbeat table mamori.heartbeat does not exist on pg1; no heartbeat row for main on pg2 yet)"
    )
    assert v.standbys[0].delay_source == "replay_lag"  # the fallback


def test_judge_never_raises_on_any_mix_of_nulls() -> None:
    rng = random.Random(42)

    def maybe(value: Any) -> Any:
        return value if rng.random() < 0.6 else None

    for _ in range(3000):
        nodes = []
        for i in range(rng.randint(1, 4)):
            if rng.random() < 0.2:
                nodes.append(down(f"n{i}", rng.choice(list(Reason))))
                continue
            nodes.append(
                NodeState(
                    name=f"n{i}",
                    application_name=rng.choice([f"n{i}", "app"]),
                    up=True,
                    in_recovery=maybe(rng.random() < 0.5),
                    sysid=maybe(rng.choice([1, 2])),
                    timeline=maybe(rng.choice([1, 2])),
                    connections=maybe(rng.randint(0, 120)),
                    max_connections=maybe(rng.choice([0, 100])),
                    xid_age=maybe(rng.randint(0, 2**31)),
                    lsn=maybe(100),
                    replicas=tuple(
                        Replica(rng.choice(["n1", "x"]), maybe("streaming"), replay_bytes=maybe(0),
                                replay_lag=maybe(rng.random() * 2000))
                        for _ in range(rng.randint(0, 2))
                    ),
                    archiver=maybe(Archiver(rng.random() < 0.5, failing=rng.random() < 0.5,
                                            ready_count=maybe(rng.randint(0, 200)),
                                            ready_oldest_age=maybe(rng.random() * 2000))),
                    replay_paused=maybe(rng.random() < 0.3),
                    receiver=maybe(Receiver(rng.choice(["streaming", "waiting"]), maybe(1), maybe(1.0))),
                    heartbeat=maybe(Heartbeat(maybe(rng.random() * 2000),
                                              rng.choice(["primary", "standby"]))),
                    slots=(Slot("s", wal_status=maybe(rng.choice(["lost", "unreserved"])),
                                retained_bytes=maybe(2**31)),),
                )
            )  # fmt: skip
        policy = Policy(
            cluster="c",
            cluster_view=rng.random() < 0.8,
            expected_standbys=("n1", "x", "y")[: rng.randint(0, 3)],
        )
        memory = Memory(roles={"n0": rng.choice(["primary", "standby"])}, primary_timeline=maybe(1))
        v = verdict(*nodes, policy=policy, memory=memory)
        assert v.status in Status and v.reason in Reason
        assert (v.status is Status.OK) == (v.reason is Reason.OK)


# --- config, failures, docs ------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_quote_the_monitoring_role_sql_verbatim() -> None:
    doc = (ROOT / "docs" / "checks" / "postgres.md").read_text()
    sql = (ROOT / "deploy" / "postgres" / "monitoring-role.sql").read_text().rstrip("\n")
    assert f"```sql\n{sql}\n```" in doc, "docs/checks/postgres.md quotes an old monitoring-role.sql"


def parse_check(body: str) -> PostgresConfig:
    cfg = config.parse(f"checks:\n  - name: main\n    type: postgres\n{body}", "pg.yml", env={})
    result = cfg.checks[0]
    assert isinstance(result, PostgresConfig)
    return result


NODES = "    nodes: [{name: pg1, host: db1}, {name: pg2, host: db2, port: 5433}]\n"


def test_config_defaults() -> None:
    cfg = parse_check(NODES)
    policy = cfg.policy()
    assert (cfg.user, cfg.dbname, cfg.sslmode, cfg.heartbeat, cfg.heartbeat_table) == (
        "mamori", "postgres", "prefer", True, "mamori.heartbeat",
    )  # fmt: skip
    assert (cfg.connect_timeout_s, cfg.statement_timeout_s, cfg.timeout) == (3.0, 2.0, 10.0)
    assert (policy.cluster, policy.cluster_view, policy.rpo) == ("main", True, 900.0)
    assert (policy.lag_warning, policy.lag_critical) == (60.0, 900.0)
    assert (policy.archive_age_warning, policy.archive_age_critical) == (300.0, 900.0)
    assert cfg.table() == ("mamori", "heartbeat")
    small = parse_check(NODES + "    timeout: 2s\n    rpo: 30s\n    cluster: prod\n")
    assert (small.connect_timeout_s, small.statement_timeout_s) == (1.0, 1.0)
    assert (small.policy().lag_warning, small.policy().archive_age_warning) == (15.0, 15.0)
    assert small.policy().cluster == "prod"
    single = parse_check("    nodes: [{name: db, host: db}]\n").policy()
    assert not single.cluster_view


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = parse_check(NODES + f"    password_file: {secret}\n")
    assert cfg.password is not None and cfg.password.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (NODES + "    timeout: 2s\n    connect_timeout: 2s\n",
         "pg.yml:6: checks[0].connect_timeout: connect_timeout (2s) must be less than timeout (2s)"),
        (NODES + "    statement_timeout: 20s\n",
         "pg.yml:5: checks[0].statement_timeout: statement_timeout (20s) must be less than timeout (10s)"),
        (NODES + "    lag_warning: 2m\n    lag_critical: 1m\n",
         "pg.yml:5: checks[0].lag_warning: lag_warning (2m00s) must be less than lag_critical (1m00s)"),
        (NODES + "    rpo: 1m\n    lag_warning: 2m\n",
         "pg.yml:6: checks[0].lag_warning: lag_warning (2m00s) must be less than "
         "lag_critical (1m00s, the rpo)"),
        (NODES + "    archive_age_warning: 20m\n",
         "pg.yml:5: checks[0].archive_age_warning: archive_age_warning (20m00s) must be less than "
         "archive_age_critical (15m00s, the rpo)"),
        (NODES + "    ready_backlog_warning: 100\n",
         "pg.yml:5: checks[0].ready_backlog_warning: ready_backlog_warning (100) must be less than "
         "ready_backlog_critical (100)"),
        (NODES + "    slot_retained_critical: 1MiB\n",
         "pg.yml:5: checks[0].slot_retained_critical: slot_retained_critical (1.0 MiB) must be more than "
         "slot_retained_warning (1.0 GiB)"),
        (NODES + "    wraparound_warning: 1.5\n",
         "pg.yml:5: checks[0].wraparound_warning: Input should be less than 1"),
        ("    nodes: []\n", "pg.yml:4: checks[0].nodes: at least one node is needed"),
        ("    user: x\n", "pg.yml:2: checks[0].nodes: required key is missing"),
        ("    nodes: [{name: a, host: h}, {name: a, host: i}]\n",
         "pg.yml:4: checks[0].nodes: node names must be unique: a"),
        ("    nodes: [{name: a, host: h, application_name: s}, {name: b, host: i, application_name: s}]\n",
         "pg.yml:4: checks[0].nodes: application names must be unique: s"),
        ("    nodes: [{name: 'a b', host: h}]\n",
         "pg.yml:4: checks[0].nodes[0].name: String should match pattern '^[A-Za-z0-9_.:-]{1,64}$'"),
        ("    nodes: [{name: a, host: h, port: 0}]\n",
         "pg.yml:4: checks[0].nodes[0].port: Input should be greater than or equal to 1"),
        (NODES + "    heartbeat_table: 'Mamori.Heart Beat'\n",
         "pg.yml:5: checks[0].heartbeat_table: invalid table name 'Mamori.Heart Beat': expected e.g. "
         "mamori.heartbeat (lower case)"),
        (NODES + "    expected_standbys: [s, s]\n",
         "pg.yml:5: checks[0].expected_standbys: expected standbys must be unique: s"),
        (NODES + "    sslmode: maybe\n",
         "pg.yml:5: checks[0].sslmode: Input should be 'disable', 'allow', 'prefer', 'require', "
         "'verify-ca' or 'verify-full'"),
        (NODES + "    hearbeat: false\n", "pg.yml:5: checks[0].hearbeat: unknown key"),
        (NODES + "    password: a\n    password_file: /nonexistent\n",
         "pg.yml:2: checks[0]: give either password or password_file, not both"),
    ],
)  # fmt: skip
def test_config_errors_are_clear_and_located(body: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_check(body)
    assert str(exc.value) == error


@pytest.mark.parametrize(
    ("message", "reason", "text"),
    [
        ('connection failed: connection to server at "127.0.0.1", port 5999 failed: '
         'Connection refused\n\tIs the',
         Reason.REFUSED, "Connection refused"),
        ('connection failed: connection to server at "10.0.0.1", port 5432 failed: FATAL:  password '
         'authentication failed for user "mamori"', Reason.AUTH_FAILED,
         'password authentication failed for user "mamori"'),
        ('connection failed: connection to server at "h", port 1 failed: FATAL:  database "x" does not exist',
         Reason.AUTH_FAILED, 'database "x" does not exist'),
        ("failed to resolve host 'nope': [Errno -2] Name or service not known", Reason.DNS,
         "failed to resolve host 'nope': [Errno -2] Name or service not known"),
        ("connection failed: connection to server at \"h\", port 1 failed: FATAL:  sorry, too many clients "
         "already", Reason.TOO_MANY_CONNECTIONS, "sorry, too many clients already"),
        ("connection failed: connection to server at \"h\", port 1 failed: FATAL:  the database system is "
         "shutting down", Reason.UNAVAILABLE, "the database system is shutting down"),
        ("consuming input failed: server closed the connection unexpectedly", Reason.CONNECTION_RESET,
         "consuming input failed: server closed the connection unexpectedly"),
        ("connection timeout expired", Reason.TIMEOUT, "connection timeout expired"),
        ("something new", Reason.UNAVAILABLE, "something new"),
    ],
)  # fmt: skip
def test_failures_are_classified_from_psycopg_messages(message: str, reason: Reason, text: str) -> None:
    import psycopg

    assert failure(psycopg.OperationalError(message)) == (reason, text)


def test_failures_by_type() -> None:
    from psycopg import errors

    assert failure(TimeoutError()) == (Reason.TIMEOUT, "timed out")
    assert failure(errors.QueryCanceled("canceling statement due to statement timeout"))[0] is Reason.TIMEOUT
    assert failure(OSError("boom"))[0] is Reason.UNAVAILABLE


@contextlib.asynccontextmanager
async def fake_server(behaviour: str, hung_up: list[str]) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that is not PostgreSQL: `silent` accepts and never answers (a
    frozen server looks like this), `garbage` answers nonsense, `close` hangs up at once."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "garbage":
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            await reader.read(100)
        elif behaviour == "silent":
            await reader.read()  # until the client gives up
            hung_up.append(behaviour)
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("silent", Reason.TIMEOUT), ("garbage", Reason.UNAVAILABLE), ("close", Reason.CONNECTION_RESET)],
)
async def test_a_server_that_is_not_postgres_is_a_result_not_an_exception(
    behaviour: str, reason: Reason
) -> None:
    hung_up: list[str] = []
    gc.disable()  # the abandoned connection must be closed at once, not by the garbage collector
    try:
        async with fake_server(behaviour, hung_up) as port:
            cfg = PostgresConfig.model_validate(
                {"name": "db", "type": "postgres", "interval": 5, "timeout": 2, "connect_timeout": 0.5,
                 "nodes": [{"name": "db", "host": HOST, "port": port}]}
            )  # fmt: skip
            check = PostgresCheck(cfg)
            began = time.monotonic()
            result = await execute(check)
            await asyncio.sleep(0.1)
            if behaviour == "silent":
                assert hung_up == ["silent"]
            await check.aclose()
    finally:
        gc.enable()
    assert (result.status, result.reason) == (Status.CRITICAL, reason), result.message
    assert time.monotonic() - began < 1.2
    if behaviour == "silent":
        assert result.message == "db: no connection within 0.5s"
    assert value(result, "mamori_pg_up", node="db") == 0


# ============================================================================================
# Part 2: against the real pair
# ============================================================================================


def pg_check(lab: PgLab, **overrides: Any) -> PostgresCheck:
    values: dict[str, Any] = {
        "name": "main",
        "type": "postgres",
        "interval": 5,
        "timeout": 2,
        "password": lab.monitoring_password,
        "nodes": [
            {"name": "primary", "host": HOST, "port": lab.primary.port},
            {"name": "standby", "host": HOST, "port": lab.standby.port, "application_name": STANDBY_APP},
        ],
        "expected_standbys": [STANDBY_APP],
        **overrides,
    }
    return PostgresCheck(PostgresConfig.model_validate(values))


@contextlib.asynccontextmanager
async def opened(check: PostgresCheck) -> AsyncIterator[PostgresCheck]:
    try:
        yield check
    finally:
        await check.aclose()


def value(result: CheckResult, name: str, **labels: str) -> float:
    for s in result.samples:
        if s.name == name and dict(s.labels) == labels:
            return s.value
    raise KeyError((name, labels, [(s.name, dict(s.labels)) for s in result.samples if s.name == name]))


def has(result: CheckResult, name: str, **labels: str) -> bool:
    return any(s.name == name and dict(s.labels) == labels for s in result.samples)


def labelled(result: CheckResult, name: str, label: str, **labels: str) -> dict[str, float]:
    """name's samples matching `labels`, by the value of `label`."""
    out = {}
    for s in result.samples:
        d = dict(s.labels)
        if s.name == name and all(d.get(k) == v for k, v in labels.items()):
            out[d[label]] = s.value
    return out


def ready(result: CheckResult) -> tuple[float, str]:
    ((reason, v),) = labelled(result, "mamori_pg_failover_ready", "reason", cluster="main").items()
    return v, reason


def recommended(result: CheckResult) -> tuple[float, str]:
    ((reason, v),) = labelled(result, "mamori_pg_failover_recommended", "reason", cluster="main").items()
    return v, reason


def delay(result: CheckResult) -> float:
    return value(result, "mamori_pg_heartbeat_delay_seconds", node="standby")


def summary(check: PostgresCheck, result: CheckResult) -> str:
    text = check.summary(result)
    assert text is not None
    return text


async def run_until(
    check: PostgresCheck, condition: Callable[[CheckResult], bool], timeout: float, pause: float = 0.5
) -> list[CheckResult]:
    """Run the check every `pause` seconds until `condition` holds; return every result."""
    results: list[CheckResult] = []
    deadline = time.monotonic() + timeout
    while True:
        results.append(await execute(check))
        if condition(results[-1]):
            return results
        if time.monotonic() > deadline:
            last = results[-1]
            raise AssertionError(
                f"not reached in {timeout}s: {last.status.name} {last.reason} {last.message}"
            )
        await asyncio.sleep(pause)


async def mamori_connections(lab: PgLab) -> dict[str, int]:
    """Connections with application_name 'mamori' on each server, counted as the mamori role."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mamori'"
    return {
        "primary": await one(lab.primary.dsn(), sql),
        "standby": await one(lab.standby.dsn(), sql),
    }


@lab_test
async def archive_a_segment(lab: PgLab) -> None:
    """reset() zeroes pg_stat_archiver: archive one segment so the archive gap is known."""
    await query(lab.primary.superuser_dsn(), "SELECT pg_switch_wal()")
    for _ in range(100):
        if await one(lab.primary.superuser_dsn(), "SELECT last_archived_time FROM pg_stat_archiver"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("nothing was archived")


async def test_healthy_baseline(pg_pair: PgLab) -> None:
    await archive_a_segment(pg_pair)
    async with opened(pg_check(pg_pair)) as check:
        result = await execute(check)
        assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
        assert (
            result.target
            == f"postgres://{HOST}:{pg_pair.primary.port},{HOST}:{pg_pair.standby.port}/postgres"
        )
        assert value(result, "mamori_pg_up", node="primary") == 1
        assert value(result, "mamori_pg_up", node="standby") == 1
        assert value(result, "mamori_pg_in_recovery", node="primary") == 0
        assert value(result, "mamori_pg_in_recovery", node="standby") == 1
        assert value(result, "mamori_pg_timeline", node="primary") == 1
        assert value(result, "mamori_pg_timeline", node="standby") == 1
        assert value(result, "mamori_pg_max_connections", node="primary") == 100
        assert 1 <= value(result, "mamori_pg_connections", node="primary") < 10
        assert 0 < value(result, "mamori_pg_xid_age_ratio", node="primary") < 0.001
        standby = {"node": "primary", "standby": STANDBY_APP}
        assert labelled(result, "mamori_pg_standby_state", "state", **standby) == {"streaming": 1.0}
        # A standby reports its write/flush/replay positions in feedback to WAL it received: on a
        # pair that has been silent since it started, only `sent` is known yet (NULL: absent).
        assert "sent" in labelled(result, "mamori_pg_standby_lag_bytes", "stage", **standby)
        assert 0 <= delay(result) < 1.0
        assert value(result, "mamori_pg_wal_receiver_status", node="standby", status="streaming") == 1
        assert value(result, "mamori_pg_replay_paused", node="standby") == 0
        assert value(result, "mamori_pg_archiver_enabled", node="primary") == 1
        assert value(result, "mamori_pg_archiver_failing", node="primary") == 0
        assert value(result, "mamori_pg_archiver_ready_oldest_age_seconds", node="primary") == 0
        slot = {"node": "primary", "slot": STANDBY_APP}
        assert value(result, "mamori_pg_slot_active", **slot) == 1
        assert labelled(result, "mamori_pg_slot_wal_status", "wal_status", **slot) == {"reserved": 1.0}
        assert value(result, "mamori_pg_slot_safe_wal_size_bytes", **slot) > 0
        assert value(result, "mamori_pg_cluster_primaries", cluster="main") == 1
        assert value(result, "mamori_pg_expected_standby_connected", cluster="main", standby=STANDBY_APP) == 1
        assert value(result, "mamori_pg_rpo_seconds", cluster="main") == 900
        # The archive lacks what came since the last switch: the lab has no archive_timeout.
        archive_gap = value(result, "mamori_pg_rpo_archive_gap_seconds", cluster="main")
        assert archive_gap > 0
        assert value(result, "mamori_pg_rpo_exposure_seconds", cluster="main") == min(
            archive_gap, value(result, "mamori_pg_rpo_standby_gap_seconds", cluster="main")
        )
        assert ready(result) == (1.0, "ready")
        assert recommended(result) == (0.0, "primary_reachable")
        assert not any(k in ("address", "host", "ip") for s in result.samples for k, _ in s.labels)
        # A second run measures the WAL rate (the heartbeat writes some every run), and the
        # standby has answered the first heartbeat's WAL with its positions.
        again = (
            await run_until(
                check,
                lambda r: len(labelled(r, "mamori_pg_standby_lag_bytes", "stage", **standby)) == 4,
                timeout=3,
                pause=0.1,
            )
        )[-1]
        assert again.status is Status.OK
        assert value(again, "mamori_pg_wal_rate_bytes_per_second", node="primary") > 0
        assert value(again, "mamori_pg_wal_lsn_bytes", node="primary") > value(
            result, "mamori_pg_wal_lsn_bytes", node="primary"
        )
        text = summary(check, again)
        for needle in (
            "main: OK (ok) — cluster main",
            "  primary      primary   timeline 1",
            "  standby      standby   timeline 1",
            "WAL receiver streaming",
            f"  {STANDBY_APP:<12} expected, streaming async",
            "(heartbeat); failover: ready",
            "archiver (primary): ok;",
            f"slot {STANDBY_APP} (primary): physical, active, wal_status reserved",
            "RPO: exposure ",
            "failover: ready (ready); recommended from here: no (primary_reachable)",
        ):
            assert needle in text, f"{needle!r} not in\n{text}"


@lab_test
async def test_cut_link_grows_the_heartbeat_delay_then_the_receiver_flips(pg_pair: PgLab) -> None:
    async with opened(pg_check(pg_pair, lag_warning="2s", lag_critical="30s")) as check:
        assert (await execute(check)).status is Status.OK  # the standby has a heartbeat row
        await pg_pair.cut_link()
        results = await run_until(
            check,
            lambda r: not has(r, "mamori_pg_wal_receiver_status", node="standby", status="streaming"),
            timeout=15,
        )
        delays = [delay(r) for r in results]
        assert all(b > a for a, b in itertools.pairwise(delays)), delays  # grows every run
        assert delays[-1] >= 4.0  # wal_receiver_timeout is 5 s in the lab
        assert any(r.reason is Reason.REPLICATION_LAG for r in results[:-1]), [r.message for r in results]
        last = results[-1]
        assert (last.status, last.reason) == (Status.CRITICAL, Reason.STANDBY_MISSING), last.message
        assert ready(last) == (0.0, "receiver_down")
        # Meanwhile the primary is fine and the standby answers: only the link is gone.
        assert value(last, "mamori_pg_up", node="standby") == 1
        assert value(last, "mamori_pg_cluster_primaries", cluster="main") == 1


@lab_test
async def test_broken_archiving_fails_and_grows_the_archive_gap(pg_pair: PgLab) -> None:
    async with opened(pg_check(pg_pair, rpo="3s", archive_age_warning="1s")) as check:
        await pg_pair.break_archiving()
        await pg_pair.write_some(10)
        await query(pg_pair.primary.superuser_dsn(), "SELECT pg_switch_wal()")  # a segment to archive
        first = (await run_until(check, lambda r: r.reason is Reason.ARCHIVE_FAILING, timeout=5))[-1]
        assert value(first, "mamori_pg_archiver_failing", node="primary") == 1
        assert value(first, "mamori_pg_archiver_failed_total", node="primary") >= 1
        assert value(first, "mamori_pg_archiver_ready_files", node="primary") >= 1
        await pg_pair.pause_replay()  # the standby gap grows too: nothing left to restore from
        await asyncio.sleep(1.5)
        second = await execute(check)
        archive_gap = value(second, "mamori_pg_rpo_archive_gap_seconds", cluster="main")
        assert archive_gap > value(first, "mamori_pg_rpo_archive_gap_seconds", cluster="main") + 1
        standby_gap = value(second, "mamori_pg_rpo_standby_gap_seconds", cluster="main")
        assert value(second, "mamori_pg_rpo_exposure_seconds", cluster="main") == min(
            archive_gap, standby_gap
        )
        late = (await run_until(check, lambda r: r.reason is Reason.RPO_EXCEEDED, timeout=6))[-1]
        assert late.status is Status.CRITICAL
        assert value(late, "mamori_pg_rpo_exposure_seconds", cluster="main") > 3
        assert "RPO exposure" in late.message and "archiving is failing" in late.message


@lab_test
async def test_paused_replay(pg_pair: PgLab) -> None:
    async with opened(pg_check(pg_pair)) as check:
        await pg_pair.pause_replay()
        await pg_pair.write_some(5)
        result = await execute(check)
        assert (result.status, result.reason) == (Status.WARNING, Reason.REPLAY_PAUSED), result.message
        assert value(result, "mamori_pg_replay_paused", node="standby") == 1
        assert value(result, "mamori_pg_apply_backlog_bytes", node="standby") > 0
        assert ready(result) == (0.0, "replay_paused")
        assert result.duration < 2.0  # waited heartbeat_wait for a row that cannot come


@lab_test
async def test_promoted_standby_is_split_brain(pg_pair: PgLab) -> None:
    async with opened(pg_check(pg_pair)) as check:
        assert (await execute(check)).status is Status.OK
        await pg_pair.promote_standby()
        result = await execute(check)
        assert (result.status, result.reason) == (Status.CRITICAL, Reason.SPLIT_BRAIN), result.message
        assert value(result, "mamori_pg_cluster_primaries", cluster="main") == 2
        assert value(result, "mamori_pg_timeline", node="primary") == 1
        assert value(result, "mamori_pg_timeline", node="standby") == 2  # at once, not at the next checkpoint
        assert value(result, "mamori_pg_in_recovery", node="standby") == 0
        assert ready(result) == (0.0, "split_brain")
        assert recommended(result) == (0.0, "primary_reachable")
        assert result.message.startswith("2 primaries: primary (timeline 1), standby (timeline 2)")


@lab_test
async def test_stopped_standby_is_missing(pg_pair: PgLab) -> None:
    await archive_a_segment(pg_pair)
    async with opened(pg_check(pg_pair)) as check:
        assert (await execute(check)).status is Status.OK
        await pg_pair.stop_standby()
        result = await execute(check)
        assert (result.status, result.reason) == (Status.CRITICAL, Reason.STANDBY_MISSING), result.message
        assert result.message.startswith("standby standby (standby1) is down (Connection refused)")
        assert value(result, "mamori_pg_up", node="standby") == 0
        assert value(result, "mamori_pg_expected_standby_connected", cluster="main", standby=STANDBY_APP) == 0
        assert ready(result) == (0.0, "standby_down")
        assert not has(result, "mamori_pg_rpo_standby_gap_seconds", cluster="main")
        # Without the standby, the archive alone covers: up to its last archived segment.
        assert value(result, "mamori_pg_rpo_exposure_seconds", cluster="main") == value(
            result, "mamori_pg_rpo_archive_gap_seconds", cluster="main"
        )


@lab_test
async def test_frozen_primary_times_out_within_the_timeout_and_delays_no_other_check(
    pg_pair: PgLab, fake_checks: None
) -> None:
    cfg = pg_check(pg_pair, interval=2, timeout=1.5).config
    # Kept open until the end: a backend exiting at the moment of the freeze would stay a zombie
    # (its postmaster is stopped) and the lab's freeze_primary() would wait for it in vain.
    warmup = PostgresCheck(cfg)
    assert (await execute(warmup)).status is Status.OK  # the standby has a heartbeat row
    SleepCheck.log.clear()
    results: list[CheckResult] = []
    scheduler = Scheduler(results.append, AgentMetrics(), concurrency=4, spread=False)
    await pg_pair.freeze_primary()
    began = time.monotonic()
    scheduler.apply([cfg, SleepConfig(name="ticker", type="sleep", interval=0.1, timeout=0.1)])
    try:
        await asyncio.sleep(4.3)
    finally:
        await scheduler.aclose()
        await warmup.aclose()
    elapsed = time.monotonic() - began
    pg = [r for r in results if r.check == "main"]
    assert len(pg) >= 2, pg
    for r in pg:
        assert (r.status, r.reason) == (Status.CRITICAL, Reason.TIMEOUT), r.message
        assert r.duration < 1.5, r.duration  # the check's own deadline, not the harness's
        assert value(r, "mamori_pg_up", node="primary") == 0
        assert value(r, "mamori_pg_up", node="standby") == 1  # the other node is still reported
        # 4 s of a freeze is within the default 17 s stall grace: unknown, not yet down.
        assert recommended(r) == (0.0, "primary_unknown")
        assert "does not answer" in r.message and "within the 17s stall grace" in r.message
    ticks = [start for name, start, _ in SleepCheck.log if name == "ticker"]
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= int(elapsed / 0.1) - 3, len(ticks)
    assert max(gaps) < 0.2, max(gaps)  # never held up by the frozen server


@lab_test
async def test_slot_behind_retains_wal_then_is_unreserved_then_lost(pg_pair: PgLab) -> None:
    async with opened(pg_check(pg_pair, slot_retained_warning="10MiB")) as check:
        retained = await pg_pair.slot_behind(20)
        result = await execute(check)
        slot = {"node": "primary", "slot": "lagging"}
        assert (result.status, result.reason) == (Status.WARNING, Reason.SLOT_RETENTION), result.message
        assert value(result, "mamori_pg_slot_retained_bytes", **slot) >= retained >= 20 << 20
        assert value(result, "mamori_pg_slot_active", **slot) == 0
        assert labelled(result, "mamori_pg_slot_wal_status", "wal_status", **slot) == {"reserved": 1.0}
        assert value(result, "mamori_pg_slot_safe_wal_size_bytes", **slot) < 64 << 20
        assert "inactive slot lagging retains" in result.message
        await pg_pair.slot_behind(50, checkpoint=False)
        result = await execute(check)
        assert labelled(result, "mamori_pg_slot_wal_status", "wal_status", **slot) == {"unreserved": 1.0}
        assert (result.status, result.reason) == (Status.WARNING, Reason.SLOT_RETENTION)
        assert "its WAL is unreserved" in result.message
        await pg_pair.slot_behind(1)
        result = await execute(check)
        assert labelled(result, "mamori_pg_slot_wal_status", "wal_status", **slot) == {"lost": 1.0}
        assert (result.status, result.reason) == (Status.CRITICAL, Reason.SLOT_RETENTION), result.message


@lab_test
async def test_without_the_heartbeat_table_delays_come_from_pg_stat_replication(pg_pair: PgLab) -> None:
    async with opened(pg_check(pg_pair, heartbeat_table="mamori.nope")) as check:
        result = await execute(check)
        assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
        assert result.message.endswith(
            "(heartbeat table mamori.nope does not exist on primary: "
            "standby delays come from pg_stat_replication)"
        )
        assert result.message.count("heartbeat table") == 1  # once per run
        assert not has(result, "mamori_pg_heartbeat_delay_seconds", node="standby")
        assert value(result, "mamori_pg_rpo_standby_gap_seconds", cluster="main") < 1


@lab_test
async def test_a_heartbeat_table_the_role_may_not_write(pg_pair: PgLab) -> None:
    admin = pg_pair.primary.superuser_dsn()
    await query(
        admin, "CREATE TABLE mamori.locked (source text PRIMARY KEY, ts timestamptz NOT NULL, lsn pg_lsn)"
    )
    try:
        async with opened(pg_check(pg_pair, heartbeat_table="mamori.locked")) as check:
            result = await execute(check)
            assert result.status is Status.OK, result.message
            assert "heartbeat table mamori.locked is not writable by the role on primary" in result.message
            assert (await mamori_connections(pg_pair)) == {"primary": 1, "standby": 1}  # kept, not dropped
    finally:
        await query(admin, "DROP TABLE mamori.locked")


@lab_test
async def test_wrong_password_is_auth_failed(pg_pair: PgLab) -> None:
    async with opened(pg_check(pg_pair, password="wrong")) as check:
        result = await execute(check)
        assert (result.status, result.reason) == (Status.CRITICAL, Reason.AUTH_FAILED), result.message
        assert 'password authentication failed for user "mamori"' in result.message
        assert "wrong" not in result.message


@lab_test
async def test_a_single_primary_without_cluster_view(pg_pair: PgLab) -> None:
    nodes = [{"name": "db", "host": HOST, "port": pg_pair.primary.port}]
    async with opened(pg_check(pg_pair, nodes=nodes, expected_standbys=[])) as check:
        result = await execute(check)
        assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
        assert not any(s.name.startswith(("mamori_pg_failover", "mamori_pg_rpo")) for s in result.samples)
        assert labelled(result, "mamori_pg_standby_state", "state", node="db", standby=STANDBY_APP) == {
            "streaming": 1.0
        }
    down = [{"name": "db", "host": HOST, "port": 1}]  # nothing listens there
    async with opened(pg_check(pg_pair, nodes=down, expected_standbys=[])) as check:
        result = await execute(check)
        assert (result.status, result.reason, result.message) == (
            Status.CRITICAL,
            Reason.REFUSED,
            "db: Connection refused",
        )


@lab_test
async def test_no_connection_leak_over_500_runs(pg_pair: PgLab) -> None:
    async with opened(pg_check(pg_pair)) as check:
        cpu0, t0 = time.process_time(), time.monotonic()
        for i in range(500):
            if i == 200:
                await pg_pair.stop_standby()  # errors close the connection; later runs reconnect
            if i == 205:
                await pg_pair.start_standby()
                await pg_pair.wait_streaming()
            result = await execute(check)
            assert result.status is (Status.CRITICAL if 200 <= i < 205 else Status.OK), (i, result.message)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        print(f"500 runs: {wall / 500 * 1000:.2f} ms wall, {cpu / 500 * 1000:.2f} ms CPU per run")
        assert (await mamori_connections(pg_pair)) == {"primary": 1, "standby": 1}
    # aclose() closed both; the servers notice at once.
    for _ in range(100):
        if (await mamori_connections(pg_pair)) == {"primary": 0, "standby": 0}:
            break
        await asyncio.sleep(0.02)
    assert (await mamori_connections(pg_pair)) == {"primary": 0, "standby": 0}


@lab_test
async def test_agentctl_check_prints_the_replication_summary(pg_pair: PgLab, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(pg_pair.monitoring_password + "\n")
    cfg = tmp_path / "agent.yml"
    cfg.write_text(
        f"""checks:
  - name: main
    type: postgres
    timeout: 3s
    password_file: {secret}
    nodes:
      - {{name: primary, host: {HOST}, port: {pg_pair.primary.port}}}
      - {{name: standby, host: {HOST}, port: {pg_pair.standby.port}, application_name: {STANDBY_APP}}}
    expected_standbys: [{STANDBY_APP}]
"""
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "check", "-c", str(cfg), "main",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, (out, err)
    # One check is a Nagios plugin: its line first, the summary as the long output (issue 17).
    line, _, text = out.decode().partition("\n")
    assert line.startswith("POSTGRES OK - primary primary (timeline 1); ") and " | 'time'=" in line
    assert text.startswith("main: OK (ok) — cluster main\nnodes:\n  primary      primary   timeline 1")
    assert "failover: ready (ready); recommended from here: no (primary_reachable)" in text
    assert pg_pair.monitoring_password not in text


@lab_test
@pytest.mark.timeout(240)
async def test_idle_primary_heartbeat_stays_small_while_last_replay_age_grows(pg_pair: PgLab) -> None:
    """Forty seconds of an idle primary, at a 2 s interval.

    The heartbeat is itself a commit, so while it runs pg_last_xact_replay_timestamp() moves with
    it. Hence two phases on the same idle pair: first 20 s without the heartbeat, where
    now() - pg_last_xact_replay_timestamp() grows without bound although the standby is fully
    caught up (the pitfall); then 20 s with it, where the delay stays small from the first
    run on — and that first run reads both in the same result: the old replay age, ~20 s, and
    a heartbeat delay of milliseconds."""
    # Idle means idle: autovacuum off for the test (its commits, e.g. cleaning up after earlier
    # tests, would move the replay timestamp too), then one commit, replayed (a freshly started
    # standby has replayed none: the timestamp is NULL). From here on nothing writes.
    admin = pg_pair.primary.superuser_dsn()
    await query(admin, "ALTER SYSTEM SET autovacuum = off")
    await query(admin, "SELECT pg_reload_conf()")
    try:
        for _ in range(500):  # a worker started before the reload finishes its table
            if not await one(
                admin, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ):
                break
            await asyncio.sleep(0.02)
        await pg_pair.wait_replayed(await pg_pair.write_some(1))
        await idle_phases(pg_pair)
    finally:
        await query(admin, "ALTER SYSTEM RESET autovacuum")
        await query(admin, "SELECT pg_reload_conf()")


async def idle_phases(pg_pair: PgLab) -> None:
    interval = 2.0
    phase = 20.0
    async with opened(pg_check(pg_pair, heartbeat=False, interval=interval)) as blind:
        ages: list[float] = []
        replay_lags: list[float] = []
        began = time.monotonic()
        while time.monotonic() - began < phase:
            result = await execute(blind)
            assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
            ages.append(value(result, "mamori_pg_last_xact_replay_age_seconds", node="standby"))
            standby = {"node": "primary", "standby": STANDBY_APP}
            assert value(result, "mamori_pg_standby_lag_bytes", stage="replay", **standby) == 0
            replay_lags.append(value(result, "mamori_pg_standby_lag_seconds", stage="replay", **standby))
            assert value(result, "mamori_pg_wal_receiver_last_message_age_seconds", node="standby") < 10
            assert not has(result, "mamori_pg_heartbeat_delay_seconds", node="standby")
            await asyncio.sleep(interval)
        assert all(b > a for a, b in itertools.pairwise(ages)), ages
        assert ages[-1] >= phase - interval
        # replay_lag turns NULL once the standby has caught up on an idle primary: that reads 0.
        assert max(replay_lags) < 1.0 and replay_lags[-1] == 0, replay_lags
    async with opened(pg_check(pg_pair, interval=interval)) as check:
        delays: list[float] = []
        began = time.monotonic()
        while time.monotonic() - began < phase:
            result = await execute(check)
            assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
            delays.append(delay(result))
            if len(delays) == 1:  # the same run: the old replay age next to an honest delay
                assert value(result, "mamori_pg_last_xact_replay_age_seconds", node="standby") >= phase
                assert delays[0] < 1.0
            await asyncio.sleep(interval)
        print(f"heartbeat delays over {phase:g} s idle: max {max(delays) * 1000:.1f} ms")
        assert len(delays) >= phase / interval - 2
        assert max(delays) < 2 * interval
        assert max(delays) < 1.0  # in practice: milliseconds
