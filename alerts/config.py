"""The `alerts:` config section: rules, routes, maintenance windows and fatigue controls.

Everything is validated at load (frozen models, unknown keys rejected): templates may only use
known fields, time zones must exist, windows must be complete. Notifier names in `routes` are
checked against the configured notifiers with `validate_routes()`, and the checks that rules and
the connectivity guard name against the configured checks with `validate_targets()`, which the
agent config calls once the sections they need are loaded.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import operator
import re
import string
import zoneinfo
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent.fields import Duration, Model, parse_duration
from agent.model import CheckResult, Reason, Status
from alerts.model import Severity

SUMMARY_FIELDS = frozenset({"check", "target", "reason", "message", "value", "agent"})
NETWORK_DOWN_RULE = "agent_network_down"
# Reasons that mean "could not reach it at all": the connectivity guard counts only these.
CONNECTION_REASONS = frozenset({Reason.DNS, Reason.REFUSED, Reason.UNREACHABLE, Reason.TIMEOUT})

Delay = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
"""Seconds, like `Duration`, but 0 is allowed (`for: 0` fires at once)."""

Op = Literal[">", ">=", "<", "<=", "==", "!="]
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name like Asia/Tokyo or UTC") from None


def glob_match(patterns: Iterable[str], value: str) -> bool:
    """True if `value` matches any of the shell-style `patterns` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


class RuleVerdict:
    """What one rule says about one result: bad (with the offending value), good, or no data."""

    __slots__ = ("bad", "value")

    def __init__(self, bad: bool | None, value: str = "") -> None:
        self.bad = bad  # None: the result says nothing about this rule (sample missing)
        self.value = value


class AlertRule(Model):
    """One alerting rule, applied to every check it matches (by name/glob and/or tag).

    The condition is either on the check's status (`status`, optionally narrowed by `reason`) or a
    threshold on one sample of the result (`sample`, `labels`, `op`, `value`), never both.
    `status: critical` means CRITICAL; `warning` means WARNING or worse (not UNKNOWN); `not_ok`
    means anything but OK. A result without the named sample is "no data": it changes nothing.
    """

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    check: str | None = None
    tag: str | None = None
    status: Literal["critical", "warning", "not_ok"] | None = None
    reason: tuple[Reason, ...] = ()
    sample: str | None = None
    labels: dict[str, str] = {}
    op: Op | None = None
    value: float | None = None
    for_: Delay = Field(default=0.0, alias="for")
    # This rule's triggers wait this long for others to group with (None: `alerts.group_wait`);
    # 0s for a page that must not wait, like the failover trigger.
    group_wait: Delay | None = None
    failure_threshold: int = Field(default=1, ge=1, le=1000)
    success_threshold: int = Field(default=1, ge=1, le=1000)
    severity: Severity = Severity.CRITICAL
    summary: str = "{check} on {target}: {reason} {message}"
    runbook_url: str | None = None

    @field_validator("summary")
    @classmethod
    def _summary_fields(cls, text: str) -> str:
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"invalid summary template: {exc}") from None
        for _, field_name, _, _ in parsed:
            if field_name is not None and field_name not in SUMMARY_FIELDS:
                raise ValueError(
                    f"unknown summary field {{{field_name}}}: use {', '.join(sorted(SUMMARY_FIELDS))}"
                )
        return text

    @model_validator(mode="after")
    def _one_condition(self) -> AlertRule:
        if self.name == NETWORK_DOWN_RULE:
            raise ValueError(f"rule name {NETWORK_DOWN_RULE!r} is reserved for the connectivity guard")
        if self.check is None and self.tag is None:
            raise ValueError("a rule needs `check` (a name or glob) and/or `tag`")
        on_status = self.status is not None
        on_sample = self.sample is not None
        if on_status == on_sample:
            raise ValueError("give either `status` or `sample` (with `op` and `value`), not both or neither")
        if on_sample and (self.op is None or self.value is None):
            raise ValueError("a `sample` condition needs `op` and `value`")
        if not on_sample and (self.op is not None or self.value is not None or self.labels):
            raise ValueError("`op`, `value` and `labels` belong to a `sample` condition")
        if self.reason and not on_status:
            raise ValueError("`reason` narrows a `status` condition")
        return self

    def matches(self, check: str, tags: Collection[str]) -> bool:
        if self.check is not None and not fnmatch.fnmatchcase(check, self.check):
            return False
        return self.tag is None or self.tag in tags

    def evaluate(self, result: CheckResult) -> RuleVerdict:
        if self.status is not None:
            if self.status == "critical":
                bad = result.status == Status.CRITICAL
            elif self.status == "warning":
                bad = result.status in (Status.WARNING, Status.CRITICAL)
            else:
                bad = result.status != Status.OK
            if bad and self.reason:
                bad = result.reason in self.reason
            return RuleVerdict(bad, result.status.label)
        assert self.op is not None and self.value is not None  # guaranteed by _one_condition
        compare = _OPS[self.op]
        found = False
        for s in result.samples:
            if s.name != self.sample or any(dict(s.labels).get(k) != v for k, v in self.labels.items()):
                continue
            found = True
            if compare(s.value, self.value):
                return RuleVerdict(True, f"{s.value:g}")
        return RuleVerdict(False, "") if found else RuleVerdict(None)


