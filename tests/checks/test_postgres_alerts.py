"""The `postgres` check and the shipped Prometheus rules page on the same faults (issue 11, item 2).

Two paths page on a Postgres fault: the agent's own notifier, on the check's status and reason
(deploy/examples/production.yml pages `archive_failing`, `replay_paused`, … at WARNING), and
Prometheus, on the samples the check exports (alerts/rules/postgres.yml). Here the real check
runs on the real lab pair (lab/postgres.py, PostgreSQL's default `archive_timeout = 0`)
into a fault; its result, rendered exactly as `/metrics` renders it, is held steady for longer
than every `for:` of the rules and evaluated by promtool. The alerts that fire must be the ones
the check's problems mean (REASON_ALERTS), no more, no fewer — and an idle primary, long past
`archive_age_warning` since its last archived segment, raises neither.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.postgres.check import PostgresCheck
from exporters.prometheus import render_result
from lab.postgres import PgLab
from lab.proxy import LinkProxy
from tests.checks.test_postgres import (
    HOST,
    STANDBY_APP,
    archive_a_segment,
    has,
    opened,
    pg_check,
    run_until,
    summary,
    value,
)
from tests.pg import fixture_pg_cluster, fixture_pg_pair, one, query  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "rules" / "postgres.yml"
HOLD = 40  # minutes the result is held: longer than every `for:` in RULES (test below)
lab_test = pytest.mark.asyncio(loop_scope="session")

# What each of the check's problems means on the Prometheus side: one of these alerts fires for
# it (both paths agree), and every alert that fires is explained by some problem. Reasons with
# no entry have no per-agent Prometheus alert (primary_down needs two vantage points; wraparound
# and connections are the agent's alone).
REASON_ALERTS: dict[str, set[str]] = {
    Reason.SPLIT_BRAIN.value: {"PostgresSplitBrain"},
    Reason.TIMELINE_DIVERGENCE.value: {"PostgresTimelineDivergence"},
    Reason.RPO_EXCEEDED.value: {"PostgresRPOExposureHigh"},
    Reason.STANDBY_MISSING.value: {"PostgresStandbyDown", "PostgresExpectedStandbyMissing"},
    Reason.REPLAY_PAUSED.value: {"PostgresReplayPaused"},
    Reason.REPLICATION_LAG.value: {"PostgresReplicationLagHigh", "PostgresReplicationLagAboveRPO"},
    Reason.ARCHIVE_FAILING.value: {"PostgresArchivingFailing"},
    Reason.SLOT_RETENTION.value: {"PostgresReplicationSlotUnreserved", "PostgresReplicationSlotLost"},
}

_LINE = re.compile(r"^([A-Za-z_:][\w:]*)\{(.*)\} (\S+)$")
_PROBLEM = re.compile(r"^  (?:WARNING|CRITICAL|UNKNOWN)\s+(\w+): ")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install the Debian package prometheus (`make test` does)")
    return path


def input_series(result: CheckResult, instance: str = "lab-agent:9630") -> list[dict[str, str]]:
    """The result as Prometheus scrapes it from /metrics (job `mamori`), held for HOLD minutes."""
    out = []
    for lines in render_result(result).values():
        for line in lines:
            m = _LINE.match(line.rstrip("\n"))
            assert m, line
            name, labels, number = m.groups()
            series = f'{name}{{job="mamori",instance="{instance}",{labels}}}'
            out.append({"series": series, "values": f"{number}x{HOLD + 5}"})
    return out


def problems(check: PostgresCheck, result: CheckResult) -> set[str]:
    """The reasons of every problem of the run (the summary lists them all, worst first)."""
    return {m.group(1) for line in summary(check, result).splitlines() if (m := _PROBLEM.match(line))}


def assert_prometheus_fires(result: CheckResult, expected: Iterable[str], directory: Path) -> None:
    """After HOLD minutes of `result`, exactly the `expected` alerts of RULES fire (promtool)."""
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series(result),
                "promql_expr_test": [
                    {
                        "expr": 'count by (alertname) (ALERTS{alertstate="firing"})',
                        "eval_time": f"{HOLD}m",
                        "exp_samples": [
                            {"labels": f'{{alertname="{name}"}}', "value": 1} for name in sorted(expected)
                        ],
                    }
                ],
            }
        ],
    }
    path = directory / "agreement_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    run = subprocess.run(
        [_promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, f"expected exactly {sorted(expected)} to fire:\n{run.stdout}{run.stderr}"


def assert_agree(check: PostgresCheck, result: CheckResult, expected: set[str], directory: Path) -> None:
    """The check's problems and the Prometheus alerts `expected` mean the same, and promtool
    fires exactly those on the check's samples."""
    reasons = problems(check, result)
    for reason in reasons:
        meant = REASON_ALERTS.get(reason, set())
        assert not meant or meant & expected, f"{reason}: the check says it, no alert of {meant} would"
    explained = set().union(*(REASON_ALERTS.get(r, set()) for r in reasons))
    assert expected <= explained, f"{sorted(expected - explained)} would fire; the check says {reasons}"
    assert_prometheus_fires(result, expected, directory)


