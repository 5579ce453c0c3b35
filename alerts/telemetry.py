"""Prometheus metrics of the agent's own notifier, read from the sink at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from agent.catalog import AGENT_METRICS
from agent.metrics import CounterFamily, GaugeFamily, MetricFamily
from agent.statehealth import LOSS_REASONS
from alerts.model import Outcome
from alerts.sink import AlertSink


class AlertCollector:
    def __init__(self, sink: AlertSink) -> None:
        self._sink = sink

    def collect(self) -> Iterator[MetricFamily]:
        sent = CounterFamily(
            "mamori_alert_notifications_total",
            AGENT_METRICS["mamori_alert_notifications_total"].help,
            labels=["route", "outcome"],
        )
        counts = self._sink.counts()
        for route in sorted(self._sink.deliverers):
            for outcome in Outcome:
                sent.add_metric([route, outcome.value], float(counts.get((route, outcome), 0)))
        yield sent
        depth = GaugeFamily(
            "mamori_alert_outbox_depth", AGENT_METRICS["mamori_alert_outbox_depth"].help, labels=["route"]
        )
        pending = self._sink.pending()
        for route in sorted(self._sink.deliverers):
            depth.add_metric([route], float(pending.get(route, 0)))
        yield depth
        name = "mamori_alert_notifications_dropped_total"
        dropped = CounterFamily(name, AGENT_METRICS[name].help, labels=["route", "reason"])
        losses = dict.fromkeys(((r, why) for r in self._sink.deliverers for why in LOSS_REASONS), 0)
        losses.update(self._sink.dropped)
        for (route, reason), n in sorted(losses.items()):
            dropped.add_metric([route, reason], float(n))
        yield dropped
        down = GaugeFamily("mamori_alert_network_down", AGENT_METRICS["mamori_alert_network_down"].help)
        down.add_metric([], 1.0 if self._sink.engine.network_down else 0.0)
        yield down
