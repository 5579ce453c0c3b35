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
stopped, with the results' original timestamps — and with its retry schedule: the earliest next
attempt and the backoff streak are saved with the cursor, so a Retry-After given before a restart
(kill -9 included) is waited out after it.
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
from agent.fields import Model
from agent.logs import FailureLog
from agent.model import CheckResult
from agent.outbox import Outbox, Record
from agent.retry import RETRY_AFTER_CAP, backoff
from agent.statehealth import LOSS_REASONS

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
    """Optionally also `linger` (seconds) and `fills(records) -> bool` (would a push of these be
    full?): the pump then holds back a push that would not be full, up to `linger`, so that more
    results join it (OCI Monitoring: each push is a request, and requests per tenancy are few)."""

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
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.exporter = exporter
        self.outbox = outbox
        self.clock = clock
        self.rand = rand
        self.wall = wall  # the retry schedule is saved in unix time: it must survive a restart
        self.failures = 0  # pushes that failed (not handled in full), ever
        self.sent = 0  # results handled and not dropped
        # Failed pushes in a row, and the earliest next attempt (unix time; 0: now): saved in the
        # outbox with the cursor, so a restart (kill -9 included) keeps the backoff and waits out
        # a Retry-After given before it. Capped as a Retry-After is, against a clock set back.
        not_before, self.streak = outbox.schedule(exporter.name)
        self.not_before = min(not_before, wall() + RETRY_AFTER_CAP)
        self.last_error = ""
        self._failures = FailureLog(log)  # "outbox failed": first, then once a minute
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._held: tuple[int, float] | None = None  # (head seq, since when) of records held back

    @property
    def name(self) -> str:
        return self.exporter.name

    def wake(self) -> None:
        self._wake.set()

    def _hold(self, records: Sequence[Record]) -> float:
        """Seconds left to hold `records` back for more to join them (<= 0: push now), counted
        from when the pump first held back this head record (see `PushExporter`)."""
        linger = float(getattr(self.exporter, "linger", 0.0))
        fills = getattr(self.exporter, "fills", None)
        if linger <= 0 or fills is None or fills(records):
            self._held = None
            return 0.0
        now = self.clock()
        if self._held is None or self._held[0] != records[0].seq:
            self._held = (records[0].seq, now)
        return self._held[1] + linger - now

    async def step(self, hold: bool = False) -> float | None:
        """One push. Returns seconds to wait before the next (0: go on; None: nothing to send).
        `hold` (the running pump; never drain()): first wait for the exporter's linger."""
        records = self.outbox.read(self.name, self.exporter.batch)
        while hold and records and (wait := self._hold(records)) > 0:
            self._wake.clear()  # no await since the read: a result appended since wakes us
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel (stop()) that
            # comes with the wake-up, and the pump would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
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
            self.not_before = 0.0
            self.outbox.set_schedule(self.name, 0.0, 0)  # no write unless it changed
            return 0.0
        self.failures += 1
        self.streak += 1
        self.last_error = result.error
        if result.retry_after is not None:
            delay = min(max(result.retry_after, 0.0), RETRY_AFTER_CAP)
        else:
            delay = backoff(self.streak, self.rand)
        self.not_before = self.wall() + delay
        self.outbox.set_schedule(self.name, self.not_before, self.streak)
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
        wait = self.not_before - self.wall()
        if wait > 0:  # asked before a restart: a Retry-After or backoff still running
            log.info("exporter %s: next attempt in %.1fs, as scheduled before the restart", self.name, wait)
            await self._retry_wait(wait)
        while True:
            self._wake.clear()
            try:
                delay = await self.step(hold=True)
            except Exception as exc:  # e.g. a damaged page: keep the task alive
                self._log_failure(f"{type(exc).__name__}: {exc}")
                delay = 5.0
            else:
                self._failures.ok()
            if delay == 0.0:
                await asyncio.sleep(0)
                continue
            if delay is None:
                await self._wake.wait()
            else:
                await self._retry_wait(delay)

    def _log_failure(self, error: str) -> None:
        self._failures.failed(error, "exporter %s: outbox failed: %s (retrying every 5s)", self.name, error)

    async def _retry_wait(self, delay: float) -> None:
        """Wait `delay` before retrying. New results do not cut it short; an exporter that knows
        its service is back (`reconnected`, an asyncio.Event it sets on each connect: MQTT) does,
        so a backlog is not held for minutes of backoff after an outage ends."""
        event = getattr(self.exporter, "reconnected", None)
        if not isinstance(event, asyncio.Event):
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # not wait_for: on 3.11 it can swallow a stop()
                await event.wait()
        if event.is_set():
            self.not_before = 0.0  # the service is back: the schedule no longer applies
        event.clear()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"export:{self.name}")

    async def drain(self, timeout: float) -> bool:
        """Push until nothing is waiting (True) or a push fails or `timeout` passes (False).
        Inside a Retry-After or backoff wait it does not push at all (False unless nothing waits)."""
        if self.not_before > self.wall():
            return self.outbox.depth(self.name) == 0
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
            for reason in ("capacity", *LOSS_REASONS):  # the outbox's own reasons: 0 from the start
                counts.setdefault((pump.name, reason), 0)
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
