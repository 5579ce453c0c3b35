"""OCI Monitoring alarms as code: `agentctl oci-alarms apply|plan|diff|list|validate`.

A YAML file (deploy/oci/alarms.yaml) declares alarms on the metrics the OCI exporter pushes
(exporters/oci.py), in MQL. `apply` makes the compartment hold exactly those alarms, keyed by
display name: it creates an alarm no alarm of that name exists for, updates one whose managed
fields differ, and leaves equal ones alone, so a second run writes nothing. Alarms of the
compartment that the file does not name are reported and kept (`--prune` deletes those tagged
`managed-by: mamori`, i.e. that this command created). See docs/oci-alarms.md.

Lifecycle and guarantees:
- The file is validated completely before any request: one `file:line: path: message` per
  problem, like the agent's config (agent/yamldoc.py). The MQL is parsed, and every metric must be
  one the exporter sends (agent/catalog.py's per-check metrics), every dimension one it sends with
  that metric (host, check, target, the metric's labels, and the `dimensions:` the file declares
  for agent labels and static dimensions), and values of closed label sets (reasons, check types,
  lb roles) must exist, since a misspelt one makes an alarm that can never fire.
- Nothing is written before every compartment is listed and checked: a display name the file
  manages that two alarms of the compartment share is refused ("nothing was changed").
- The SDK's own retries and circuit breaker are off (as in exporters/oci.py); each call instead
  gets a bounded retry of its own: 429, 500, 502, 503, 504, timeouts and refused connections are
  retried up to 5 attempts, after `Retry-After` or an exponential backoff with jitter (0.5 s ->
  8 s). Creates carry an `opc-retry-token`, so a retried create never makes a second alarm. Calls
  are paced (`max_tps`, default 5) under the service's 10 requests per second per tenancy across
  all alarm operations. What still fails is one line (exit 1); a run stopped half-way is finished
  by running it again.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TextIO
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from agent import yamldoc
from agent.catalog import AGENT_METRICS, CHECK_METRICS, PER_CHECK_LABELS
from agent.errors import ConfigError, ConfigIssue
from agent.retry import backoff, retry_after_header
from agent.yamldoc import DocumentError, YamlDoc, format_path
from exporters.oci_client import NoRegion, import_sdk, monitoring_client, signer_for

MANAGED_TAG = ("managed-by", "mamori")  # a freeform tag on every alarm this command writes
HOST = "host"  # the dimension the exporter names the agent with (exporters/oci.py)
DEFAULT_MAX_TPS = 5.0
ATTEMPTS = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
VARIABLE_FLAGS = {"OCI_COMPARTMENT_ID": "--compartment OCID", "OCI_TOPIC_ID": "--topic OCID"}


class UsageError(Exception):
    """Bad arguments: agent/cli.py prints the line and exits 3. (Not agent.cli.UsageError:
    `python -m agent.cli` runs cli.py as `__main__`.)"""


class AlarmsError(Exception):
    """Configuration, authentication or service trouble: one line per problem, exit 1."""


# --- MQL ---------------------------------------------------------------------------------------

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
    from agent.model import Reason
    from checks import REGISTRY
    from checks.pg_cluster import READY_REASONS, RECOMMENDED_REASONS
    from exporters.fleet import CHECK_TYPE

    lb_roles = ("lb", "address", "backend")  # checks/lb.py: _Target.role
    out: dict[tuple[str, str], tuple[str, ...]] = {
        ("mamori_check_status", "reason"): tuple(r.value for r in Reason),
        ("mamori_check_status", "type"): (*REGISTRY, CHECK_TYPE),
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


# --- the file ----------------------------------------------------------------------------------

_OCID_COMPARTMENT = re.compile(r"^ocid1\.(compartment|tenancy)\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_OCID_DESTINATION = re.compile(r"^ocid1\.(onstopic|stream)\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_NAMESPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESOURCE_GROUP = re.compile(r"^[A-Za-z][A-Za-z0-9._$-]*$")
_DIMENSION_KEY = re.compile(r"^[\x21-\x7e]{1,256}$")
_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_REGION = re.compile(r"^[a-z]+(-[a-z]+)+-[0-9]+$")
_ALERT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def iso_seconds(text: str) -> int | None:
    """Seconds of an ISO 8601 duration such as PT5M, PT1H30M or P30D; None if not one."""
    m = _ISO.match(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        return None
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def _iso_within(low: int, high: int, span: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        seconds = iso_seconds(value)
        if seconds is None:
            raise ValueError(f"invalid duration {value!r}: ISO 8601, e.g. PT5M or PT1H")
        if not low <= seconds <= high:
            raise ValueError(f"{value} is outside {span}")
        return value

    return check


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


def _compartment(value: str) -> str:
    if not _OCID_COMPARTMENT.match(value):
        raise ValueError(
            f"not a compartment or tenancy OCID: {value!r} (expected ocid1.compartment.<realm>..<id>)"
        )
    return value


def _namespace(value: str) -> str:
    if not _NAMESPACE.match(value):
        raise ValueError(f"invalid namespace {value!r}: a letter, then letters, digits and _")
    if value.lower().startswith(("oci_", "oracle_")):
        raise ValueError(
            f"namespace {value!r}: oci_ and oracle_ are Oracle's; the agent's metrics cannot be there"
        )
    return value


def _resource_group(value: str) -> str:
    if not _RESOURCE_GROUP.match(value):
        raise ValueError(f"invalid resourceGroup {value!r}: a letter, then letters, digits, ., _, - and $")
    return value


def _destinations(value: tuple[str, ...]) -> tuple[str, ...]:
    kinds: list[str] = []
    for item in value:
        m = _OCID_DESTINATION.match(item)
        if m is None:
            raise ValueError(f"{item!r} is not a Notifications topic (ocid1.onstopic.…) or stream OCID")
        kinds.append(m.group(1))
    if len(set(kinds)) != len(kinds):
        raise ValueError("at most one topic and one stream (the service's limit)")
    return value


def _runbook(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"runbook {value!r}: expected an http(s) URL")
    return value


def _display_name(value: str) -> str:
    if value != value.strip() or not value:
        raise ValueError("must not be empty nor start or end with spaces")
    return value


Compartment = Annotated[str, AfterValidator(_compartment)]
OptionalCompartment = Annotated[Compartment | None, BeforeValidator(_empty_is_none)]
PendingDuration = Annotated[str, AfterValidator(_iso_within(60, 3600, "PT1M..PT1H"))]
RepeatDuration = Annotated[str, AfterValidator(_iso_within(60, 30 * 86400, "PT1M..P30D"))]
Severity = Literal["CRITICAL", "ERROR", "WARNING", "INFO"]
MessageFormat = Literal["RAW", "PRETTY_JSON", "ONS_OPTIMIZED"]


class AlarmSpec(BaseModel):
    """One alarm, its keys the API's (camelCase; see CreateAlarmDetails). Defaults come from the
    file's `defaults:` mapping, then from here."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=False)

    display_name: Annotated[str, Field(max_length=255), AfterValidator(_display_name)]
    query: str
    severity: Severity
    compartment_id: Compartment
    metric_compartment_id: OptionalCompartment = None
    """The compartment of the metrics (the exporter's `compartment_id`); default: the alarm's."""
    namespace: Annotated[str, AfterValidator(_namespace)] = "mamori"
    resource_group: Annotated[
        Annotated[str, AfterValidator(_resource_group)] | None, BeforeValidator(_empty_is_none)
    ] = None
    destinations: Annotated[tuple[str, ...], Field(min_length=1), AfterValidator(_destinations)]
    pending_duration: PendingDuration = "PT1M"
    resolution: Literal["1m"] = "1m"
    body: Annotated[str | None, BeforeValidator(_empty_is_none)] = None
    runbook: Annotated[Annotated[str, AfterValidator(_runbook)] | None, BeforeValidator(_empty_is_none)] = (
        None
    )
    mirrors: tuple[Annotated[str, Field(pattern=_ALERT_NAME.pattern)], ...] = ()
    """The Prometheus alerts (alerts/rules/*.yml) this alarm mirrors; documentation only."""
    message_format: MessageFormat = "RAW"
    repeat_notification_duration: Annotated[RepeatDuration | None, BeforeValidator(_empty_is_none)] = None
    is_notifications_per_metric_dimension_enabled: bool = False
    is_enabled: bool = True

    @field_validator("query")
    @classmethod
    def _query(cls, value: str, info: ValidationInfo) -> str:
        context = info.context if isinstance(info.context, Mapping) else {}
        check_query(value, context.get("dimensions", ()))
        return normalize_query(value)

    @property
    def alarm_body(self) -> str | None:
        """The notification body: `body`, then the runbook link."""
        parts = [
            p for p in ((self.body or "").strip(), f"Runbook: {self.runbook}" if self.runbook else "") if p
        ]
        return "\n\n".join(parts) or None

    def details(self) -> dict[str, Any]:
        """The SDK's CreateAlarmDetails keyword arguments (None: not sent)."""
        return {
            "display_name": self.display_name,
            "compartment_id": self.compartment_id,
            "metric_compartment_id": self.metric_compartment_id or self.compartment_id,
            "namespace": self.namespace,
            "resource_group": self.resource_group,
            "query": self.query,
            "resolution": self.resolution,
            "pending_duration": self.pending_duration,
            "severity": self.severity,
            "body": self.alarm_body,
            "is_notifications_per_metric_dimension_enabled": (
                self.is_notifications_per_metric_dimension_enabled
            ),
            "message_format": self.message_format,
            "destinations": list(self.destinations),
            "repeat_notification_duration": self.repeat_notification_duration,
            "is_enabled": self.is_enabled,
            "freeform_tags": dict([MANAGED_TAG]),
        }


