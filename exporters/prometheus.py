"""The Prometheus sink: keeps the latest result of each check and renders it on scrape.

Each result is rendered to text-format lines once, when it arrives; a scrape only joins the
stored lines, grouped by metric family in catalog order. A result is immutable and replaced
whole by the next one, so the cache cannot go stale, and a check removed from the config
disappears from `/metrics` when its removal (`CheckRemoved`) reaches this sink, after its last
queued result. Every sample gets `check` and `target` labels; help and type
come from `agent.catalog`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from agent.catalog import CHECK_METRICS, PER_CHECK_LABELS
from agent.model import CheckRemoved, CheckResult
from exporters.samples import flatten

_UNDOCUMENTED = "Undocumented sample (missing from agent/catalog.py)."
_ORDER = {name: i for i, name in enumerate(CHECK_METRICS)}
LAST_RUN = "mamori_check_last_run_timestamp_seconds"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _line(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {_number(value)}\n"


def render_result(r: CheckResult) -> dict[str, list[str]]:
    """The exposition lines of one result, by metric name: the series every metrics exporter
    sends (`flatten`), plus the time of the run, which a pushed sample carries as its timestamp."""
    out: dict[str, list[str]] = {}
    for s in flatten(r):
        out.setdefault(s.name, []).append(_line(s.name, s.labels, s.value))
    base = tuple(zip(PER_CHECK_LABELS, (r.check, r.target), strict=True))
    out[LAST_RUN] = [_line(LAST_RUN, base, r.started_at)]
    return out


class LatestResults:
    """The latest result per check name, with its rendered exposition lines.

    A check a reload removed is forgotten when its removal arrives (`forget()`), which the
    pipeline delivers after the check's last queued result, so nothing brings its series back; a
    result that arrives later is of the check configured again."""

    def __init__(self) -> None:
        self._by_check: dict[str, tuple[CheckResult, dict[str, list[str]]]] = {}

    def put(self, result: CheckResult) -> None:
        self._by_check[result.check] = (result, render_result(result))

    def forget(self, name: str) -> None:
        self._by_check.pop(name, None)

    def all(self) -> list[CheckResult]:
        return [self._by_check[name][0] for name in sorted(self._by_check)]

    def get(self, name: str) -> CheckResult | None:
        entry = self._by_check.get(name)
        return None if entry is None else entry[0]

    def exposition(self) -> str:
        """Prometheus text format (0.0.4) for every latest result."""
        families: dict[str, list[str]] = {}
        for name in sorted(self._by_check):
            for metric, lines in self._by_check[name][1].items():
                families.setdefault(metric, []).extend(lines)
        parts: list[str] = []
        for metric in sorted(families, key=lambda m: (_ORDER.get(m, len(_ORDER)), m)):
            spec = CHECK_METRICS.get(metric)
            parts.append(f"# HELP {metric} {spec.help if spec else _UNDOCUMENTED}\n")
            parts.append(f"# TYPE {metric} {spec.type if spec else 'untyped'}\n")
            parts.extend(families[metric])
        return "".join(parts)


class PrometheusSink:
    """Pipeline sink feeding `LatestResults`."""

    name = "prometheus"

    def __init__(self, latest: LatestResults) -> None:
        self.latest = latest

    async def consume(self, result: CheckResult) -> None:
        self.latest.put(result)

    async def remove(self, event: CheckRemoved) -> None:
        self.latest.forget(event.check)

    async def aclose(self) -> None:
        """Nothing to flush: the latest results live in memory."""
