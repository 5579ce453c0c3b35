"""The agent's own health metrics (scheduler, pipeline, config), in a registry of their own.

Names and help come from `agent.catalog` so the docs table cannot drift from what is emitted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from agent.catalog import AGENT_METRICS
from agent.metrics import (
    CounterFamily,
    GaugeFamily,
    MetricCounter,
    MetricFamily,
    MetricGauge,
    MetricHistogram,
    MetricRegistry,
)
from agent.statehealth import RECOVERY_REASONS, StateFileHealth

if TYPE_CHECKING:
    from agent.config import AgentSection

_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _help(name: str) -> str:
    return AGENT_METRICS[name].help


def _labels(name: str) -> tuple[str, ...]:
    return AGENT_METRICS[name].labels


class AgentMetrics:
    """Instruments shared by the scheduler, the pipeline and the runtime. One per agent."""

    def __init__(self, registry: MetricRegistry | None = None) -> None:
        self.registry = registry or MetricRegistry()
        r = self.registry

        def counter(name: str) -> MetricCounter:
            return MetricCounter(name, _help(name), _labels(name), r)

        def gauge(name: str) -> MetricGauge:
            return MetricGauge(name, _help(name), _labels(name), r)

        self.start_time = gauge("mamori_agent_start_time_seconds")
        self.checks_configured = gauge("mamori_checks_configured")
        self.runs = counter("mamori_check_runs_total")
        # Not per check: probe_duration_seconds already gives each check's last run time, and a
        # per-check histogram would be most of a scrape (17 lines per check).
        self.run_duration = MetricHistogram(
            "mamori_check_run_duration_seconds",
            _help("mamori_check_run_duration_seconds"),
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.check_errors = counter("mamori_check_errors_total")
        self.attempts = counter("mamori_probe_attempts_total")
        self.lateness = MetricHistogram(
            "mamori_scheduler_lateness_seconds",
            _help("mamori_scheduler_lateness_seconds"),
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.skipped = counter("mamori_scheduler_skipped_runs_total")
        self.running = gauge("mamori_scheduler_running_checks")
        self.queue_depth = gauge("mamori_sink_queue_depth")
        self.queue_capacity = gauge("mamori_sink_queue_capacity")
        self.dropped = counter("mamori_sink_dropped_total")
        self.sink_errors = counter("mamori_sink_errors_total")
        self.reloads = counter("mamori_config_reloads_total")
        self.last_reload = gauge("mamori_config_last_reload_success_timestamp_seconds")
        for outcome in ("success", "failure"):
            self.reloads.labels(outcome=outcome)

    def forget_check(self, name: str) -> None:
        """Drop per-check series of a check removed from the config."""
        for metric in (self.check_errors, self.skipped):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        for status in ("ok", "warning", "critical", "unknown"):
            with contextlib.suppress(KeyError):
                self.runs.remove(name, status)
        for outcome in ("success", "failure"):
            with contextlib.suppress(KeyError):
                self.attempts.remove(name, outcome)


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
