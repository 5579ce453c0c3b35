"""The harness around one check run: timing, the hard timeout, and bugs turned into results.

The scheduler and the CLI both run checks through `execute`, so a result means the same thing
wherever it was produced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agent.model import CheckResult, Reason, Status
from checks.base import Check, Outcome

log = logging.getLogger("mamori.runner")

# A check enforces `timeout` itself so it can say which phase was slow; the harness waits a
# little longer and then cancels it, so that a check that fails to do so still cannot hang.
TIMEOUT_GRACE = 0.5

_reported_bugs: set[tuple[str, str]] = set()


async def execute(check: Check[Any]) -> CheckResult:
    """Run `check` once. Never raises (except CancelledError when the caller is cancelled)."""
    timeout = check.config.timeout
    started_at = time.time()
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout + TIMEOUT_GRACE):
            outcome = await check.run()
    except TimeoutError:
        outcome = Outcome(Status.CRITICAL, Reason.TIMEOUT, f"no result within the {timeout:g}s timeout")
    except Exception as exc:
        outcome = Outcome(Status.UNKNOWN, Reason.CHECK_ERROR, f"check failed: {type(exc).__name__}: {exc}")
        signature = (check.name, type(exc).__name__)
        if signature not in _reported_bugs:
            _reported_bugs.add(signature)
            log.error(
                "check %s raised %s (a bug; reported once)", check.name, type(exc).__name__, exc_info=exc
            )
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