def test_the_hold_outlasts_every_for() -> None:
    units = {"s": 1 / 60, "m": 1, "h": 60}
    fors = [
        float(rule["for"][:-1]) * units[rule["for"][-1]]
        for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "for" in rule
    ]
    assert fors and max(fors) < HOLD


@lab_test
async def test_an_idle_primary_is_ok_long_past_archive_age_warning(pg_pair: PgLab, tmp_path: Path) -> None:
    """Issue 11 item 2: with archive_timeout = 0 and nothing written but the heartbeat, the time
    since the last archived segment passes archive_age_warning (2 s here, 5 min by default) and
    keeps growing: the check stays OK (it used to go WARNING archive_failing, "the oldest is
    5m00s old", and page through the agent's notifier) and no Prometheus alert fires."""
    admin = pg_pair.primary.superuser_dsn()
    assert await one(admin, "SHOW archive_timeout") == "0"  # PostgreSQL's default: the lab must not hide it
    await archive_a_segment(pg_pair)  # the last archived segment's time is known; nothing waits
    warning = 2.0
    async with opened(pg_check(pg_pair, archive_age_warning=f"{warning:g}s")) as check:
        results = []
        began = time.monotonic()
        while time.monotonic() - began < 4 * warning:
            result = await execute(check)
            assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
            results.append(result)
            await asyncio.sleep(0.5)
        last = results[-1]
        node = {"node": "primary"}
        assert value(last, "mamori_pg_archiver_failing", **node) == 0
        assert value(last, "mamori_pg_archiver_ready_files", **node) == 0
        assert value(last, "mamori_pg_archiver_ready_oldest_age_seconds", **node) == 0
        assert value(last, "mamori_pg_archiver_ready_oldest_age_warning_seconds", **node) == warning
        assert value(last, "mamori_pg_archiver_ready_files_warning", **node) == 10
        # Well past the threshold, and still exported: the archive's half of the RPO exposure.
        assert value(last, "mamori_pg_archiver_last_archived_age_seconds", **node) > 3 * warning
        archive_gap = value(last, "mamori_pg_rpo_archive_gap_seconds", cluster="main")
        assert archive_gap > 3 * warning
        # The streaming standby holds everything: it is the exposure.
        exposure = value(last, "mamori_pg_rpo_exposure_seconds", cluster="main")
        assert exposure == value(last, "mamori_pg_rpo_standby_gap_seconds", cluster="main") < 1.0
        assert "archiver (primary): ok;" in summary(check, last)
        assert_agree(check, last, set(), tmp_path)


@lab_test
async def test_broken_archiving_is_archive_failing_on_both_paths(pg_pair: PgLab, tmp_path: Path) -> None:
    async with opened(pg_check(pg_pair, archive_age_warning="2s")) as check:
        assert (await execute(check)).status is Status.OK
        await pg_pair.break_archiving()
        await query(pg_pair.primary.superuser_dsn(), "SELECT pg_switch_wal()")  # a segment to archive
        failing = (await run_until(check, lambda r: r.reason is Reason.ARCHIVE_FAILING, timeout=5))[-1]
        assert failing.status is Status.WARNING, failing.message
        assert failing.message.startswith("primary: archiving is failing ("), failing.message
        assert value(failing, "mamori_pg_archiver_failing", node="primary") == 1
        assert_agree(check, failing, {"PostgresArchivingFailing"}, tmp_path)
        # The segment waits past archive_age_warning: still the one problem, now said twice.
        await asyncio.sleep(2.0)
        waiting = await execute(check)
        assert (waiting.status, waiting.reason) == (Status.WARNING, Reason.ARCHIVE_FAILING), waiting.message
        assert "1 WAL segment waits to be archived, the oldest for " in waiting.message
        assert "archiver (primary): FAILING;" in summary(check, waiting)
        assert_agree(check, waiting, {"PostgresArchivingFailing"}, tmp_path)
        # Fixed: OK again on both paths, although nothing was archived since (idle).
        await pg_pair.fix_archiving()
        fixed = (await run_until(check, lambda r: r.status is Status.OK, timeout=5))[-1]
        assert value(fixed, "mamori_pg_archiver_failing", node="primary") == 0
        assert_agree(check, fixed, set(), tmp_path)


@lab_test
async def test_replay_paused_agrees(pg_pair: PgLab, tmp_path: Path) -> None:
    async with opened(pg_check(pg_pair)) as check:
        assert (await execute(check)).status is Status.OK
        await pg_pair.pause_replay()
        await pg_pair.write_some(5)
        result = await execute(check)
        assert (result.status, result.reason) == (Status.WARNING, Reason.REPLAY_PAUSED), result.message
        assert_agree(check, result, {"PostgresReplayPaused"}, tmp_path)


