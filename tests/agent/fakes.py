"""Test-only check types for exercising the scheduler and pipeline without any network."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from agent.model import Reason, Sample, Status
from checks.base import Check, CheckConfig, CheckOutcome


class SleepConfig(CheckConfig):
    type: Literal["sleep"] = "sleep"
    seconds: float = 0.0
    status: int = 0


class SleepCheck(Check[SleepConfig]):
    """Sleeps, then returns the configured status. Records when each run started and ended."""

    type_name = "sleep"
    config_model = SleepConfig
    log: list[tuple[str, float, float]] = []  # (name, start, end), monotonic; shared by all
    closed: list[str] = []

    @property
    def target(self) -> str:
        return "nowhere"

    async def run(self) -> CheckOutcome:
        start = time.monotonic()
        await asyncio.sleep(self.config.seconds)
        SleepCheck.log.append((self.name, start, time.monotonic()))
        status = Status(self.config.status)
        reason = Reason.OK if status is Status.OK else Reason.THRESHOLD
        return CheckOutcome(
            status, reason, f"slept {self.config.seconds}s", (Sample("probe_dns_lookup_time_seconds", 0.0),)
        )

    async def aclose(self) -> None:
        SleepCheck.closed.append(self.name)


class BoomConfig(CheckConfig):
    type: Literal["boom"] = "boom"


class BoomCheck(Check[BoomConfig]):
    """A check with a bug: it always raises."""

    type_name = "boom"
    config_model = BoomConfig

    async def run(self) -> CheckOutcome:
        raise ZeroDivisionError("division by zero in a check")


class FlakyConfig(CheckConfig):
    type: Literal["flaky"] = "flaky"
    failures: int = 0


class FlakyCheck(Check[FlakyConfig]):
    """Refused for the first `failures` calls, then OK."""

    type_name = "flaky"
    config_model = FlakyConfig

    def __init__(self, config: FlakyConfig) -> None:
        super().__init__(config)
        self.calls = 0

    async def run(self) -> CheckOutcome:
        self.calls += 1
        if self.calls <= self.config.failures:
            return CheckOutcome(Status.CRITICAL, Reason.REFUSED, f"refused on call {self.calls}")
        return CheckOutcome(Status.OK, Reason.OK, f"ok on call {self.calls}")
