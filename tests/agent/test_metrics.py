"""agent/metrics.py renders exactly what prometheus_client renders for the same instruments (the
reference: it was the agent's metrics library until issue 12's RSS budget), and what Prometheus'
own parser accepts."""

from __future__ import annotations

import math
from collections.abc import Iterator

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import (
    CounterFamily,
    GaugeFamily,
    MetricCounter,
    MetricFamily,
    MetricGauge,
    MetricHistogram,
    MetricRegistry,
    go_float,
)

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

BUCKETS = (0.005, 0.01, 0.1, 1, 2.5, 10)
NASTY = ["plain", 'with "quotes"', "back\\slash", "new\nline", "ünïcode ✓", "", "a,b=c}"]


def both() -> tuple[MetricRegistry, prometheus_client.CollectorRegistry]:
    return MetricRegistry(), prometheus_client.CollectorRegistry()


def test_instruments_render_as_prometheus_client_does() -> None:
    ours, ref = both()
    help_text = 'Help with a \\ backslash\nand a newline "quoted".'
    c1 = MetricCounter("demo_runs_total", help_text, ("check", "status"), ours)
    c2 = prometheus_client.Counter("demo_runs", help_text, ("check", "status"), registry=ref)
    g1 = MetricGauge("demo_gauge", "A gauge.", registry=ours)
    g2 = prometheus_client.Gauge("demo_gauge", "A gauge.", registry=ref)
    lg1 = MetricGauge("demo_labelled", "Labelled.", ("sink",), ours)
    lg2 = prometheus_client.Gauge("demo_labelled", "Labelled.", ("sink",), registry=ref)
    h1 = MetricHistogram("demo_seconds", "A histogram.", BUCKETS, registry=ours)
    h2 = prometheus_client.Histogram("demo_seconds", "A histogram.", buckets=BUCKETS, registry=ref)
    empty1 = MetricCounter("demo_empty_total", "No children yet.", ("x",), ours)
    empty2 = prometheus_client.Counter("demo_empty", "No children yet.", ("x",), registry=ref)
    assert empty1 and empty2
    for i, value in enumerate(NASTY):
        c1.labels(check=value, status="ok").inc(i + 0.5)
        c2.labels(check=value, status="ok").inc(i + 0.5)
        c1.labels(value, "critical").inc()
        c2.labels(value, "critical").inc()
    c1.remove(NASTY[0], "ok")
    c2.remove(NASTY[0], "ok")
    for number in (0.0, -3.5, 1e20, 1234567.0, 123456.7, 5e-324, math.inf, -math.inf):
        g1.set(number)
        g2.set(number)
        lg1.labels(sink=go_float(number)).set(number)
        lg2.labels(sink=go_float(number)).set(number)
        assert ours.render() == ref_text(ref)
    g1.set(math.nan)
    g2.set(math.nan)
    g1.inc(2)
    g2.inc(2)
    g1.dec(0.5)
    g2.dec(0.5)
    for observed in (0.0, 0.005, 0.0051, 0.5, 2.5, 3, 11, 1e9):
        h1.observe(observed)
        h2.observe(observed)
    assert ours.render() == ref_text(ref)


def ref_text(ref: prometheus_client.CollectorRegistry) -> str:
    return prometheus_client.generate_latest(ref).decode()


class Ours:
    def __init__(self, families: list[MetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[MetricFamily]:
        yield from self.families


class Theirs(prometheus_client.registry.Collector):
    def __init__(self, families: list[prometheus_client.core.Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[prometheus_client.core.Metric]:
        yield from self.families


def test_collector_families_render_as_prometheus_client_does() -> None:
    ours, ref = both()
    g1 = GaugeFamily("demo_info", "Info.", labels=["agent", "version"])
    g2 = GaugeMetricFamily("demo_info", "Info.", labels=["agent", "version"])
    g1.add_metric(['a"b', "1.0"], 1)
    g2.add_metric(['a"b', "1.0"], 1)
    c1 = CounterFamily("demo_sent_total", "Sent.", labels=["route", "outcome"])
    c2 = CounterMetricFamily("demo_sent", "Sent.", labels=["route", "outcome"])
    for route in NASTY:
        c1.add_metric([route, "delivered"], 3)
        c2.add_metric([route, "delivered"], 3)
    plain1 = GaugeFamily("demo_down", "Down.", value=0)
    plain2 = GaugeMetricFamily("demo_down", "Down.", value=0)
    ours.register(Ours([g1, c1, plain1]))
    ref.register(Theirs([g2, c2, plain2]))
    assert ours.render() == ref_text(ref)
    assert ours.get_sample_value("demo_sent_total", {"route": "plain", "outcome": "delivered"}) == 3.0
    assert ours.get_sample_value("demo_sent_total", {"route": "nope", "outcome": "delivered"}) is None
    assert ours.get_sample_value("demo_down") == 0.0


@settings(max_examples=200, deadline=None)
@given(
    label=st.text(max_size=30),
    value=st.floats(allow_nan=False) | st.integers(min_value=-(2**53), max_value=2**53).map(float),
)
def test_any_label_value_and_number_render_identically_and_parse_back(label: str, value: float) -> None:
    ours, ref = both()
    MetricGauge("demo_any", "Any.", ("v",), ours).labels(v=label).set(value)
    prometheus_client.Gauge("demo_any", "Any.", ("v",), registry=ref).labels(v=label).set(value)
    text = ours.render()
    assert text == ref_text(ref)
    [family] = text_string_to_metric_families(text)
    [sample] = family.samples
    assert sample.labels == {"v": label}
    assert sample.value == value


def test_misuse_is_refused() -> None:
    registry = MetricRegistry()
    counter = MetricCounter("demo_total", "Demo.", ("a",), registry)
    with pytest.raises(ValueError, match="registered twice"):
        MetricCounter("demo_total", "Again.", ("a",), registry)
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels(b="x")
    with pytest.raises(ValueError, match=r"use \.labels"):
        counter.inc()
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels(a="x").inc(-1)
    with pytest.raises(KeyError):
        counter.remove("never")
    registry.unregister(counter)
    registry.unregister(counter)  # safe twice
    MetricCounter("demo_total", "Again.", ("a",), registry)