PER_ALARM_ONLY = ("displayName", "query", "mirrors")
_TOP_LEVEL = ("defaults", "dimensions", "alarms")


@dataclass(frozen=True)
class AlarmsFile:
    source: str
    alarms: tuple[AlarmSpec, ...]
    dimensions: tuple[str, ...]

    @property
    def compartments(self) -> list[str]:
        return list(dict.fromkeys(a.compartment_id for a in self.alarms))


def _issue(doc: YamlDoc, file: str, path: yamldoc.Path, message: str) -> ConfigIssue:
    return ConfigIssue(file, doc.line_of(path), format_path(path), message)


def _validation_issues(
    exc: ValidationError,
    doc: YamlDoc,
    file: str,
    index: int,
    own: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> list[ConfigIssue]:
    out = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        key = str(loc[0]) if loc else ""
        # A value the alarm took from `defaults:` is reported there, once for all alarms.
        base: yamldoc.Path = ("defaults",) if key in defaults and key not in own else ("alarms", index)
        path: yamldoc.Path = base + tuple(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
            if key in ("compartmentId", "destinations"):
                message += " (set it in defaults:, usually from ${OCI_COMPARTMENT_ID} / ${OCI_TOPIC_ID})"
        else:
            message = err["msg"].removeprefix("Value error, ")
        out.append(_issue(doc, file, path, message))
    return out


def parse(text: str, file: str, env: Mapping[str, str]) -> AlarmsFile:
    """Validate a whole alarms document; raises ConfigError listing every problem."""
    try:
        doc = yamldoc.load(text, env)
    except DocumentError as exc:
        message = exc.message
        unset = re.match(r"environment variable (\w+) is not set", message)
        if unset:
            name = unset.group(1)
            flag = f"{VARIABLE_FLAGS[name]}, " if name in VARIABLE_FLAGS else ""
            message = (
                f"variable {name} is not set: give {flag}--var {name}=VALUE or set it in the environment"
            )
        raise ConfigError([ConfigIssue(file, exc.line, format_path(exc.path), message)]) from None
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError([_issue(doc, file, (), "expected a mapping with defaults, dimensions and alarms")])
    issues: list[ConfigIssue] = []
    for key in data:
        if key not in _TOP_LEVEL and not key.startswith("x-"):
            issues.append(
                _issue(doc, file, (key,), f"unknown key (expected one of: {', '.join(_TOP_LEVEL)})")
            )
    dimensions: list[str] = []
    raw_dims = data.get("dimensions") or []
    if not isinstance(raw_dims, list):
        issues.append(_issue(doc, file, ("dimensions",), "expected a list of dimension names"))
        raw_dims = []
    for i, name in enumerate(raw_dims):
        if not isinstance(name, str) or not _DIMENSION_KEY.match(name):
            issues.append(
                _issue(
                    doc, file, ("dimensions", i), "a dimension name: 1-256 printable characters, no spaces"
                )
            )
        else:
            dimensions.append(name)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        issues.append(_issue(doc, file, ("defaults",), "expected a mapping of alarm keys"))
        defaults = {}
    for key in defaults:
        if key in PER_ALARM_ONLY:
            issues.append(_issue(doc, file, ("defaults", key), "set per alarm, not in defaults"))
    raw_alarms = data.get("alarms")
    if not isinstance(raw_alarms, list) or not raw_alarms:
        issues.append(_issue(doc, file, ("alarms",), "expected a non-empty list of alarms"))
        raw_alarms = []
    alarms: list[AlarmSpec] = []
    seen: dict[str, int] = {}
    context = {"dimensions": tuple(dimensions)}
    for i, raw in enumerate(raw_alarms):
        if not isinstance(raw, dict):
            issues.append(_issue(doc, file, ("alarms", i), "expected a mapping"))
            continue
        merged = {k: v for k, v in defaults.items() if k not in PER_ALARM_ONLY} | raw
        try:
            alarm = AlarmSpec.model_validate(merged, context=context)
        except ValidationError as exc:
            issues.extend(_validation_issues(exc, doc, file, i, raw, defaults))
            continue
        if alarm.display_name in seen:
            path = ("alarms", i, "displayName")
            first = seen[alarm.display_name]
            issues.append(
                _issue(
                    doc,
                    file,
                    path,
                    f"duplicate displayName {alarm.display_name!r} (first at alarms[{first}])",
                )
            )
        seen.setdefault(alarm.display_name, i)
        alarms.append(alarm)
    if issues:
        raise ConfigError(sorted(dict.fromkeys(issues), key=lambda i: i.line))
    return AlarmsFile(file, tuple(alarms), tuple(dimensions))


def load(path: str | Path, env: Mapping[str, str]) -> AlarmsFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(path), 0, "(file)", f"cannot read: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", "not a UTF-8 text file")]) from None
    return parse(text, str(path), env)