class Weekly(Model):
    day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    at: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    duration: Duration = Field(le=7 * 86400.0)

    @property
    def time(self) -> dt.time:
        hh, mm = self.at.split(":")
        return dt.time(int(hh), int(mm))


class Window(Model):
    """A maintenance window: one-off (`start` + `duration`) or `weekly`, in `timezone`.

    A naive `start` is read in `timezone`. `rules`/`checks` (globs) narrow the window; empty means
    every alert. Notifications are suppressed inside; alert state keeps being tracked."""

    name: str = ""
    start: dt.datetime | None = None
    duration: Duration | None = None
    weekly: Weekly | None = None
    timezone: str = "UTC"
    rules: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, name: str) -> str:
        _zone(name)
        return name

    @model_validator(mode="after")
    def _one_kind(self) -> Window:
        one_off = self.start is not None or self.duration is not None
        if one_off == (self.weekly is not None):
            raise ValueError("a window is either `start` + `duration` or `weekly`, not both or neither")
        if one_off and (self.start is None or self.duration is None):
            raise ValueError("a one-off window needs both `start` and `duration`")
        return self

    def applies_to(self, rule: str, check: str) -> bool:
        return (not self.rules or glob_match(self.rules, rule)) and (
            not self.checks or glob_match(self.checks, check)
        )

    def active(self, ts: float) -> bool:
        """True if unix time `ts` is inside the window (start inclusive, end exclusive)."""
        zone = _zone(self.timezone)
        if self.weekly is None:
            assert self.start is not None and self.duration is not None
            start = self.start if self.start.tzinfo is not None else self.start.replace(tzinfo=zone)
            begin = start.timestamp()
            return begin <= ts < begin + self.duration
        local = dt.datetime.fromtimestamp(ts, zone)
        weekday = _DAYS.index(self.weekly.day)
        # The latest occurrence that can still cover `ts` started at most 7 days ago.
        for back in range(8):
            day = local.date() - dt.timedelta(days=back)
            if day.weekday() != weekday:
                continue
            begin = dt.datetime.combine(day, self.weekly.time, tzinfo=zone).timestamp()
            if begin <= ts < begin + self.weekly.duration:
                return True
        return False


class Flap(Model):
    enabled: bool = True
    window: Duration = 600.0
    max_changes: int = Field(default=4, ge=1, le=1000)


class ConnectivityGuard(Model):
    """Checks whose simultaneous connection-level failure means the agent's own network is down.

    `checks` entries are check names or globs, or `tag:NAME` for every check with that tag. An
    empty list disables the guard."""

    checks: tuple[str, ...] = ()
    min_failing_ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    severity: Severity = Severity.CRITICAL

    def covers(self, check: str, tags: Collection[str]) -> bool:
        for entry in self.checks:
            if entry.startswith("tag:"):
                if entry[4:] in tags:
                    return True
            elif fnmatch.fnmatchcase(check, entry):
                return True
        return False


