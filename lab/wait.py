"""The one way the lab, the tests and the benchmarks wait for something: poll a predicate.

    await wait_until("the standby to stream", lambda: lab.proxy.connections == 1, 5)
    wait_until_sync("the agent to serve /metrics", ready, 30, alive=lambda: proc.poll() is None)

A predicate may be a plain function or return an awaitable (`wait_until` awaits it). An OSError
it raises (a refused connection: the server is not listening yet; TimeoutError is one) counts as
"not yet". Both return the seconds waited and raise TimeoutError naming `what` after `timeout`,
or RuntimeError as soon as `alive()` says the process waited for has exited.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

POLL = 0.02  # seconds between two looks, unless told otherwise


def _expired(what: str, timeout: float, began: float, alive: Callable[[], bool] | None) -> bool:
    if alive is not None and not alive():
        raise RuntimeError(f"process exited while waiting for {what}")
    if time.monotonic() - began > timeout:
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
    return False


async def wait_until(
    what: str,
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    *,
    interval: float = POLL,
    alive: Callable[[], bool] | None = None,
) -> float:
    """Poll `predicate` (sync, or returning an awaitable) every `interval` s until it is truthy;
    return the seconds waited (see the module docstring for the failures)."""
    began = time.monotonic()
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except OSError:
            value = False
        if value:
            return time.monotonic() - began
        _expired(what, timeout, began, alive)
        await asyncio.sleep(interval)


def wait_until_sync(
    what: str,
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    *,
    interval: float = POLL,
    alive: Callable[[], bool] | None = None,
) -> float:
    """`wait_until` for code without an event loop (a thread, a benchmark's driver)."""
    began = time.monotonic()
    while True:
        try:
            value = predicate()
        except OSError:
            value = False
        if value:
            return time.monotonic() - began
        _expired(what, timeout, began, alive)
        time.sleep(interval)
