"""AlertStore durability and AlertSink end to end: a restart mid-incident re-pages nothing and
loses no resolve."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.model import CheckResult, Reason, Status
from alerts.config import AlertsConfig
from alerts.engine import AlertRecord, Silence
from alerts.model import AlertState, Delivery, Event, Notification, Outcome, Severity
from alerts.sink import AlertSink
from alerts.store import AlertStore
from lab.wait import wait_until
from tests.alerts.test_delivery import Clock, RecordingNotifier
from tests.conftest import SmallFs

T0 = 1_700_000_000.0


def note(i: int, event: Event = Event.TRIGGER, route: str = "pager") -> Notification:
    return Notification(
        f"n{i}", route, event, f"k:{i}", "down", Severity.CRITICAL, "s", {"check": "web"}, None, T0
    )


def test_states_outbox_and_silences_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "alerts.db"
    store = AlertStore(path)
    record = AlertRecord(
        "down", "web", "https://web", AlertState.FIRING, told=True, incident="k:1", flips=[T0]
    )
    store.commit([record], [note(1), note(2, Event.RESOLVE), note(3, route="chat")])
    store.retry("n1", 2, T0 + 4, "HTTP 503")
    store.add_silence(Silence("s1", (("check", "web"),), T0, T0 + 60, "deploy", "ops"))
    store.add_silence(Silence("s2", (("rule", "*"),), T0, T0 + 10))
    store.close()
    store.close()  # safe twice

    store = AlertStore(path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.load_states() == [record]
    head = store.head("pager")
    assert [(i.id, i.attempts, i.next_attempt_at, i.last_error) for i in head] == [
        ("n1", 2, T0 + 4, "HTTP 503"),
        ("n2", 0, T0, ""),
    ]
    assert head[1].notification == note(2, Event.RESOLVE)
    assert (store.pending(), store.pending("chat"), store.routes()) == (3, 1, ["chat", "pager"])
    assert [s.id for s in store.silences()] == ["s1", "s2"]
    assert store.purge_silences(T0 + 10) == 1
    assert store.silences() == [Silence("s1", (("check", "web"),), T0, T0 + 60, "deploy", "ops")]
    assert store.remove_silence("s1") is True
    assert store.remove_silence("s1") is False
    store.close()


def test_commit_is_atomic(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.db")
    store.commit([], [note(1)])
    record = AlertRecord("down", "web", state=AlertState.FIRING, told=True, incident="k:9")
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([record], [note(1)])  # duplicate id: the whole transaction is rolled back
    assert store.load_states() == []
    assert store.pending() == 1
    store.close()


def alerts_config(path: Path) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "state_file": str(path),
            "rules": [{"name": "down", "check": "*", "status": "critical", "success_threshold": 2}],
            "routes": {"critical": ["pager"]},
            "group_wait": 0,
        }
    )


def result(status: Status) -> CheckResult:
    reason = Reason.OK if status == Status.OK else Reason.REFUSED
    return CheckResult("web", "http", "https://web", status, T0, 0.1, reason=reason)


async def test_restart_during_an_incident_no_duplicate_trigger_and_the_resolve_arrives(
    tmp_path: Path,
) -> None:
    path = tmp_path / "alerts.db"
    clock = Clock()
    pager = RecordingNotifier("pager", clock)
    sink = AlertSink(alerts_config(path), {"pager": pager}, "host1", clock=clock)
    await sink.consume(result(Status.CRITICAL))
    await wait_until("len(pager.delivered) == 1", lambda: len(pager.delivered) == 1)
    clock.t += 30
    await sink.consume(result(Status.OK))  # one good result of the two needed
    await sink.aclose()
    await sink.aclose()  # safe twice
    assert pager.closed == 1

    # The agent restarts mid-incident; the target is still down, then recovers.
    pager2 = RecordingNotifier("pager", clock)
    sink = AlertSink(alerts_config(path), {"pager": pager2}, "host1", clock=clock)
    for status in (Status.CRITICAL, Status.CRITICAL, Status.OK, Status.OK):
        clock.t += 30
        await sink.consume(result(status))
    await wait_until("len(pager2.delivered) == 1", lambda: len(pager2.delivered) == 1)
    await sink.aclose()
    assert [(n.event, n.dedup_key) for n in pager.delivered + pager2.delivered] == [
        (Event.TRIGGER, "mamori:host1:down:web"),
        (Event.RESOLVE, "mamori:host1:down:web"),
    ]
    assert len(pager2.attempts) == 1


async def test_restart_with_an_undelivered_resolve_delivers_it_after_its_trigger(tmp_path: Path) -> None:
    path = tmp_path / "alerts.db"
    clock = Clock()
    down = RecordingNotifier("pager", clock, lambda n, t: Delivery(Outcome.RETRY, "HTTP 503"))
    sink = AlertSink(alerts_config(path), {"pager": down}, "host1", clock=clock)
    for status in (Status.CRITICAL, Status.OK, Status.OK):
        await sink.consume(result(status))
        clock.t += 30
    await sink.aclose()
    assert down.delivered == []

    # Pager service back after the restart: both state changes go out, trigger first, once each.
    up = RecordingNotifier("pager", clock)
    clock.t += 3600
    sink = AlertSink(alerts_config(path), {"pager": up}, "host1", clock=clock)
    await sink.start()
    await wait_until("len(up.delivered) == 2", lambda: len(up.delivered) == 2)
    await sink.aclose()
    assert [n.event for n in up.delivered] == [Event.TRIGGER, Event.RESOLVE]
    assert sink.counts() == {("pager", Outcome.DELIVERED): 2}


async def test_sink_silence_api_applies_at_once(tmp_path: Path) -> None:
    clock = Clock()
    pager = RecordingNotifier("pager", clock)
    sink = AlertSink(alerts_config(tmp_path / "alerts.db"), {"pager": pager}, "host1", clock=clock)
    sink.add_silence(Silence("s1", (("check", "web"),), T0, T0 + 600))
    await sink.consume(result(Status.CRITICAL))
    assert sink.pending() == {"pager": 0}
    assert sink.remove_silence("s1") is True
    await sink.consume(result(Status.CRITICAL))
    await wait_until("len(pager.delivered) == 1", lambda: len(pager.delivered) == 1)
    await sink.aclose()


# alerts.db as the release before schema versions wrote it (PRAGMA user_version 0).
_UNVERSIONED = """
CREATE TABLE alerts (
    rule TEXT NOT NULL, "check" TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (rule, "check"));
