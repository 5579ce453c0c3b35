"""Scheduler guarantees, with test-only check types (no network). Where a guarantee is about
time (spreading, skipped runs, lateness), a fake clock drives it, never a real sleep."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from agent.model import CheckRemoved, CheckResult, Reason, Status
from agent.pipeline import FanOut
from agent.scheduler import Scheduler, phase_offset
from agent.telemetry import AgentMetrics
from checks import REGISTRY
from tests.agent.fakeclock import ClockSleepCheck, ClockSleepConfig, FakeClock
from tests.agent.fakes import BoomConfig, SleepCheck, SleepConfig

pytestmark = pytest.mark.usefixtures("fake_checks")


def sleep_cfg(
    name: str, interval: float = 0.2, seconds: float = 0.0, timeout: float | None = None, **kw: Any
) -> SleepConfig:
    return SleepConfig(
        name=name, type="sleep", interval=interval, timeout=timeout or interval, seconds=seconds, **kw
    )


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def clock_cfg(
    name: str, interval: float, seconds: float = 0.0, timeout: float | None = None
) -> ClockSleepConfig:
    return ClockSleepConfig(
        name=name, type="clocksleep", interval=interval, timeout=timeout or interval, seconds=seconds
    )


@pytest.fixture(autouse=True)
def clear_log() -> None:
    SleepCheck.log.clear()
    SleepCheck.closed.clear()
    ClockSleepCheck.log.clear()


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    """A fake clock at 0, which the `clocksleep` check type takes its time from."""
    clock = FakeClock()
    ClockSleepCheck.clock = clock
    REGISTRY["clocksleep"] = "tests.agent.fakeclock:ClockSleepCheck"
    try:
        yield clock
    finally:
        REGISTRY.pop("clocksleep", None)


def test_phase_offsets_are_stable_and_spread() -> None:
    assert phase_offset("db", 30) == phase_offset("db", 30)
    offsets = sorted(phase_offset(f"check-{i}", 1.0) for i in range(200))
    assert 0 <= offsets[0] < 0.05 and 0.95 < offsets[-1] < 1.0
    # No bucket of a tenth of the interval holds more than twice its share.
    buckets = [sum(1 for o in offsets if k / 10 <= o < (k + 1) / 10) for k in range(10)]
    assert max(buckets) < 40, buckets


async def test_first_runs_are_spread_over_the_interval(clock: FakeClock) -> None:
    results: list[CheckResult] = []
    sched = Scheduler(results.append, AgentMetrics(), concurrency=100, clock=clock)
    sched.apply([clock_cfg(f"c{i}", interval=1.0) for i in range(40)])
    t0 = clock.monotonic()
    await clock.advance(1.05)
    await sched.aclose()
    firsts: dict[str, float] = {}
    for name, start, _ in ClockSleepCheck.log:
        firsts.setdefault(name, start - t0)
    starts = sorted(firsts.values())
    assert len(starts) == 40
    assert starts[0] < 0.25 and starts[-1] > 0.75  # not all at once


async def test_first_runs_come_within_the_start_window_then_spread_over_the_interval(
    clock: FakeClock,
) -> None:
    # Issue 17: /api/v1/results stayed empty for up to one interval after a start. Now the first
    # runs are spread over a short window (10 s by default), the later ones over the interval.
    sched = Scheduler(lambda r: None, AgentMetrics(), concurrency=100, clock=clock)
    sched.apply([clock_cfg(f"c{i}", interval=60.0, timeout=1.0) for i in range(40)])
    t0 = clock.monotonic()
    await clock.advance(10.0)
    assert {name for name, _, _ in ClockSleepCheck.log} == {f"c{i}" for i in range(40)}
    await clock.advance(160.0)  # the third runs: at most 10 + 30 + 60 + 60 s in
    await sched.aclose()
    runs: dict[str, list[float]] = {}
    for name, start, _ in ClockSleepCheck.log:
        runs.setdefault(name, []).append(start - t0)
    firsts = sorted(r[0] for r in runs.values())
    assert firsts[0] < 2.5 and firsts[-1] > 7.5  # spread over the window, not all at once
    for name, (first, second, third, *_) in runs.items():
        assert second - first >= 30.0  # never two runs of a check close together
        assert third - second == pytest.approx(60.0)
        assert second % 60.0 == pytest.approx(phase_offset(name, 60.0))  # the stable phase
    phases = sorted(r[1] % 60.0 for r in runs.values())
    assert phases[0] < 15.0 and phases[-1] > 45.0  # steady state: spread over the interval


async def test_a_check_never_overlaps_itself_and_missed_slots_are_skipped(clock: FakeClock) -> None:
    metrics = AgentMetrics()
    results: list[CheckResult] = []
    sched = Scheduler(results.append, metrics, concurrency=10, spread=False, clock=clock)
    sched.apply([clock_cfg("slow", interval=0.1, seconds=0.25, timeout=0.1 * 10)])
    await clock.advance(1.0)
    await sched.aclose()
    runs = [(s, e) for n, s, e in ClockSleepCheck.log if n == "slow"]
    assert len(runs) >= 3
    for (_, end), (start, _) in itertools.pairwise(runs):
        assert start >= end  # the next run starts after the previous ended
    assert sample(metrics, "mamori_scheduler_skipped_runs_total", check="slow") >= 4


async def test_concurrency_limit_is_global(clock: FakeClock) -> None:
    metrics = AgentMetrics()
    sched = Scheduler(lambda r: None, metrics, concurrency=2, spread=False, clock=clock)
    sched.apply([clock_cfg(f"c{i}", interval=5, seconds=0.2) for i in range(6)])
    await clock.advance(0.75)
    await sched.aclose()
    log = ClockSleepCheck.log
    events = sorted([(s, 1) for _, s, _ in log] + [(e, -1) for _, _, e in log])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert len(log) == 6
    assert peak == 2
    # Waiting for a slot is lateness: the last pair started ~0.4 s late.
    assert sample(metrics, "mamori_scheduler_lateness_seconds_bucket", le="0.25") == 4
    assert sample(metrics, "mamori_scheduler_lateness_seconds_count") == 6


async def test_a_check_that_raises_is_unknown_check_error_logged_once(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    metrics = AgentMetrics()
    results: list[CheckResult] = []
    sched = Scheduler(results.append, metrics, concurrency=4, spread=False, clock=clock)
    with caplog.at_level(logging.ERROR):
        sched.apply([BoomConfig(name="buggy", type="boom", interval=0.05, timeout=0.05)])
        await clock.advance(0.3)
        await sched.aclose()
    assert len(results) >= 3
    assert {(r.status, r.reason) for r in results} == {(Status.UNKNOWN, Reason.CHECK_ERROR)}
    assert results[0].message == "check failed: ZeroDivisionError: division by zero in a check"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert sample(metrics, "mamori_check_errors_total", check="buggy") == len(results)
    assert sample(metrics, "mamori_check_runs_total", check="buggy", status="unknown") == len(results)


async def test_a_check_changed_by_a_reload_reports_its_bug_again(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """ "Reported once" is per check object, not per name for the life of the process: a reload
    that changes the check (a new object) logs its first traceback again."""
    results: list[CheckResult] = []
    sched = Scheduler(results.append, AgentMetrics(), concurrency=4, spread=False, clock=clock)
    with caplog.at_level(logging.ERROR):
        sched.apply([BoomConfig(name="buggy", type="boom", interval=0.05, timeout=0.05)])
        await clock.advance(0.2)
        sched.apply([BoomConfig(name="buggy", type="boom", interval=0.06, timeout=0.05)])  # changed
        await clock.advance(0.2)
        await sched.aclose()
    assert len([r for r in caplog.records if r.exc_info]) == 2


async def test_a_check_that_ignores_its_timeout_is_cut_off() -> None:
    results: list[CheckResult] = []
    sched = Scheduler(results.append, AgentMetrics(), concurrency=4, spread=False)
    sched.apply([sleep_cfg("hang", interval=5, seconds=60, timeout=0.2)])
    await asyncio.sleep(1.0)
    await sched.aclose()
    assert len(results) == 1
    assert (results[0].status, results[0].reason) == (Status.CRITICAL, Reason.TIMEOUT)
    assert 0.7 <= results[0].duration < 0.9  # timeout + the harness's 0.5 s grace


async def test_apply_keeps_unchanged_checks_and_restarts_changed_ones() -> None:
    metrics = AgentMetrics()
    sched = Scheduler(lambda r: None, metrics, concurrency=4)
    sched.apply(
        [sleep_cfg("keep", interval=10), sleep_cfg("change", interval=10), sleep_cfg("drop", interval=10)]
    )
    before = sched.checks
    started, stopped = sched.apply(
        [
            sleep_cfg("keep", interval=10),
            sleep_cfg("change", interval=10, seconds=0.1),
            sleep_cfg("new", interval=10),
        ]
    )
    after = sched.checks
    assert sorted(started) == ["change", "new"]
    assert sorted(stopped) == ["change", "drop"]
    assert after["keep"] is before["keep"]
    assert after["change"] is not before["change"]
    assert sample(metrics, "mamori_checks_configured") == 3
    await asyncio.sleep(0.05)
    assert sorted(SleepCheck.closed) == ["change", "drop"]
    await sched.aclose()
    assert sorted(SleepCheck.closed) == ["change", "change", "drop", "keep", "new"]
    await sched.aclose()  # safe twice


async def test_retries_keep_the_evidence_and_count_every_attempt() -> None:
    from agent.runner import execute
    from tests.agent.fakes import FlakyCheck

    metrics = AgentMetrics()
    results: list[CheckResult] = []
    check = FlakyCheck(
        FlakyCheck.config_model(
            name="flaky", type="flaky", interval=5, timeout=2, retries=3, retry_backoff=0.01, failures=2
        )
    )
    result = await execute(check)
    assert (result.status, result.attempts) == (Status.OK, 3)
    assert result.message == "ok on call 3 (attempt 3; before: refused on call 1; refused on call 2)"

    check = FlakyCheck(
        FlakyCheck.config_model(
            name="down", type="flaky", interval=5, timeout=2, retries=1, retry_backoff=0.01, failures=99
        )
    )
    result = await execute(check)
    assert (result.status, result.reason, result.attempts) == (Status.CRITICAL, Reason.REFUSED, 2)

    sched = Scheduler(results.append, metrics, concurrency=4, spread=False)
    sched.apply(
        [
            FlakyCheck.config_model(
                name="f",
                type="flaky",
                interval=5,
                timeout=2,
                retries=3,
                retry_backoff=0.01,
                failures=1,
            )
        ]
    )
    await asyncio.sleep(0.2)
    await sched.aclose()
    assert [r.attempts for r in results] == [2]
    assert sample(metrics, "mamori_probe_attempts_total", check="f", outcome="failure") == 1
    assert sample(metrics, "mamori_probe_attempts_total", check="f", outcome="success") == 1


async def test_retries_stop_when_the_budget_is_spent() -> None:
    from agent.runner import execute
    from tests.agent.fakes import FlakyCheck

    check = FlakyCheck(
        FlakyCheck.config_model(
            name="slowfail", type="flaky", interval=5, timeout=0.5, retries=10, retry_backoff=0.1, failures=99
        )
    )
    result = await execute(check)
    # 0.1 + 0.2 fit in the 0.5 s budget (keeping a tenth of it for the attempt); 0.4 more does not.
    assert result.attempts == 3
    assert result.duration < 0.6


async def test_a_removed_check_is_announced_after_its_last_result_and_its_series_go() -> None:
    # No out-of-band removal: the scheduler cancels the check's task (which can then publish no
    # more), then publishes `CheckRemoved` into the pipeline, behind the check's last result in
    # every sink's queue; the fan-out drops the check's own series from the agent's metrics.
    metrics = AgentMetrics()
    seen: list[CheckResult | CheckRemoved] = []

    class Recorder:
        name = "rec"

        async def consume(self, r: CheckResult) -> None:
            seen.append(r)

        async def remove(self, event: CheckRemoved) -> None:
            seen.append(event)

        async def aclose(self) -> None:
            pass

    fan = FanOut([Recorder()], capacity=100, metrics=metrics)
    sched = Scheduler(fan.publish, metrics, concurrency=4, spread=False, publish_removal=fan.publish)
    sched.apply([sleep_cfg("keep", interval=0.05), sleep_cfg("drop", interval=0.05)])
    await asyncio.sleep(0.12)  # results queued, not yet consumed: the fan-out is not started
    assert sample(metrics, "mamori_check_runs_total", check="drop", status="ok") > 0
    sched.apply([sleep_cfg("keep", interval=0.05)])
    fan.start()
    await asyncio.sleep(0.12)
    await sched.aclose()
    await fan.aclose()
    drops = [x for x in seen if x.check == "drop"]
    assert len(drops) >= 2 and drops[-1] == CheckRemoved("drop")
    assert all(isinstance(x, CheckResult) for x in drops[:-1])
    assert any(isinstance(x, CheckResult) and x.check == "keep" for x in seen[seen.index(drops[-1]) :])
    assert (
        metrics.registry.get_sample_value("mamori_check_runs_total", {"check": "drop", "status": "ok"})
        is None
    )


def _check_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("check:")]


async def test_between_runs_a_check_is_a_timer_and_its_schedule_is_kept(clock: FakeClock) -> None:
    """No task per check while it waits: a run has a task of its own, and the schedule stays on
    the interval's grid (phase kept, no drift from run times)."""
    results: list[CheckResult] = []
    sched = Scheduler(results.append, AgentMetrics(), concurrency=4, spread=False, clock=clock)
    sched.apply([clock_cfg("a", interval=1.0, seconds=0.3), clock_cfg("b", interval=2.0, seconds=0.1)])
    await clock.advance(0.05)  # both running
    assert sorted(t.get_name() for t in _check_tasks()) == ["check:a", "check:b"]
    await clock.advance(0.35)  # both waiting for their next run
    assert _check_tasks() == []
    await clock.advance(4.0)
    starts = [(n, s) for n, s, _ in ClockSleepCheck.log]
    assert [s for n, s in starts if n == "a"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [s for n, s in starts if n == "b"] == [0.0, 2.0, 4.0]
    await sched.aclose()
    assert _check_tasks() == []


async def test_a_check_removed_while_waiting_or_running_never_runs_again(clock: FakeClock) -> None:
    removed: list[CheckRemoved] = []
    results: list[CheckResult] = []
    sched = Scheduler(
        results.append,
        AgentMetrics(),
        concurrency=4,
        spread=False,
        clock=clock,
        publish_removal=removed.append,
    )
    sched.apply([clock_cfg("waiting", interval=1, seconds=0.1), clock_cfg("running", interval=1, seconds=1)])
    await clock.advance(0.3)  # "waiting" ran and waits for 1.0; "running" is in its first run
    assert [r.check for r in results] == ["waiting"]
    sched.apply([])
    await clock.advance(3.0)
    assert [r.check for r in results] == ["waiting"]  # the cancelled run published nothing
    assert [e.check for e in removed] == ["waiting", "running"]
    assert [n for n, _, _ in ClockSleepCheck.log] == ["waiting"]
    assert _check_tasks() == []
    await sched.aclose()


async def test_aclose_cancels_runs_and_timers_and_is_safe_twice(clock: FakeClock) -> None:
    results: list[CheckResult] = []
    sched = Scheduler(results.append, AgentMetrics(), concurrency=4, spread=False, clock=clock)
    sched.apply([clock_cfg("long", interval=5.0, seconds=2.0), clock_cfg("short", interval=5.0, seconds=0.1)])
    await clock.advance(0.5)
    await sched.aclose()
    await sched.aclose()
    await clock.advance(20.0)
    assert [r.check for r in results] == ["short"]
    assert _check_tasks() == []