# --- the SDK -----------------------------------------------------------------------------------


def _sdk() -> Any:
    try:
        return import_sdk()
    except ImportError:
        raise AlarmsError("oci-alarms needs the OCI SDK: pip install 'mamori[oci]'") from None


@dataclass(frozen=True)
class Connection:
    """How to reach and authenticate to OCI Monitoring (the alarms API is on `telemetry.<region>`)."""

    auth: Literal["config_file", "instance_principal", "resource_principal"] = "config_file"
    config_file: str = "~/.oci/config"
    profile: str = "DEFAULT"
    region: str | None = None
    endpoint: str | None = None
    timeout: float = 30.0


def make_client(conn: Connection) -> tuple[Any, str]:
    """A MonitoringClient with the SDK's retries and circuit breaker off, and its endpoint.
    Raises AlarmsError (one line, no secret) when the credentials cannot be set up."""
    oci = _sdk()
    try:
        signer, config, region = signer_for(
            oci, conn.auth, config_file=conn.config_file, profile=conn.profile, region=conn.region
        )
    except Exception as exc:  # the SDK's config, key and metadata errors: one line each
        first = (str(exc).splitlines() or [""])[0][:200]
        raise AlarmsError(f"cannot authenticate ({conn.auth}): {type(exc).__name__}: {first}") from None
    try:
        return monitoring_client(
            oci, signer, config, region=region, endpoint=conn.endpoint, timeout=conn.timeout, ingestion=False
        )
    except NoRegion:
        raise AlarmsError(
            "no region: give --region (or set region in the profile of the OCI config file)"
        ) from None


