"""A notifier route as a consumer of the one delivery loop (agent/delivery/pump.py).

`Deliverer` = the route's notifier (`RouteConsumer`, one notification at a time) + the route's
share of alerts.db's outbox (`NotificationLog`) + the one `Pump`, with a page's backoff cap.

Guarantees:
- Strict FIFO per route: the head of a route's outbox is sent before anything behind it, so a
  resolve never overtakes its trigger (nor a reminder its trigger). A route whose service is down
  or rate-limiting waits as a whole — which is what a 429 asks for — while other routes, each with
  its own task, go on.
- At-least-once: a row leaves the outbox only after DELIVERED or REJECTED. A crash between the
  service accepting and the row being deleted resends it after restart; the stable `dedup_key`
  makes that harmless for PagerDuty/Alertmanager.
- RETRY waits `retry_after` when the service gave one (capped at 1 h), else exponential backoff
  with jitter: base 1 s doubling to a `PAGE_BACKOFF_CAP` of 10 s, times a random factor in
  [0.5, 1). A page is worth a request every few seconds: an outage of any length is followed by
  the page within 10 s of the service's recovery (exporters keep the 5 min cap of
  agent/backoff.py). The head's attempts and next attempt are in its row: a restart keeps them.
- REJECTED is never retried: the row moves to the store's `dead` table and is logged.
- Only what is stored is sent (the sink stores before it wakes us). An outcome the store cannot
  record (disk full) is kept in memory: a delivered or rejected notification is then never sent
  again — and nothing behind it is sent before its outcome is stored (`DurableLog.hold`), so
  a crash cannot resend a trigger after its resolve — while a retry waits out its deadline in
  memory. The store's health (agent/statefile.py) logs that once and makes `/ready` answer 503.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

from agent.delivery.outcome import Outcome, PushResult
from agent.delivery.pump import Pump
from alerts.model import Notifier
from alerts.store import AlertStore, OutboxItem

log = logging.getLogger("mamori.alerts.delivery")

PAGE_BACKOFF_CAP = 10.0  # seconds: the longest a page waits after its service recovers


class RouteConsumer:
    """A notifier as a delivery consumer: one notification per push, its `Delivery` the answer."""

    batch = 1  # strict FIFO: the head, alone

    def __init__(self, route: str, notifier: Notifier) -> None:
        self.name = route
        self.notifier = notifier

    async def start(self) -> None:
        """Nothing to start: a notifier connects per request."""

    async def push(self, entries: Sequence[OutboxItem]) -> PushResult:
        return PushResult.of(await self.notifier.send(entries[0].notification))

    async def aclose(self) -> None:
        """Nothing: the alert sink owns and closes its notifiers."""


class NotificationLog:
    """One route's view of the alert store's notifications (a strict, addressed `DurableLog`,
    agent/delivery/log.py), as the pump's `Log`: entries decoded, a rejection logged. Never
    raises for the disk: an outcome the store cannot record yet is kept by the log, which holds
    the route until it is recorded."""

    def __init__(self, store: AlertStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def read(self, consumer: str, limit: int) -> list[OutboxItem]:
        return self.store.head(consumer, limit)

    def settle(self, consumer: str, entries: Sequence[OutboxItem], result: PushResult) -> None:
        item = entries[0]
        if not result.dropped:
            self.store.log.ack(consumer, item.seq)
            return
        log.error(
            "route %s rejected notification %s (%s %s): %s",
            consumer,
            item.id,
            item.notification.event.value,
            item.notification.dedup_key,
            result.detail,
        )
        self.store.reject(item, result.detail or "rejected", self.clock())

    def schedule(self, consumer: str) -> tuple[float, int]:
        return self.store.log.schedule(consumer)

    def set_schedule(self, consumer: str, next_attempt_at: float, streak: int, error: str = "") -> None:
        self.store.log.set_schedule(consumer, next_attempt_at, streak, error)

    def hold(self, consumer: str) -> float:
        return self.store.log.hold(consumer)

    def depth(self, consumer: str) -> int:
        return self.store.log.depth(consumer)


class Deliverer:
    """Delivers one route's outbox through its notifier. `run()` (via `start()`) is the pump's
    task; `step()` sends what is due and is what tests drive with a fake clock.

    `counts[outcome]` counts send attempts by outcome (a notifier exception counts as RETRY and in
    `errors`); the lead exports them as `mamori_notifications_total{route,outcome}`."""

    def __init__(
        self,
        route: str,
        notifier: Notifier,
        store: AlertStore,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.route = route
        self.notifier = notifier
        self.store = store
        self.log = NotificationLog(store, clock)
        self.pump = Pump(
            RouteConsumer(route, notifier),
            self.log,
            clock,
            rand,
            clock,
            label=f"route {route}",
            backoff_cap=PAGE_BACKOFF_CAP,
            logger=log,
        )

    @property
    def clock(self) -> Callable[[], float]:
        return self.log.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.log.clock = self.pump.clock = self.pump.wall = clock

    @property
    def counts(self) -> Counter[Outcome]:
        return self.pump.counts

    @property
    def errors(self) -> int:
        return self.pump.errors

    def wake(self) -> None:
        """New notifications are in the outbox. Never blocks."""
        self.pump.wake()

    async def step(self) -> float | None:
        """Send what is due, in order. Returns when the head is next due (None: outbox empty)."""
        while True:
            now = self.clock()
            if (hold := self.log.hold(self.route)) > 0:
                return now + hold
            if not self.store.head(self.route, 1):
                return None
            if self.pump.not_before > now:
                return self.pump.not_before
            delay = await self.pump.step()
            if delay is None:
                return None
            if delay > 0:
                return self.clock() + delay

    def start(self) -> None:
        self.pump.start()

    async def stop(self) -> None:
        """Cancel the task; an in-flight send is abandoned and resent after restart. Safe twice."""
        await self.pump.stop()
