"""The harness around one check run: timing, the hard timeout, and bugs turned into results.

The scheduler and the CLI both run checks through `execute`, so a result means the same thing
wherever it was produced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from agent.model import CheckResult, Reason, Status
from checks.base import Check, Outcome

log = logging.getLogger("mamori.runner")

# A check enforces `timeout` itself so it can say which phase was slow; the harness waits a
# little longer and then cancels it, so that a check that fails to do so still cannot hang.
TIMEOUT_GRACE = 0.5

_reported_bugs: set[tuple[str, str]] = set()


async def _attempt(check: Check[Any], deadline: float) -> Outcome:
    timeout = check.config.timeout
    try:
        async with asyncio.timeout_at(deadline):
            return await check.run()
    except TimeoutError:
        return Outcome(Status.CRITICAL, Reason.TIMEOUT, f"no result within the {timeout:g}s timeout")
    except Exception as exc:
        signature = (check.name, type(exc).__name__)
        if signature not in _reported_bugs:
            _reported_bugs.add(signature)
            log.error(
                "check %s raised %s (a bug; reported once)", check.name, type(exc).__name__, exc_info=exc
            )
        return Outcome(Status.UNKNOWN, Reason.CHECK_ERROR, f"check failed: {type(exc).__name__}: {exc}")


async def execute(check: Check[Any]) -> CheckResult:
    """Run `check`, retrying a failure up to `retries` times while the timeout budget lasts.

    Never raises (except CancelledError when the caller is cancelled). A bug (an exception from
    the check) is never retried. The result is the last attempt's; when earlier attempts failed,
    its message keeps what they said, so a retry never hides a failure.
    """
    cfg = check.config
    started_at = time.time()
    t0 = time.monotonic()
    deadline = t0 + cfg.timeout + TIMEOUT_GRACE
    failures: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        outcome = await _attempt(check, deadline)
        if outcome.status in (Status.OK, Status.WARNING) or outcome.reason is Reason.CHECK_ERROR:
            break
        delay = cfg.retry_backoff * 2 ** (attempt - 1)
        # Another attempt only if it still has a fair share of the budget left.
        if attempt > cfg.retries or time.monotonic() + delay > deadline - TIMEOUT_GRACE - cfg.timeout / 10:
            break
        failures.append(outcome.message or outcome.reason.value)
        await asyncio.sleep(delay)
    if failures:
        earlier = "; ".join(failures)
        outcome = replace(outcome, message=f"{outcome.message} (attempt {attempt}; before: {earlier})")
    outcome = replace(outcome, attempts=attempt)
    duration = time.monotonic() - t0
    return CheckResult(
        check=check.name,
        check_type=check.type_name,
        target=check.target,
        status=outcome.status,
        started_at=started_at,
        duration=duration,
        samples=outcome.samples,
        message=outcome.message,
        reason=outcome.reason,
        attempts=outcome.attempts,
    )
