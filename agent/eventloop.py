"""The event loop `agentctl run` and `agentctl check` run on: uvloop when it can, asyncio's own otherwise.

uvloop (libuv) cuts the CPU of the asyncio machinery per probe by about 40 % (docs/benchmarks.md,
http_cpu); the agent's code is the same on both loops (tests/agent/test_event_loop.py runs the
check types on each). `MAMORI_EVENT_LOOP` chooses:

- `auto` (the default, also when unset or empty): uvloop if it can be imported, else asyncio's;
- `uvloop`: uvloop, and an error if it cannot be imported (the operator asked for it);
- `asyncio`: asyncio's own loop, e.g. to rule the loop out when chasing a problem.

The loop is created by `asyncio.Runner(loop_factory=...)`, never installed as a global policy, so
nothing else in the process (a test's loop, a library's own `asyncio.run`) changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

ENV = "MAMORI_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


class EventLoopError(ValueError):
    """A bad `MAMORI_EVENT_LOOP` value, or uvloop asked for and not importable: one line."""


@dataclass(frozen=True)
class EventLoop:
    """The loop chosen: its name for the log ("uvloop 0.21.0", "asyncio") and its factory
    (None: asyncio's default loop)."""

    name: str
    factory: Callable[[], asyncio.AbstractEventLoop] | None

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """`asyncio.run(main)` on this loop (the same shutdown: tasks cancelled, async
        generators and the default executor closed)."""
        with asyncio.Runner(loop_factory=self.factory) as runner:
            return runner.run(main)


def _uvloop() -> EventLoop | None:
    try:
        import uvloop
    except ImportError:  # not installed (Windows, a venv without it): asyncio's loop does the same work
        return None
    version = getattr(uvloop, "__version__", "")  # not in its stubs
    return EventLoop(f"uvloop {version}".strip(), uvloop.new_event_loop)


def choose(env: Mapping[str, str]) -> EventLoop:
    """The loop `env[MAMORI_EVENT_LOOP]` asks for. Raises EventLoopError (one line) on a value
    not in CHOICES, or on `uvloop` when uvloop cannot be imported."""
    value = env.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise EventLoopError(
            f"invalid {ENV}={env.get(ENV, '')!r}: use {', '.join(CHOICES)}"
            " (default: auto, uvloop if installed)"
        )
    if value == "asyncio":
        return EventLoop("asyncio", None)
    chosen = _uvloop()
    if chosen is not None:
        return chosen
    if value == "uvloop":
        raise EventLoopError(f"{ENV}=uvloop, but uvloop cannot be imported: install it or use auto")
    return EventLoop("asyncio (uvloop is not installed)", None)
