"""The OpenTelemetry exporter (exporters/otel.py) against the strict OTLP/HTTP receiver of
tests/fakes/otlp_receiver.py, fed with results of real checks through the real outbox and pump."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import logging
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent import __version__, config
from agent.delivery.pump import Pump
from agent.errors import ConfigError
from agent.model import CheckResult, Reason, Sample, Status
from agent.outbox import Outbox, Record
from agent.runner import execute
from agent.runtime import Agent
from checks.http.check import HttpCheck
from exporters.base import ExportContext
from exporters.config import ExtraMissing
from exporters.otel import OtelConfig, OtelExporter, build, resource_attributes, span_ids, unix_nano
from exporters.samples import flatten
from lab.ports import free_port
from lab.wait import wait_until
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.servers import redirect, serve_http

CONTEXT = ExportContext(agent="web-1", labels={"site": "tokyo", "role": "app"}, interval=30.0)
HTTP_PHASES = ("resolve", "connect", "tls", "processing", "transfer")
PointKey = tuple[str, frozenset[tuple[str, Any]], int, float]


def otel_config(endpoint: str, **extra: Any) -> OtelConfig:
    return OtelConfig.model_validate(
        {"name": "otel", "type": "otel", "endpoint": endpoint, "timeout": 1.0, **extra}
    )


def exporter(endpoint: str, **extra: Any) -> OtelExporter:
    return build(otel_config(endpoint, **extra), CONTEXT)


def expected_points(results: Iterable[CheckResult]) -> Counter[PointKey]:
    return Counter(
        (s.name, frozenset(s.labels), unix_nano(s.timestamp), s.value) for r in results for s in flatten(r)
    )


def received_points(rx: OtlpReceiver) -> Counter[PointKey]:
    return Counter((p.metric, frozenset(p.attributes.items()), p.time_unix_nano, p.value) for p in rx.points)


@pytest.fixture
async def results() -> AsyncIterator[list[CheckResult]]:
    """Two results of real http checks against a loopback server: one OK, one CRITICAL (refused)."""
    async with serve_http() as server:
        ok = await execute(HttpCheck.from_url(server.url("/health"), timeout=2.0))
    refused = await execute(HttpCheck.from_url(f"http://127.0.0.1:{free_port()}/", timeout=2.0))
    assert (ok.status, refused.status, refused.reason) == (Status.OK, Status.CRITICAL, Reason.REFUSED)
    yield [ok, refused]


async def many(n: int) -> list[CheckResult]:
    async with serve_http() as server:
        return [await execute(HttpCheck.from_url(server.url("/health"), timeout=2.0)) for _ in range(n)]


# --- what is sent ---------------------------------------------------------------------------------


async def test_every_sample_arrives_with_resource_and_original_timestamp(
    results: list[CheckResult], tmp_path: Path
) -> None:
    # One result as if it had waited out a two-hour outage in the outbox.
    results = [results[0], results[1].with_(started_at=results[1].started_at - 7200)]
    outbox = Outbox(tmp_path / "outbox.db", 10**7, ["otel"])
    async with otlp_receiver() as rx:
        otel = exporter(rx.endpoint, resource_attributes={"deployment.environment": "test"})
        pump = Pump(otel, outbox)
        outbox.append(results)
        assert await pump.step() == 0.0
        await otel.aclose()
    assert outbox.depth("otel") == 0 and pump.sent == 2
    assert received_points(rx) == expected_points(results)
    assert len(rx.points) > 2 * 10  # every http sample, not only the four every check has
    for r in results:
        stamps = {p.time_unix_nano for p in rx.points if p.attributes["check"] == r.check}
        assert len(stamps) == 1 and abs(stamps.pop() - r.started_at * 1e9) < 1000
    assert {frozenset(p.resource.items()) for p in rx.points} == {
        frozenset(
            {
                "service.name": "mamori",
                "service.version": __version__,
                "service.instance.id": "web-1",
                "host.name": "web-1",
                "mamori.site": "tokyo",
                "mamori.role": "app",
                "deployment.environment": "test",
            }.items()
        )
    }
    by_name = {p.metric: p for p in rx.points}
    assert by_name["probe_duration_seconds"].unit == "s"
    assert by_name["probe_success"].description.startswith("1 if the check succeeded")
    assert {p.kind for p in rx.points} == {"gauge"} and {p.scope for p in rx.points} == {"mamori"}
    assert rx.spans == [] and rx.trace_requests == 0  # traces are off by default
    assert rx.requests[0].headers["content-encoding"] == "gzip"


async def test_counters_are_cumulative_monotonic_sums() -> None:
    r = CheckResult(
        "host",
        "host",
        "localhost",
        Status.OK,
        time.time(),
        0.01,
        (
            Sample("mamori_host_disk_read_bytes_total", 4096.0, (("device", "sda"),)),
            Sample("mamori_host_cpu_usage_ratio", 0.25),
        ),
    )
    async with otlp_receiver() as rx:
        otel = exporter(rx.endpoint)
        assert (await otel.push([Record(1, r)])).handled == 1
        await otel.aclose()
    points = {p.metric: p for p in rx.points}
    disk = points["mamori_host_disk_read_bytes_total"]
    assert (disk.kind, disk.monotonic, disk.temporality, disk.unit) == ("sum", True, 2, "By")
    assert (points["mamori_host_cpu_usage_ratio"].kind, points["mamori_host_cpu_usage_ratio"].unit) == (
        "gauge",
        "1",
    )
    assert received_points(rx) == expected_points([r])


async def test_spans_carry_the_phases_as_events(results: list[CheckResult]) -> None:
    ok, refused = results
    async with otlp_receiver() as rx:
        otel = exporter(rx.endpoint, traces=True)
        assert (await otel.push([Record(1, ok), Record(2, refused)])).handled == 2
        await otel.aclose()
        # Sent again (the outbox is at-least-once): the same trace and span, not a new one.
        again = exporter(rx.endpoint, traces=True)
        assert (await again.push([Record(1, ok)])).handled == 1
        await again.aclose()
    spans: dict[str, ReceivedSpan] = {}
    for s in rx.spans[:2]:
        spans[s.attributes["check"]] = s
    assert (rx.spans[2].trace_id, rx.spans[2].span_id) == (rx.spans[0].trace_id, rx.spans[0].span_id)
    assert rx.spans[0].trace_id != rx.spans[1].trace_id
    for r in results:
        span = spans[r.check]
        assert span.name == f"check {r.check}"
        assert abs(span.start_time_unix_nano - r.started_at * 1e9) < 1000
        assert abs(span.end_time_unix_nano - span.start_time_unix_nano - r.duration * 1e9) < 1000
        assert span.attributes == {
            "check": r.check,
            "type": "http",
            "target": r.target,
            "status": r.status.name,
            "reason": r.reason.value,
            "attempts": 1,
        }
        assert span.resource["host.name"] == "web-1" and span.resource["mamori.site"] == "tokyo"
        phases = {
            dict(s.labels)["phase"]: s.value for s in r.samples if s.name == "probe_http_duration_seconds"
        }
        events = span.events
        assert [e.name for e in events] == [p for p in HTTP_PHASES if phases[p] > 0]
        for e in events:
            assert e.attributes["duration_seconds"] == phases[e.name]
            assert e.attributes["metric"] == "probe_http_duration_seconds"
            assert span.start_time_unix_nano <= e.time_unix_nano <= span.end_time_unix_nano
        stamps = [e.time_unix_nano for e in events]
        assert stamps == sorted(stamps)
        # each phase starts where the one before it ended
        for before, after in itertools.pairwise(events):
            gap = after.time_unix_nano - before.time_unix_nano - before.attributes["duration_seconds"] * 1e9
            assert abs(gap) < 1000
    ok_phases = [e.name for e in spans[ok.check].events]
    assert {"connect", "processing", "transfer"} <= set(ok_phases) and "tls" not in ok_phases  # plain http
    assert (spans[ok.check].status_code, spans[ok.check].status_message) == (0, "")
    assert (spans[refused.check].status_code, spans[refused.check].status_message) == (2, refused.message)
    assert [e.name for e in spans[refused.check].events][-1] == "connect"  # refused while connecting


def test_span_ids_are_stable_and_distinct(results: list[CheckResult]) -> None:
    ok, refused = results
    assert span_ids("web-1", ok) == span_ids("web-1", ok)
    assert span_ids("web-1", ok) != span_ids("web-2", ok)
    assert span_ids("web-1", ok) != span_ids("web-1", ok.with_(started_at=ok.started_at + 30))
    assert all(i > 0 for i in span_ids("web-1", refused))


async def test_uncompressed_to_a_base_path(results: list[CheckResult]) -> None:
    async with otlp_receiver(prefix="/otlp") as rx:
        otel = exporter(rx.endpoint + "/", compression="none", traces=True)
        assert (await otel.push([Record(1, results[0])])).handled == 1
        await otel.aclose()
    assert [(q.path, q.status) for q in rx.requests] == [("/otlp/v1/metrics", 200), ("/otlp/v1/traces", 200)]
    assert all("content-encoding" not in q.headers for q in rx.requests)
    assert all(q.headers["content-type"] == "application/x-protobuf" for q in rx.requests)
    assert received_points(rx) == expected_points(results[:1])


async def test_the_receiver_is_strict() -> None:
    """The fake refuses what a collector refuses, so the tests above would notice a bad request."""
    good = ExportMetricsServiceRequest()
    point = good.resource_metrics.add().scope_metrics.add().metrics.add()
    point.name = "probe_success"
    point.gauge.data_points.add(time_unix_nano=1, as_double=1.0)
    no_time = ExportMetricsServiceRequest()
    no_time.CopyFrom(good)
    no_time.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].time_unix_nano = 0
    zero_ids = ExportTraceServiceRequest()
    zero_ids.resource_spans.add().scope_spans.add().spans.add(
        name="check x", trace_id=bytes(16), span_id=bytes(8), start_time_unix_nano=1, end_time_unix_nano=2
    )
    protobuf = {"Content-Type": "application/x-protobuf"}
    cases: list[tuple[str, str, dict[str, str], bytes, int]] = [
        ("POST", "/v1/metrics", protobuf, good.SerializeToString(), 401),  # no Authorization
        ("POST", "/v1/metrics", {**protobuf, "Authorization": "k"}, good.SerializeToString(), 200),
        ("POST", "/v1/metrics", {"Content-Type": "application/json", "Authorization": "k"}, b"{}", 415),
        ("POST", "/v1/metrics", {**protobuf, "Authorization": "k"}, b"\xff\xff\xff", 400),
        ("POST", "/v1/metrics", {**protobuf, "Authorization": "k"}, no_time.SerializeToString(), 400),
        ("POST", "/v1/traces", {**protobuf, "Authorization": "k"}, zero_ids.SerializeToString(), 400),
        (
            "POST",
            "/v1/metrics",
            {**protobuf, "Authorization": "k", "Content-Encoding": "gzip"},
            good.SerializeToString(),  # not gzipped
            400,
        ),
        (
            "POST",
            "/v1/metrics",
            {**protobuf, "Authorization": "k", "Content-Encoding": "gzip"},
            gzip.compress(good.SerializeToString()),
            200,
        ),
        ("GET", "/v1/metrics", {"Authorization": "k"}, b"", 405),
        ("POST", "/v1/logs", {**protobuf, "Authorization": "k"}, b"", 404),
    ]
    async with otlp_receiver(required_headers={"Authorization": "k"}) as rx, aiohttp.ClientSession() as http:
        for method, path, headers, body, status in cases:
            async with http.request(method, rx.base_url + path, headers=headers, data=body) as response:
                assert response.status == status, (path, headers, body)
                if status in (200, 400, 401):
                    assert response.content_type == "application/x-protobuf"
    assert rx.metric_requests == 2 and len(rx.points) == 2 and rx.spans == []


# --- outages, throttling, refusals -----------------------------------------------------------------


async def test_down_across_a_restart_then_up_nothing_lost_or_duplicated(
    results: list[CheckResult], tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    async with otlp_receiver() as rx:
        await rx.down()
        outbox = Outbox(path, 10**7, ["otel"])
        otel = exporter(rx.endpoint, traces=True, timeout=0.2)
        pump = Pump(otel, outbox)
        outbox.append(results)
        delay = await pump.step()
        assert delay is not None and delay > 0
        assert "connection refused" in pump.last_error and outbox.depth("otel") == 2
        await otel.aclose()
        outbox.close()
        # the agent restarts; the collector comes back
        await rx.up()
        outbox = Outbox(path, 10**7, ["otel"])
        otel = exporter(rx.endpoint, traces=True)
        pump = Pump(otel, outbox)
        assert await pump.step() == 0.0
        assert await pump.step() is None
        await otel.aclose()
    assert outbox.depth("otel") == 0
    assert received_points(rx) == expected_points(results)
    assert sorted(s.attributes["check"] for s in rx.spans) == sorted(r.check for r in results)


async def test_503_is_retried_by_the_running_pump(results: list[CheckResult], tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", 10**7, ["otel"])
    async with otlp_receiver() as rx:
        rx.fail_for(1.0, status=503)
        otel = exporter(rx.endpoint, traces=True, timeout=0.3)
        pump = Pump(otel, outbox, rand=lambda: 0.0)  # backoff 0.5 s, 1 s, …
        pump.start()
        outbox.append(results)
        pump.wake()
        await wait_until("the outbox to drain", lambda: outbox.depth("otel") == 0, timeout=10)
        await pump.stop()
        await otel.aclose()
    assert pump.failures >= 1 and pump.last_error.startswith("HTTP 503 from /v1/metrics")
    assert received_points(rx) == expected_points(results)
    assert len(rx.spans) == 2
    assert rx.attempts > len(rx.requests)  # the 503s were answered before serve() saw them


async def test_429_retry_after_is_handed_to_the_pump(results: list[CheckResult], tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", 10**7, ["otel"])
    async with otlp_receiver() as rx:
        rx.throttle(1, retry_after=7)  # longer than the exporter's timeout: the SDK gives up
        otel = exporter(rx.endpoint, timeout=0.5)
        pump = Pump(otel, outbox)
        outbox.append(results)
        assert await pump.step() == 7.0
        assert pump.last_error == "HTTP 429 from /v1/metrics" and rx.attempts == 1
        assert await pump.step() == 0.0
        await otel.aclose()
    assert received_points(rx) == expected_points(results)


async def test_sdk_retries_stay_within_the_timeout(results: list[CheckResult]) -> None:
    async with otlp_receiver() as rx:
        # A short Retry-After fits in the timeout: the SDK waits and retries by itself.
        rx.throttle(1, retry_after=0.2)
        otel = exporter(rx.endpoint, timeout=2.0)
        assert (await otel.push([Record(1, results[0])])).handled == 1
        assert rx.attempts == 2
        # A collector down for minutes holds a push no longer than about the timeout.
        rx.fail_for(300, status=503)
        t0 = time.monotonic()
        answer = await otel.push([Record(2, results[1])])
        assert (answer.handled, answer.error) == (0, "HTTP 503 from /v1/metrics")
        assert time.monotonic() - t0 < 2.5
        await otel.aclose()
    assert received_points(rx) == expected_points(results[:1])


async def test_a_redirect_is_not_taken_for_delivery(results: list[CheckResult]) -> None:
    # The SDK counts any 3xx as success; the data went nowhere, so it must stay in the outbox.
    async with serve_http({"/v1/metrics": redirect("https://collector.example/v1/metrics", 301)}) as server:
        otel = exporter(server.url("").rstrip("/"))
        answer = await otel.push([Record(1, results[0])])
        await otel.aclose()
    assert (answer.handled, answer.error) == (
        0,
        "HTTP 301 from /v1/metrics: redirected (set endpoint to the new URL)",
    )
    assert [q.path for q in server.requests] == ["/v1/metrics"]  # not followed


async def test_refused_data_is_dropped_and_counted(
    results: list[CheckResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", 10**7, ["otel"])
    async with otlp_receiver() as rx:
        rx.fail_for(60, status=400)
        otel = exporter(rx.endpoint)
        pump = Pump(otel, outbox)
        outbox.append(results)
        assert await pump.step() == 0.0  # nothing to retry: the same data would be refused again
        await otel.aclose()
    assert outbox.depth("otel") == 0 and outbox.dropped[("otel", "invalid")] == 2
    assert pump.sent == 0 and pump.failures == 0
    assert "refused the metrics of 2 results (HTTP 400: invalid data)" in caplog.text


async def test_413_halves_the_batch_until_it_fits(tmp_path: Path) -> None:
    results = await many(8)
    outbox = Outbox(tmp_path / "outbox.db", 10**7, ["otel"])
    async with otlp_receiver() as rx:
        otel = exporter(rx.endpoint, compression="none")
        assert (await otel.push([Record(0, results[0])])).handled == 1
        rx.points.clear()
        rx.max_body = int(rx.requests[0].size * 2.5)  # room for two results a request
        pump = Pump(otel, outbox)
        outbox.append(results)
        for _ in range(20):
            if await pump.step() is None:
                break
        await otel.aclose()
    assert otel.batch == 2 and outbox.depth("otel") == 0 and not outbox.dropped
    assert received_points(rx) == expected_points(results)
    assert [q.status for q in rx.requests[1:]].count(413) == 2  # 8 → 4 → 2 results a request


async def test_partial_success_is_logged(
    results: list[CheckResult], caplog: pytest.LogCaptureFixture
) -> None:
    async with otlp_receiver() as rx:
        rx.partial(3, "3 points too old")
        otel = exporter(rx.endpoint)
        assert (await otel.push([Record(1, results[0])])).handled == 1
        await otel.aclose()
    assert "the collector rejected 3 data points: 3 points too old" in caplog.text


async def test_auth_header_is_sent_and_the_secret_never_logged(
    results: list[CheckResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 and the SDK included
    secret, wrong = "tok-3b7c1d9e5f", "tok-0000wrong"
    good_file, wrong_file = tmp_path / "token", tmp_path / "wrong"
    good_file.write_text(f"Bearer {secret}\n")
    wrong_file.write_text(f"Bearer {wrong}\n")
    outbox = Outbox(tmp_path / "outbox.db", 10**7, ["otel"])
    async with otlp_receiver(
        required_headers={"Authorization": f"Bearer {secret}", "X-Scope-OrgID": "t1"}
    ) as rx:
        bad_config = otel_config(
            rx.endpoint, header_files={"Authorization": str(wrong_file)}, headers={"X-Scope-OrgID": "t1"}
        )
        bad = build(bad_config, CONTEXT)
        pump = Pump(bad, outbox)
        outbox.append(results)
        delay = await pump.step()
        assert delay is not None and delay > 0
        assert pump.last_error == "HTTP 401 from /v1/metrics (check the exporter's headers)"
        await bad.aclose()
        good_config = otel_config(
            rx.endpoint, header_files={"Authorization": str(good_file)}, headers={"X-Scope-OrgID": "t1"}
        )
        good = build(good_config, CONTEXT)
        pump = Pump(good, outbox)
        assert await pump.step() == 0.0
        await good.aclose()
    assert [q.status for q in rx.requests] == [401, 200]
    assert rx.requests[1].headers["authorization"] == f"Bearer {secret}"
    assert rx.requests[1].headers["x-scope-orgid"] == "t1"
    assert received_points(rx) == expected_points(results)
    assert "push failed (HTTP 401" in caplog.text  # the pump did log the failure
    shown = (
        caplog.text + repr(good_config) + str(good_config) + repr(bad_config) + good_config.model_dump_json()
    )
    assert secret not in shown and wrong not in shown


# --- lifecycle ------------------------------------------------------------------------------------


async def test_close_twice_then_push_fails_cleanly(results: list[CheckResult]) -> None:
    async with otlp_receiver() as rx:
        otel = exporter(rx.endpoint, traces=True)
        await otel.start()
        await otel.aclose()
        await otel.aclose()
        answer = await otel.push([Record(1, results[0])])
    assert (answer.handled, answer.error) == (0, "exporter closed") and rx.attempts == 0


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(
        ExtraMissing,
        match=r"^exporter otel \(type otel\) needs .*pip install 'mamori\[otel\]'"
        r" \(the container image: build it with --build-arg EXTRAS=otel\)$",
    ):
        build(otel_config("http://127.0.0.1:4318"), CONTEXT)


# --- config ---------------------------------------------------------------------------------------


def parse_exporter(body: str, env: dict[str, str] | None = None) -> Any:
    text = f"checks: []\nexporters:\n  - name: otel\n    type: otel\n{body}"
    return config.parse(text, "agent.yml", env=env or {}).exporters[0]


def test_config_defaults_and_header_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("s3cr3t\n")
    cfg = parse_exporter(
        f"    endpoint: https://collector.example:4318/\n"
        f"    headers: {{X-Scope-OrgID: tenant-1}}\n"
        f"    header_files: {{api-key: {tmp_path / 'key'}}}\n"
    )
    assert isinstance(cfg, OtelConfig)
    assert cfg.endpoint == "https://collector.example:4318"
    assert {k: v.get_secret_value() for k, v in cfg.headers.items()} == {
        "X-Scope-OrgID": "tenant-1",
        "api-key": "s3cr3t",
    }
    assert (cfg.timeout, cfg.compression, cfg.traces, cfg.service_name) == (10.0, "gzip", False, "mamori")
    assert "s3cr3t" not in repr(cfg)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            "    endpoint: grpc://collector:4317\n",
            "agent.yml:5: exporters[0].endpoint: endpoint must be an http:// or https:// URL (OTLP/HTTP), "
            "e.g. http://collector:4318",
        ),
        (
            "    endpoint: http://collector:4318/v1/metrics\n",
            "agent.yml:5: exporters[0].endpoint: endpoint is the collector's base URL, e.g. "
            "http://collector:4318: /v1/metrics and /v1/traces are appended to it",
        ),
        (
            "    endpoint: http://user:pw@collector:4318\n",
            "agent.yml:5: exporters[0].endpoint: endpoint must not carry credentials: put them in headers",
        ),
        (
            "    endpoint: http://collector:4318\n    headers: {Content-Type: text/plain}\n",
            "agent.yml:6: exporters[0].headers: Content-Type is set by the exporter itself",
        ),
        (
            "    endpoint: http://collector:4318\n    headers: {Authorization: a}\n"
            "    header_files: {authorization: /dev/null}\n",
            "agent.yml:7: exporters[0].header_files: header authorization is given twice",
        ),
        (
            "    endpoint: http://collector:4318\n    header_files: {Authorization: /nonexistent/token}\n",
            "agent.yml:6: exporters[0].header_files: cannot read /nonexistent/token: "
            "No such file or directory",
        ),
        (
            "    endpoint: http://collector:4318\n    resource_attributes: {host.name: x}\n",
            "agent.yml:6: exporters[0].resource_attributes: host.name is set by the exporter "
            "(service_name, the agent's name, version and labels)",
        ),
        (
            "    endpoint: http://collector:4318\n    timeout: 2m\n",
            "agent.yml:6: exporters[0].timeout: timeout must be at most 60s: "
            "a push holds a worker thread that long",
        ),
        (
            "    endpoint: http://collector:4318\n    compression: zstd\n",
            "agent.yml:6: exporters[0].compression: Input should be 'none' or 'gzip'",
        ),
        (
            "    endpoint: http://collector:4318\n    headers_file: /run/secrets/x\n",
            "agent.yml:6: exporters[0].headers_file: unknown key",
        ),
        ("    traces: true\n", "agent.yml:3: exporters[0].endpoint: required key is missing"),
    ],
)
def test_config_errors(body: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_exporter(body)
    assert str(exc.value) == error


def test_config_error_never_echoes_a_header_value() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_exporter("    endpoint: http://collector:4318\n    headers: {Authorization: 12345}\n")
    assert "12345" not in str(exc.value) and "exporters[0].headers.Authorization" in str(exc.value)


def test_the_documented_example_is_valid() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "exporters" / "otel.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = config.parse(example, "otel.md", env={"OTLP_TOKEN": "t0k"})
    (otel,) = cfg.exporters
    assert isinstance(otel, OtelConfig) and otel.traces and otel.endpoint == "http://otel-collector:4318"
    assert otel.headers["Authorization"].get_secret_value() == "Bearer t0k"
    assert resource_attributes(otel, ExportContext(cfg.agent.name, cfg.agent.labels, 30.0)) == {
        "service.name": "mamori",
        "service.version": __version__,
        "service.instance.id": "web-1",
        "host.name": "web-1",
        "mamori.site": "tokyo",
        "mamori.role": "app",
        "deployment.environment": "prod",
    }


# --- the whole agent ------------------------------------------------------------------------------


async def in_thread(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    return await asyncio.to_thread(get)


async def test_agent_exports_results_and_spans(tmp_path: Path) -> None:
    port = free_port()
    async with otlp_receiver() as rx:
        cfg = config.parse(
            f"""
