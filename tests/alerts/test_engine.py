"""AlertEngine: the state machine and every fatigue control, on a fake clock."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from agent.model import CheckResult, Reason, Sample, Status
from alerts.config import AlertsConfig, validate_routes
from alerts.engine import AlertEngine, AlertRecord, Silence
from alerts.model import AlertState, Event, Notification

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def bad(check: str = "web", reason: Reason = Reason.TIMEOUT, **kw: Any) -> CheckResult:
    kw.setdefault("tags", TAGS.get(check, ()))  # as the harness sets them from the config
    return CheckResult(
        check, "http", f"https://{check}.example", Status.CRITICAL, T0, 0.1, reason=reason, **kw
    )


def good(check: str = "web", **kw: Any) -> CheckResult:
    kw.setdefault("tags", TAGS.get(check, ()))
    return CheckResult(check, "http", f"https://{check}.example", Status.OK, T0, 0.1, **kw)


def config(**overrides: Any) -> AlertsConfig:
    data: dict[str, Any] = {
        "rules": [{"name": "down", "check": "*", "status": "critical"}],
        "routes": {"critical": ["pager"]},
        "group_wait": 0,
    }
    data.update(overrides)
    return AlertsConfig.model_validate(data)


def engine(cfg: AlertsConfig, clock: Clock, **kw: Any) -> AlertEngine:
    ids = itertools.count(1)
    return AlertEngine(cfg, "host1", clock, new_id=lambda: f"n{next(ids)}", **kw)


def events(notes: list[Notification]) -> list[tuple[str, str]]:
    return [(n.event.value, n.dedup_key) for n in notes]


def state(e: AlertEngine, rule: str = "down", check: str = "web") -> AlertState:
    return {r.key: r.state for r in e.records()}[(rule, check)]


KEY = "mamori:host1:down:web"


def test_pending_then_firing_after_for() -> None:
    clock = Clock()
    e = engine(config(rules=[{"name": "down", "check": "web", "status": "critical", "for": "1m"}]), clock)
    assert e.observe(bad()) == []
    assert state(e) == AlertState.PENDING
    clock.t += 30
    assert e.observe(bad()) == []
    clock.t += 30
    notes = e.observe(bad())
    assert events(notes) == [("trigger", KEY)]
    n = notes[0]
    assert (n.id, n.route, n.alert, n.severity.value, n.created_at) == (
        "n1",
        "pager",
        "down",
        "critical",
        T0 + 60,
    )
    assert n.summary == "web on https://web.example: timeout"
    assert n.details == {
        "check": "web",
        "target": "https://web.example",
        "reason": "timeout",
        "value": "critical",
        "agent": "host1",
        "state": "firing",
        "checks": "web",
    }
    assert state(e) == AlertState.FIRING


def test_good_result_while_pending_cancels_without_notification() -> None:
    clock = Clock()
    e = engine(config(rules=[{"name": "down", "check": "web", "status": "critical", "for": "1m"}]), clock)
    e.observe(bad())
    clock.t += 30
    assert e.observe(good()) == []
    assert state(e) == AlertState.INACTIVE
    clock.t += 30
    assert e.observe(bad()) == []  # `for` restarts from here
    assert state(e) == AlertState.PENDING


def test_failure_and_success_thresholds() -> None:
    clock = Clock()
    rule = {
        "name": "down",
        "check": "web",
        "status": "critical",
        "failure_threshold": 3,
        "success_threshold": 2,
    }
    e = engine(config(rules=[rule]), clock)
    seq = [bad(), bad(), good(), bad(), bad()]
    assert [e.observe(r) for r in seq] == [[], [], [], [], []]
    assert events(e.observe(bad())) == [("trigger", KEY)]  # third consecutive bad result
    assert e.observe(good()) == []
    assert e.observe(bad()) == []  # the good streak restarts
    assert e.observe(good()) == []
    assert events(e.observe(good())) == [("resolve", KEY)]
    assert state(e) == AlertState.RESOLVED


def test_sample_threshold_rule_and_no_data() -> None:
    clock = Clock()
    rule = {
        "name": "disk",
        "check": "host",
        "sample": "disk_used_ratio",
        "labels": {"mount": "/"},
        "op": ">=",
        "value": 0.9,
        "severity": "warning",
        "summary": "{check}: disk at {value} on {agent}",
    }
    e = engine(config(rules=[rule], routes={"warning": ["chat"]}), clock)

    def host(v: float, mount: str = "/") -> CheckResult:
        return CheckResult(
            "host",
            "host",
            "localhost",
            Status.OK,
            T0,
            0.0,
            (Sample("disk_used_ratio", v, (("mount", mount),)),),
        )

    assert e.observe(host(0.95, mount="/data")) == []  # other labels: no data
    assert e.records() == []
    notes = e.observe(host(0.95))
    assert [(n.event, n.route, n.summary) for n in notes] == [
        (Event.TRIGGER, "chat", "host: disk at 0.95 on host1")
    ]
    assert e.observe(CheckResult("host", "host", "localhost", Status.OK, T0, 0.0)) == []  # no sample
    assert events(e.observe(host(0.5))) == [("resolve", "mamori:host1:disk:host")]


def test_flapping_target_pages_once_not_twenty_times() -> None:
    clock = Clock()
    e = engine(config(), clock)  # flap: window 10m, max_changes 4
    notes: list[Notification] = []
    for _ in range(20):
        notes += e.observe(bad())
        clock.t += 30
        notes += e.observe(good())
        clock.t += 30
    assert [(n.event.value, n.summary) for n in notes] == [
        ("trigger", "web on https://web.example: timeout"),
        ("resolve", "web on https://web.example recovered after 30s"),
        ("trigger", "web on https://web.example: timeout"),
        ("resolve", "web on https://web.example recovered after 30s"),
        ("trigger", "FLAPPING: web on https://web.example: timeout"),  # the 5th flip within 10 minutes
    ]
    assert notes[-1].details["flapping"] == "true"
    assert {n.dedup_key for n in notes} == {KEY}
    last_flip = clock.t - 30
    # Held firing until no flip for a whole window; then exactly one resolve.
    while clock.t < last_flip + 600:
        assert e.observe(good()) == []
        clock.t += 30
    assert clock.t == last_flip + 600
    assert events(e.observe(good())) == [("resolve", KEY)]
    assert e.observe(good()) == []


def test_flapping_that_settles_bad_stays_firing_without_resolve() -> None:
    clock = Clock()
    e = engine(config(), clock)
    for _ in range(3):
        e.observe(bad())
        clock.t += 30
        e.observe(good())
        clock.t += 30
    notes: list[Notification] = []
    for _ in range(40):  # bad for 20 minutes
        notes += e.observe(bad())
        clock.t += 30
    assert notes == []
    assert state(e) == AlertState.FIRING


def test_reminders_at_the_interval_and_not_more_often() -> None:
    clock = Clock()
    e = engine(config(reminder_interval="1h"), clock)
    assert events(e.observe(bad())) == [("trigger", KEY)]
    reminders: list[float] = []
    for _ in range(180):  # a bad result every minute for three hours
        clock.t += 60
        for n in e.observe(bad()) + e.tick():
            assert n.event == Event.REMIND
            assert n.dedup_key == KEY
            reminders.append(n.created_at - T0)
    assert reminders == [3600.0, 7200.0, 10800.0]


def window(start: float, minutes: int, **kw: Any) -> dict[str, Any]:
    iso = dt.datetime.fromtimestamp(start, dt.UTC).isoformat()
    return {"start": iso, "duration": f"{minutes}m", **kw}


def test_maintenance_problem_still_present_at_the_end_pages_once() -> None:
    clock = Clock()
    e = engine(config(maintenance=[window(T0, 60)]), clock)
    sent: list[Notification] = []
    for _ in range(60):
        sent += e.observe(bad()) + e.tick()
        clock.t += 60
    assert sent == []
    assert state(e) == AlertState.FIRING  # tracked all along
    assert clock.t == T0 + 3600
    assert events(e.tick()) == [("trigger", KEY)]
    assert e.observe(bad()) + e.tick() == []


def test_maintenance_problem_cleared_inside_the_window_sends_nothing() -> None:
    clock = Clock()
    e = engine(config(maintenance=[window(T0, 60)]), clock)
    sent = e.observe(bad())
    clock.t += 600
    sent += e.observe(good())
    clock.t = T0 + 3600
    sent += e.tick() + e.observe(good())
    assert sent == []
    assert state(e) == AlertState.RESOLVED


def test_maintenance_still_lets_the_resolve_of_a_paged_alert_through() -> None:
    clock = Clock()
    e = engine(config(maintenance=[window(T0 + 60, 60)]), clock)
    assert events(e.observe(bad())) == [("trigger", KEY)]
    clock.t += 120
    assert events(e.observe(good())) == [("resolve", KEY)]


def test_maintenance_window_scoped_to_checks() -> None:
    clock = Clock()
    e = engine(config(maintenance=[window(T0, 60, checks=["db*"])]), clock)
    assert e.observe(bad("db1")) == []
    assert events(e.observe(bad("web"))) == [("trigger", KEY)]


def test_weekly_window_in_its_time_zone() -> None:
    cfg = config(
        maintenance=[{"weekly": {"day": "sun", "at": "02:00", "duration": "2h"}, "timezone": "Asia/Tokyo"}]
    )
    w = cfg.maintenance[0]
    tokyo = dt.timezone(dt.timedelta(hours=9))

    def ts(year: int, month: int, day: int, hour: int, minute: int) -> float:
        return dt.datetime(year, month, day, hour, minute, tzinfo=tokyo).timestamp()

    assert [
        w.active(ts(2024, 3, 3, 1, 59)),
        w.active(ts(2024, 3, 3, 2, 0)),
        w.active(ts(2024, 3, 3, 3, 59)),
    ] == [
        False,
        True,
        True,
    ]
    assert [
        w.active(ts(2024, 3, 3, 4, 0)),
        w.active(ts(2024, 3, 10, 2, 30)),
        w.active(ts(2024, 3, 4, 2, 30)),
    ] == [
        False,
        True,
        False,
    ]


def test_config_errors_at_load() -> None:
    with pytest.raises(ValidationError) as exc:
        config(
            maintenance=[
                {"weekly": {"day": "sun", "at": "02:00", "duration": "2h"}, "timezone": "Mars/Olympus"}
            ]
        )
    assert "unknown time zone 'Mars/Olympus': use an IANA name like Asia/Tokyo or UTC" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        config(rules=[{"name": "x", "check": "*", "status": "critical", "summary": "{host} down"}])
    assert "unknown summary field {host}: use agent, check, message, reason, target, value" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        config(
            rules=[{"name": "x", "check": "*", "status": "critical", "sample": "s", "op": ">", "value": 1}]
        )
    assert "give either `status` or `sample`" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        config(rules=[{"name": "x", "status": "critical"}])
    assert "a rule needs `check` (a name or glob) and/or `tag`" in str(exc.value)


def test_validate_routes() -> None:
    cfg = config(
        rules=[
            {"name": "down", "check": "*", "status": "critical"},
            {"name": "slow", "check": "*", "status": "warning", "severity": "warning"},
        ],
        routes={"critical": ["pager", "pagerduty"]},
    )
    assert validate_routes(cfg, ["pager", "slack"]) == [
        "alerts.routes.critical: unknown notifier 'pagerduty' (known: pager, slack)",
        "alerts.routes: no route for severity 'warning', used by rule 'slow'",
    ]
    assert validate_routes(config(), ["pager"]) == []


def test_silence_suppresses_until_it_expires() -> None:
    clock = Clock()
    silence = Silence("s1", (("check", "web*"), ("rule", "down")), T0, T0 + 1800, "deploy", "ops")
    e = engine(config(), clock, silences=[silence])
    assert e.observe(bad()) == []
    assert events(e.observe(bad("db"))) == [("trigger", "mamori:host1:down:db")]
    clock.t = T0 + 1799
    assert e.tick() == []
    clock.t = T0 + 1800
    assert events(e.tick()) == [("trigger", KEY)]


def test_silence_removed_early_and_tag_matcher() -> None:
    clock = Clock()
    silence = Silence("s1", (("tag", "edge"),), T0, T0 + 1800)
    e = engine(config(), clock, silences=[silence])
    assert e.observe(bad(tags=("edge",))) == []
    assert events(e.observe(bad("db"))) == [("trigger", "mamori:host1:down:db")]
    e.set_silences([])
    assert events(e.tick()) == [("trigger", KEY)]
    with pytest.raises(ValueError, match="unknown silence matcher 'host'"):
        Silence("s2", (("host", "x"),), T0, T0 + 1)


def test_grouping_within_group_wait_one_notification_per_route() -> None:
    clock = Clock()
    e = engine(config(group_wait="10s", routes={"critical": ["pager", "chat"]}), clock)
    assert e.observe(bad("a")) == []
    clock.t += 3
    assert e.observe(bad("b")) == []
    assert e.observe(bad("x")) == []
    clock.t += 3
    assert e.observe(bad("c")) == []
    assert e.observe(good("x")) == []  # cleared before the group went out: never sent
    assert e.next_due() == T0 + 10
    clock.t = T0 + 9.9
    assert e.tick() == []
    clock.t = T0 + 10
    notes = e.tick()
    assert [(n.route, n.event.value, n.dedup_key, n.details["checks"]) for n in notes] == [
        ("pager", "trigger", "mamori:host1:down:a", "a,b,c"),
        ("chat", "trigger", "mamori:host1:down:a", "a,b,c"),
    ]
    assert notes[0].summary == "a on https://a.example: timeout (+2 more: b, c)"
    # The group is one incident: resolved when its last member resolves.
    assert e.observe(good("a")) == []
    assert e.observe(good("c")) == []
    clock.t += 290
    resolves = e.observe(good("b", message="200 OK in 0.01s"))
    assert [(n.route, n.event.value, n.dedup_key) for n in resolves] == [
        ("pager", "resolve", "mamori:host1:down:a"),
        ("chat", "resolve", "mamori:host1:down:a"),
    ]
    # The resolve names the checks its trigger named (not only the last one to recover), says for
    # how long the incident was open, and repeats none of the failure's fields.
    assert resolves[0].summary == "3 checks recovered after 4m50s: a, b, c"
    assert resolves[0].details == {
        "check": "b",
        "target": "https://b.example",
        "agent": "host1",
        "state": "resolved",
        "checks": "a,b,c",
        "paged_for": "4m50s",
    }


def test_a_rules_own_group_wait_overrides_the_global_one() -> None:
    """The failover page must not wait for others to group with (issue 15): a rule's `group_wait`
    (0s) sends its trigger with the result that fired it, while another rule's triggers still
    wait for the global `group_wait`; a rule without one (None) takes the global one."""
    clock = Clock()
    rules = [
        {"name": "failover", "check": "fleet:*", "status": "critical", "group_wait": "0s"},
        {"name": "slow", "check": "fleet:*", "status": "critical", "group_wait": "3s"},
        {"name": "down", "check": "web", "status": "critical"},
    ]
    cfg = config(group_wait="10s", rules=rules)
    assert [r.group_wait for r in cfg.rules] == [0.0, 3.0, None]
    e = engine(cfg, clock)
    assert events(e.observe(bad("fleet:db"))) == [("trigger", "mamori:host1:failover:fleet:db")]
    assert e.observe(bad("web")) == []  # the global 10 s
    assert e.next_due() == T0 + 3
    clock.t = T0 + 3
    assert events(e.tick()) == [("trigger", "mamori:host1:slow:fleet:db")]
    assert e.next_due() == T0 + 10
    clock.t = T0 + 10
    assert events(e.tick()) == [("trigger", "mamori:host1:down:web")]
    with pytest.raises(ValidationError, match="group_wait"):
        config(rules=[{"name": "x", "check": "*", "status": "critical", "group_wait": "-1s"}])


def test_resolve_says_what_recovered_not_the_failure_again() -> None:
    clock = Clock()
    e = engine(config(), clock)
    [trigger] = e.observe(bad(message="connect timed out after 5s"))
    clock.t += 125
    [resolve] = e.observe(good(message="200 OK, 3 bytes in 0.002s"))
    assert trigger.summary == "web on https://web.example: timeout connect timed out after 5s"
    assert resolve.summary == "web on https://web.example recovered after 2m05s: 200 OK, 3 bytes in 0.002s"
    assert "RESOLVED" not in resolve.summary  # each notifier marks a resolve its own way, once
    assert not {"reason", "message", "value"} & set(resolve.details)
    assert resolve.details["state"] == "resolved"


def guard_config(**kw: Any) -> AlertsConfig:
    kw.setdefault("group_wait", "10s")
    return config(connectivity_guard={"checks": ["tag:external", "gateway"]}, **kw)


TAGS = {"gateway": (), "api": ("external",), "cdn": ("external",), "mail": ("external",), "disk": ()}
GUARDED = ["gateway", "api", "cdn", "mail"]  # what the runtime derives from the config


def test_connectivity_guard_one_alert_not_one_per_check() -> None:
    clock = Clock()
    e = engine(guard_config(), clock, guard_checks=GUARDED)
    sent: list[Notification] = []
    for check in ("gateway", "api", "cdn", "mail"):
        reason = Reason.UNREACHABLE if check == "gateway" else Reason.DNS
        sent += e.observe(bad(check, reason=reason))
        clock.t += 1
    sent += e.observe(bad("mail", reason=Reason.REFUSED))
    assert [(n.event.value, n.dedup_key) for n in sent] == [
        ("trigger", "mamori:host1:agent_network_down:connectivity_guard")
    ]
    assert (
        sent[0].summary
        == "agent host1 lost its network: 4 of 4 guard checks cannot connect (api,cdn,gateway,mail)"
    )
    assert e.network_down
    for _ in range(10):  # minutes of outage: per-check alerts are held back
        clock.t += 60
        sent = [n for check in TAGS if check != "disk" for n in e.observe(bad(check, reason=Reason.TIMEOUT))]
        assert sent + e.tick() == []
    assert {r.key: r.state for r in e.records()}[("down", "api")] == AlertState.FIRING
    # Network back: everything good again → one resolve, and no per-check page ever.
    sent = [n for check in ("gateway", "api", "cdn", "mail") for n in e.observe(good(check))]
    clock.t += 30
    sent += e.tick()
    assert [(n.event.value, n.dedup_key) for n in sent] == [
        ("resolve", "mamori:host1:agent_network_down:connectivity_guard")
    ]


def test_connectivity_guard_releases_a_check_still_failing_afterwards() -> None:
    clock = Clock()
    e = engine(guard_config(), clock, guard_checks=GUARDED)
    for check in ("gateway", "api", "cdn", "mail"):
        e.observe(bad(check))
    assert e.network_down
    sent = [n for check in ("gateway", "cdn", "mail") for n in e.observe(good(check))]
    assert [n.dedup_key.split(":")[2] for n in sent] == ["agent_network_down"]
    sent = e.observe(bad("api"))  # 1 of 4 failing: a real problem of api
    clock.t += 10
    sent += e.tick()
    assert events(sent) == [("trigger", "mamori:host1:down:api")]


def test_guard_ignores_failures_that_are_not_connection_level() -> None:
    clock = Clock()
    e = engine(guard_config(group_wait=0), clock, guard_checks=GUARDED)
    sent = [
        n
        for check in ("gateway", "api", "cdn", "mail")
        for n in e.observe(bad(check, Reason.STATUS_MISMATCH))
    ]
    assert not e.network_down
    assert [n.dedup_key for n in sent] == [
        f"mamori:host1:down:{c}" for c in ("gateway", "api", "cdn", "mail")
    ]


def test_state_round_trips_and_grouped_but_unsent_triggers_are_forgotten() -> None:
    record = AlertRecord("down", "web", state=AlertState.FIRING, told=True, incident=None, flips=[1.0])
    again = AlertRecord.from_json(record.to_json())
    assert again == record
    clock = Clock()
    e = engine(config(), clock, states=[again])
    # Its trigger was only grouped when the agent stopped: the next bad result sends it.
    assert events(e.observe(bad())) == [("trigger", KEY)]


def test_flap_detection_can_be_turned_off() -> None:
    clock = Clock()
    e = engine(config(flap={"enabled": False}), clock)
    notes: list[Notification] = []
    for _ in range(20):
        notes += e.observe(bad())
        clock.t += 30
        notes += e.observe(good())
        clock.t += 30
    assert [n.event.value for n in notes] == ["trigger", "resolve"] * 20


def test_a_removed_rule_resolves_its_paged_incident_once() -> None:
    clock = Clock()
    two = config(
        rules=[
            {"name": "down", "check": "*", "status": "critical"},
            {"name": "slow", "check": "*", "status": "critical", "severity": "warning"},
        ],
        routes={"critical": ["pager"], "warning": ["chat"]},
    )
    e = engine(two, clock)
    assert sorted(events(e.observe(bad()))) == [
        ("trigger", "mamori:host1:down:web"),
        ("trigger", "mamori:host1:slow:web"),
    ]
    # Restart (or reload) without "slow": its incident is closed once, on the route its severity
    # had; "down" goes on firing without a new page.
    e2 = engine(config(routes={"critical": ["pager"], "warning": ["chat"]}), clock, states=e.records())
    clock.t += 1
    notes = e2.tick()
    assert [(n.event.value, n.dedup_key, n.route, n.details["reason"]) for n in notes] == [
        ("resolve", "mamori:host1:slow:web", "chat", "rule_removed")
    ]
    assert e2.tick() == [] and e2.observe(bad()) == []