class AlertsConfig(Model):
    state_file: Path = Path("/var/lib/mamori/alerts.db")
    rules: tuple[AlertRule, ...] = ()
    routes: dict[Severity, tuple[str, ...]] = {}
    maintenance: tuple[Window, ...] = ()
    group_wait: Delay = 10.0
    reminder_interval: Duration = 4 * 3600.0
    flap: Flap = Flap()
    connectivity_guard: ConnectivityGuard = ConnectivityGuard()
    dead_letter_limit: int = Field(default=1000, ge=1, le=1_000_000)

    @field_validator("rules")
    @classmethod
    def _unique_rules(cls, rules: tuple[AlertRule, ...]) -> tuple[AlertRule, ...]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        return rules

    def route_names(self, severity: Severity) -> tuple[str, ...]:
        return self.routes.get(severity, ())


def validate_routes(config: AlertsConfig, notifier_names: Collection[str]) -> list[str]:
    """Cross-section check, run at load once notifiers are known. Returns one line per error
    (empty: valid): unknown notifier names in `routes`, and severities used by a rule (or by the
    connectivity guard) that have no route, whose alerts would reach nobody."""
    errors: list[str] = []
    for severity, names in config.routes.items():
        for name in names:
            if name not in notifier_names:
                known = ", ".join(sorted(notifier_names)) or "none configured"
                errors.append(f"alerts.routes.{severity.value}: unknown notifier {name!r} (known: {known})")
    used = {(rule.severity, f"rule {rule.name!r}") for rule in config.rules}
    if config.connectivity_guard.checks:
        used.add((config.connectivity_guard.severity, "the connectivity guard"))
    for severity, user in sorted(used, key=lambda u: (u[0].value, u[1])):
        if not config.routes.get(severity):
            errors.append(f"alerts.routes: no route for severity {severity.value!r}, used by {user}")
    return errors


FLEET_PREFIX = "fleet:"  # checks.fleet.CHECK_PREFIX: the names of the fleet quorum's checks
_GLOB = re.compile(r"[*?\[]")


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    if not names:
        return "none"
    shown = ", ".join(names[:8])
    return shown if len(names) <= 8 else f"{shown}, … ({len(names)} in all)"


def _fleet_pattern(pattern: str) -> bool:
    """Whether a check pattern names `fleet:<cluster>` results (the `fleet` check's names)."""
    return _GLOB.split(pattern, 1)[0].startswith(FLEET_PREFIX)


def validate_targets(
    config: AlertsConfig, check_tags: Mapping[str, Collection[str]]
) -> list[tuple[tuple[str | int, ...], str, bool]]:
    """Rules and connectivity guard entries that match no check: a typo, so they could never fire.
    Returns (path in the document, message, is_warning) for each.

    `check_tags` maps every configured check to its tags. A `fleet:` pattern that matches no
    check is a warning, not an error: a config prepared for a `fleet` check not enabled yet (as
    deploy/examples/production.yml)."""
    out: list[tuple[tuple[str | int, ...], str, bool]] = []
    tagged = {t for tags in check_tags.values() for t in tags}
    checks = _listing(check_tags)
    for i, rule in enumerate(config.rules):
        place: tuple[str | int, ...] = ("alerts", "rules", i)
        if any(rule.matches(c, t) for c, t in check_tags.items()):
            continue
        if rule.tag is not None and rule.tag not in tagged:
            out.append((place + ("tag",), f"no check has tag {rule.tag!r} (tags: {_listing(tagged)})", False))
            continue
        assert rule.check is not None  # a rule has `check` and/or `tag`
        if any(fnmatch.fnmatchcase(c, rule.check) for c in check_tags):
            message = f"no check matching {rule.check!r} has tag {rule.tag!r}: the rule can never fire"
            out.append((place, message, False))
            continue
        if rule.tag is None and _fleet_pattern(rule.check):
            message = (
                f"{rule.check!r} matches no check: fleet:<cluster> results come only from a check"
                " of type fleet"
            )
            out.append((place + ("check",), message, True))
        else:
            out.append((place + ("check",), f"{rule.check!r} matches no check (checks: {checks})", False))
    for j, entry in enumerate(config.connectivity_guard.checks):
        place = ("alerts", "connectivity_guard", "checks", j)
        if entry.startswith("tag:"):
            if entry[4:] not in tagged:
                out.append((place, f"no check has tag {entry[4:]!r} (tags: {_listing(tagged)})", False))
        elif not any(fnmatch.fnmatchcase(c, entry) for c in check_tags):
            out.append((place, f"{entry!r} matches no check (checks: {checks})", False))
    return out