agent:
  name: web-1
  labels: {{site: tokyo}}
  listen: 127.0.0.1:{port}
  interval: 1s
  timeout: 1s
outbox:
  path: {tmp_path / "outbox.db"}
checks:
  - name: self
    type: http
    url: http://127.0.0.1:{port}/healthz
exporters:
  - name: otel
    type: otel
    endpoint: {rx.endpoint}
    timeout: 1s
    traces: true
    resource_attributes: {{deployment.environment: test}}
""",
            "agent.yml",
            env={},
        )
        agent = Agent(cfg, None)
        task = asyncio.create_task(agent.run())
        await wait_until(
            'any(s.name == "check self" for s in rx.spans)',
            lambda: any(s.name == "check self" for s in rx.spans),
        )
        metrics = await in_thread(f"http://127.0.0.1:{port}/metrics")
        api = json.loads(await in_thread(f"http://127.0.0.1:{port}/api/v1/results?check=self"))
        agent.stop()
        assert await task == 0
    span = next(s for s in rx.spans if s.name == "check self")
    assert span.resource["host.name"] == "web-1" and span.resource["mamori.site"] == "tokyo"
    assert span.resource["deployment.environment"] == "test"
    assert span.attributes["status"] == "OK" and {"connect", "processing"} <= {e.name for e in span.events}
    success = [p for p in rx.points if p.metric == "probe_success"]
    assert success and all(
        p.value == 1.0 and p.attributes == {"check": "self", "target": api["target"]} for p in success
    )
    assert any(p.time_unix_nano == span.start_time_unix_nano for p in success)
    assert 'mamori_export_sent_total{sink="otel"}' in metrics
