"""The agent's own health metrics (scheduler, pipeline, config), in a registry of their own.

Names and help come from `agent.catalog` so the docs table cannot drift from what is emitted.
The per-check counters (runs by status, probe attempts by outcome, errors, skipped runs: 8
series per check) are one `CheckCounters` per check, which keeps its lines rendered as bytes: at
10 000 checks a scrape joins 40 000 bytes objects instead of formatting 80 000 samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

from agent.catalog import AGENT_METRICS
from agent.metrics import (
    CounterFamily,
    GaugeFamily,
    LinesFamily,
    MetricCounter,
    MetricFamily,
    MetricGauge,
    MetricHistogram,
    MetricRegistry,
    escape_label_value,
    go_float,
)
from agent.model import CheckResult, Reason, Status
from agent.statehealth import RECOVERY_REASONS, StateFileHealth

if TYPE_CHECKING:
    from agent.config import AgentSection

_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _help(name: str) -> str:
    return AGENT_METRICS[name].help


def _labels(name: str) -> tuple[str, ...]:
    return AGENT_METRICS[name].labels


def _count(n: int) -> str:
    """A count as `go_float` writes it (`12.0`, from a million on `1.234567e+06`), faster."""
    return f"{n}.0" if n < 1_000_000 else go_float(float(n))


class CheckCounters:
    """One check's own counters and their exposition lines, rendered again whenever a value
    changes (after a run, once: a few microseconds; after a skip), so that a scrape only takes
    references to bytes that never change. Made by `AgentMetrics.check_counters()` when the check
    starts; called from the event loop only."""

    __slots__ = (
        "_label",
        "attempts_failed",
        "attempts_lines",
        "attempts_ok",
        "check",
        "critical",
        "errors",
        "errors_line",
        "ok",
        "runs_lines",
        "skipped",
        "skipped_line",
        "unknown",
        "warning",
    )

    def __init__(self, check: str) -> None:
        self.check = check
        self._label = escape_label_value(check)  # the check's name itself when nothing to escape
        self.ok = self.warning = self.critical = self.unknown = 0
        self.attempts_ok = self.attempts_failed = self.errors = self.skipped = 0
        self._render_runs()
        self._render_errors()
        self._render_skipped()

    def count_run(self, result: CheckResult) -> None:
        status = result.status
        if status is Status.OK:
            self.ok += 1
        elif status is Status.WARNING:
            self.warning += 1
        elif status is Status.CRITICAL:
            self.critical += 1
        else:
            self.unknown += 1
        succeeded = 1 if result.success else 0
        self.attempts_ok += succeeded
        self.attempts_failed += result.attempts - succeeded
        self._render_runs()
        if result.reason is Reason.CHECK_ERROR:
            self.errors += 1
            self._render_errors()

    def count_skipped(self, missed: int) -> None:
        self.skipped += missed
        self._render_skipped()

    # Labels sorted by name, as prometheus_client writes them: `check` comes first in all four.
    def _render_runs(self) -> None:
        c = self._label
        self.runs_lines = (
            f'mamori_check_runs_total{{check="{c}",status="ok"}} {_count(self.ok)}\n'
            f'mamori_check_runs_total{{check="{c}",status="warning"}} {_count(self.warning)}\n'
            f'mamori_check_runs_total{{check="{c}",status="critical"}} {_count(self.critical)}\n'
            f'mamori_check_runs_total{{check="{c}",status="unknown"}} {_count(self.unknown)}\n'
        ).encode()
        self.attempts_lines = (
            f'mamori_probe_attempts_total{{check="{c}",outcome="success"}} {_count(self.attempts_ok)}\n'
            f'mamori_probe_attempts_total{{check="{c}",outcome="failure"}} {_count(self.attempts_failed)}\n'
        ).encode()

    def _render_errors(self) -> None:
        c = self._label
        self.errors_line = f'mamori_check_errors_total{{check="{c}"}} {_count(self.errors)}\n'.encode()

    def _render_skipped(self) -> None:
        self.skipped_line = (
            f'mamori_scheduler_skipped_runs_total{{check="{self._label}"}} {_count(self.skipped)}\n'
        ).encode()

    def runs_samples(self) -> list[tuple[Sequence[str], float]]:
        c = self.check
        values = (self.ok, self.warning, self.critical, self.unknown)
        return [((c, s.label), v) for s, v in zip(Status, values, strict=True)]

    def attempts_samples(self) -> list[tuple[Sequence[str], float]]:
        return [((self.check, "success"), self.attempts_ok), ((self.check, "failure"), self.attempts_failed)]

    def errors_samples(self) -> list[tuple[Sequence[str], float]]:
        return [((self.check,), self.errors)]

    def skipped_samples(self) -> list[tuple[Sequence[str], float]]:
        return [((self.check,), self.skipped)]


class AgentMetrics:
    """Instruments shared by the scheduler, the pipeline and the runtime. One per agent."""

    def __init__(self, registry: MetricRegistry | None = None) -> None:
        self.registry = registry or MetricRegistry()
        r = self.registry

        def counter(name: str) -> MetricCounter:
            return MetricCounter(name, _help(name), _labels(name), r)

        def gauge(name: str) -> MetricGauge:
            return MetricGauge(name, _help(name), _labels(name), r)

        checks: dict[str, CheckCounters] = {}
        self._checks = checks
        # attrgetter: the loop's snapshot maps it over every check (4 x 10 000 calls at 10 000
        # checks), half the time of a Python function.

        def per_check(
            name: str,
            lines: Callable[[CheckCounters], bytes],
            samples: Callable[[CheckCounters], Iterable[tuple[Sequence[str], float]]],
        ) -> LinesFamily[CheckCounters]:
            return LinesFamily(name, _help(name), "counter", _labels(name), checks, lines, samples, r)

        self.start_time = gauge("mamori_agent_start_time_seconds")
        self.checks_configured = gauge("mamori_checks_configured")
        self.runs = per_check("mamori_check_runs_total", attrgetter("runs_lines"), CheckCounters.runs_samples)
        # Not per check: probe_duration_seconds already gives each check's last run time, and a
        # per-check histogram would be most of a scrape (17 lines per check).
        self.run_duration = MetricHistogram(
            "mamori_check_run_duration_seconds",
            _help("mamori_check_run_duration_seconds"),
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.check_errors = per_check(
            "mamori_check_errors_total", attrgetter("errors_line"), CheckCounters.errors_samples
        )
        self.attempts = per_check(
            "mamori_probe_attempts_total", attrgetter("attempts_lines"), CheckCounters.attempts_samples
        )
        self.lateness = MetricHistogram(
            "mamori_scheduler_lateness_seconds",
            _help("mamori_scheduler_lateness_seconds"),
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.skipped = per_check(
            "mamori_scheduler_skipped_runs_total", attrgetter("skipped_line"), CheckCounters.skipped_samples
        )
        self.running = gauge("mamori_scheduler_running_checks")
        self.queue_depth = gauge("mamori_sink_queue_depth")
        self.queue_capacity = gauge("mamori_sink_queue_capacity")
        self.dropped = counter("mamori_sink_dropped_total")
        self.sink_errors = counter("mamori_sink_errors_total")
        self.reloads = counter("mamori_config_reloads_total")
        self.last_reload = gauge("mamori_config_last_reload_success_timestamp_seconds")
        for outcome in ("success", "failure"):
            self.reloads.labels(outcome=outcome)

    def check_counters(self, name: str) -> CheckCounters:
        """The counters of check `name`, at 0 when new; a check restarted with a changed config
        gets its counters back (they keep counting, as counters must)."""
        counters = self._checks.get(name)
        if counters is None:
            counters = self._checks[name] = CheckCounters(name)
        return counters

    def forget_check(self, name: str) -> None:
        """Drop per-check series of a check removed from the config. Safe for an unknown name."""
        self._checks.pop(name, None)


class AgentInfoCollector:
    """`mamori_agent_info`: name, version and the configured labels, read at scrape time so a
    reload that changes the labels is reflected at once."""

    def __init__(self, section: Callable[[], AgentSection], version: str) -> None:
        self._section = section
        self._version = version

    def collect(self) -> Iterator[MetricFamily]:
        section = self._section()
        labels = {**section.labels, "agent": section.name, "version": self._version}
        family = GaugeFamily("mamori_agent_info", _help("mamori_agent_info"), labels=list(labels))
        family.add_metric(list(labels.values()), 1.0)
        yield family


class StateFileCollector:
    """`mamori_durability_degraded` and `mamori_state_file_recovered_total` of the agent's state
    files, read at scrape time."""

    def __init__(self, files: Callable[[], Iterable[StateFileHealth]]) -> None:
        self._files = files

    def collect(self) -> Iterator[MetricFamily]:
        name = "mamori_durability_degraded"
        degraded = GaugeFamily(name, AGENT_METRICS[name].help, labels=["file"])
        name = "mamori_state_file_recovered_total"
        recovered = CounterFamily(name, AGENT_METRICS[name].help, labels=["file", "reason"])
        for health in sorted(self._files(), key=lambda h: str(h.path)):
            degraded.add_metric([str(health.path)], 1.0 if health.degraded else 0.0)
            for reason in RECOVERY_REASONS:
                recovered.add_metric([str(health.path), reason], float(health.recovered[reason]))
        yield degraded
        yield recovered
