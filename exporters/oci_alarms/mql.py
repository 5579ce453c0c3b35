"""MQL, as far as alarms use it: a parser of the alarm query forms OCI documents, and the check
that a query names only metrics and dimensions the OCI exporter sends (agent/catalog.py)."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from agent.catalog import AGENT_METRICS, CHECK_METRICS, PER_CHECK_LABELS

HOST = "host"  # the dimension the exporter names the agent with (exporters/oci.py)


STATISTICS = ("absent", "count", "increment", "last", "max", "mean", "min", "percentile", "rate", "sum")
_METRIC = re.compile(r"[A-Za-z][A-Za-z0-9._$-]*")
_WORD = re.compile(r"[A-Za-z]+")
_DIMENSION = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_INTERVAL = re.compile(r"(\d+)([a-z]+)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_QUOTED = re.compile(r'"[^"\n]*"')
_ARGUMENT = re.compile(r"[^()]*")
_COMPARISON = re.compile(r">=|<=|==|!=|>|<")
_IN = re.compile(r"not\s+in\b|in\b")
_FILTER_OP = re.compile(r"=~|=")
_JOIN = re.compile(r"&&|\|\|")


class MqlError(ValueError):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")


@dataclass(frozen=True)
class Filter:
    dimension: str
    op: str  # "=" or "=~" (alternatives with |, wildcard *)
    value: str
    column: int


@dataclass(frozen=True)
class Source:
    """`metric[interval]{filters}`."""

    metric: str
    interval: str
    filters: tuple[Filter, ...]
    column: int


@dataclass(frozen=True)
class Condition:
    """`source.grouping.statistic() predicate`; a nested one's source is the joined conditions in
    its parentheses (the "alarm portion" of a nested query)."""

    source: Source | tuple[Condition, ...]
    group_by: tuple[str, ...] | None  # None: no grouping function; (): grouping()
    statistic: str
    argument: str
    predicate: str | None  # e.g. ">= 1", "in (1, 2)"
    column: int  # where the statistic is
    group_column: int  # where the grouping function is (= column without one)


class _Parser:
    """A recursive-descent reader of the MQL alarm forms OCI documents:
    `metric[interval]{dim = "v", dim =~ "a|b*"}.groupBy(d, …).statistic() op value`, nested
    `(…).grouping().sum() >= 2`, and joins with `&&` / `||`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, at: int | None = None) -> NoReturn:
        raise MqlError(message, (self.pos if at is None else at) + 1)

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def take(self, literal: str) -> bool:
        self.skip()
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def need(self, literal: str, what: str) -> None:
        if not self.take(literal):
            self.fail(f"expected {what}")

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(0)

    def parse(self) -> tuple[Condition, ...]:
        conditions = self.join()
        self.skip()
        if self.pos < len(self.text):
            self.fail(f"unexpected {self.text[self.pos : self.pos + 12]!r}")
        return conditions

    def join(self) -> tuple[Condition, ...]:
        conditions = [self.condition()]
        while self.match(_JOIN):
            conditions.append(self.condition())
        return tuple(conditions)

    def condition(self) -> Condition:
        self.skip()
        source: Source | tuple[Condition, ...]
        if self.take("("):
            source = self.join()
            self.need(")", "')' closing the nested query")
        else:
            source = self.source()
        self.need(".", "'.' and a statistic such as .max()")
        at = group_at = self.pos
        name = self.match(_WORD) or self.fail("expected a grouping function or a statistic")
        group_by: tuple[str, ...] | None = None
        if name in ("grouping", "groupBy"):
            self.need("(", f"'(' after {name}")
            dims: list[str] = []
            if name == "groupBy":
                while True:
                    dims.append(self.match(_DIMENSION) or self.fail("expected a dimension name in groupBy()"))
                    if not self.take(","):
                        break
            self.need(")", f"')' closing {name}(")
            group_by = tuple(dims)
            self.need(".", "'.' and a statistic after the grouping function")
            at = self.pos
            name = self.match(_WORD) or self.fail("expected a statistic")
        if name not in STATISTICS:
            self.fail(f"unknown statistic {name}() (known: {', '.join(STATISTICS)})", at)
        self.need("(", f"'(' after {name}")
        argument = (self.match(_ARGUMENT) or "").strip()
        self.need(")", f"')' closing {name}(")
        return Condition(source, group_by, name, argument, self.predicate(), at + 1, group_at + 1)

    def source(self) -> Source:
        self.skip()
        at = self.pos
        metric = self.match(_METRIC) or self.fail("expected a metric name")
        self.need("[", "'[' and an interval after the metric name")
        interval_at = self.pos
        interval = self.match(_INTERVAL) or self.fail("expected an interval such as 1m")
        m = _INTERVAL.fullmatch(interval)
        assert m is not None
        n, unit = int(m.group(1)), m.group(2)
        if not ((unit == "m" and 1 <= n <= 60) or (unit == "h" and 1 <= n <= 24) or (unit == "d" and n == 1)):
            self.fail(f"invalid interval [{interval}]: 1m-60m, 1h-24h or 1d", interval_at)
        self.need("]", "']' after the interval")
        filters: list[Filter] = []
        if self.take("{"):
            while True:
                self.skip()
                col = self.pos + 1
                dim = self.match(_DIMENSION) or self.fail("expected a dimension name")
                op = self.match(_FILTER_OP) or self.fail(f"expected = or =~ after {dim}")
                quoted = self.match(_QUOTED) or self.fail(f'expected a "quoted" value for {dim}')
                filters.append(Filter(dim, op, quoted[1:-1], col))
                if not self.take(","):
                    break
            self.need("}", "',' or '}' in the dimension filter")
        return Source(metric, interval, tuple(filters), at + 1)

    def predicate(self) -> str | None:
        op = self.match(_COMPARISON)
        if op:
            value = self.match(_NUMBER) or self.fail(f"expected a number after {op}")
            return f"{op} {value}"
        word = self.match(_IN)
        if word:
            self.need("(", f"'(' after {word}")
            low = self.match(_NUMBER) or self.fail("expected a number")
            self.need(",", "','")
            high = self.match(_NUMBER) or self.fail("expected a number")
            self.need(")", "')'")
            return f"{' '.join(word.split())} ({low}, {high})"
        return None


