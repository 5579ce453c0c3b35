"""The `postgres` check's witnesses and the stall grace (issue 15 items 2–3, the agent's side).

Every run says what this agent's own path shows of the primary (`agent:<agent>`) and what each
standby's WAL receiver shows (`standby:<node>`): reachable, down or unknown, as the StateSet
`mamori_pg_primary_witness{cluster, witness, zone, state}`. A primary that does not answer is
unknown until the streak of runs without one has lasted `stall_grace`; one that is not there
(refused…) is down at once; one whose postmaster answered (auth_failed…) is alive.

Part 1 judges hand-built states (the streak's start and the run's end are arguments of
`judge()`, so no test sleeps); part 2 is one test on the real pair with the grace time-scaled
(2 s, the check's timeout 0.5 s): a frozen primary thawed within the grace is never down, one
frozen longer is down once the grace has passed, a stopped one is down in its first failed run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from agent import config
from agent.catalog import WITNESS_STATES
from agent.config import ConfigError
from agent.fleetview import witness_samples
from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.postgres.cluster import ClusterVerdict, Memory, NodeState, Policy, Receiver, judge
from checks.postgres.config import PostgresConfig
from checks.postgres.samples import samples_of
from lab.postgres import PgLab
from tests.checks.test_postgres import (
    NODES,
    STANDBY_APP,
    down,
    labelled,
    opened,
    parse_check,
    pg_check,
    primary,
    recommended,
    standby,
)
from tests.pg import fixture_pg_cluster, fixture_pg_pair  # noqa: F401  (fixtures)

lab_test = pytest.mark.asyncio(loop_scope="session")

POLICY = Policy(
    cluster="main",
    cluster_view=True,
    expected_standbys=("pg2",),
    stall_grace=17.0,
    agent="a1",
    agent_zone="ad1",
    zones=(("pg1", "ad1"), ("pg2", "ad2")),
)
WAS = Memory(roles={"pg1": "primary", "pg2": "standby"}, primary_timeline=1)


def judged(
    *nodes: NodeState, memory: Memory = WAS, now: float = 100.0, policy: Policy = POLICY
) -> ClusterVerdict:
    return judge(nodes, policy, memory, now=now)


def witnesses(v: ClusterVerdict) -> dict[str, tuple[str, str]]:
    return {w.name: (w.zone, w.state) for w in v.witnesses}


def agent_state(v: ClusterVerdict) -> str:
    (agent,) = [w for w in v.witnesses if w.name == "agent:a1"]
    return agent.state


def streak(*runs: tuple[float, NodeState]) -> list[ClusterVerdict]:
    """Judge runs in order (each the END time of a run and its presumed primary's state, beside a
    streaming standby), carrying the memory between them as the check does."""
    memory, out = WAS, []
    for now, first in runs:
        v = judged(first, standby(), memory=memory, now=now)
        memory = replace(memory, no_primary_since=v.no_primary_since)
        out.append(v)
    return out


# ============================================================================================
# Part 1: the rules, on hand-built states
# ============================================================================================


def test_a_healthy_pair_has_every_witness_reachable_in_its_zone() -> None:
    v = judged(primary(), standby())
    assert witnesses(v) == {"agent:a1": ("ad1", "reachable"), "standby:pg2": ("ad2", "reachable")}
    assert v.no_primary_since is None
    assert (v.recommended, v.recommended_reason) == (False, "primary_reachable")


@pytest.mark.parametrize(
    "failure", [Reason.REFUSED, Reason.UNREACHABLE, Reason.DNS, Reason.CONNECTION_RESET, Reason.UNAVAILABLE]
)
def test_a_primary_that_is_not_there_is_down_at_once(failure: Reason) -> None:
    v = judged(down("pg1", failure), standby(receiver=Receiver("waiting")))
    assert agent_state(v) == "down"
    assert (v.recommended, v.recommended_reason) == (True, "primary_down_standby_ready")
    assert v.no_primary_since == 100.0  # the streak began with this run
    assert "stall grace" not in v.message  # no grace for a server that is not there


@pytest.mark.parametrize("failure", [Reason.AUTH_FAILED, Reason.TOO_MANY_CONNECTIONS])
def test_a_primary_whose_postmaster_answered_is_reachable(failure: Reason) -> None:
    v = judged(down("pg1", failure, "sorry"), standby(), memory=replace(WAS, no_primary_since=10.0))
    assert agent_state(v) == "reachable"
    assert (v.status, v.reason) == (Status.CRITICAL, failure)  # the check's verdict as before
    assert (v.recommended, v.recommended_reason) == (False, "primary_reachable")
    assert v.no_primary_since is None  # alive: a streak of silence ends


def test_a_timeout_is_unknown_then_down_after_the_grace() -> None:
    timeout = down("pg1", Reason.TIMEOUT, "no answer within 1.2s")
    runs = streak((100.0, timeout), (108.0, timeout), (116.9, timeout), (117.0, timeout), (119.0, timeout))
    assert [agent_state(v) for v in runs] == ["unknown", "unknown", "unknown", "down", "down"]
    assert [v.no_primary_since for v in runs] == [100.0] * 5  # the end of the first failed run
    assert [v.recommended_reason for v in runs] == [
        *["primary_unknown"] * 3,
        *["primary_down_standby_ready"] * 2,
    ]
    assert [v.recommended for v in runs] == [False, False, False, True, True]
    # The check's own status and reason do not wait for the grace; the message says where it is.
    assert {(v.status, v.reason) for v in runs} == {(Status.CRITICAL, Reason.TIMEOUT)}
    assert runs[0].message.startswith(
        "no primary: pg1 does not answer (no answer within 1.2s: frozen, overloaded or cut off?); "
        "no answer in this run, within the 17s stall grace"
    )
    assert "; no answer for 8s, within the 17s stall grace; " in runs[1].message
    assert "; no answer for 17s, past the 17s stall grace: down; " in runs[3].message


def test_one_answer_breaks_the_streak_and_the_grace_restarts() -> None:
    timeout = down("pg1", Reason.TIMEOUT)
    runs = streak((100.0, timeout), (110.0, timeout), (112.0, primary()), (114.0, timeout), (130.0, timeout))
    assert [agent_state(v) for v in runs] == ["unknown", "unknown", "reachable", "unknown", "unknown"]
    assert [v.no_primary_since for v in runs] == [100.0, 100.0, None, 114.0, 114.0]
    assert runs[-1].recommended_reason == "primary_unknown"


def test_refused_is_down_then_a_timeout_waits_for_the_grace_of_the_same_streak() -> None:
    """The contract: down on a _GONE failure of this run, or after stall_grace of a streak."""
    runs = streak(
        (100.0, down("pg1")), (102.0, down("pg1", Reason.TIMEOUT)), (118.0, down("pg1", Reason.TIMEOUT))
    )
    assert [agent_state(v) for v in runs] == ["down", "unknown", "down"]


def test_every_node_a_standby_is_down() -> None:
    v = judged(standby("pg1"), standby(), memory=Memory())
    assert agent_state(v) == "down" and v.reason is Reason.PRIMARY_DOWN


def test_nothing_answers_times_out_within_the_grace() -> None:
    v = judged(down("pg1", Reason.TIMEOUT, "no answer within 6s"), down("pg2", Reason.TIMEOUT))
    assert witnesses(v) == {"agent:a1": ("ad1", "unknown"), "standby:pg2": ("ad2", "unknown")}
    assert v.message.startswith(
        "no node answers; primary pg1: no answer within 6s; no answer in this run, within the 17s stall grace"
    )


@pytest.mark.parametrize(
    ("receiver", "state"),
    [
        (Receiver("streaming", 1, 0.5), "reachable"),
        (Receiver("streaming", 1, 17.0), "reachable"),  # at the grace: still fresh
        (Receiver("streaming", 1, 17.5), "unknown"),  # stale: a frozen primary's standby still streams
        (Receiver("streaming", 1, None), "unknown"),
        (Receiver("waiting"), "down"),
        (Receiver("stopping"), "down"),
        (None, "down"),  # in recovery without a WAL receiver
    ],
)
def test_the_standby_witness_reads_its_wal_receiver(receiver: Receiver | None, state: str) -> None:
    # The same whether this agent reaches the primary or not: it is the standby's own view. A
    # receiver that does not stream has done so for a whole stall grace here (see below).
    lost = replace(WAS, receiver_lost_since={"pg2": 100.0 - 17.0})
    for first in (primary(), down("pg1", Reason.TIMEOUT)):
        v = judged(first, standby(receiver=receiver), memory=lost)
        assert witnesses(v)["standby:pg2"] == ("ad2", state), v.witnesses


def test_a_receiver_that_stopped_streaming_is_down_only_after_the_stall_grace() -> None:
    """It stops streaming after wal_receiver_timeout when the primary merely stalls (5 s in the
    lab), exactly as when the primary is gone: a 15 s stall must not make it a down vote."""
    lost = standby(receiver=Receiver("waiting"))
    v = judged(down("pg1", Reason.TIMEOUT), lost, now=100.0)
    assert witnesses(v)["standby:pg2"] == ("ad2", "unknown")
    assert v.receiver_lost_since == {"pg2": 100.0}
    (w,) = [w for w in v.witnesses if w.name == "standby:pg2"]
    assert w.why == "its WAL receiver is waiting: since this run, within the 17s stall grace"
    later = replace(WAS, receiver_lost_since=v.receiver_lost_since)
    assert witnesses(judged(down("pg1", Reason.TIMEOUT), lost, memory=later, now=116.9))["standby:pg2"] == (
        "ad2",
        "unknown",
    )
    v = judged(down("pg1", Reason.TIMEOUT), lost, memory=later, now=117.0)
    assert witnesses(v)["standby:pg2"] == ("ad2", "down")
    assert v.receiver_lost_since == {"pg2": 100.0}
    # Streaming again ends the streak: the next loss starts a new one.
    v = judged(down("pg1", Reason.TIMEOUT), standby(), memory=later, now=118.0)
    assert v.receiver_lost_since == {}


def test_a_standby_unreachable_from_here_is_unknown_and_a_never_seen_node_is_no_witness() -> None:
    v = judged(primary(), down("pg2", Reason.TIMEOUT, "no answer within 1.2s"))
    (w,) = [w for w in v.witnesses if w.name == "standby:pg2"]
    assert (w.state, w.why) == ("unknown", "not reachable from this agent (no answer within 1.2s)")
    # Never seen as a standby (first run, or it was the primary): not a standby witness.
    v = judged(primary(), down("pg2"), memory=Memory())
    assert witnesses(v) == {"agent:a1": ("ad1", "reachable")}


def test_a_primary_is_no_standby_witness_and_a_split_brain_is_reachable() -> None:
    v = judged(primary(), primary("pg2", timeline=2))
    assert witnesses(v) == {"agent:a1": ("ad1", "reachable")}


def test_zones_default_to_empty_and_a_single_node_has_no_witness() -> None:
    bare = Policy(cluster="main", cluster_view=True, agent="a1")
    v = judge([primary(), standby()], bare, Memory())
    assert witnesses(v) == {"agent:a1": ("", "reachable"), "standby:pg2": ("", "reachable")}
    alone = Policy(cluster="db", cluster_view=False, agent="a1")
    assert judge([down("db", Reason.TIMEOUT, "why")], alone, Memory()).witnesses == ()
    v = judge([down("db", Reason.TIMEOUT, "why")], alone, Memory())
    assert v.message == "db: why"  # no grace talk without a cluster view


def test_every_witness_emits_all_three_states() -> None:
    nodes = (down("pg1", Reason.TIMEOUT), standby(receiver=Receiver("waiting")))
    v = judged(*nodes, memory=replace(WAS, receiver_lost_since={"pg2": 0.0}))
    rows = {
        (dict(s.labels)["witness"], dict(s.labels)["zone"], dict(s.labels)["state"]): s.value
        for s in samples_of(nodes, v, POLICY)
        if s.name == "mamori_pg_primary_witness"
    }
    assert rows == {
        ("agent:a1", "ad1", "reachable"): 0.0,
        ("agent:a1", "ad1", "down"): 0.0,
        ("agent:a1", "ad1", "unknown"): 1.0,
        ("standby:pg2", "ad2", "reachable"): 0.0,
        ("standby:pg2", "ad2", "down"): 1.0,
        ("standby:pg2", "ad2", "unknown"): 0.0,
    }
    assert all(
        [k for k, _ in s.labels] == ["cluster", "witness", "zone", "state"]
        and dict(s.labels)["cluster"] == "main"
        for s in samples_of(nodes, v, POLICY)
        if s.name == "mamori_pg_primary_witness"
    )
    assert [s.value for s in witness_samples("c", "app:web", "", "down")] == [
        float(state == "down") for state in WITNESS_STATES
    ]
    recommended_rows = [s for s in samples_of(nodes, v, POLICY) if s.name == "mamori_pg_failover_recommended"]
    assert [(dict(s.labels)["reason"], s.value) for s in recommended_rows] == [("primary_unknown", 0.0)]


# --- config ---------------------------------------------------------------------------------


def test_the_agent_name_and_zone_reach_the_check() -> None:
    cfg = config.parse(
        "agent:\n  name: db-agent-1\n  labels: {site: tokyo, zone: ad1}\n"
        "checks:\n  - name: main\n    type: postgres\n"
        "    nodes: [{name: pg1, host: db1, zone: ad1}, {name: pg2, host: db2, zone: ad2}]\n",
        "pg.yml",
        env={},
    )
    (check,) = cfg.checks
    assert isinstance(check, PostgresConfig)
    policy = check.policy()
    assert (policy.agent, policy.agent_zone, policy.stall_grace) == ("db-agent-1", "ad1", 17.0)
    assert policy.zones == (("pg1", "ad1"), ("pg2", "ad2"))
    bare = parse_check(NODES + "    stall_grace: 30s\n")
    assert (bare.agent_zone, bare.stall_grace, bare.policy().zones) == ("", 30.0, ())
    assert bare.agent  # the host's name, as the agent's default


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (NODES + "    timeout: 5s\n    stall_grace: 4s\n",
         "pg.yml:6: checks[0].stall_grace: stall_grace (4s) must be at least timeout (5s): "
         "a shorter grace calls every stall a dead primary"),
        (NODES + "    stall_grace: 0s\n",
         "pg.yml:5: checks[0].stall_grace: Input should be greater than 0"),
        ("    nodes: [{name: a, host: h, zone: 'a d 1'}]\n",
         "pg.yml:4: checks[0].nodes[0].zone: String should match pattern '^[A-Za-z0-9_.:-]{1,64}$'"),
    ],
)  # fmt: skip
def test_witness_config_errors(body: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_check(body)
    assert str(exc.value) == error


def test_an_agent_zone_that_is_no_label_value_is_an_error() -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse(
            "agent:\n  labels: {zone: 'a d'}\nchecks:\n  - name: main\n    type: postgres\n" + NODES,
            "pg.yml",
            env={},
        )
    assert "invalid zone 'a d' (the agent's `zone` label)" in str(exc.value)


# ============================================================================================
# Part 2: the real pair, the grace time-scaled (2 s; the check's timeout 0.5 s)
# ============================================================================================

GRACE = 2.0
PAUSE = 0.25  # between runs: the check's interval, time-scaled


def witness(result: CheckResult, name: str) -> str:
    states = labelled(
        result, "mamori_pg_primary_witness", "state", cluster="main", witness=name, zone=ZONES[name]
    )
    assert sorted(states) == sorted(WITNESS_STATES) and sum(states.values()) == 1, states
    return next(s for s, v in states.items() if v == 1)


ZONES = {"agent:lab-agent": "ad1", "standby:standby": "ad2"}


@lab_test
async def test_a_frozen_primary_is_down_only_after_the_grace_and_a_stopped_one_at_once(
    pg_pair: PgLab,
) -> None:
    check = pg_check(
        pg_pair,
        interval=1,
        timeout=0.5,
        stall_grace=f"{GRACE:g}s",
        agent="lab-agent",
        agent_zone="ad1",
        nodes=[
            {"name": "primary", "host": "127.0.0.1", "port": pg_pair.primary.port, "zone": "ad1"},
            {
                "name": "standby",
                "host": "127.0.0.1",
                "port": pg_pair.standby.port,
                "application_name": STANDBY_APP,
                "zone": "ad2",
            },
        ],
    )
    # One check object throughout: its connection to the primary stays open across the freeze (a
    # backend exiting at the moment of SIGSTOP would stay a zombie: see test_postgres.py).
    async with opened(check):
        result = await execute(check)
        assert result.status is Status.OK, result.message
        assert (witness(result, "agent:lab-agent"), witness(result, "standby:standby")) == (
            "reachable",
            "reachable",
        )

        # Frozen, thawed well within the grace: unknown, never down.
        await pg_pair.freeze_primary()
        seen = []
        began = time.monotonic()
        while time.monotonic() - began < GRACE / 2:
            result = await execute(check)
            seen.append((witness(result, "agent:lab-agent"), recommended(result)))
            await asyncio.sleep(PAUSE)
        await pg_pair.thaw_primary()
        assert seen and {s for s, _ in seen} == {"unknown"}, seen
        assert {r for _, r in seen} == {(0.0, "primary_unknown")}, seen
        assert "within the 2s stall grace" in result.message
        result = await execute(check)
        assert witness(result, "agent:lab-agent") == "reachable", result.message

        # Frozen past the grace: down once the streak, from the end of its first run, lasts 2 s.
        await pg_pair.freeze_primary()
        first_end = None
        while True:
            result = await execute(check)
            ended = time.monotonic()
            first_end = first_end or ended
            state = witness(result, "agent:lab-agent")
            if state == "down":
                break
            assert state == "unknown" and ended - first_end < GRACE + 0.1, result.message
            await asyncio.sleep(PAUSE)
        assert GRACE - 0.1 <= ended - first_end < GRACE + 1.5, ended - first_end
        assert recommended(result) == (1.0, "primary_down_standby_ready")
        assert "past the 2s stall grace: down" in result.message
        await pg_pair.thaw_primary()
        result = await execute(check)
        assert witness(result, "agent:lab-agent") == "reachable", result.message

        # Stopped: refused, down in the first failed run; the standby's receiver loses it.
        await pg_pair.stop_primary()
        result = await execute(check)
        assert witness(result, "agent:lab-agent") == "down", result.message
        assert recommended(result) == (1.0, "primary_down_standby_ready")
        deadline = time.monotonic() + 10
        while witness(result, "standby:standby") != "down":
            assert time.monotonic() < deadline, result.message
            await asyncio.sleep(PAUSE)
            result = await execute(check)
