"""The one delivery loop: a consumer's share of a durable log, handed to it in order, forever.

    pump = Pump(consumer, log)     # an exporter and the outbox, or a notifier route and alerts.db
    pump.start() … pump.wake() … await pump.stop()

Per consumer, the same rules:
- Entries are read after the consumer's cursor, oldest first, `consumer.batch` at a time, and
  settled by the log (acked, dead-lettered, counted as dropped) only as the consumer answers
  (`PushResult`: a prefix settled, the rest to retry). Strict order: nothing behind an entry is
  handed over before it is settled.
- A failed push is retried after the service's Retry-After (capped at 1 h) or exponential backoff
  with jitter (`agent/backoff.py`, capped per consumer: 5 min for exporters, 10 s for pages). The
  schedule (earliest next attempt, failed pushes in a row) is saved in the log, so a restart —
  kill -9 included — waits out a Retry-After given before it.
- REJECTED entries are never retried; a consumer that raises is a bug, counted as a RETRY.
- A log that cannot record an outcome (a full disk) may ask the pump to hold (`Log.hold`): the
  alert state file does, so a sent page is never sent again and nothing overtakes it.
- A consumer with scarce requests says so (`linger`, `fills(entries)`): the running pump holds a
  push that would not be full back for up to `linger`, never the shutdown drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from agent.backoff import BACKOFF_CAP, RETRY_AFTER_CAP, backoff
from agent.delivery.outcome import Outcome, PushResult
from agent.logs import FailureLog

HOLD_RETRY = 5.0  # seconds between passes after a pass failed (e.g. a damaged page)


class Entry(Protocol):
    """What a log hands out: anything with its position in the log."""

    @property
    def seq(self) -> int: ...


E = TypeVar("E", bound=Entry)
E_contra = TypeVar("E_contra", bound=Entry, contravariant=True)


class Consumer(Protocol[E_contra]):
    """An exporter, or a notifier route. Optionally also `linger` (seconds) and
    `fills(entries) -> bool` (see the module docstring), and `reconnected` (an asyncio.Event set
    on each connect: it cuts a backoff short)."""

    @property
    def name(self) -> str: ...

    @property
    def batch(self) -> int: ...

    async def start(self) -> None:
        """Connect or start background work. Must not raise for a service that is down."""

    async def push(self, entries: Sequence[E_contra]) -> PushResult:
        """Deliver what it can of `entries` (never empty). Never raises for a service failure."""

    async def aclose(self) -> None:
        """Release everything. Safe to call twice."""


class Log(Protocol[E]):
    """A durable log as one consumer's pump sees it. Never raises for the disk."""

    def read(self, consumer: str, limit: int) -> list[E]:
        """Up to `limit` entries after `consumer`'s cursor, oldest first."""

    def settle(self, consumer: str, entries: Sequence[E], result: PushResult) -> None:
        """`entries[: result.handled]` are done with: move the cursor past them, dead-letter or
        count what was rejected (`result.dropped`)."""

    def schedule(self, consumer: str) -> tuple[float, int]:
        """(earliest next attempt as a unix time, failed pushes in a row), as saved."""

    def set_schedule(self, consumer: str, next_attempt_at: float, streak: int, error: str = "") -> None:
        """Save the retry schedule (and the last error, where the log keeps it)."""

    def hold(self, consumer: str) -> float:
        """Seconds to wait before anything is read (> 0 while an outcome is not recorded yet)."""

    def depth(self, consumer: str) -> int:
        """Entries not settled yet."""