CREATE TABLE silences (
    id TEXT PRIMARY KEY, matchers TEXT NOT NULL, starts_at REAL NOT NULL, ends_at REAL NOT NULL,
    comment TEXT NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, route TEXT NOT NULL,
    dedup_key TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
CREATE INDEX outbox_route ON outbox (route, seq);
CREATE TABLE dead (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, route TEXT NOT NULL, payload TEXT NOT NULL,
    reason TEXT NOT NULL, attempts INTEGER NOT NULL, created_at REAL NOT NULL, died_at REAL NOT NULL);
"""


async def test_a_state_file_written_before_schema_versions_opens_migrated_and_delivers_in_order(
    tmp_path: Path,
) -> None:
    """An alerts.db of the previous release: its undelivered notifications (with their retry
    schedule, moved to the route's cursor), dead letters and alert states are kept; the file gets
    version 2; the head's Retry-After is waited out and the route then delivers in order."""
    from alerts.delivery import Deliverer
    from alerts.store import notification_to_json
    from tests.alerts.test_delivery import Clock as FakeClock

    path = tmp_path / "alerts.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_UNVERSIONED)
    record = AlertRecord("down", "web", "https://web", AlertState.FIRING, told=True, incident="k:1")
    db.execute("INSERT INTO alerts VALUES (?, ?, ?)", ("down", "web", json.dumps(record.to_json())))
    for n, attempts, due, error in ((note(1), 3, T0 + 30, "HTTP 429"), (note(2, Event.RESOLVE), 0, T0, "")):
        db.execute(
            "INSERT INTO outbox (id, route, dedup_key, payload, attempts, next_attempt_at, last_error,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (n.id, n.route, n.dedup_key, notification_to_json(n), attempts, due, error, T0),
        )
    db.execute(
        "INSERT INTO dead (id, route, payload, reason, attempts, created_at, died_at)"
        " VALUES ('n0', 'pager', ?, 'HTTP 400', 1, ?, ?)",
        (notification_to_json(note(0)), T0, T0),
    )
    db.close()

    store = AlertStore(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert store.load_states() == [record]
    assert [(i.id, i.attempts, i.next_attempt_at, i.last_error) for i in store.head("pager")] == [
        ("n1", 3, T0 + 30, "HTTP 429"),
        ("n2", 0, T0, ""),
    ]
    assert [(n.id, reason) for n, reason in store.dead()] == [("n0", "HTTP 400")]

    clock = FakeClock(T0)
    pager = RecordingNotifier("pager", clock)
    d = Deliverer("pager", pager, store, clock)
    assert await d.step() == T0 + 30  # the Retry-After given before the upgrade
    assert pager.attempts == []
    clock.t = T0 + 30
    assert await d.step() is None
    assert [n.id for n in pager.delivered] == ["n1", "n2"]
    store.close()
    store = AlertStore(path)  # and opens again as version 2
    assert store.pending() == 0 and store.db.execute("PRAGMA user_version").fetchone()[0] == 2
    store.close()


async def test_a_rejection_that_cannot_be_recorded_holds_the_route_and_is_recorded_once_there_is_space(
    small_fs: SmallFs,
) -> None:
    """The notification log on a full disk: a REJECTED head cannot be dead-lettered yet, so it is
    neither sent again nor overtaken; once there is space its dead letter is written and the
    route goes on."""
    from agent.delivery.log import UNSAVED_RETRY
    from alerts.delivery import Deliverer
    from tests.alerts.test_delivery import Clock as FakeClock

    store = AlertStore(small_fs.path / "alerts.db")
    store.commit([], [note(1), note(2, Event.RESOLVE)])
    clock = FakeClock(T0)

    def script(n: Notification, now: float) -> Delivery:
        return Delivery(Outcome.REJECTED, "HTTP 400") if n.id == "n1" else Delivery(Outcome.DELIVERED)

    pager = RecordingNotifier("pager", clock, script)
    d = Deliverer("pager", pager, store, clock)
    small_fs.fill()
    try:
        assert await d.step() == T0 + UNSAVED_RETRY
        assert await d.step() == T0 + UNSAVED_RETRY  # still full: held, nothing sent
        assert [nid for _, nid, _ in pager.attempts] == ["n1"] and store.dead() == []
    finally:
        small_fs.free()
    assert await d.step() is None
    assert [nid for _, nid, _ in pager.attempts] == ["n1", "n2"]
    assert [(n.id, reason) for n, reason in store.dead()] == [("n1", "HTTP 400")]
    store.close()
    store = AlertStore(small_fs.path / "alerts.db")
    assert store.pending() == 0 and [n.id for n, _ in store.dead()] == ["n1"]
    store.close()
