"""The deploy gate: `agentctl check --wait-healthy` re-runs checks until all are OK at once.

Made for rolling updates: after each step, wait until every app check passes, or fail the
deploy with what stayed unhealthy. Progress goes to stderr, one line whenever the picture
changes (so CI logs stay short), with the elapsed time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TextIO

from agent.model import CheckResult, Status
from agent.runner import execute
from checks.base import Check


def _picture(results: list[CheckResult]) -> str:
    ok = sum(r.status is Status.OK for r in results)
    bad = ", ".join(
        f"{r.check} {r.status.name} ({r.reason.value})" for r in results if r.status is not Status.OK
    )
    return f"{ok}/{len(results)} OK" + (f"; waiting for {bad}" if bad else "")


async def wait_healthy(
    checks: list[Check[Any]], timeout: float, poll: float, out: TextIO
) -> tuple[list[CheckResult], bool]:
    """Run every check each round until one round is all OK (→ True) or `timeout` passes
    (→ False), and not before: the wait ends at the deadline, not at the last poll before it.
    Returns the last round's results; a round cut short by the deadline is reported
    with the results of the round before it. Never raises for a failing target."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    results: list[CheckResult] = []
    last = ""
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                results = list(await asyncio.gather(*(execute(c) for c in checks)))
        except TimeoutError:
            break
        picture = _picture(results)
        elapsed = time.monotonic() - t0
        if picture != last:
            out.write(f"[{elapsed:5.1f}s] {picture}\n")
            out.flush()
            last = picture
        if all(r.status is Status.OK for r in results):
            return results, True
        # The last pause ends at the deadline and the round after it is cut there: the gate
        # waits exactly `timeout`, as its last line says (it used to stop one poll early).
        await asyncio.sleep(max(0.0, min(poll, deadline - time.monotonic())))
    out.write(f"[{time.monotonic() - t0:5.1f}s] gave up after {timeout:g}s: {last or 'no round finished'}\n")
    out.flush()
    return results, False