@lab_test
async def test_a_stopped_standby_agrees(pg_pair: PgLab, tmp_path: Path) -> None:
    await archive_a_segment(pg_pair)
    async with opened(pg_check(pg_pair, archive_age_warning="1s")) as check:
        assert (await execute(check)).status is Status.OK
        await pg_pair.stop_standby()
        await asyncio.sleep(1.5)  # past archive_age_warning since the last archived segment
        result = await execute(check)
        assert (result.status, result.reason) == (Status.CRITICAL, Reason.STANDBY_MISSING), result.message
        assert problems(check, result) == {"standby_missing"}  # not archive_failing
        assert not has(result, "mamori_pg_rpo_standby_gap_seconds", cluster="main")
        assert_agree(check, result, {"PostgresStandbyDown", "PostgresExpectedStandbyMissing"}, tmp_path)


@lab_test
async def test_an_agent_cut_off_from_the_primary_says_unknown_not_missing(
    pg_pair: PgLab, tmp_path: Path
) -> None:
    """Issue 15 item 1, on the real pair: agent B's own path to the primary is black-holed
    (LinkProxy cut: nothing is closed, nothing answers) while the primary and the standby are
    fine and agent A sees both and writes the heartbeat. B says the primary does not answer it
    and that the standby still streams from one — no standby_missing, no
    mamori_pg_expected_standby_connected 0, and no Prometheus alert from B's series (the old 0
    fired PostgresExpectedStandbyMissing); A still reports all well. Lean: a 2 s timeout and a
    few runs; promtool holds each result past every `for:`."""
    link = LinkProxy(pg_pair.primary.port)  # agent B's path to the primary, and only B's
    nodes_b = [
        {"name": "primary", "host": HOST, "port": link.port},
        {"name": "standby", "host": HOST, "port": pg_pair.standby.port, "application_name": STANDBY_APP},
    ]
    try:
        async with opened(pg_check(pg_pair)) as agent_a, opened(pg_check(pg_pair, nodes=nodes_b)) as agent_b:
            assert (await execute(agent_a)).status is Status.OK
            assert (await execute(agent_b)).status is Status.OK  # B knows pg1 as the primary
            link.cut()
            for _ in range(3):
                seen_by_a = await execute(agent_a)  # the heartbeat B's standby read sees
                seen_by_b = await execute(agent_b)
                await asyncio.sleep(0.3)
            expected = {"cluster": "main", "standby": STANDBY_APP}
            assert (seen_by_a.status, seen_by_a.reason) == (Status.OK, Reason.OK), seen_by_a.message
            assert value(seen_by_a, "mamori_pg_expected_standby_connected", **expected) == 1
            assert seen_by_b.status is Status.CRITICAL, seen_by_b.message
            assert seen_by_b.reason is Reason.TIMEOUT, seen_by_b.message
            assert problems(agent_b, seen_by_b) == {"timeout"}, summary(agent_b, seen_by_b)
            assert "yet standby standby (last message " in seen_by_b.message
            assert "primary may only be unreachable from this agent" in seen_by_b.message
            assert value(seen_by_b, "mamori_pg_up", node="primary") == 0
            assert value(seen_by_b, "mamori_pg_up", node="standby") == 1
            assert value(seen_by_b, "mamori_pg_cluster_primaries", cluster="main") == 0
            assert not has(seen_by_b, "mamori_pg_expected_standby_connected", **expected)
            # The standby streams, with A's heartbeat: what B reads is on the standby's clock.
            assert "delay measured with the standby's clock" in seen_by_b.message
            assert_prometheus_fires(seen_by_b, set(), tmp_path)
            assert_agree(agent_a, seen_by_a, set(), tmp_path)
    finally:
        link.close()


@lab_test
async def test_an_agent_cut_off_from_the_standby_says_unknown_not_down(
    pg_pair: PgLab, tmp_path: Path
) -> None:
    """Issue 15 item 1, the other side: agent B reaches the primary but its path to the standby is
    black-holed, while the primary streams to the standby. B says the standby does not answer *it*
    (a warning with the node's own failure, `timeout`), never standby_missing; its
    mamori_pg_node_streaming says the primary streams to the node, and PostgresStandbyDown stays
    quiet on B's series. A standby that really stops is still standby_missing (its near miss:
    test_a_stopped_standby_agrees)."""
    link = LinkProxy(pg_pair.standby.port)  # agent B's path to the standby, and only B's
    nodes_b = [
        {"name": "primary", "host": HOST, "port": pg_pair.primary.port},
        {"name": "standby", "host": HOST, "port": link.port, "application_name": STANDBY_APP},
    ]
    try:
        async with opened(pg_check(pg_pair, nodes=nodes_b)) as agent_b:
            assert (await execute(agent_b)).status is Status.OK
            link.cut()
            seen = await execute(agent_b)
            assert (seen.status, seen.reason) == (Status.WARNING, Reason.TIMEOUT), seen.message
            assert problems(agent_b, seen) == {"timeout"}, summary(agent_b, seen)
            assert "yet primary streams to it: unreachable from here, not down" in seen.message
            assert value(seen, "mamori_pg_up", node="standby") == 0
            assert value(seen, "mamori_pg_node_streaming", cluster="main", node="standby") == 1
            expected = {"cluster": "main", "standby": STANDBY_APP}
            assert value(seen, "mamori_pg_expected_standby_connected", **expected) == 1
            assert_prometheus_fires(seen, set(), tmp_path)
    finally:
        link.close()