def _known_values() -> dict[tuple[str, str], tuple[str, ...]]:
    """(metric, dimension) -> every value the agent ever sends, for the closed label sets."""
    from agent.catalog import CHECK_TYPES, READY_REASONS, RECOMMENDED_REASONS
    from agent.model import Reason

    lb_roles = ("lb", "address", "backend")  # checks/lb.py: _Target.role
    out: dict[tuple[str, str], tuple[str, ...]] = {
        ("mamori_check_status", "reason"): tuple(r.value for r in Reason),
        ("mamori_check_status", "type"): CHECK_TYPES,
        ("mamori_pg_failover_ready", "reason"): READY_REASONS,
        ("mamori_pg_failover_recommended", "reason"): RECOMMENDED_REASONS,
    }
    for name, spec in CHECK_METRICS.items():
        if "role" in spec.labels and spec.source == "lb":
            out[(name, "role")] = lb_roles
    return out


def _dimensions_of(metric: str, extra: Iterable[str]) -> frozenset[str]:
    return frozenset((HOST, *PER_CHECK_LABELS, *CHECK_METRICS[metric].labels, *extra))


def check_query(query: str, extra_dimensions: Iterable[str] = ()) -> None:
    """Raise ValueError (one line) unless `query` is an alarm query on metrics the OCI exporter
    sends, with dimensions it sends with them."""
    conditions = _Parser(query).parse()
    known = _known_values()
    extra = frozenset(extra_dimensions)
    for cond in conditions:
        _check_condition(cond, extra, known, alarm=True)


def _check_condition(
    cond: Condition,
    extra: frozenset[str],
    known: Mapping[tuple[str, str], tuple[str, ...]],
    alarm: bool,
) -> frozenset[str]:
    """The dimensions of the condition's result; raises MqlError."""
    if isinstance(cond.source, Source):
        src = cond.source
        if src.metric not in CHECK_METRICS:
            hint = (
                "an agent metric: the OCI exporter sends only per-check metrics"
                if src.metric in AGENT_METRICS
                else "not a per-check metric of agent/catalog.py (docs/metrics.md)"
            )
            close = difflib.get_close_matches(src.metric, list(CHECK_METRICS), n=1)
            if close and src.metric not in AGENT_METRICS:
                hint += f"; did you mean {close[0]}?"
            raise MqlError(f"unknown metric {src.metric!r}: {hint}", src.column)
        available = _dimensions_of(src.metric, extra)
        for f in src.filters:
            if f.dimension not in available:
                raise MqlError(
                    f"{src.metric} has no dimension {f.dimension!r} (it has: {', '.join(sorted(available))})",
                    f.column,
                )
            values = known.get((src.metric, f.dimension))
            if values is not None:
                _check_values(src.metric, f, values)
    else:
        results = [_check_condition(inner, extra, known, alarm=True) for inner in cond.source]
        available = frozenset.intersection(*results)
    if cond.group_by is not None:
        for dim in cond.group_by:
            if dim not in available:
                what = "the nested query's result" if not isinstance(cond.source, Source) else "the metric"
                has = ", ".join(sorted(available)) or "-"
                raise MqlError(
                    f"groupBy({dim}): not a dimension of {what} (it has: {has})", cond.group_column
                )
    if cond.statistic == "percentile":
        try:
            ok = 0 < float(cond.argument) < 1
        except ValueError:
            ok = False
        if not ok:
            raise MqlError("percentile() takes a number between 0 and 1, e.g. percentile(0.9)", cond.column)
    elif cond.statistic == "absent":
        if cond.argument and not re.fullmatch(r"\d+", cond.argument):
            raise MqlError("absent() takes nothing or an absence detection period in hours", cond.column)
        if cond.predicate is not None:
            raise MqlError("absent() is a condition by itself: no comparison after it", cond.column)
    elif cond.argument:
        raise MqlError(f"{cond.statistic}() takes no argument", cond.column)
    if alarm and cond.predicate is None and cond.statistic != "absent":
        raise MqlError(
            f"{cond.statistic}() needs a comparison (e.g. > 0, in (1, 2)) or absent() for an alarm",
            cond.column,
        )
    return frozenset(cond.group_by) if cond.group_by is not None else available


def _check_values(metric: str, f: Filter, values: tuple[str, ...]) -> None:
    alternatives = f.value.split("|") if f.op == "=~" else [f.value]
    for alt in alternatives:
        wild = f.op == "=~" and "*" in alt
        if (wild and not fnmatch.filter(values, alt)) or (not wild and alt not in values):
            raise MqlError(
                f"{metric}{{{f.dimension}}} is never {alt!r}, so the alarm could never fire "
                f"(values: {', '.join(values)})",
                f.column,
            )


def normalize_query(query: str) -> str:
    """Whitespace runs as one space: the form sent and compared."""
    return " ".join(query.split())
