"""The per-check counters (agent/telemetry.py `CheckCounters`): their values after runs, skips,
errors, a reload and a removal; their lines, kept as bytes, are exactly what prometheus_client
renders for the same values and what promtool accepts; a snapshot never sees a later run."""

from __future__ import annotations

import shutil
import subprocess

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.catalog import AGENT_METRICS
from agent.metrics import render_snapshot
from agent.model import CheckRemoved, CheckResult, Reason, Status
from agent.scheduler import Scheduler
from agent.telemetry import AgentMetrics
from checks import REGISTRY
from tests.agent.fakeclock import ClockSleepCheck, ClockSleepConfig, FakeClock

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

NASTY = ["plain", 'with "quotes"', "back\\slash", "new\nline", "ünïcode ✓", "", "a,b=c}"]
FAMILIES = (
    "mamori_check_runs_total",
    "mamori_check_errors_total",
    "mamori_probe_attempts_total",
    "mamori_scheduler_skipped_runs_total",
)


def run(check: str, status: Status, attempts: int = 1, reason: Reason = Reason.OK) -> CheckResult:
    return CheckResult(
        check=check,
        check_type="tcp",
        target="127.0.0.1:1",
        status=status,
        started_at=1.0,
        duration=0.001,
        reason=reason,
        attempts=attempts,
    )


