"""Push exporters (OCI Monitoring, MQTT, OpenTelemetry) and the machinery they share.

    results ─► FanOut ─► OutboxSink ─► Outbox (sqlite, a cursor per exporter)
                                          │ read(name, batch)         ▲ settle: ack(seq), drops
                                          ▼                           │
                         agent/delivery Pump (one task per exporter) ─► exporter.push(records)

An exporter never sees the fan-out: it is handed records (sequence number + result) from the
durable outbox, oldest first, and answers with a `PushResult` (agent/delivery/outcome.py) saying
how many of them, from the front, are settled (delivered, or rejected and counted). The pump —
the one delivery loop of exporters and notifier routes (agent/delivery/pump.py) — acks those
and retries the rest with exponential backoff and jitter (or the service's Retry-After), so an
exporter whose service is down costs disk (capped, see agent/outbox.py) and no memory, and
resumes after a restart where it stopped, with the results' original timestamps — and with its
retry schedule: the earliest next attempt and the backoff streak are saved with the cursor, so a
Retry-After given before a restart (kill -9 included) is waited out after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.catalog import AGENT_METRICS
from agent.delivery.outcome import PushResult
from agent.delivery.pump import Pump
from agent.fields import Model
from agent.metrics import CounterFamily, GaugeFamily, MetricFamily
from agent.model import CheckRemoved, CheckResult
from agent.outbox import Outbox, Record
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
    # No way back into the fan-out: data flows one way, and a derived result is a check's
    # (the fleet quorum is checks/fleet.py).

    @property
    def site(self) -> str:
        return self.labels.get("site", "default")


class PushExporter(Protocol):
    """A consumer of the outbox (agent/delivery/pump.py, `Consumer`). Optionally also `linger`
    (seconds) and `fills(records) -> bool` (would a push of these be full?): the pump then holds
    back a push that would not be full, up to `linger`, so that more results join it (OCI
    Monitoring: each push is a request, and requests per tenancy are few)."""

    name: str
    batch: int

    async def start(self) -> None:
        """Connect or start background work. Must not raise for a service that is down."""

    async def push(self, records: Sequence[Record]) -> PushResult:
        """Send what it can of `records` (never empty). Never raises for a service failure."""

    async def aclose(self) -> None:
        """Release everything. Safe to call twice."""


def exporter_pump(exporter: PushExporter, outbox: Outbox) -> Pump[Record]:
    """The one delivery loop (agent/delivery/pump.py) for an exporter: 5 min backoff cap."""
    return Pump(exporter, outbox, logger=log)


class OutboxSink:
    """The fan-out's sink for every push exporter: appends each result to the outbox once."""

    name = "outbox"

    def __init__(self, outbox: Outbox, pumps: Sequence[Pump[Record]]) -> None:
        self.outbox = outbox
        self.pumps = list(pumps)
        self._closed = False

    async def consume(self, result: CheckResult) -> None:
        self.outbox.append([result])
        for pump in self.pumps:
            pump.wake()

    async def remove(self, event: CheckRemoved) -> None:
        """Nothing to forget: the outbox holds history, which is still delivered."""

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
                await pump.consumer.aclose()
            except Exception as exc:
                log.error("exporter %s failed to close: %s: %s", pump.name, type(exc).__name__, exc)
        self.outbox.close()


class ExportCollector:
    """mamori_outbox_* and mamori_export_*, read from the outbox and the pumps at scrape time."""

    def __init__(self, outbox: Outbox, pumps: Sequence[Pump[Record]]) -> None:
        self._outbox = outbox
        self._pumps = list(pumps)

    def collect(self) -> Iterator[MetricFamily]:
        def gauge(name: str, labels: list[str]) -> GaugeFamily:
            return GaugeFamily(name, AGENT_METRICS[name].help, labels=labels)

        def counter(name: str, labels: list[str]) -> CounterFamily:
            return CounterFamily(name, AGENT_METRICS[name].help, labels=labels)

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
            skips: dict[str, int] = {"non_finite": 0, **getattr(pump.consumer, "skipped", {})}
            for reason, n in sorted(skips.items()):
                skipped.add_metric([pump.name, reason], float(n))
        size = gauge("mamori_outbox_bytes", [])
        size.add_metric([], float(self._outbox.bytes))
        yield from (depth, age, size, dropped, sent, failures, skipped)
