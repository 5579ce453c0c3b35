"""Fan-out of results to sinks, each behind its own bounded queue.

A reload's removal of a check travels the same way (`CheckRemoved`), so each sink forgets a
check after its last queued result, never before.

`publish()` never blocks and never fails: a slow or dead sink only fills its own queue, whose
oldest results are then dropped and counted (`mamori_sink_dropped_total{sink}`). Durable
delivery for push sinks is the outbox's job (a sink of its own), not this queue's.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from agent.model import CheckRemoved, CheckResult
from agent.telemetry import AgentMetrics

log = logging.getLogger("mamori.pipeline")


class Sink(Protocol):
    name: str

    async def consume(self, result: CheckResult) -> None:
        """Handle one result. An exception is counted and logged; the sink keeps running."""

    async def remove(self, event: CheckRemoved) -> None:
        """Forget what is kept of a check a reload removed. Comes after its last result; an
        exception is counted and logged like one of `consume()`."""

    async def aclose(self) -> None:
        """Flush and release resources. Safe to call twice."""


class _Lane:
    """One sink's queue and worker."""

    def __init__(self, sink: Sink, capacity: int, metrics: AgentMetrics) -> None:
        self.sink = sink
        self.queue: collections.deque[CheckResult | CheckRemoved] = collections.deque()
        self.capacity = capacity
        self.wakeup = asyncio.Event()
        self.running = asyncio.Event()  # cleared while `FanOut.swap()` replaces the sink
        self.running.set()
        self.between = asyncio.Event()  # set while no result is being consumed
        self.between.set()
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self.depth = metrics.queue_depth.labels(sink=sink.name)
        self.dropped = metrics.dropped.labels(sink=sink.name)
        self.errors = metrics.sink_errors.labels(sink=sink.name)
        metrics.queue_capacity.labels(sink=sink.name).set(capacity)
        self._last_error_log = 0.0

    def offer(self, item: CheckResult | CheckRemoved) -> None:
        if len(self.queue) >= self.capacity:
            self._drop_oldest()
        self.queue.append(item)
        self.depth.set(len(self.queue))
        self.wakeup.set()

    def _drop_oldest(self) -> None:
        """Drop the oldest result (counted); a removal is never dropped, or the removed check's
        series would stay until the next restart."""
        for i, item in enumerate(self.queue):
            if isinstance(item, CheckResult):
                del self.queue[i]
                self.dropped.inc()
                return

    async def work(self) -> None:
        while True:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            await self.running.wait()
            if not self.queue:
                continue
            item = self.queue.popleft()
            self.depth.set(len(self.queue))
            self.busy = True
            self.between.clear()
            try:
                if isinstance(item, CheckRemoved):
                    await self.sink.remove(item)
                else:
                    await self.sink.consume(item)
            except Exception as exc:
                self.errors.inc()
                now = time.monotonic()
                if now - self._last_error_log > 60:  # a dead sink must not flood the log
                    self._last_error_log = now
                    log.error(
                        "sink %s failed to consume a result: %s: %s", self.sink.name, type(exc).__name__, exc
                    )
            finally:
                self.busy = False
                self.between.set()

    @property
    def idle(self) -> bool:
        return not self.queue and not self.busy


class FanOut:
    def __init__(self, sinks: list[Sink], capacity: int, metrics: AgentMetrics) -> None:
        self._lanes = [_Lane(sink, capacity, metrics) for sink in sinks]
        self._metrics = metrics
        self._started = False

    def start(self) -> None:
        """Start one worker per sink. Needs a running loop."""
        for lane in self._lanes:
            lane.task = asyncio.create_task(lane.work(), name=f"sink:{lane.sink.name}")
        self._started = True

    async def swap(self, name: str, replace: Callable[[Sink], Awaitable[Sink]]) -> None:
        """Replace the sink called `name` with what `replace(old)` returns, between two results:
        the lane stops taking results, the one in progress finishes, `replace` runs (it closes
        the old sink if it must), then the queued results go to the new sink. Nothing is dropped
        meanwhile beyond the queue's usual drop-oldest. If `replace` raises, the lane keeps the
        old sink and the exception propagates."""
        lane = next(lane for lane in self._lanes if lane.sink.name == name)
        lane.running.clear()
        try:
            await lane.between.wait()
            lane.sink = await replace(lane.sink)
        finally:
            lane.running.set()

    def has(self, name: str) -> bool:
        return any(lane.sink.name == name for lane in self._lanes)

    def publish(self, item: CheckResult | CheckRemoved) -> None:
        """Hand a result, or the removal of a check, to every sink. Never blocks, never raises.
        A removal also drops the check's own series from the agent's metrics."""
        if isinstance(item, CheckRemoved):
            self._metrics.forget_check(item.check)
        for lane in self._lanes:
            lane.offer(item)

    async def drain(self, timeout: float) -> bool:
        """Wait until every queue is empty (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while not all(lane.idle for lane in self._lanes):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def aclose(self, timeout: float = 5.0) -> None:
        """Drain within `timeout`, stop the workers, close the sinks. Safe to call twice and
        without `start()` having run."""
        if self._started:
            await self.drain(timeout)
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                await asyncio.gather(lane.task, return_exceptions=True)
                lane.task = None
        for lane in self._lanes:
            try:
                await lane.sink.aclose()
            except Exception as exc:
                log.error("sink %s failed to close: %s: %s", lane.sink.name, type(exc).__name__, exc)
        self._started = False