class ApiError(AlarmsError):
    """A call that failed for good. `fatal`: the run stops (authentication, the service still
    throttling or failing after every attempt, unreachable); otherwise only that alarm failed."""

    def __init__(self, message: str, status: int = 0, fatal: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.fatal = fatal


class AlarmsApi:
    """The alarm operations with a bounded retry and pacing of our own (see the module doc).
    Raises only ApiError, never an SDK exception: `oci.pagination` wraps every page in the SDK's
    DEFAULT_RETRY_STRATEGY (8 attempts, up to 10 min) whatever the client says, and would retry an
    SDK error again on top of ours."""

    def __init__(
        self,
        client: Any,
        endpoint: str = "",
        *,
        max_tps: float = DEFAULT_MAX_TPS,
        attempts: int = ATTEMPTS,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.gap = 1.0 / max_tps if max_tps > 0 else 0.0
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.clock = clock
        self.requests = 0
        self.retries = 0
        self._next = 0.0

    def _pace(self) -> None:
        now = self.clock()
        if self._next > now:
            self.sleep(self._next - now)
        self._next = max(now, self._next) + self.gap

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        oci = _sdk()
        for attempt in range(1, self.attempts + 1):
            self._pace()
            self.requests += 1
            try:
                return fn(*args, **kwargs)
            except oci.exceptions.ServiceError as exc:
                status, code = int(exc.status), str(exc.code)
                message = (str(exc.message or "").splitlines() or [""])[0][:300]
                answer = f"{status} {code}: {message} (opc-request-id {exc.request_id or '-'})"
                if status in RETRY_STATUSES and attempt < self.attempts:
                    self._wait(attempt, retry_after_header(exc.headers))
                    continue
                if status == 401:
                    raise ApiError(
                        f"{what}: OCI Monitoring refused the request's signature ({answer}); check the "
                        "API key, its fingerprint, the user and tenancy OCIDs, and this host's clock",
                        status,
                        fatal=True,
                    ) from None
                if status in RETRY_STATUSES:
                    raise ApiError(
                        f"{what}: still {answer} after {self.attempts} attempts; stopped (run again "
                        "later: apply is idempotent)",
                        status,
                        fatal=True,
                    ) from None
                if status == 404:
                    raise ApiError(
                        f"{what}: {answer}: check the compartment OCID and the IAM policy "
                        "(manage alarms in the compartment, read metrics in the metric compartment)",
                        status,
                    ) from None
                raise ApiError(f"{what}: {answer}", status) from None
            except (oci.exceptions.RequestException, oci.exceptions.ConnectTimeout) as exc:
                inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
                if attempt < self.attempts:
                    self._wait(attempt, None)
                    continue
                kind = "timed out" if "Timeout" in type(inner).__name__ else "cannot connect"
                raise ApiError(
                    f"{what}: {kind} ({type(inner).__name__}) to {self.endpoint or 'OCI Monitoring'} "
                    f"after {self.attempts} attempts",
                    fatal=True,
                ) from None
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        self.retries += 1
        if retry_after is not None:
            delay = min(retry_after, MAX_RETRY_AFTER)
        else:
            delay = backoff(attempt, base=self.backoff, cap=self.max_backoff)
        self.sleep(delay)
        self._next = max(self._next, self.clock())

    # --- operations -----------------------------------------------------------------------------
    def list(self, compartment_id: str) -> list[Any]:
        """Every ACTIVE alarm (AlarmSummary) of the compartment, following `opc-next-page`."""
        oci = _sdk()

        def page(*args: Any, **kwargs: Any) -> Any:
            return self.call(
                f"listing the alarms of {compartment_id}", self.client.list_alarms, *args, **kwargs
            )

        response = oci.pagination.list_call_get_all_results(page, compartment_id)
        return list(response.data)

    def get(self, alarm_id: str, name: str) -> tuple[Any, str | None]:
        """The alarm and its etag."""
        response = self.call(f"reading alarm {name!r}", self.client.get_alarm, alarm_id)
        return response.data, response.headers.get("etag")

    def create(self, details: Mapping[str, Any]) -> Any:
        oci = _sdk()
        body = oci.monitoring.models.CreateAlarmDetails(**details)
        token = uuid.uuid4().hex  # the same for every attempt: a retried create is not a second alarm
        name = details["display_name"]
        return self.call(
            f"creating alarm {name!r}", self.client.create_alarm, body, opc_retry_token=token
        ).data

    def update(self, alarm_id: str, details: Mapping[str, Any], etag: str | None) -> Any:
        oci = _sdk()
        body = oci.monitoring.models.UpdateAlarmDetails(**details)
        name = details["display_name"]
        kwargs = {"if_match": etag} if etag else {}
        return self.call(f"updating alarm {name!r}", self.client.update_alarm, alarm_id, body, **kwargs).data

    def delete(self, alarm_id: str, name: str) -> None:
        self.call(f"deleting alarm {name!r}", self.client.delete_alarm, alarm_id)


# --- reconciling -------------------------------------------------------------------------------

# The fields compared with an existing alarm: everything we send but the compartment (the alarm
# was found in it) and the display name (it was found by it).
COMPARED = (
    "metric_compartment_id",
    "namespace",
    "resource_group",
    "query",
    "resolution",
    "pending_duration",
    "severity",
    "body",
    "is_notifications_per_metric_dimension_enabled",
    "message_format",
    "destinations",
    "repeat_notification_duration",
    "is_enabled",
    "freeform_tags",
)


def _same(name: str, want: Any, have: Any) -> bool:
    if want is None:
        return True  # an optional field the file leaves out: whatever the alarm has
    if name == "query":
        return normalize_query(want) == normalize_query(str(have or ""))
    if name in ("pending_duration", "repeat_notification_duration"):
        return have is not None and iso_seconds(want) == iso_seconds(str(have))
    if name == "destinations":
        return sorted(want) == sorted(have or [])
    if name == "freeform_tags":
        return all((have or {}).get(k) == v for k, v in want.items())
    if name == "body":
        return str(want).strip() == str(have or "").strip()
    return bool(want == have)


def differences(desired: Mapping[str, Any], current: Any) -> list[tuple[str, Any, Any]]:
    """(field, current value, desired value) of every managed field that differs."""
    out = []
    for name in COMPARED:
        want, have = desired.get(name), getattr(current, name, None)
        if not _same(name, want, have):
            out.append((name, have, want))
    return out


def _short(value: Any, width: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Summary:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # in the compartment, not in the file
    deleted: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)


_DRY_RUN_VERBS = {"created": "would create", "updated": "would update", "deleted": "would delete"}


class Reconciler:
    """Makes the compartments hold the file's alarms (see the module doc); writes one line per
    alarm to `out`, then a summary."""

    def __init__(self, api: AlarmsApi, out: TextIO, *, dry_run: bool = False, prune: bool = False) -> None:
        self.api = api
        self.out = out
        self.dry_run = dry_run
        self.prune = prune
        self.show_diff = False

    def line(self, action: str, name: str, detail: str = "") -> None:
        verb = _DRY_RUN_VERBS.get(action, action) if self.dry_run else action
        self.out.write(f"{verb:<14} {name}{'  ' + detail if detail else ''}\n")

    def apply(self, spec: AlarmsFile) -> Summary:
        summary = Summary()
        existing = {c: self.api.list(c) for c in spec.compartments}
        wanted: dict[str, set[str]] = {c: set() for c in existing}
        for alarm in spec.alarms:
            wanted[alarm.compartment_id].add(alarm.display_name)
        by_name: dict[str, dict[str, list[Any]]] = {}
        problems = []
        for compartment, summaries in existing.items():
            index: dict[str, list[Any]] = {}
            for s in summaries:
                index.setdefault(s.display_name, []).append(s)
            by_name[compartment] = index
            for name in sorted(wanted[compartment]):
                if len(index.get(name, [])) > 1:
                    ids = ", ".join(s.id for s in index[name])
                    problems.append(
                        f"compartment {compartment} has {len(index[name])} alarms named {name!r} ({ids}): "
                        "delete or rename all but one; nothing was changed"
                    )
        if problems:
            raise AlarmsError("\n".join(problems))
        for alarm in spec.alarms:
            matches = by_name[alarm.compartment_id].get(alarm.display_name, [])
            self._guarded(alarm.display_name, summary, partial(self._one, alarm, matches, summary))
        for compartment, summaries in existing.items():
            for s in summaries:
                if s.display_name not in wanted[compartment]:
                    self._guarded(s.display_name, summary, partial(self._extra, s, summary))
        return summary

    def _guarded(self, name: str, summary: Summary, work: Callable[[], None]) -> None:
        """Run one alarm's work; a refusal for that alarm only (400, 404, 409, 412) is reported
        and the run goes on. A fatal error (401, retries exhausted, unreachable) propagates."""
        try:
            work()
        except ApiError as exc:
            if exc.fatal:
                raise
            summary.failed.append(name)
            self.line("failed", name, str(exc).split(": ", 1)[-1])

    def _one(self, alarm: AlarmSpec, matches: list[Any], summary: Summary) -> None:
        desired = alarm.details()
        if not matches:
            if self.dry_run:
                self.line("created", alarm.display_name)
            else:
                created = self.api.create(desired)
                self.line("created", alarm.display_name, created.id)
            summary.created.append(alarm.display_name)
            return
        current, etag = self.api.get(matches[0].id, alarm.display_name)
        changes = differences(desired, current)
        if not changes:
            self.line("unchanged", alarm.display_name)
            summary.unchanged.append(alarm.display_name)
            return
        names = ", ".join(to_camel(name) for name, _, _ in changes)
        if not self.dry_run:
            update = {k: v for k, v in desired.items() if k != "compartment_id"}
            update["freeform_tags"] = {**(current.freeform_tags or {}), **desired["freeform_tags"]}
            self.api.update(current.id, update, etag)
        self.line("updated", alarm.display_name, f"({names})")
        if self.show_diff:
            for name, have, want in changes:
                self.out.write(f"    {to_camel(name)}: {_short(have)} -> {_short(want)}\n")
        summary.updated.append(alarm.display_name)

    def _extra(self, s: Any, summary: Summary) -> None:
        managed = (s.freeform_tags or {}).get(MANAGED_TAG[0]) == MANAGED_TAG[1]
        if self.prune and managed:
            if not self.dry_run:
                self.api.delete(s.id, s.display_name)
            self.line("deleted", s.display_name, f"{s.id} (not in the file, tagged {'='.join(MANAGED_TAG)})")
            summary.deleted.append(s.display_name)
            return
        why = "not in the file; kept" + (
            f" (--prune deletes it: tagged {'='.join(MANAGED_TAG)})"
            if managed and not self.prune
            else ("" if managed else f" (not tagged {'='.join(MANAGED_TAG)}: never deleted)")
        )
        self.line("kept", s.display_name, f"{s.id} {why}")
        summary.kept.append(s.display_name)


def summary_line(spec: AlarmsFile, summary: Summary, dry_run: bool) -> str:
    n = len(spec.alarms)
    parts = [
        f"{len(summary.created)} {'to create' if dry_run else 'created'}",
        f"{len(summary.updated)} {'to update' if dry_run else 'updated'}",
        f"{len(summary.unchanged)} unchanged",
    ]
    if summary.failed:
        parts.append(f"{len(summary.failed)} failed")
    text = f"{spec.source}: {n} alarm{'s' if n != 1 else ''}: " + ", ".join(parts)
    if summary.deleted:
        text += f"; {len(summary.deleted)} not in the file {'to delete' if dry_run else 'deleted'}"
    if summary.kept:
        kept = len(summary.kept)
        text += f"; {kept} other alarm{'s' if kept != 1 else ''} in the compartment kept"
    if dry_run:
        text += " (dry run: nothing was changed)"
    return text


# --- the command -------------------------------------------------------------------------------


def variables(args: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment, then --var K=V, then --compartment / --topic."""
    env = dict(os.environ if environ is None else environ)
    for item in getattr(args, "var", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--var {item!r}: expected NAME=VALUE")
        env[key] = value
    if getattr(args, "compartment", None):
        env["OCI_COMPARTMENT_ID"] = args.compartment
    if getattr(args, "topic", None):
        env["OCI_TOPIC_ID"] = args.topic
    return env


def connection(args: Any) -> Connection:
    auth: Literal["config_file", "instance_principal", "resource_principal"] = args.auth or "config_file"
    if auth != "config_file" and (args.config_file or args.profile):
        raise UsageError(f"--config-file and --profile are for --auth config_file, not {auth}")
    if args.region and not _REGION.match(args.region):
        raise UsageError(f"--region {args.region!r}: expected a region identifier like ap-tokyo-1")
    endpoint = args.endpoint
    if endpoint is not None:
        parts = urlsplit(endpoint)
        loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
        if (
            parts.scheme not in ("https", "http")
            or not parts.netloc
            or (parts.scheme == "http" and not loopback)
        ):
            raise UsageError(
                f"--endpoint {endpoint!r}: expected https://host[:port] (http only for loopback)"
            )
    return Connection(
        auth=auth,
        config_file=args.config_file or "~/.oci/config",
        profile=args.profile or "DEFAULT",
        region=args.region,
        endpoint=endpoint,
    )


def command(args: Any, out: TextIO) -> int:
    """`agentctl oci-alarms ACTION`. Raises UsageError, ConfigError or AlarmsError."""
    action = args.oci_alarms_action
    env = variables(args)
    spec = load(args.file, env) if getattr(args, "file", None) else None
    if action == "validate":
        assert spec is not None
        names = ", ".join(sorted({c for c in spec.compartments}))
        out.write(f"{spec.source}: OK ({len(spec.alarms)} alarms, compartment {names})\n")
        return 0
    conn = connection(args)
    if action == "list":
        compartments = [args.compartment] if args.compartment else (spec.compartments if spec else [])
        if not compartments:
            raise UsageError("list needs --compartment OCID or -f FILE")
        for c in compartments:
            _compartment_arg(c)
        client, endpoint = make_client(conn)
        api = AlarmsApi(client, endpoint, max_tps=args.max_tps)
        return list_alarms(api, compartments, spec, out)
    assert spec is not None
    client, endpoint = make_client(conn)
    api = AlarmsApi(client, endpoint, max_tps=args.max_tps)
    dry_run = action in ("plan", "diff") or bool(getattr(args, "dry_run", False))
    reconciler = Reconciler(api, out, dry_run=dry_run, prune=bool(getattr(args, "prune", False)))
    reconciler.show_diff = action in ("plan", "diff")
    summary = reconciler.apply(spec)
    out.write(summary_line(spec, summary, dry_run) + "\n")
    return 1 if summary.failed else 0


def _compartment_arg(value: str) -> None:
    if not _OCID_COMPARTMENT.match(value):
        raise UsageError(f"--compartment {value!r}: not a compartment or tenancy OCID")


def list_alarms(api: AlarmsApi, compartments: Sequence[str], spec: AlarmsFile | None, out: TextIO) -> int:
    names = {a.display_name for a in spec.alarms} if spec else set()
    rows = [("DISPLAY NAME", "SEVERITY", "ENABLED", "MANAGED", "IN FILE", "ID")]
    for compartment in compartments:
        for s in sorted(api.list(compartment), key=lambda s: str(s.display_name)):
            managed = (s.freeform_tags or {}).get(MANAGED_TAG[0]) == MANAGED_TAG[1]
            in_file = "yes" if s.display_name in names else ("no" if spec else "-")
            rows.append(
                (
                    s.display_name,
                    s.severity,
                    "yes" if s.is_enabled else "no",
                    "yes" if managed else "no",
                    in_file,
                    s.id,
                )
            )
    if len(rows) == 1:
        out.write(f"no alarms in {', '.join(compartments)}\n")
        return 0
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row[:5], widths, strict=True)]
        out.write("  ".join([*cells, str(row[5])]).rstrip() + "\n")
    return 0
