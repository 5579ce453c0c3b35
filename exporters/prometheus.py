"""The Prometheus sink: keeps the latest result of each check and renders it on scrape.

Each result is rendered to text-format lines once, when it arrives; a scrape only joins the
stored lines, grouped by metric family in catalog order. `snapshot()` freezes the latest result
of every check at one moment (a copy of one dict, on the event loop), and `ExpositionSnapshot.text()`
joins it anywhere (the server does it in a worker thread): a result arriving meanwhile is in the
next scrape, never lost and never twice. A result is immutable and replaced
whole by the next one, so the cache cannot go stale, and a check removed from the config
disappears from `/metrics` when its removal (`CheckRemoved`) reaches this sink, after its last
queued result. Every sample gets `check` and `target` labels; help and type
come from `agent.catalog`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from agent.catalog import CHECK_METRICS, PER_CHECK_LABELS
from agent.history import History
from agent.model import CheckRemoved, CheckResult
from exporters.samples import series

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


def _prefix(r: CheckResult) -> str:
    """The start of the label set of each of a check's series: `{check="…",target="…"`."""
    base = zip(PER_CHECK_LABELS, (r.check, r.target), strict=True)
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in base)


@functools.lru_cache(maxsize=4096)
def _suffix(labels: tuple[tuple[str, str], ...]) -> str:
    """The rest of a label set after the check's prefix, with the closing brace: a sample's own
    labels come from a small vocabulary (phases, a status's type and reason), so each is
    rendered once, not once per result."""
    return "".join(f',{k}="{_escape(v)}"' for k, v in labels) + "} "


def _lines(r: CheckResult, prefix: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, labels, value in series(r):
        # `value - value` is 0.0 only for a finite number: the rest is spelled the Prometheus way.
        number = repr(float(value)) if value - value == 0 else _number(value)
        line = f"{name}{prefix}{_suffix(labels)}{number}\n"
        if (lines := out.get(name)) is None:
            out[name] = [line]
        else:
            lines.append(line)
    out[LAST_RUN] = [f"{LAST_RUN}{prefix}}} {_number(r.started_at)}\n"]
    return out


def render_result(r: CheckResult) -> dict[str, list[str]]:
    """The exposition lines of one result, by metric name: the series every metrics exporter
    sends (`series`, as `flatten` gives them), plus the time of the run, which a pushed sample
    carries as its timestamp."""
    return _lines(r, _prefix(r))


# A result's lines: the metric names (in exposition order; one tuple shared by every result
# with the same names) and, for each, that result's lines of it as bytes.
_Rendered = tuple[tuple[str, ...], tuple[bytes, ...]]
# The metric names of a result in the order it gives them -> in exposition order (interned).
_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _family_key(metric: str) -> tuple[int, str]:
    return (_ORDER.get(metric, len(_ORDER)), metric)


def _rendered(result: CheckResult, prefix: str) -> _Rendered:
    lines = _lines(result, prefix)
    given = tuple(lines)
    keys = _KEYS.get(given)
    if keys is None:
        keys = tuple(sorted(given, key=_family_key))
        keys = _KEYS.setdefault(given, _KEYS.setdefault(keys, keys))
    return keys, tuple("".join(lines[k]).encode() for k in keys)


class ExpositionSnapshot:
    """The rendered latest results of every check at one moment; immutable, so `body()` is safe
    in any thread."""

    def __init__(self, names: tuple[str, ...], rendered: dict[str, _Rendered]) -> None:
        self._names = names
        self._rendered = rendered

    def body(self) -> bytes:
        """Prometheus text format (0.0.4), grouped by family, each in check name order."""
        return b"".join(self.parts())

    def parts(self) -> list[bytes]:
        """`body()` in pieces, to be joined."""
        families: dict[str, list[tuple[bytes, ...]]] = {}
        # Checks with the same metrics (of one type, mostly) come in runs: a run's lines are
        # transposed into families at once.
        run_keys: tuple[str, ...] = ()
        run: list[tuple[bytes, ...]] = []
        for name in self._names:
            keys, texts = self._rendered[name]
            if keys is not run_keys:
                _add_run(families, run_keys, run)
                run_keys, run = keys, []
            run.append(texts)
        _add_run(families, run_keys, run)
        parts: list[bytes] = []
        for metric in sorted(families, key=_family_key):
            spec = CHECK_METRICS.get(metric)
            parts.append(f"# HELP {metric} {spec.help if spec else _UNDOCUMENTED}\n".encode())
            parts.append(f"# TYPE {metric} {spec.type if spec else 'untyped'}\n".encode())
            for column in families[metric]:
                parts.extend(column)
        return parts

    def text(self) -> str:
        return self.body().decode()


def _add_run(
    families: dict[str, list[tuple[bytes, ...]]], keys: tuple[str, ...], run: list[tuple[bytes, ...]]
) -> None:
    if not run:
        return
    for metric, column in zip(keys, zip(*run, strict=True), strict=True):
        families.setdefault(metric, []).append(column)


class LatestResults:
    """The latest result per check name, with its rendered exposition lines.

    A check a reload removed is forgotten when its removal arrives (`forget()`), which the
    pipeline delivers after the check's last queued result, so nothing brings its series back; a
    result that arrives later is of the check configured again. `history` keeps each check's
    recent statuses (agent/history.py) for the status page and `/api/v1/results`, forgotten with
    the check."""

    def __init__(self) -> None:
        # name -> (latest result, its rendered lines, the label prefix of its check and target)
        self._by_check: dict[str, tuple[CheckResult, _Rendered, str]] = {}
        self._names: tuple[str, ...] | None = ()  # sorted; None when a check came or went
        self.version = 0  # changes whenever a result arrives or a check is forgotten
        self.history = History()  # the recent statuses of each check (the status page)

    def put(self, result: CheckResult) -> None:
        entry = self._by_check.get(result.check)
        if entry is None:
            self._names = None
        # The prefix is the check's and its target's: kept while they stay, built anew on a change.
        prefix = entry[2] if entry is not None and entry[0].target == result.target else _prefix(result)
        self._by_check[result.check] = (result, _rendered(result, prefix), prefix)
        self.history.add(result)
        self.version += 1

    def forget(self, name: str) -> None:
        if self._by_check.pop(name, None) is not None:
            self.history.forget(name)
            self._names = None
            self.version += 1

    def _sorted_names(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(sorted(self._by_check))
        return self._names

    def snapshot(self) -> ExpositionSnapshot:
        """Every check's latest rendered result now (cheap: one dict copy)."""
        return ExpositionSnapshot(
            self._sorted_names(), {name: entry[1] for name, entry in self._by_check.items()}
        )

    def all(self) -> list[CheckResult]:
        return [self._by_check[name][0] for name in self._sorted_names()]

    def get(self, name: str) -> CheckResult | None:
        entry = self._by_check.get(name)
        return None if entry is None else entry[0]

    def exposition(self) -> str:
        """Prometheus text format (0.0.4) for every latest result."""
        return self.snapshot().text()


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
