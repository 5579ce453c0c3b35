"""`AlertSink`: the pipeline sink that runs the agent's own alerting.

consume(result) → engine.observe → store.commit (states + outbox, one transaction) → wake the
route deliverers. A ticker (default once a second) flushes grouped triggers, ends maintenance
windows and flapping, sends reminders and re-reads silences written by the CLI.

What the engine has "told" never gets ahead of what is durably queued: when a commit fails
(disk full, unwritable file), the changed alert records and their notifications stay in memory,
in order, and the next commit (at the latest the next tick) stores them first, with whatever came
after; nothing is sent before it is stored. So a trigger made while the disk was full is sent
once it has space, before its resolve, and a resolve is never sent for a trigger that was not.
Memory is bounded (`PENDING_LIMIT` notifications): past it, reminders go first, then the oldest;
a trigger dropped takes the rest of its incident with it (never a lone resolve); every loss is
counted (`mamori_alert_notifications_dropped_total{route,reason}`) and logged once per spell.
The file's `health` (agent/statefile.py) logs one ERROR when writes start failing and one INFO
when they succeed again, and makes `/ready` answer 503 meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping

from agent.model import CheckRemoved, CheckResult
from agent.statefile import is_environmental
from agent.statehealth import StateFileHealth, loss_reason
from alerts.config import AlertsConfig
from alerts.delivery import Deliverer
from alerts.engine import AlertEngine, AlertKey, AlertRecord, Silence
from alerts.model import Event, Notification, Notifier, Outcome
from alerts.store import AlertStore

log = logging.getLogger("mamori.alerts")

SILENCE_REFRESH = 10.0  # seconds between re-reads of silences (the CLI writes them to the file)
PENDING_LIMIT = 1000  # notifications kept in memory while the state file cannot be written


class AlertSink:
    """Pipeline `Sink` (name "alerts"). Owns the store, the deliverers and the `notifiers` given
    (it closes them). Opens the state file at construction; tasks start on `start()` or on the
    first `consume()`. `aclose()` persists state and stops everything; safe to call twice and
    without `start()`. Undelivered notifications stay in the outbox for the next run."""

    name = "alerts"

    def __init__(
        self,
        config: AlertsConfig,
        notifiers: Mapping[str, Notifier],
        agent: str,
        guard_checks: Collection[str] = (),
        clock: Callable[[], float] = time.time,
        tick_interval: float = 1.0,
        store: AlertStore | None = None,
        health: StateFileHealth | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.tick_interval = tick_interval
        self.store = (
            store if store is not None else AlertStore(config.state_file, config.dead_letter_limit, health)
        )
        self._purge_silences()
        self.engine = AlertEngine(
            config,
            agent,
            clock,
            guard_checks,
            states=self.store.load_states(),
            silences=self.store.silences(),
        )
        self.notifiers = dict(notifiers)
        routes = {name for names in config.routes.values() for name in names} | set(self.store.routes())
        self.deliverers: dict[str, Deliverer] = {}
        for route in sorted(routes):
            notifier = self.notifiers.get(route)
            if notifier is None:
                log.warning("route %s has undelivered notifications but no notifier: kept", route)
                continue
            self.deliverers[route] = Deliverer(route, notifier, self.store, clock)
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        # Not yet stored (the last commit failed): records by key (the latest state is what is
        # written) and notifications in the order they were made.
        self._pending_records: dict[AlertKey, AlertRecord] = {}
        self._pending: list[Notification] = []
        self._loss_reason = "write_error"
        self._failing = False  # the last commit failed: only the tick retries
        self._loss_logged = False
        self.dropped: Counter[tuple[str, str]] = Counter()  # (route, reason): never stored

    async def start(self) -> None:
        """Start the deliverers (which send what a previous run left) and the ticker. Idempotent."""
        if self._ticker is not None or self._closed:
            return
        for deliverer in self.deliverers.values():
            deliverer.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name="alerts:tick")

    async def consume(self, result: CheckResult) -> None:
        if self._closed:
            return
        if self._ticker is None:
            await self.start()
        self._commit(self.engine.observe(result), retry=False)

    async def remove(self, event: CheckRemoved) -> None:
        """A reload removed the check: the engine forgets what it learned from its results (its
        alerts stay as they are, as they would across a restart)."""
        self.engine.forget(event.check)

    def _commit(self, notifications: list[Notification], *, retry: bool = True) -> bool:
        """Store what changed (and what earlier commits could not), then wake the deliverers.
        False when the store cannot be written: all of it is kept for the next commit. While a
        failure is outstanding, only a `retry` commit (the tick's, once a second) tries again, so
        a busy agent on a full disk does not rewrite everything it holds for every result."""
        for record in self.engine.take_dirty():
            self._pending_records[record.key] = record
        self._pending += notifications
        if not self._pending_records and not self._pending:
            return True
        if self._failing and not retry:
            self._bound()
            return False
        try:
            # durable BEFORE any send is attempted
            self.store.commit(list(self._pending_records.values()), self._pending)
        except (sqlite3.Error, OSError) as exc:
            if not is_environmental(exc):
                raise
            self._loss_reason = loss_reason(exc)  # the store's health has logged it
            self._failing = True
            self._bound()
            return False
        self._failing = False
        stored, self._pending, self._pending_records = self._pending, [], {}
        self._loss_logged = False
        for route in {n.route for n in stored}:
            deliverer = self.deliverers.get(route)
            if deliverer is not None:
                deliverer.wake()
        return True

    def flush(self) -> bool:
        """Store what waits in memory now (a reload does this first). True when nothing waits."""
        if self._closed:
            return not (self._pending or self._pending_records)
        return self._commit([], retry=True)

    def _bound(self) -> None:
        """Keep at most PENDING_LIMIT notifications: reminders and flapping notices go first
        (they repeat what an earlier trigger said), then the oldest. A first trigger dropped
        takes its whole incident along — its other routes' triggers, reminders and resolve — and
        the engine forgets it was told, so an alert still firing is paged afresh once the file can
        be written, and a resolve is never sent for a trigger that was not."""
        excess = len(self._pending) - PENDING_LIMIT
        if excess <= 0:
            return
        repeats = [i for i, n in enumerate(self._pending) if _repeats(n)][:excess]
        for i in reversed(repeats):
            self._lose(self._pending.pop(i))
        while len(self._pending) > PENDING_LIMIT:
            oldest = self._pending.pop(0)
            self._lose(oldest)
            if oldest.event is Event.TRIGGER:
                self._drop_incident(oldest.dedup_key)

    def _drop_incident(self, key: str) -> None:
        """Drop what is pending of the incident `key` whose trigger was dropped, up to and with
        its resolve (a trigger after that opens a new incident: kept). If no resolve was pending,
        the incident is still open for the engine: it forgets having told it."""
        kept: list[Notification] = []
        dropping, closed = True, False
        for n in self._pending:
            if dropping and n.dedup_key == key and closed and n.event is Event.TRIGGER:
                dropping = False  # a new incident under the same key
            if dropping and n.dedup_key == key:
                self._lose(n)
                closed = closed or n.event is Event.RESOLVE
            else:
                kept.append(n)
        self._pending = kept
        if not closed:
            self.engine.untell(key)

    def _lose(self, n: Notification) -> None:
        self.dropped[(n.route, self._loss_reason)] += 1
        if not self._loss_logged:
            self._loss_logged = True
            log.error(
                "alert state file %s still cannot be written and %d notifications wait: dropping "
                "the oldest (%s %s on route %s), counted in mamori_alert_notifications_dropped_total",
                self.store.path,
                PENDING_LIMIT,
                n.event.value,
                n.dedup_key,
                n.route,
            )

    def _purge_silences(self) -> None:
        try:
            self.store.purge_silences(self.clock())
        except (sqlite3.Error, OSError) as exc:
            if not is_environmental(exc):
                raise  # a full disk only delays the purge (the store's health logged it)

    async def _tick_loop(self) -> None:
        last_refresh = self.clock()
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                now = self.clock()
                if now - last_refresh >= SILENCE_REFRESH:
                    last_refresh = now
                    self._purge_silences()
                    self.engine.set_silences(self.store.silences())
                self._commit(self.engine.tick())  # also retries what a failed commit kept
            except Exception as exc:  # keep ticking: a bug here must not end alerting for good
                log.error("alert tick failed: %s: %s", type(exc).__name__, exc)

    def add_silence(self, silence: Silence) -> None:
        """Persist a silence and apply it at once."""
        self.store.add_silence(silence)
        self.engine.set_silences(self.store.silences())

    def remove_silence(self, silence_id: str) -> bool:
        removed = self.store.remove_silence(silence_id)
        self.engine.set_silences(self.store.silences())
        return removed

    def counts(self) -> dict[tuple[str, Outcome], int]:
        """Send attempts by (route, outcome), for the agent's metrics."""
        return {
            (route, outcome): n for route, d in self.deliverers.items() for outcome, n in d.counts.items()
        }

    def pending(self) -> dict[str, int]:
        """Undelivered notifications by route (outbox depth), those not stored yet included."""
        unstored = Counter(n.route for n in self._pending)
        return {route: self.store.pending(route) + unstored[route] for route in self.deliverers}

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        try:
            stored = self._commit([])  # persist any state the last tick changed
        except Exception as exc:
            stored = False
            log.error("alert state not saved on close: %s: %s", type(exc).__name__, exc)
        if not stored and (self._pending or self._pending_records):
            # A restart re-evaluates from the state last stored, so an alert still failing then
            # pages again; what changed meanwhile and cleared is lost, and counted.
            log.error(
                "alert state file %s cannot be written: %d alert changes and %d notifications "
                "not stored at stop (counted in mamori_alert_notifications_dropped_total)",
                self.store.path,
                len(self._pending_records),
                len(self._pending),
            )
            for n in self._pending:
                self.dropped[(n.route, self._loss_reason)] += 1
            self._pending, self._pending_records = [], {}
        for deliverer in self.deliverers.values():
            await deliverer.stop()
        for name, notifier in self.notifiers.items():
            try:
                await notifier.aclose()
            except Exception as exc:
                log.error("notifier %s failed to close: %s: %s", name, type(exc).__name__, exc)
        self.store.close()


def _repeats(n: Notification) -> bool:
    """A reminder or a flapping notice: it repeats what the incident's trigger said."""
    return n.event is Event.REMIND or (n.event is Event.TRIGGER and n.details.get("flapping") == "true")
