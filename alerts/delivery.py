"""One `Deliverer` per route: outbox → `Notifier`, in order, with retries.

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
  the page within 10 s of the service's recovery (exporters keep the 5 min cap of agent/retry.py).
- REJECTED is never retried: the row moves to the store's `dead` table and is logged.
- Memory is bounded: the outbox is read `page_size` rows at a time.
- Only what is stored is sent (the sink stores before it wakes us). An outcome the store cannot
  record (disk full) is kept in memory: a delivered or rejected notification is then never sent
  again — and nothing behind it is sent before its outcome is stored, so a crash cannot resend a
  trigger after its resolve — while a retry waits out its deadline in memory. The store's health
  (agent/statefile.py) logs that once and makes `/ready` answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from agent.logs import FailureLog
from agent.retry import RETRY_AFTER_CAP, backoff
from agent.statefile import is_environmental
from alerts.model import Delivery, Notification, Notifier, Outcome
from alerts.store import AlertStore

log = logging.getLogger("mamori.alerts.delivery")

PAGE_BACKOFF_CAP = 10.0  # seconds: the longest a page waits after its service recovers
UNSAVED_RETRY = 5.0  # seconds between attempts to record an outcome the store could not


@dataclass(frozen=True)
class _Unsaved:
    """An outcome of a send that the store could not record yet (see the module docstring)."""

    save: Callable[[], None]  # the store call that failed
    outcome: Outcome
    attempts: int = 0  # RETRY: attempts so far
    due: float = 0.0  # RETRY: when it is next due


class Deliverer:
    """Delivers one route's outbox through its notifier. `run()` is the task; `step()` does one
    pass and is what tests drive with a fake clock.

    `counts[outcome]` counts send attempts by outcome (a notifier exception counts as RETRY and in
    `errors`); the lead exports them as `mamori_notifications_total{route,outcome}`."""

    def __init__(
        self,
        route: str,
        notifier: Notifier,
        store: AlertStore,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        page_size: int = 50,
    ) -> None:
        self.route = route
        self.notifier = notifier
        self.store = store
        self.clock = clock
        self.rand = rand
        self.page_size = page_size
        self.counts: Counter[Outcome] = Counter()
        self.errors = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsaved: dict[str, _Unsaved] = {}  # notification id -> outcome not stored yet
        self._failures = FailureLog(log)  # a failing pass: first, then once a minute

    def wake(self) -> None:
        """New notifications are in the outbox. Never blocks."""
        self._wake.set()

    async def step(self) -> float | None:
        """Send what is due, in order. Returns when the head is next due (None: outbox empty)."""
        while True:
            page = self.store.head(self.route, self.page_size)
            if not page:
                return None
            for item in page:
                now = self.clock()
                attempts, due = item.attempts, item.next_attempt_at
                unsaved = self._unsaved.get(item.id)
                if unsaved is not None:
                    if self._record(item.id, unsaved):
                        break  # recorded at last: re-read what the store now says of it
                    if unsaved.outcome is not Outcome.RETRY:
                        return now + UNSAVED_RETRY  # sent already: never again, nothing behind it yet
                    attempts, due = unsaved.attempts, unsaved.due
                if due > now:
                    return due
                delivery = await self._send(item.notification)
                self.counts[delivery.outcome] += 1
                now = self.clock()
                if delivery.outcome == Outcome.DELIVERED:
                    if not self._record(
                        item.id, _Unsaved(functools.partial(self.store.delivered, item.id), Outcome.DELIVERED)
                    ):
                        return now + UNSAVED_RETRY
                elif delivery.outcome == Outcome.REJECTED:
                    log.error(
                        "route %s rejected notification %s (%s %s): %s",
                        self.route,
                        item.id,
                        item.notification.event.value,
                        item.notification.dedup_key,
                        delivery.detail,
                    )
                    reject = functools.partial(self.store.reject, item, delivery.detail or "rejected", now)
                    if not self._record(item.id, _Unsaved(reject, Outcome.REJECTED)):
                        return now + UNSAVED_RETRY
                else:
                    attempts += 1
                    if delivery.retry_after is not None:
                        delay = min(max(delivery.retry_after, 0.0), RETRY_AFTER_CAP)
                    else:
                        delay = backoff(attempts, self.rand, cap=PAGE_BACKOFF_CAP)
                    retry = functools.partial(
                        self.store.retry, item.id, attempts, now + delay, delivery.detail
                    )
                    self._record(item.id, _Unsaved(retry, Outcome.RETRY, attempts, now + delay))
                    if attempts == 1 or attempts % 10 == 0:  # an outage must not flood the log
                        log.warning(
                            "route %s: attempt %d failed (%s), retrying in %.1fs",
                            self.route,
                            attempts,
                            delivery.detail,
                            delay,
                        )
                    return now + delay

    def _record(self, notification_id: str, outcome: _Unsaved) -> bool:
        """Store an outcome; if the store cannot be written (disk full), keep it in memory (False)."""
        try:
            outcome.save()
        except (sqlite3.Error, OSError) as exc:
            if not is_environmental(exc):
                raise
            self._unsaved[notification_id] = outcome  # the store's health has logged it
            return False
        self._unsaved.pop(notification_id, None)
        return True

    async def _send(self, notification: Notification) -> Delivery:
        try:
            return await self.notifier.send(notification)
        except Exception as exc:  # the protocol says never raise; a bug must not stop the route
            self.errors += 1
            log.error("notifier %s raised %s: %s", self.route, type(exc).__name__, exc)
            return Delivery(Outcome.RETRY, f"notifier raised {type(exc).__name__}")

    async def run(self) -> None:
        """Deliver until cancelled, sleeping until the head is due or `wake()` is called."""
        while True:
            self._wake.clear()
            try:
                due = await self.step()
            except Exception as exc:  # e.g. a damaged page: keep the task alive and retry
                self.errors += 1
                error = f"{type(exc).__name__}: {exc}"
                self._failures.failed(
                    error, "route %s: delivery pass failed: %s (retrying every 5s)", self.route, error
                )
                due = self.clock() + UNSAVED_RETRY
            else:
                self._failures.ok()
            timeout = None if due is None else max(0.0, due - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a stop()
                    await self._wake.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"alerts:deliver:{self.route}")

    async def stop(self) -> None:
        """Cancel the task; an in-flight send is abandoned and resent after restart. Safe twice."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
