"""Push exporters (OCI Monitoring, MQTT, OpenTelemetry) and the machinery they share.

    results ─► FanOut ─► OutboxSink ─► Outbox (sqlite, a cursor per exporter)
                                          │ read(name, batch)         ▲ ack(seq)
                                          ▼                           │
                                     Pump (one task per exporter) ─► exporter.push(records)

An exporter never sees the fan-out: it is handed records (sequence number + result) from the
durable outbox, oldest first, and answers with a `PushResult` saying how many of them, from the
front, are done with (sent, or given up on and counted). The pump acks those and retries the rest
with exponential backoff and jitter (or the service's Retry-After), so an exporter whose service is
down costs disk (capped, see agent/outbox.py) and no memory, and resumes after a restart where it
stopped, with the results' original timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.catalog import AGENT_METRICS
from agent.model import CheckResult
from agent.outbox import Outbox, Record
from agent.retry import RETRY_AFTER_CAP, backoff
from agent.types import Model

log = logging.getLogger("mamori.exporters")


class ExporterBase(Model):
    """Keys every exporter has. `name` labels its metrics and its outbox cursor."""

    name: str
    type: str
    batch: int = 500  # results read from the outbox per push (the exporter may take fewer)


@dataclass(frozen=True)
class ExportContext:
    """What an exporter may know about the agent running it."""

    agent: str  # agent.name (the host)
    labels: Mapping[str, str]  # agent.labels (site, role, …)
    interval: float  # agent.interval: the default check interval
    # Hand a result to the fan-out as if a check had produced it (the fleet quorum uses this).
    publish: Callable[[CheckResult], None] = lambda result: None

    @property
    def site(self) -> str:
        return self.labels.get("site", "default")


@dataclass
class PushResult:
    """`handled`: how many records, from the front of the batch, are done with (sent or dropped);
    the rest are offered again. `retry_after`: the service asked to wait (429/503). `error`: why
    the push (or the rest of it) failed, one line without secrets. `dropped`: records given up on,
    by reason (included in `handled`), e.g. {"expired": 3}."""

    handled: int
    error: str = ""
    retry_after: float | None = None
    dropped: dict[str, int] = field(default_factory=dict)


class PushExporter(Protocol):
    name: str
    batch: int

    async def start(self) -> None:
        """Connect or start background work. Must not raise for a service that is down."""

    async def push(self, records: Sequence[Record]) -> PushResult:
        """Send what it can of `records` (never empty). Never raises for a service failure."""

    async def aclose(self) -> None:
        """Release everything. Safe to call twice."""


class Pump:
    """Moves one exporter's share of the outbox to it, forever, in order."""

    def __init__(
        self,
        exporter: PushExporter,
        outbox: Outbox,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.exporter = exporter
        self.outbox = outbox
        self.clock = clock
        self.rand = rand
        self.failures = 0  # pushes that failed (not handled in full), ever
        self.sent = 0  # results handled and not dropped
        self.streak = 0  # failed pushes in a row
        self.last_error = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.exporter.name

    def wake(self) -> None:
        self._wake.set()

    async def step(self) -> float | None:
        """One push. Returns seconds to wait before the next (0: go on; None: nothing to send)."""
        records = self.outbox.read(self.name, self.exporter.batch)
        if not records:
            return None
        try:
            result = await self.exporter.push(records)
        except Exception as exc:  # the protocol says never raise: a bug must not stop the pump
            log.error("exporter %s raised %s: %s", self.name, type(exc).__name__, exc)
            result = PushResult(0, f"exporter raised {type(exc).__name__}")
        handled = max(0, min(result.handled, len(records)))
        if handled:
            self.outbox.ack(self.name, records[handled - 1].seq)
        for reason, n in result.dropped.items():
            self.outbox.count_dropped(self.name, reason, n)
        self.sent += handled - sum(result.dropped.values())
        if handled and not result.error:
            # All taken, or a prefix (e.g. a request's stream limit): the service is up, go on.
            if self.streak:
                log.info("exporter %s: delivering again after %d failed attempts", self.name, self.streak)
            self.streak = 0
            return 0.0
        self.failures += 1
        self.streak += 1
        self.last_error = result.error
        if result.retry_after is not None:
            delay = min(max(result.retry_after, 0.0), RETRY_AFTER_CAP)
        else:
            delay = backoff(self.streak, self.rand)
        if self.streak == 1 or self.streak % 10 == 0:  # an outage must not flood the log
            log.warning(
                "exporter %s: push failed (%s); %d results waiting, retrying in %.1fs",
                self.name,
                result.error or "no reason given",
                self.outbox.depth(self.name),
                delay,
            )
        return delay

    async def run(self) -> None:
        with contextlib.suppress(Exception):
            await self.exporter.start()
        while True:
            self._wake.clear()
            try:
                delay = await self.step()
            except Exception as exc:  # e.g. the disk is full: keep the task alive
                log.error("exporter %s: outbox read failed: %s: %s", self.name, type(exc).__name__, exc)
                delay = 5.0
            if delay == 0.0:
                await asyncio.sleep(0)
                continue
            if delay is None:
                await self._wake.wait()
            else:
                await self._retry_wait(delay)

    async def _retry_wait(self, delay: float) -> None:
        """Wait `delay` before retrying. New results do not cut it short; an exporter that knows
        its service is back (`reconnected`, an asyncio.Event it sets on each connect: MQTT) does,
        so a backlog is not held for minutes of backoff after an outage ends."""
        event = getattr(self.exporter, "reconnected", None)
        if not isinstance(event, asyncio.Event):
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), delay)
        event.clear()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"export:{self.name}")

    async def drain(self, timeout: float) -> bool:
        """Push until nothing is waiting (True) or a push fails or `timeout` passes (False)."""
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            if self.outbox.depth(self.name) == 0:
                return True
            try:
                async with asyncio.timeout(max(0.0, deadline - self.clock())):
                    delay = await self.step()
            except TimeoutError:
                return False
            if delay is None:
                return True
            if delay > 0:
                return False
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class OutboxSink:
    """The fan-out's sink for every push exporter: appends each result to the outbox once."""

    name = "outbox"

    def __init__(self, outbox: Outbox, pumps: Sequence[Pump]) -> None:
        self.outbox = outbox
        self.pumps = list(pumps)
        self._closed = False

    async def consume(self, result: CheckResult) -> None:
        self.outbox.append([result])
        for pump in self.pumps:
            pump.wake()

    async def aclose(self) -> None:
        """Give each exporter one chance to send what waits (bounded), then stop them."""
        if self._closed:
            return
        self._closed = True
        for pump in self.pumps:
            await pump.stop()
        await asyncio.gather(*(pump.drain(3.0) for pump in self.pumps), return_exceptions=True)
        for pump in self.pumps:
            try:
                await pump.exporter.aclose()
            except Exception as exc:
                log.error("exporter %s failed to close: %s: %s", pump.name, type(exc).__name__, exc)
        self.outbox.close()


