"""Deliverer: order, retries (5xx for minutes, 429 bursts), rejects, independent routes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.backoff import backoff
from alerts.delivery import Deliverer
from alerts.model import Delivery, Event, Notification, Outcome, Severity
from alerts.store import AlertStore

T0 = 1_700_000_000.0

Script = Callable[[Notification, float], Delivery]


class RecordingNotifier:
    """A `Notifier` double: records every attempt; `script` decides each answer (default DELIVERED)."""

    def __init__(self, name: str, clock: Callable[[], float], script: Script | None = None) -> None:
        self.name = name
        self.clock = clock
        self.script = script
        self.attempts: list[tuple[float, str, Outcome]] = []
        self.delivered: list[Notification] = []
        self.closed = 0

    async def send(self, notification: Notification) -> Delivery:
        delivery = self.script(notification, self.clock()) if self.script else Delivery(Outcome.DELIVERED)
        self.attempts.append((self.clock(), notification.id, delivery.outcome))
        if delivery.outcome == Outcome.DELIVERED:
            self.delivered.append(notification)
        return delivery

    async def aclose(self) -> None:
        self.closed += 1


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def note(i: int, event: Event, key: str, route: str = "pager", at: float = T0) -> Notification:
    return Notification(
        f"n{i}", route, event, key, "down", Severity.CRITICAL, f"{event} {key}", created_at=at
    )


async def drive(d: Deliverer, clock: Clock, limit: int = 10_000) -> None:
    """Run the deliverer on the fake clock until its outbox is empty."""
    for _ in range(limit):
        due = await d.step()
        if due is None:
            return
        clock.t = max(clock.t, due)
    raise AssertionError("outbox never drained")


def test_backoff_doubles_from_one_second_to_a_five_minute_cap_with_jitter() -> None:
    assert [backoff(n, lambda: 0.0) for n in range(1, 12)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        64.0,
        128.0,
        150.0,
        150.0,
    ]
    assert backoff(1, lambda: 1.0) == 1.0
    assert backoff(50, lambda: 1.0) == 300.0


async def test_5xx_for_minutes_then_429_bursts_every_change_exactly_once_in_order(tmp_path: Path) -> None:
    clock = Clock()
    store = AlertStore(tmp_path / "alerts.db")
    notes = [
        note(1, Event.TRIGGER, "k:a"),
        note(2, Event.TRIGGER, "k:b"),
        note(3, Event.RESOLVE, "k:a"),
        note(4, Event.REMIND, "k:b"),
        note(5, Event.RESOLVE, "k:b"),
    ]
    store.commit([], notes)
    calls = 0

    def script(n: Notification, now: float) -> Delivery:
        nonlocal calls
        calls += 1
        if now < T0 + 600:  # ten minutes of 503
            return Delivery(Outcome.RETRY, "HTTP 503")
        if calls % 2 == 0:  # then every other call is rate-limited
            return Delivery(Outcome.RETRY, "HTTP 429", retry_after=7.0)
        return Delivery(Outcome.DELIVERED)

    pager = RecordingNotifier("pager", clock, script)
    d = Deliverer("pager", pager, store, clock, rand=lambda: 0.0)
    await drive(d, clock)

    # 503s: backoff 0.5, 1, 2, 4, then the page cap (10 s × the jitter factor 0.5 with rand=0),
    # all on the head.
    first = [t - T0 for t, nid, outcome in pager.attempts if outcome == Outcome.RETRY and t < T0 + 600]
    assert first == [0.0, 0.5, 1.5, 3.5, 7.5, *(12.5 + 5 * i for i in range(118))]
    assert first[-1] == 597.5
    assert {nid for t, nid, _ in pager.attempts if t < T0 + 600} == {"n1"}
    # Each state change delivered exactly once, in the order it was made.
    assert [n.id for n in pager.delivered] == ["n1", "n2", "n3", "n4", "n5"]
    # The page follows the recovery at 600 s within the cap; then 429: Retry-After 7 s honoured.
    after = [(t - T0, nid, o.value) for t, nid, o in pager.attempts if t >= T0 + 600]
    assert after == [
        (602.5, "n1", "retry"),
        (609.5, "n1", "delivered"),
        (609.5, "n2", "retry"),
        (616.5, "n2", "delivered"),
        (616.5, "n3", "retry"),
        (623.5, "n3", "delivered"),
        (623.5, "n4", "retry"),
        (630.5, "n4", "delivered"),
        (630.5, "n5", "retry"),
        (637.5, "n5", "delivered"),
    ]
    assert dict(d.counts) == {Outcome.RETRY: 128, Outcome.DELIVERED: 5}
    assert store.pending() == 0
    store.close()


async def test_rejected_goes_to_dead_and_is_never_retried(tmp_path: Path) -> None:
    clock = Clock()
    store = AlertStore(tmp_path / "alerts.db", dead_limit=2)
    store.commit([], [note(i, Event.TRIGGER, f"k:{i}") for i in range(1, 6)])

    def script(n: Notification, now: float) -> Delivery:
        if n.id in ("n1", "n2", "n4"):
            return Delivery(Outcome.REJECTED, "HTTP 400 invalid routing key")
        return Delivery(Outcome.DELIVERED)

    pager = RecordingNotifier("pager", clock, script)
    d = Deliverer("pager", pager, store, clock)
    await drive(d, clock)
    assert [nid for _, nid, _ in pager.attempts] == ["n1", "n2", "n3", "n4", "n5"]
    assert [n.id for n in pager.delivered] == ["n3", "n5"]
    assert [(n.id, reason) for n, reason in store.dead()] == [
        ("n4", "HTTP 400 invalid routing key"),
        ("n2", "HTTP 400 invalid routing key"),
    ]  # bounded: the oldest dead letter was dropped
    assert dict(d.counts) == {Outcome.REJECTED: 3, Outcome.DELIVERED: 2}
    assert await d.step() is None
    assert len(pager.attempts) == 5
    store.close()


async def test_a_down_route_never_blocks_another_route(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.db")
    import time

    now = time.time()
    notes = [note(i, Event.TRIGGER, f"k:{i}", route=r, at=now) for i, r in enumerate(["down", "up"] * 3)]
    store.commit([], notes)
    down = RecordingNotifier(
        "down", time.time, lambda n, t: Delivery(Outcome.RETRY, "HTTP 503", retry_after=60)
    )
    up = RecordingNotifier("up", time.time)
    deliverers = [Deliverer("down", down, store), Deliverer("up", up, store)]
    for d in deliverers:
        d.start()
    for _ in range(200):
        if len(up.delivered) == 3:
            break
        await asyncio.sleep(0.01)
    assert [n.id for n in up.delivered] == ["n1", "n3", "n5"]
    assert [nid for _, nid, _ in down.attempts] == ["n0"]  # waiting 60 s on its head, alone
    for d in deliverers:
        await d.stop()
        await d.stop()
    assert store.pending("down") == 3
    store.close()


async def test_a_notifier_that_raises_is_retried_not_fatal(tmp_path: Path) -> None:
    clock = Clock()
    store = AlertStore(tmp_path / "alerts.db")
    store.commit([], [note(1, Event.TRIGGER, "k:a")])
    raised = False

    def script(n: Notification, now: float) -> Delivery:
        nonlocal raised
        if not raised:
            raised = True
            raise RuntimeError("bug")
        return Delivery(Outcome.DELIVERED)

    pager = RecordingNotifier("pager", clock, script)
    d = Deliverer("pager", pager, store, clock, rand=lambda: 0.0)
    await drive(d, clock)
    assert [n.id for n in pager.delivered] == ["n1"]
    assert (d.errors, dict(d.counts), clock.t - T0) == (1, {Outcome.RETRY: 1, Outcome.DELIVERED: 1}, 0.5)
    store.close()


def pd_note(i: int, event: Event, key: str) -> Notification:
    """A notification as the engine makes it, for the real PagerDuty notifier."""
    return Notification(
        f"n{i}",
        "pager",
        event,
        key,
        "pg_primary_down",
        Severity.CRITICAL,
        f"db CRITICAL on {key}: primary_down (connection refused)",
        details={"check": "db", "target": key, "reason": "primary_down", "agent": "agent1"},
        created_at=T0,
    )


async def test_real_pagerduty_notifier_5xx_for_minutes_429_bursts_and_a_restart(tmp_path: Path) -> None:
    """The real notifier and the strict fake on a shared fake clock: 503 for ten minutes, an agent
    restart in the middle of it, then two bursts of 429 (with and without Retry-After). Every
    state change reaches PagerDuty exactly once, in order, and the outage costs a dozen attempts,
    not thousands."""
    from alerts.notifiers.config import PagerDutyConfig
    from alerts.notifiers.pagerduty import PagerDutyNotifier
    from tests.fakes.pagerduty import fake_pagerduty

    clock = Clock()
    async with fake_pagerduty() as pd:
        pd.clock = clock
        pd.fail_for(600, status=503)
        pd.throttle(3, retry_after=7)  # the first burst meets the first requests after the outage
        cfg = PagerDutyConfig(type="pagerduty", name="pager", routing_key=pd.routing_key, url=pd.url)

        store = AlertStore(tmp_path / "alerts.db")
        store.commit([], [pd_note(1, Event.TRIGGER, "k:a"), pd_note(2, Event.TRIGGER, "k:b")])
        notifier = PagerDutyNotifier(cfg)
        d = Deliverer("pager", notifier, store, clock, rand=lambda: 0.0)
        while clock.t < T0 + 200:  # some minutes into the outage...
            due = await d.step()
            assert due is not None
            clock.t = due
        attempts_before_restart = pd.attempts
        await notifier.aclose()  # ...the agent restarts, its outbox on disk
        store.close()

        store = AlertStore(tmp_path / "alerts.db")
        assert store.pending("pager") == 2
        # While it was down the alerts moved on: a resolved, b reminded, then resolved.
        store.commit(
            [],
            [
                pd_note(3, Event.RESOLVE, "k:a"),
                pd_note(4, Event.REMIND, "k:b"),
                pd_note(5, Event.RESOLVE, "k:b"),
            ],
        )
        notifier = PagerDutyNotifier(cfg)
        d = Deliverer("pager", notifier, store, clock, rand=lambda: 0.0)
        second_burst = False
        for _ in range(1000):
            due = await d.step()
            if due is None:
                break
            if len(pd.events) == 2 and not second_burst:
                pd.throttle(2, retry_after=None)  # a burst without Retry-After: backoff
                second_burst = True
            clock.t = max(clock.t, due)
        await notifier.aclose()

    assert pd.rejected == []
    assert pd.state_changes == [
        ("k:a", "triggered"),
        ("k:b", "triggered"),
        ("k:a", "resolved"),
        ("k:b", "resolved"),
    ]
    assert [(e["event_action"], e["dedup_key"]) for e in pd.events] == [
        ("trigger", "k:a"),
        ("trigger", "k:b"),
        ("resolve", "k:a"),
        ("trigger", "k:b"),  # the reminder: appended to b's open incident, not a new one
        ("resolve", "k:b"),
    ]
    # Ten minutes of 503 on the head cost the backoff schedule, not a request per step: with the
    # page cap of 10 s (5 s at this jitter) 43 before the restart (at 0, .5, 1.5, 3.5, 7.5, 12.5,
    # 17.5, … 197.5 s), then the fresh process starts its backoff over: about one every 5 s.
    assert attempts_before_restart == 43
    assert 120 <= pd.attempts <= 140, pd.attempts
    assert dict(d.counts)[Outcome.DELIVERED] == 5
    assert store.pending() == 0 and store.dead() == []
    store.close()


@pytest.mark.parametrize("jitter", [0.0, 0.999])
async def test_a_page_follows_the_services_recovery_within_ten_seconds(tmp_path: Path, jitter: float) -> None:
    """Two minutes of 503 from PagerDuty: the backoff of a page is capped (10 s), so the trigger
    reaches PagerDuty at most 10 s after it recovers, not minutes later."""
    from alerts.delivery import PAGE_BACKOFF_CAP
    from alerts.notifiers.config import PagerDutyConfig
    from alerts.notifiers.pagerduty import PagerDutyNotifier
    from tests.fakes.pagerduty import fake_pagerduty

    clock = Clock()
    async with fake_pagerduty() as pd:
        pd.clock = clock
        pd.fail_for(120, status=503)
        cfg = PagerDutyConfig(type="pagerduty", name="pager", routing_key=pd.routing_key, url=pd.url)
        store = AlertStore(tmp_path / "alerts.db")
        store.commit([], [pd_note(1, Event.TRIGGER, "k:a")])
        notifier = PagerDutyNotifier(cfg)
        d = Deliverer("pager", notifier, store, clock, rand=lambda: jitter)
        while (due := await d.step()) is not None:
            clock.t = due
        await notifier.aclose()
        store.close()
    assert pd.state_changes == [("k:a", "triggered")]
    late = clock.t - (T0 + 120)
    assert 0 <= late <= PAGE_BACKOFF_CAP == 10.0, late
