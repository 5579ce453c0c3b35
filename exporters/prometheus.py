"""The Prometheus sink: keeps the latest result of each check and renders it on scrape.

Metrics are built from the latest results at scrape time (a custom collector), so a check that is
removed from the config disappears from `/metrics` at once, and nothing is kept per scrape.
Every sample gets `check` and `target` labels; help and type come from `agent.catalog`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.catalog import CHECK_METRICS, PER_CHECK_LABELS
from agent.model import CheckResult


class LatestResults:
    """The latest result per check name. Read by /metrics and /api/v1/results."""

    def __init__(self) -> None:
        self._by_check: dict[str, CheckResult] = {}

    def put(self, result: CheckResult) -> None:
        self._by_check[result.check] = result

    def retain(self, names: Iterable[str]) -> None:
        """Forget checks that are no longer configured."""
        keep = set(names)
        for name in list(self._by_check):
            if name not in keep:
                del self._by_check[name]

    def all(self) -> list[CheckResult]:
        return [self._by_check[name] for name in sorted(self._by_check)]

    def get(self, name: str) -> CheckResult | None:
        return self._by_check.get(name)


class PrometheusSink:
    """Pipeline sink feeding `LatestResults`; `collector` renders them for prometheus_client."""

    name = "prometheus"

    def __init__(self, latest: LatestResults) -> None:
        self.latest = latest
        self.collector = ResultsCollector(latest)

    async def consume(self, result: CheckResult) -> None:
        self.latest.put(result)

    async def aclose(self) -> None:
        """Nothing to flush: the latest results live in memory."""


def _family(name: str, labels: list[str]) -> Metric:
    spec = CHECK_METRICS.get(name)
    help_text = spec.help if spec else "Undocumented sample (missing from agent/catalog.py)."
    if spec is not None and spec.type == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


class ResultsCollector(Collector):
    def __init__(self, latest: LatestResults) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        # One family per name: the catalog fixes each name's label set (a test enforces it).
        families: dict[str, Metric] = {}

        def add(name: str, extra: tuple[tuple[str, str], ...], value: float, base: list[str]) -> None:
            family = families.get(name)
            if family is None:
                family = families[name] = _family(name, [*PER_CHECK_LABELS, *(k for k, _ in extra)])
            family.add_metric(base + [v for _, v in extra], value)  # type: ignore[attr-defined]

        for r in self._latest.all():
            base = [r.check, r.target]
            add("probe_success", (), 1.0 if r.success else 0.0, base)
            add("probe_duration_seconds", (), r.duration, base)
            add(
                "mamori_check_status",
                (("type", r.check_type), ("reason", r.reason.value)),
                float(r.status),
                base,
            )
            add("mamori_check_last_run_timestamp_seconds", (), r.started_at, base)
            add("mamori_check_attempts", (), float(r.attempts), base)
            for s in r.samples:
                add(s.name, s.labels, s.value, base)
        yield from families.values()