class ExportCollector(Collector):
    """mamori_outbox_* and mamori_export_*, read from the outbox and the pumps at scrape time."""

    def __init__(self, outbox: Outbox, pumps: Sequence[Pump]) -> None:
        self._outbox = outbox
        self._pumps = list(pumps)

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, AGENT_METRICS[name].help, labels=labels)

        def counter(name: str, labels: list[str]) -> CounterMetricFamily:
            return CounterMetricFamily(name.removesuffix("_total"), AGENT_METRICS[name].help, labels=labels)

        depth = gauge("mamori_outbox_depth", ["sink"])
        age = gauge("mamori_outbox_oldest_age_seconds", ["sink"])
        sent = counter("mamori_export_sent_total", ["sink"])
        failures = counter("mamori_export_failures_total", ["sink"])
        dropped = counter("mamori_outbox_dropped_total", ["sink", "reason"])
        now = time.time()
        counts: Counter[tuple[str, str]] = Counter(self._outbox.dropped)
        for pump in self._pumps:
            depth.add_metric([pump.name], float(self._outbox.depth(pump.name)))
            age.add_metric([pump.name], self._outbox.oldest_age(pump.name, now))
            sent.add_metric([pump.name], float(pump.sent))
            failures.add_metric([pump.name], float(pump.failures))
            counts.setdefault((pump.name, "capacity"), 0)
        for (sink, reason), n in sorted(counts.items()):
            dropped.add_metric([sink, reason], float(n))
        skipped = counter("mamori_export_samples_skipped_total", ["sink", "reason"])
        for pump in self._pumps:
            skips: dict[str, int] = {"non_finite": 0, **getattr(pump.exporter, "skipped", {})}
            for reason, n in sorted(skips.items()):
                skipped.add_metric([pump.name, reason], float(n))
        size = gauge("mamori_outbox_bytes", [])
        size.add_metric([], float(self._outbox.bytes))
        yield from (depth, age, size, dropped, sent, failures, skipped)