def per_check(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The per-check series rendered by the registry, parsed back."""
    out = {}
    for family in text_string_to_metric_families(metrics.registry.render()):
        for s in family.samples:
            if s.name in FAMILIES:
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_values_after_runs_errors_and_skips() -> None:
    metrics = AgentMetrics()
    c = metrics.check_counters("db")
    assert metrics.check_counters("db") is c
    c.count_run(run("db", Status.OK))
    c.count_run(run("db", Status.CRITICAL, attempts=3))
    c.count_run(run("db", Status.UNKNOWN, reason=Reason.CHECK_ERROR))
    c.count_skipped(2)
    c.count_skipped(1)
    assert per_check(metrics) == {
        ("mamori_check_runs_total", (("check", "db"), ("status", "ok"))): 1.0,
        ("mamori_check_runs_total", (("check", "db"), ("status", "warning"))): 0.0,
        ("mamori_check_runs_total", (("check", "db"), ("status", "critical"))): 1.0,
        ("mamori_check_runs_total", (("check", "db"), ("status", "unknown"))): 1.0,
        ("mamori_check_errors_total", (("check", "db"),)): 1.0,
        ("mamori_probe_attempts_total", (("check", "db"), ("outcome", "success"))): 1.0,
        ("mamori_probe_attempts_total", (("check", "db"), ("outcome", "failure"))): 4.0,
        ("mamori_scheduler_skipped_runs_total", (("check", "db"),)): 3.0,
    }
    # collect() (tests, the CLI) reads the same values as the cached lines show.
    get = metrics.registry.get_sample_value
    assert get("mamori_probe_attempts_total", {"check": "db", "outcome": "failure"}) == 4.0
    assert get("mamori_check_runs_total", {"check": "db", "status": "warning"}) == 0.0


def test_a_removed_check_loses_its_eight_series_and_comes_back_at_zero() -> None:
    metrics = AgentMetrics()
    for name in ("keep", "drop"):
        metrics.check_counters(name).count_run(run(name, Status.OK))
    metrics.forget_check("drop")
    metrics.forget_check("drop")  # safe twice, and for a name never seen
    metrics.forget_check("never")
    series = per_check(metrics)
    assert len(series) == 8 and all(dict(labels)["check"] == "keep" for _, labels in series)
    metrics.check_counters("drop")
    assert (
        metrics.registry.get_sample_value("mamori_check_runs_total", {"check": "drop", "status": "ok"}) == 0.0
    )


def test_the_families_render_as_prometheus_client_does() -> None:
    metrics = AgentMetrics()
    ref = prometheus_client.CollectorRegistry()

    def counter(name: str) -> prometheus_client.Counter:
        spec = AGENT_METRICS[name]
        return prometheus_client.Counter(name.removesuffix("_total"), spec.help, spec.labels, registry=ref)

    runs, errors, attempts, skipped = (counter(name) for name in FAMILIES)
    for i, name in enumerate([*NASTY, "gone"]):
        ours = metrics.check_counters(name)
        for status in Status:
            runs.labels(name, status.label)
        attempts.labels(name, "success")
        attempts.labels(name, "failure")
        errors.labels(name)
        skipped.labels(name)
        for k in range(i + 1):
            status = Status(k % 4)
            error = k % 3 == 2
            result = run(name, status, attempts=k + 1, reason=Reason.CHECK_ERROR if error else Reason.OK)
            ours.count_run(result)
            runs.labels(name, status.label).inc()
            succeeded = 1 if result.success else 0
            attempts.labels(name, "success").inc(succeeded)
            attempts.labels(name, "failure").inc(result.attempts - succeeded)
            if error:
                errors.labels(name).inc()
        missed = 10**i + 1234567 * (i % 2)  # from 1e6 on, Go's exponent form
        ours.count_skipped(missed)
        skipped.labels(name).inc(missed)
    metrics.forget_check("gone")
    for status in Status:
        runs.remove("gone", status.label)
    attempts.remove("gone", "success")
    attempts.remove("gone", "failure")
    errors.remove("gone")
    skipped.remove("gone")
    expected = prometheus_client.generate_latest(ref).decode()
    ours_families = (metrics.runs, metrics.check_errors, metrics.attempts, metrics.skipped)
    assert render_snapshot([f.freeze() for f in ours_families]) == expected


def test_a_snapshot_taken_before_a_run_is_not_changed_by_it() -> None:
    metrics = AgentMetrics()
    c = metrics.check_counters("web")
    c.count_run(run("web", Status.OK))
    before = metrics.registry.snapshot()
    text = render_snapshot(before)
    c.count_run(run("web", Status.OK, reason=Reason.CHECK_ERROR))
    c.count_skipped(5)
    metrics.check_counters("new").count_run(run("new", Status.OK))
    metrics.forget_check("web")
    assert render_snapshot(before) == text
    assert 'mamori_check_runs_total{check="web",status="ok"} 1.0\n' in text
    assert 'mamori_check_errors_total{check="web"} 0.0\n' in text and "new" not in text


def test_the_own_metrics_with_per_check_counters_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package prometheus (`make test` does)")
    metrics = AgentMetrics()
    for name in NASTY:
        metrics.check_counters(name).count_run(run(name, Status.WARNING, attempts=2))
    text = metrics.registry.render().encode()
    for name in FAMILIES:
        assert text.count(f"# TYPE {name} counter\n".encode()) == 1
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")


async def test_a_changed_check_keeps_counting_and_a_removed_one_is_forgotten() -> None:
    clock = FakeClock()
    ClockSleepCheck.clock = clock
    REGISTRY["clocksleep"] = "tests.agent.fakeclock:ClockSleepCheck"
    metrics = AgentMetrics()

    def removed(event: CheckRemoved) -> None:
        metrics.forget_check(event.check)  # what the fan-out does with a removal

    def cfg(interval: float) -> ClockSleepConfig:
        return ClockSleepConfig(name="c", type="clocksleep", interval=interval, timeout=interval)

    def ok_runs() -> float | None:
        return metrics.registry.get_sample_value("mamori_check_runs_total", {"check": "c", "status": "ok"})

    try:
        sched = Scheduler(lambda r: None, metrics, 4, publish_removal=removed, spread=False, clock=clock)
        sched.apply([cfg(1.0)])
        await clock.advance(2.5)  # runs at 0, 1, 2
        assert ok_runs() == 3.0
        counters = metrics.check_counters("c")
        assert sched.apply([cfg(2.0)]) == (["c"], ["c"])
        await clock.advance(2.5)  # runs at 2.5 (the restart) and 4.5
        assert ok_runs() == 5.0 and metrics.check_counters("c") is counters
        assert len(per_check(metrics)) == 8
        sched.apply([])
        assert ok_runs() is None and per_check(metrics) == {}
        await sched.aclose()
    finally:
        REGISTRY.pop("clocksleep", None)
        ClockSleepCheck.log.clear()
