"""Check results → alert states → notifications, with the fatigue controls.

`AlertEngine` does no I/O and reads time only through the injected `now`, so the same inputs give
the same notifications. Per (rule, check) an `AlertRecord` moves through the state machine

    inactive ──bad──► pending ──(failure_threshold bad results and `for` elapsed)──► firing
       ▲                 │ good                                                        │
       └─────────────────┘                       resolved ◄──(success_threshold good)──┘

and, separately, remembers what the outside world has been told (`told`, `incident`). A
notification is the difference between the two, so anything that suppresses notifications
(maintenance, silences, the connectivity guard) only delays telling: when it ends, a problem that is
still there pages once and one that cleared meanwhile sends nothing. Resolves are never suppressed:
they close an incident that was paged, and wake nobody.

Fatigue controls: `failure_threshold`/`success_threshold`/`for`; flap detection (more than
`flap.max_changes` state flips within `flap.window` → one "flapping" notification, then the alert is
held firing until no flip happened for a whole window); reminders no more often than
`reminder_interval`; grouping (see `_Group`); the connectivity guard (`agent_network_down`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.model import CheckResult
from agent.text import seconds
from alerts.config import (
    CONNECTION_REASONS,
    NETWORK_DOWN_RULE,
    AlertRule,
    AlertsConfig,
    RuleVerdict,
    glob_match,
)
from alerts.model import AlertState, Event, Notification, Severity

log = logging.getLogger("mamori.alerts")

GUARD_CHECK = "connectivity_guard"
SILENCE_KEYS = frozenset({"rule", "check", "target", "severity", "tag"})

AlertKey = tuple[str, str]  # (rule, check)


def _identity(alert: AlertRecord, agent: str) -> dict[str, str]:
    fields = {"check": alert.check, "target": alert.target, "reason": alert.reason, "agent": agent}
    return {k: v for k, v in fields.items() if v}


def dedup_key(agent: str, rule: str, check: str) -> str:
    """Stable for the life of an alert and across restarts: `mamori:<agent>:<rule>:<check>`."""
    return f"mamori:{agent}:{rule}:{check}"


@dataclass
class AlertRecord:
    """The persisted state of one (rule, check) alert."""

    rule: str
    check: str
    target: str = ""
    state: AlertState = AlertState.INACTIVE
    bad_streak: int = 0
    good_streak: int = 0
    pending_since: float | None = None
    changed_at: float = 0.0
    told: bool = False  # a trigger was emitted (or is waiting in a group) and no resolve since
    incident: str | None = None  # the dedup key that trigger carried; None while still grouped
    notified_at: float = 0.0  # last trigger, flapping notice or reminder
    flips: list[float] = field(default_factory=list)  # times of firing<->resolved changes
    flapping: bool = False
    flap_notice: bool = False  # flapping just started: one notice is due
    reason: str = ""
    message: str = ""
    value: str = ""
    severity: str = ""  # the rule's, when its trigger was sent (to route a resolve if the rule goes)
    paged_at: float = 0.0  # when the incident's trigger was sent (a resolve says how long it lasted)
    incident_checks: list[str] = field(default_factory=list)  # the checks that trigger named
    recovery: str = ""  # the message of the last good result (a resolve says what recovered)
    identity: dict[str, str] = field(default_factory=dict)  # its incident's trigger's (see Notification)

    @property
    def key(self) -> AlertKey:
        return (self.rule, self.check)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        record = cls(**known)
        record.state = AlertState(record.state)
        record.flips = list(record.flips)
        record.incident_checks = list(record.incident_checks)
        record.identity = dict(record.identity)
        return record


@dataclass(frozen=True, slots=True)
class Silence:
    """Suppresses triggers and reminders of matching alerts between `starts_at` and `ends_at`.

    `matchers` are (key, glob) pairs, all of which must match; keys are rule, check, target,
    severity and tag (matches if any of the check's tags matches)."""

    id: str
    matchers: tuple[tuple[str, str], ...]
    starts_at: float
    ends_at: float
    comment: str = ""
    created_by: str = ""

    def __post_init__(self) -> None:
        for key, _ in self.matchers:
            if key not in SILENCE_KEYS:
                raise ValueError(f"unknown silence matcher {key!r}: use {', '.join(sorted(SILENCE_KEYS))}")
        if not self.matchers:
            raise ValueError("a silence needs at least one matcher")
        if self.ends_at <= self.starts_at:
            raise ValueError("a silence must end after it starts")

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str], tags: Collection[str]) -> bool:
        for key, pattern in self.matchers:
            if key == "tag":
                if not any(glob_match([pattern], t) for t in tags):
                    return False
            elif not glob_match([pattern], labels.get(key, "")):
                return False
        return True


