"""The time the scheduler runs on: monotonic seconds, and a sleep and a timer on the same clock.

The agent uses `REAL_CLOCK` (time.monotonic, asyncio.sleep and the loop's timers); tests pass a
fake one, so what
the scheduler does at a given instant (spreading, skipped runs, lateness) is tested without
sleeping on a quiet machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None:
        """The callback will not be called (if it has not been yet). Safe to call twice."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (wall-clock jumps do not move it)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock; at once when `seconds` <= 0."""
        ...

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call `callback(*args)` on the running event loop once this clock reads `when` (soon,
        when it already does)."""
        ...


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Timer:
        # Relative to this clock, so a loop whose own time has another origin (uvloop) agrees.
        return asyncio.get_running_loop().call_later(when - time.monotonic(), callback, *args)


REAL_CLOCK: Clock = RealClock()
