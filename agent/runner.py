"""The harness around one check run: timing, the hard timeout, and bugs turned into results.

The scheduler and the CLI both run checks through `execute`, so a result means the same thing
wherever it was produced.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import weakref
from typing import Any

from agent.model import CheckResult, Reason, Status
from checks.base import Check, CheckOutcome, budget_until

log = logging.getLogger("mamori.runner")

# A check enforces `timeout` itself so it can say which phase was slow; the harness waits a
# little longer and then cancels it, so that a check that fails to do so still cannot hang.
TIMEOUT_GRACE = 0.5

# Exception types already logged with a traceback, per check object: a check changed by a
# reload is a new object, so its bugs are reported again; a removed one is forgotten.
_reported_bugs: weakref.WeakKeyDictionary[Check[Any], set[str]] = weakref.WeakKeyDictionary()


async def _attempt(check: Check[Any], deadline: float) -> CheckOutcome:
    """One attempt, cut at `deadline` (loop time); the check's own budget ends TIMEOUT_GRACE
    earlier (`Check.time_left`), so a retry never starts a fresh `timeout` the harness cuts."""
    timeout = check.config.timeout
    try:
        with budget_until(deadline - TIMEOUT_GRACE):
            async with asyncio.timeout_at(deadline):
                return await check.run()
    except TimeoutError:
        return CheckOutcome(Status.CRITICAL, Reason.TIMEOUT, f"no result within the {timeout:g}s timeout")
    except Exception as exc:
        reported = _reported_bugs.setdefault(check, set())
        if type(exc).__name__ not in reported:
            reported.add(type(exc).__name__)
            _log_bug(check, exc)
        return CheckOutcome(Status.UNKNOWN, Reason.CHECK_ERROR, f"check failed: {type(exc).__name__}: {exc}")


def _log_bug(check: Check[Any], exc: Exception) -> None:
    """The traceback of a check's bug, with the check's secrets masked: an exception's text may
    quote what the target sent, or a header built from a credential."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    masked = check.secrets.mask(text)
    what = "check %s raised %s (a bug; reported once)"
    if masked == text:
        log.error(what, check.name, type(exc).__name__, exc_info=exc)
    else:
        log.error(what + "\n%s", check.name, type(exc).__name__, masked)


async def execute(check: Check[Any]) -> CheckResult:
    """Run `check`, retrying a failure up to `retries` times while the timeout budget lasts.

    Never raises (except CancelledError when the caller is cancelled). A bug (an exception from
    the check) is never retried. The result is the last attempt's; when earlier attempts failed,
    its message keeps what they said, so a retry never hides a failure.
    """
    cfg = check.config
    started_at = time.time()
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.timeout + TIMEOUT_GRACE
    failures: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        outcome = await _attempt(check, deadline)
        if outcome.status in (Status.OK, Status.WARNING) or outcome.reason is Reason.CHECK_ERROR:
            break
        delay = cfg.retry_backoff * 2 ** (attempt - 1)
        # Another attempt only if it still has a fair share of the budget left.
        if attempt > cfg.retries or loop.time() + delay > deadline - TIMEOUT_GRACE - cfg.timeout / 10:
            break
        failures.append(outcome.message or outcome.reason.value)
        await asyncio.sleep(delay)
    message = outcome.message
    if failures:
        earlier = "; ".join(failures)
        message = f"{message} (attempt {attempt}; before: {earlier})"
    duration = time.monotonic() - t0
    # The one place every check's message passes: a target echoing a credential (an Authorization
    # header, a password in a URL) must not put it into results, exports, alerts or logs.
    message = check.secrets.mask(message)
    return CheckResult(
        check=check.name,
        check_type=check.type_name,
        target=check.target,
        status=outcome.status,
        started_at=started_at,
        duration=duration,
        samples=outcome.samples,
        message=message,
        reason=outcome.reason,
        attempts=attempt,
        tags=tuple(cfg.tags),
        series=cfg.series,
    )
