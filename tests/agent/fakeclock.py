"""A clock for scheduler tests: time moves only when the test says so.

`FakeClock.advance(seconds)` wakes every sleeper (and calls every timer) whose deadline falls
inside the step, in deadline order, with `monotonic()` reading that deadline, and lets the woken
tasks run until they wait again. Nothing here waits on real time, so a loaded machine changes nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Literal

from agent.model import Reason, Status
from checks.base import Check, CheckConfig, CheckOutcome

# Event-loop turns given to woken tasks after each wake-up. A scheduler task needs one or two to
# reach its next sleep (a run is a few awaits that do not wait for anything but this clock); 50
# is far more than any chain here and costs nothing, as no real time passes.
_SETTLE_TURNS = 50


class FakeTimer:
    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback, self.args = callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback(*self.args)


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None] | FakeTimer]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer(callback, args)
        if when <= self.now:
            asyncio.get_running_loop().call_soon(timer.fire)
        else:
            heapq.heappush(self._sleepers, (when, next(self._order), timer))
        return timer

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking sleepers at their deadlines on the way."""
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, wake = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if isinstance(wake, FakeTimer):
                wake.fire()
            elif not wake.done():  # a cancelled sleeper
                wake.set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle() -> None:
    """Let every task that can run without waiting for the clock run until it waits again."""
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)


class ClockSleepConfig(CheckConfig):
    type: Literal["clocksleep"] = "clocksleep"
    seconds: float = 0.0


class ClockSleepCheck(Check[ClockSleepConfig]):
    """Takes `seconds` of `ClockSleepCheck.clock`'s time, then is OK. Records each run's start
    and end on that clock."""

    type_name = "clocksleep"
    config_model = ClockSleepConfig
    clock: FakeClock = FakeClock()  # replaced by each test that uses the type
    log: list[tuple[str, float, float]] = []  # (name, start, end) on the clock; shared by all

    @property
    def target(self) -> str:
        return "nowhere"

    async def run(self) -> CheckOutcome:
        start = self.clock.monotonic()
        await self.clock.sleep(self.config.seconds)
        ClockSleepCheck.log.append((self.name, start, self.clock.monotonic()))
        return CheckOutcome(Status.OK, Reason.OK, f"took {self.config.seconds}s")