@dataclass
class _Group:
    """Triggers waiting for `group_wait` (the rule's own, else the global one). Grouping key:
    (rule, severity) — every check a rule fires for within `group_wait` of the group's first
    trigger shares one notification per route. The group's dedup key is its first member's; the
    members share that incident, which is resolved when its last member resolves."""

    rule: str
    severity: Severity
    opened_at: float
    members: list[AlertKey] = field(default_factory=list)


class AlertEngine:
    """Turns `CheckResult`s into `Notification`s. Pure and deterministic given `now` and `new_id`.

    Rules, silences and the guard select by a check's tags, which arrive on its results
    (`CheckResult.tags`; the engine keeps the latest per check for time-driven work).
    `guard_checks` names the configured checks the connectivity guard covers: the guard counts
    those that have not reported yet as not failing.
    `states` and `silences` restore what the store kept, so a restart re-pages nothing.
    """

    def __init__(
        self,
        config: AlertsConfig,
        agent: str,
        now: Callable[[], float],
        guard_checks: Collection[str] = (),
        states: Iterable[AlertRecord] = (),
        silences: Iterable[Silence] = (),
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self.agent = agent
        self._now = now
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self._rules = {rule.name: rule for rule in config.rules}
        self._check_tags: dict[str, tuple[str, ...]] = {}  # the latest result's, per check
        self._guard_checks = frozenset(guard_checks)
        self._alerts: dict[AlertKey, AlertRecord] = {}
        for record in states:
            if record.told and record.incident is None:
                record.told = False  # its trigger was still grouped when we stopped: never sent
            self._alerts[record.key] = record
        self._silences: list[Silence] = list(silences)
        self._groups: dict[tuple[str, Severity], _Group] = {}
        self._guard_failing: dict[str, bool] = {}
        guard = self._alerts.get((NETWORK_DOWN_RULE, GUARD_CHECK))
        self._guard_active = guard is not None and guard.state == AlertState.FIRING
        self._dirty: set[AlertKey] = set()

    # -- inputs -------------------------------------------------------------------------------

    def set_silences(self, silences: Iterable[Silence]) -> None:
        self._silences = list(silences)

    def forget(self, check: str) -> None:
        """`check` was removed from the config: drop its tags and its vote in the guard."""
        self._check_tags.pop(check, None)
        self._guard_failing.pop(check, None)

    def observe(self, result: CheckResult) -> list[Notification]:
        """Evaluate one result against every matching rule; return what must be sent now."""
        now = self._now()
        out = self._flush_groups(now)
        tags = self._check_tags[result.check] = result.tags
        out += self._observe_guard(result, tags, now)
        for rule in self.config.rules:
            if not rule.matches(result.check, tags):
                continue
            verdict = rule.evaluate(result)
            if verdict.bad is None:
                continue
            key = (rule.name, result.check)
            alert = self._alerts.get(key)
            if alert is None:
                if not verdict.bad:
                    continue  # nothing to remember about a healthy check
                alert = self._alerts[key] = AlertRecord(rule.name, result.check, changed_at=now)
            self._step(alert, rule, verdict, result, now)
            out += self._reconcile(alert, rule, now)
            self._dirty.add(key)
        out += self._flush_groups(now)
        return out

    def tick(self) -> list[Notification]:
        """Time-driven work: flush due groups, end maintenance/silences/flapping, send reminders.
        Call about once a second; it is cheap when nothing is due."""
        now = self._now()
        out = self._flush_groups(now)
        for alert in list(self._alerts.values()):
            rule = self._rules.get(alert.rule)
            if rule is None and alert.told and alert.rule != NETWORK_DOWN_RULE:
                out += self._retire(alert, now)
            if rule is not None:
                before = (alert.told, alert.flapping, alert.notified_at)
                out += self._reconcile(alert, rule, now)
                if before != (alert.told, alert.flapping, alert.notified_at):
                    self._dirty.add(alert.key)
        out += self._reconcile_guard(now)
        out += self._flush_groups(now)
        return out

    # -- outputs for the store ----------------------------------------------------------------

    def take_dirty(self) -> list[AlertRecord]:
        """Records changed since the last call (to persist with the notifications they caused)."""
        dirty = [self._alerts[k] for k in sorted(self._dirty) if k in self._alerts]
        self._dirty.clear()
        return dirty

    def untell(self, incident: str) -> None:
        """The trigger of `incident` was never stored, so never sent (the sink had to drop it): the
        world was not told. Its alerts are marked so, and one still firing pages afresh."""
        for alert in self._alerts.values():
            if alert.told and alert.incident == incident:
                alert.told, alert.incident = False, None
                self._dirty.add(alert.key)

    def records(self) -> list[AlertRecord]:
        return list(self._alerts.values())

    def next_due(self) -> float | None:
        """When the earliest grouped trigger is due (for a sink that sleeps until then)."""
        if not self._groups:
            return None
        return min(g.opened_at + self._group_wait(g.rule) for g in self._groups.values())

    def _group_wait(self, rule: str) -> float:
        """The rule's own `group_wait`, else the global one."""
        found = self._rules.get(rule)
        if found is not None and found.group_wait is not None:
            return found.group_wait
        return self.config.group_wait

    @property
    def network_down(self) -> bool:
        return self._guard_active

    # -- the state machine --------------------------------------------------------------------

    def _tags(self, check: str) -> tuple[str, ...]:
        return self._check_tags.get(check, ())

    def _step(
        self, alert: AlertRecord, rule: AlertRule, verdict: RuleVerdict, result: CheckResult, now: float
    ) -> None:
        alert.target = result.target
        if verdict.bad:
            alert.bad_streak += 1
            alert.good_streak = 0
            alert.reason, alert.message, alert.value = result.reason.value, result.message, verdict.value
            if alert.state in (AlertState.INACTIVE, AlertState.RESOLVED):
                alert.state, alert.pending_since, alert.changed_at = AlertState.PENDING, now, now
            if (
                alert.state == AlertState.PENDING
                and alert.bad_streak >= rule.failure_threshold
                and now - (alert.pending_since or now) >= rule.for_
            ):
                alert.state, alert.changed_at = AlertState.FIRING, now
                self._flip(alert, now)
        else:
            alert.good_streak += 1
            alert.bad_streak = 0
            alert.recovery = result.message
            if alert.state == AlertState.PENDING:
                alert.state, alert.pending_since, alert.changed_at = AlertState.INACTIVE, None, now
            elif alert.state == AlertState.FIRING and alert.good_streak >= rule.success_threshold:
                alert.state, alert.pending_since, alert.changed_at = AlertState.RESOLVED, None, now
                self._flip(alert, now)

    def _flip(self, alert: AlertRecord, now: float) -> None:
        alert.flips.append(now)
        self._prune_flips(alert, now)
        flap = self.config.flap
        if flap.enabled and not alert.flapping and len(alert.flips) > flap.max_changes:
            alert.flapping = alert.flap_notice = True
            log.info("alert %s/%s is flapping: held firing until stable", alert.rule, alert.check)

    def _prune_flips(self, alert: AlertRecord, now: float) -> None:
        horizon = now - self.config.flap.window
        alert.flips = [t for t in alert.flips if t > horizon]

    def _muted(self, rule: str, check: str, target: str, severity: Severity, now: float) -> bool:
        if rule != NETWORK_DOWN_RULE and self._guard_active:
            return True
        if any(w.applies_to(rule, check) and w.active(now) for w in self.config.maintenance):
            return True
        labels = {"rule": rule, "check": check, "target": target, "severity": severity.value}
        tags = self._tags(check)
        return any(s.active(now) and s.matches(labels, tags) for s in self._silences)

    def _reconcile(self, alert: AlertRecord, rule: AlertRule, now: float) -> list[Notification]:
        """Bring what the world was told in line with the state, unless muted (resolves never are)."""
        self._prune_flips(alert, now)
        if alert.flapping and not alert.flips:
            alert.flapping = alert.flap_notice = False
            log.info("alert %s/%s is stable again", alert.rule, alert.check)
        desired = alert.state == AlertState.FIRING or alert.flapping
        muted = self._muted(rule.name, alert.check, alert.target, rule.severity, now)
        if desired and not alert.told:
            if muted:
                alert.flap_notice = False  # the trigger sent after the mute will say it
                return []
            alert.told, alert.notified_at, alert.flap_notice = True, now, False
            group = self._groups.get((rule.name, rule.severity))
            if group is None:
                group = self._groups[(rule.name, rule.severity)] = _Group(rule.name, rule.severity, now)
            group.members.append(alert.key)
            return []
        if desired and alert.told:
            if alert.incident is None:
                return []  # still grouped: the group's trigger will carry it
            if alert.flap_notice:
                alert.flap_notice = False
                if not muted:
                    alert.notified_at = now
                    return self._notify(rule, Event.TRIGGER, alert.incident, [alert], now)
            elif not muted and now - alert.notified_at >= self.config.reminder_interval:
                members = self._incident_members(alert.incident)
                for m in members:
                    m.notified_at = now
                    self._dirty.add(m.key)
                return self._notify(rule, Event.REMIND, alert.incident, members, now)
            return []
        if not desired and alert.told:
            alert.told = False
            incident, alert.incident = alert.incident, None
            if incident is None:
                self._ungroup(alert.key)  # cleared before its group was sent: nothing to undo
                return []
            if self._incident_members(incident):
                return []  # other checks of the same incident still fire
            return self._notify(rule, Event.RESOLVE, incident, [alert], now)
        return []

    def _retire(self, alert: AlertRecord, now: float) -> list[Notification]:
        """The rule of a paged alert is no longer configured (a reload or restart removed it):
        close its incident once, routed by the severity it was paged with, so it does not stay
        open forever in PagerDuty or Alertmanager."""
        incident = alert.incident
        alert.told, alert.incident, alert.state = False, None, AlertState.RESOLVED
        alert.pending_since, alert.changed_at = None, now
        self._dirty.add(alert.key)
        if incident is None or self._incident_members(incident):
            return []  # never sent (still grouped), or other members still hold the incident open
        severity = Severity(alert.severity) if alert.severity else Severity.CRITICAL
        log.info(
            "alert %s/%s: its rule was removed; resolving incident %s", alert.rule, alert.check, incident
        )
        details = {
            "check": alert.check,
            "target": alert.target,
            "agent": self.agent,
            "state": "resolved",
            "reason": "rule_removed",
            "checks": alert.check,
        }
        return [
            Notification(
                id=self._new_id(),
                route=route,
                event=Event.RESOLVE,
                dedup_key=incident,
                alert=alert.rule,
                severity=severity,
                summary=f"rule {alert.rule} was removed: incident of {alert.check} on {alert.target} closed",
                details={k: v for k, v in details.items() if v},
                created_at=now,
                identity=dict(alert.identity),
            )
            for route in self.config.route_names(severity)
        ]

    def _incident_members(self, incident: str) -> list[AlertRecord]:
        return [a for a in self._alerts.values() if a.told and a.incident == incident]

    def _ungroup(self, key: AlertKey) -> None:
        for gkey, group in list(self._groups.items()):
            if key in group.members:
                group.members.remove(key)
                if not group.members:
                    del self._groups[gkey]

    def _flush_groups(self, now: float) -> list[Notification]:
        out: list[Notification] = []
        for gkey, group in list(self._groups.items()):
            if now < group.opened_at + self._group_wait(group.rule):
                continue
            del self._groups[gkey]
            rule = self._rules.get(group.rule)
            if rule is None:
                continue
            members: list[AlertRecord] = []
            for key in group.members:
                alert = self._alerts.get(key)
                if alert is None or not alert.told or alert.incident is not None:
                    continue
                if self._muted(rule.name, alert.check, alert.target, rule.severity, now):
                    alert.told = False  # held back; the next reconcile after the mute re-triggers
                    self._dirty.add(key)
                    continue
                members.append(alert)
            if not members:
                continue
            incident = dedup_key(self.agent, rule.name, members[0].check)
            for m in members:
                m.incident, m.notified_at, m.flap_notice = incident, now, False
                m.severity = rule.severity.value
                m.paged_at, m.incident_checks = now, [x.check for x in members]
                m.identity = _identity(members[0], self.agent)
                self._dirty.add(m.key)
            out += self._notify(rule, Event.TRIGGER, incident, members, now)
        return out

    # -- the connectivity guard ---------------------------------------------------------------

    def _observe_guard(self, result: CheckResult, tags: Collection[str], now: float) -> list[Notification]:
        guard = self.config.connectivity_guard
        if not guard.checks or not guard.covers(result.check, tags):
            return []
        self._guard_failing[result.check] = not result.success and result.reason in CONNECTION_REASONS
        members = set(self._guard_checks) | set(self._guard_failing)
        failing = sum(1 for c in members if self._guard_failing.get(c, False))
        active = failing > 0 and failing / len(members) >= guard.min_failing_ratio
        record = self._alerts.get((NETWORK_DOWN_RULE, GUARD_CHECK))
        if active != self._guard_active or (active and record is None):
            self._guard_active = active
            if record is None:
                record = AlertRecord(NETWORK_DOWN_RULE, GUARD_CHECK, target=self.agent)
                self._alerts[record.key] = record
            record.state = AlertState.FIRING if active else AlertState.RESOLVED
            record.changed_at = now
            record.reason = ",".join(sorted({c for c in members if self._guard_failing.get(c)}))
            record.message = f"{failing} of {len(members)} guard checks cannot connect"
            record.value = f"{failing / len(members):.2f}"
            log.warning(
                "connectivity guard: %s (%s)", "network down" if active else "network back", record.message
            )
        return self._reconcile_guard(now)

    def _reconcile_guard(self, now: float) -> list[Notification]:
        record = self._alerts.get((NETWORK_DOWN_RULE, GUARD_CHECK))
        if record is None:
            return []
        guard = self.config.connectivity_guard
        rule = AlertRule.model_construct(
            name=NETWORK_DOWN_RULE,
            severity=guard.severity,
            summary="agent {agent} lost its network: {message} ({reason})",
            runbook_url=None,
        )
        key = dedup_key(self.agent, NETWORK_DOWN_RULE, GUARD_CHECK)
        muted = self._muted(NETWORK_DOWN_RULE, GUARD_CHECK, self.agent, guard.severity, now)
        firing = record.state == AlertState.FIRING
        out: list[Notification] = []
        if firing and not record.told and not muted:
            record.told, record.incident, record.notified_at = True, key, now
            record.paged_at, record.incident_checks = now, [GUARD_CHECK]
            record.identity = _identity(record, self.agent)
            out = self._notify(rule, Event.TRIGGER, key, [record], now)
        elif (
            firing and record.told and not muted and now - record.notified_at >= self.config.reminder_interval
        ):
            record.notified_at = now
            out = self._notify(rule, Event.REMIND, key, [record], now)
        elif not firing and record.told:
            record.told, record.incident = False, None
            out = self._notify(rule, Event.RESOLVE, key, [record], now)
        if out:
            self._dirty.add(record.key)
        return out

    # -- rendering ----------------------------------------------------------------------------

    def _notify(
        self, rule: AlertRule, event: Event, incident: str, members: list[AlertRecord], now: float
    ) -> list[Notification]:
        first = members[0]
        identity = first.identity or _identity(first, self.agent)
        fields = {
            "check": first.check,
            "target": first.target,
            "reason": first.reason,
            "message": first.message,
            "value": first.value,
            "agent": self.agent,
        }
        if event == Event.RESOLVE:
            summary, details = self._recovered(rule, first, now)
        else:
            summary = rule.summary.format(**fields).strip()
            if len(members) > 1:
                others = ", ".join(m.check for m in members[1:])
                summary = f"{summary} (+{len(members) - 1} more: {others})"
            details = {k: v for k, v in fields.items() if v}
            details["state"] = "firing"
            details["checks"] = ",".join(m.check for m in members)
            if any(m.flapping for m in members):
                summary = f"FLAPPING: {summary}"
                details["flapping"] = "true"
        return [
            Notification(
                id=self._new_id(),
                route=route,
                event=event,
                dedup_key=incident,
                alert=rule.name,
                severity=rule.severity,
                summary=summary,
                details=dict(details),
                runbook_url=rule.runbook_url,
                created_at=now,
                identity=dict(identity),
            )
            for route in self.config.route_names(rule.severity)
        ]

    def _recovered(self, rule: AlertRule, alert: AlertRecord, now: float) -> tuple[str, dict[str, str]]:
        """A resolve's summary and details: what recovered (every check its trigger named, so a
        grouped incident resolves under the names it was paged with), for how long it had been
        paged, and what the check says now — not the failure's fields again."""
        checks = list(dict.fromkeys([*alert.incident_checks, alert.check]))
        lasted = f" after {seconds(now - alert.paged_at)}" if alert.paged_at > 0 else ""
        if rule.name == NETWORK_DOWN_RULE:
            summary = f"agent {self.agent}: network back{lasted} ({alert.message})"
        elif len(checks) == 1:
            now_says = f": {alert.recovery}" if alert.recovery else ""
            summary = f"{alert.check} on {alert.target} recovered{lasted}{now_says}"
        else:
            summary = f"{len(checks)} checks recovered{lasted}: {', '.join(checks)}"
        details = {"check": alert.check, "target": alert.target, "agent": self.agent, "state": "resolved"}
        details["checks"] = ",".join(checks)
        if alert.paged_at > 0:
            details["paged_for"] = seconds(now - alert.paged_at)
        return summary, {k: v for k, v in details.items() if v}
