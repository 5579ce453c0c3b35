"""The harness's retries share one budget (issue 12, item 14): every attempt gets what is left of
the check's `timeout`, so the last one ends as the check's own timeout — naming its phase, with
its samples — and never as the harness's hard stop half a second later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from agent.model import CheckResult, Reason, Status
from agent.runner import TIMEOUT_GRACE, execute
from checks.base import Check, CheckConfig, CheckOutcome
from checks.http.check import HttpCheck
from checks.tcp import TcpCheck
from tests.servers import Request, StreamHandler, hard_reset, json_ok, serve_http, serve_tcp

# The check's own deadline, plus scheduling on a loaded machine; well below TIMEOUT_GRACE.
SLACK = 0.2


def value(result: CheckResult, name: str, **labels: str) -> float:
    found = [s.value for s in result.samples if s.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def reset_first(then: Callable[[Request, asyncio.StreamWriter], Awaitable[None]], after: float = 0.0) -> Any:
    """An HTTP route that resets its first connection (`after` seconds) and answers the next
    ones with `then`."""
    calls = 0

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(after)
            hard_reset(writer)
        else:
            await then(request, writer)

    return handler


async def never_answer(request: Request, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def test_a_target_that_never_answers_is_the_checks_own_timeout_within_the_budget() -> None:
    async with serve_http({"/": never_answer}) as srv:
        t0 = time.monotonic()
        result = await execute(HttpCheck.from_url(srv.url("/"), timeout=1.0, retries=2, retry_backoff=0.1))
        elapsed = time.monotonic() - t0
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.TIMEOUT)
    assert result.message == "timeout after 1s waiting for the response"
    assert elapsed < 1.0 + SLACK
    assert result.attempts == 1  # nothing left for a retry after a whole timeout
    assert 0.9 < value(result, "probe_http_duration_seconds", phase="processing") < 1.0 + SLACK


async def test_a_retry_gets_what_is_left_of_the_timeout_and_keeps_its_phase_and_samples() -> None:
    # Reset after 0.6 s, then never answer: before item 14 the retry had a fresh 1 s of its own
    # and the harness cut it at 1.5 s ("no result within the 1s timeout", no samples, phase lost).
    async with serve_http({"/": reset_first(never_answer, after=0.6)}) as srv:
        t0 = time.monotonic()
        result = await execute(HttpCheck.from_url(srv.url("/"), timeout=1.0, retries=2, retry_backoff=0.1))
        elapsed = time.monotonic() - t0
    assert (result.status, result.reason, result.attempts) == (Status.CRITICAL, Reason.TIMEOUT, 2)
    assert result.message.startswith("timeout after 1s waiting for the response (attempt 2; before: ")
    assert "connection reset by peer" in result.message
    assert elapsed < 1.0 + SLACK < 1.0 + TIMEOUT_GRACE
    # The samples are the last attempt's: what was left after 0.6 s to the reset and 0.1 s of backoff.
    assert 0.2 < value(result, "probe_http_duration_seconds", phase="processing") < 0.4
    assert value(result, "probe_http_duration_seconds", phase="connect") > 0


async def test_a_target_that_fails_fast_then_answers_is_ok_on_the_retry() -> None:
    async with serve_http({"/": reset_first(json_ok())}) as srv:
        result = await execute(HttpCheck.from_url(srv.url("/"), timeout=1.0, retries=2, retry_backoff=0.05))
    assert (result.status, result.reason, result.attempts) == (Status.OK, Reason.OK, 2)
    assert result.message.startswith("200 OK, ")
    assert "(attempt 2; before: connection reset by peer" in result.message


def reset_first_then_silent(after: float) -> StreamHandler:
    calls = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(after)
            hard_reset(writer)
        else:
            await reader.read()

    return handler


async def test_tcp_retries_share_the_budget_too() -> None:
    async with serve_tcp(reset_first_then_silent(after=0.6)) as srv:
        # a banner that never comes: the expect phase is the one that runs out
        check = TcpCheck.from_url(
            f"tcp://127.0.0.1:{srv.port}", timeout=1.0, retries=1, retry_backoff=0.05, expect="^OK"
        )
        t0 = time.monotonic()
        result = await execute(check)
        elapsed = time.monotonic() - t0
    assert (result.status, result.reason, result.attempts) == (Status.CRITICAL, Reason.TIMEOUT, 2)
    assert result.message.startswith("timeout after 1s waiting for the expected response (attempt 2; ")
    assert elapsed < 1.0 + SLACK


# --- the budget as a check sees it ---------------------------------------------------------------


class BudgetConfig(CheckConfig):
    type: Literal["budget"] = "budget"
    failures: int = 1
    spend: float = 0.2  # seconds each failed attempt takes


class BudgetCheck(Check[BudgetConfig]):
    """Fails `failures` times after `spend` seconds each, recording what `time_left()` said."""

    type_name = "budget"
    config_model = BudgetConfig

    def __init__(self, config: BudgetConfig) -> None:
        super().__init__(config)
        self.seen: list[float] = []

    async def run(self) -> CheckOutcome:
        self.seen.append(self.time_left())
        if len(self.seen) <= self.config.failures:
            await asyncio.sleep(self.config.spend)
            return CheckOutcome(Status.CRITICAL, Reason.REFUSED, f"failure {len(self.seen)}")
        return CheckOutcome(Status.OK, Reason.OK, "ok")


async def test_each_attempt_is_told_what_is_left_of_the_one_budget() -> None:
    check = BudgetCheck(
        BudgetConfig(name="b", type="budget", interval=10, timeout=1.0, retries=3, retry_backoff=0.1)
    )
    result = await execute(check)
    assert (result.status, result.attempts) == (Status.OK, 2)
    first, second = check.seen
    assert 0.95 < first <= 1.0
    # 0.2 s spent failing and 0.1 s of backoff are gone from the budget.
    assert 0.6 < second < 0.72


def test_outside_the_harness_a_check_has_its_whole_timeout() -> None:
    check = BudgetCheck(BudgetConfig(name="b", type="budget", interval=10, timeout=2.5))
    assert check.time_left() == 2.5


async def test_the_result_carries_the_checks_tags() -> None:
    # Rules, silences and the connectivity guard select by tag: the tags travel on the result
    # (set here, by the harness), not through a map handed to the alert engine.
    async with serve_http({"/": json_ok()}) as srv:
        check = HttpCheck.from_url(srv.url("/"), timeout=1.0)
        check.config = check.config.model_copy(update={"tags": ("edge", "shop")})
        result = await execute(check)
    assert (result.status, result.tags) == (Status.OK, ("edge", "shop"))
