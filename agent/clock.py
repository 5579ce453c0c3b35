"""The time the scheduler runs on: monotonic seconds and a sleep on the same clock.

The agent uses `REAL_CLOCK` (time.monotonic and asyncio.sleep); tests pass a fake one, so what
the scheduler does at a given instant (spreading, skipped runs, lateness) is tested without
sleeping on a quiet machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (wall-clock jumps do not move it)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock; at once when `seconds` <= 0."""
        ...


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


REAL_CLOCK: Clock = RealClock()