class Pump(Generic[E]):
    """Moves one consumer's share of a log to it, forever, in order.

    `counts[outcome]`: entries DELIVERED and REJECTED, and pushes to RETRY; `errors`: a consumer
    that raised or a pass that failed (bugs, logged)."""

    def __init__(
        self,
        consumer: Consumer[E],
        log: Log[E],
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        wall: Callable[[], float] = time.time,
        *,
        label: str = "",
        backoff_cap: float = BACKOFF_CAP,
        logger: logging.Logger | None = None,
    ) -> None:
        self.consumer = consumer
        self.log = log
        self.clock = clock
        self.rand = rand
        self.wall = wall  # the retry schedule is saved in unix time: it must survive a restart
        self.label = label or f"exporter {consumer.name}"  # how the log names it
        self.backoff_cap = backoff_cap
        self.logger = logger or logging.getLogger("mamori.delivery")
        self.counts: Counter[Outcome] = Counter()
        self.errors = 0
        # Failed pushes in a row, and the earliest next attempt (unix time; 0: now): saved in the
        # log, so a restart (kill -9 included) keeps the backoff and waits out a Retry-After
        # given before it. Capped as a Retry-After is, against a clock set back.
        not_before, self.streak = log.schedule(consumer.name)
        self.not_before = min(not_before, wall() + RETRY_AFTER_CAP)
        self.last_error = ""
        self._failures = FailureLog(self.logger)  # "outbox failed": first, then once a minute
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._held: tuple[int, float] | None = None  # (head seq, since when) of entries held back

    @property
    def name(self) -> str:
        return self.consumer.name

    @property
    def sent(self) -> int:
        """Entries delivered (settled and not dropped)."""
        return self.counts[Outcome.DELIVERED]

    @property
    def failures(self) -> int:
        """Pushes that failed (not handled in full), ever."""
        return self.counts[Outcome.RETRY]

    def wake(self) -> None:
        """New entries are in the log. Never blocks."""
        self._wake.set()

    def _hold(self, entries: Sequence[E]) -> float:
        """Seconds left to hold `entries` back for more to join them (<= 0: push now), counted
        from when the pump first held back this head entry (see `Consumer`)."""
        linger = float(getattr(self.consumer, "linger", 0.0))
        fills = getattr(self.consumer, "fills", None)
        if linger <= 0 or fills is None or fills(entries):
            self._held = None
            return 0.0
        now = self.clock()
        if self._held is None or self._held[0] != entries[0].seq:
            self._held = (entries[0].seq, now)
        return self._held[1] + linger - now

    async def step(self, hold: bool = False) -> float | None:
        """One push. Returns seconds to wait before the next (0: go on; None: nothing to send).
        `hold` (the running pump; never drain()): first wait for the consumer's linger."""
        if (wait := self.log.hold(self.name)) > 0:
            return wait
        entries = self.log.read(self.name, self.consumer.batch)
        while hold and entries and (wait := self._hold(entries)) > 0:
            self._wake.clear()  # no await since the read: an entry appended since wakes us
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel (stop()) that
            # comes with the wake-up, and the pump would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            entries = self.log.read(self.name, self.consumer.batch)
        if not entries:
            return None
        try:
            result = await self.consumer.push(entries)
        except Exception as exc:  # the protocol says never raise: a bug must not stop the pump
            self.errors += 1
            self.logger.error("%s raised %s: %s", self.label, type(exc).__name__, exc)
            result = PushResult(0, f"{self.label} raised {type(exc).__name__}")
        handled = max(0, min(result.handled, len(entries)))
        if handled != result.handled:
            result = PushResult(handled, result.error, result.retry_after, result.dropped, result.detail)
        rejected = sum(result.dropped.values())
        for outcome, n in ((Outcome.DELIVERED, handled - rejected), (Outcome.REJECTED, rejected)):
            if n > 0:
                self.counts[outcome] += n
        if handled or result.dropped:
            self.log.settle(self.name, entries, result)
        if not result.failed:
            # All taken, or a prefix (e.g. a request's stream limit): the service is up, go on.
            if self.streak:
                self.logger.info("%s: delivering again after %d failed attempts", self.label, self.streak)
            self.streak = 0
            self.not_before = 0.0
            self.log.set_schedule(self.name, 0.0, 0)  # no write unless it changed
            return 0.0
        self.counts[Outcome.RETRY] += 1
        self.streak += 1
        self.last_error = result.error
        if result.retry_after is not None:
            delay = min(max(result.retry_after, 0.0), RETRY_AFTER_CAP)
        else:
            delay = backoff(self.streak, self.rand, cap=self.backoff_cap)
        self.not_before = self.wall() + delay
        self.log.set_schedule(self.name, self.not_before, self.streak, result.error)
        if self.streak == 1 or self.streak % 10 == 0:  # an outage must not flood the log
            self.logger.warning(
                "%s: push failed (%s); %d waiting, retrying in %.1fs",
                self.label,
                result.error or "no reason given",
                self.log.depth(self.name),
                delay,
            )
        return delay

    async def run(self) -> None:
        """Deliver until cancelled (`stop()`)."""
        with contextlib.suppress(Exception):
            await self.consumer.start()
        wait = self.not_before - self.wall()
        if wait > 0:  # asked before a restart: a Retry-After or backoff still running
            self.logger.info("%s: next attempt in %.1fs, as scheduled before the restart", self.label, wait)
            await self._retry_wait(wait)
        while True:
            self._wake.clear()
            try:
                delay = await self.step(hold=True)
            except Exception as exc:  # e.g. a damaged page: keep the task alive
                self.errors += 1
                self._log_failure(f"{type(exc).__name__}: {exc}")
                delay = HOLD_RETRY
            else:
                self._failures.ok()
            if delay == 0.0:
                await asyncio.sleep(0)
                continue
            if delay is None:
                await self._wake.wait()
            else:
                await self._retry_wait(delay)

    def _log_failure(self, error: str) -> None:
        self._failures.failed(error, "%s: outbox failed: %s (retrying every 5s)", self.label, error)

    async def _retry_wait(self, delay: float) -> None:
        """Wait `delay` before retrying. New entries do not cut it short; a consumer that knows
        its service is back (`reconnected`, an asyncio.Event it sets on each connect: MQTT) does,
        so a backlog is not held for minutes of backoff after an outage ends."""
        event = getattr(self.consumer, "reconnected", None)
        if not isinstance(event, asyncio.Event):
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # not wait_for: on 3.11 it can swallow a stop()
                await event.wait()
        if event.is_set():
            self.not_before = 0.0  # the service is back: the schedule no longer applies
        event.clear()

    def start(self) -> None:
        """Start the task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"deliver:{self.label}")

    async def drain(self, timeout: float) -> bool:
        """Push until nothing is waiting (True) or a push fails or `timeout` passes (False).
        Inside a Retry-After or backoff wait it does not push at all (False unless nothing waits)."""
        if self.not_before > self.wall():
            return self.log.depth(self.name) == 0
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            if self.log.depth(self.name) == 0:
                return True
            try:
                async with asyncio.timeout(max(0.0, deadline - self.clock())):
                    delay = await self.step()
            except TimeoutError:
                return False
            if delay is None:
                return True
            if delay > 0:
                return False
        return False

    async def stop(self) -> None:
        """Cancel the task; an entry in flight is offered again after a restart. Safe twice."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
