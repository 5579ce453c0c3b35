"""`AlertSink`: the pipeline sink that runs the agent's own alerting.

consume(result) → engine.observe → store.commit (states + outbox, one transaction) → wake the
route deliverers. A ticker (default once a second) flushes grouped triggers, ends maintenance
windows and flapping, sends reminders and re-reads silences written by the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping

from agent.model import CheckResult
from alerts.config import AlertsConfig
from alerts.delivery import Deliverer
from alerts.engine import AlertEngine, Silence
from alerts.model import Notification, Notifier, Outcome
from alerts.store import AlertStore

log = logging.getLogger("mamori.alerts")

SILENCE_REFRESH = 10.0  # seconds between re-reads of silences (the CLI writes them to the file)


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
        check_tags: Mapping[str, Collection[str]] | None = None,
        clock: Callable[[], float] = time.time,
        tick_interval: float = 1.0,
        store: AlertStore | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.tick_interval = tick_interval
        self.store = store if store is not None else AlertStore(config.state_file, config.dead_letter_limit)
        self.store.purge_silences(clock())
        self.engine = AlertEngine(
            config,
            agent,
            clock,
            check_tags,
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
        self._commit(self.engine.observe(result))

    def _commit(self, notifications: list[Notification]) -> None:
        dirty = self.engine.take_dirty()
        if not dirty and not notifications:
            return
        self.store.commit(dirty, notifications)  # durable BEFORE any send is attempted
        for route in {n.route for n in notifications}:
            deliverer = self.deliverers.get(route)
            if deliverer is not None:
                deliverer.wake()

    async def _tick_loop(self) -> None:
        last_refresh = self.clock()
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                now = self.clock()
                if now - last_refresh >= SILENCE_REFRESH:
                    last_refresh = now
                    self.store.purge_silences(now)
                    self.engine.set_silences(self.store.silences())
                self._commit(self.engine.tick())
            except Exception as exc:  # keep ticking: a full disk must not end alerting for good
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
        """Undelivered notifications by route (outbox depth)."""
        return {route: self.store.pending(route) for route in self.deliverers}

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        try:
            self._commit([])  # persist any state the last tick changed
        except Exception as exc:
            log.error("alert state not saved on close: %s: %s", type(exc).__name__, exc)
        for deliverer in self.deliverers.values():
            await deliverer.stop()
        for name, notifier in self.notifiers.items():
            try:
                await notifier.aclose()
            except Exception as exc:
                log.error("notifier %s failed to close: %s: %s", name, type(exc).__name__, exc)
        self.store.close()
