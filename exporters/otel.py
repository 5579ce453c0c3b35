"""OpenTelemetry push exporter (`type: otel`, extra `mamori[otel]`): every result's samples as OTLP
metrics, and optionally one span per check run, sent over OTLP/HTTP (protobuf) by the SDK's
exporters to `<endpoint>/v1/metrics` and `<endpoint>/v1/traces`.

Results come from the durable outbox (exporters/base.py), so a push carries results that may be
hours old: the data is built here with each result's own start time rather than recorded
through the SDK's meter and tracer, which stamp "now" and aggregate in memory.

- Metrics: the series of `/metrics` (exporters/samples.py), each a Gauge — or a cumulative
  monotonic Sum for the catalog's counters — with one point per result, stamped with the run's
  start time. Attributes are the Prometheus labels.
- Traces (`traces: true`): span `check <name>` from the run's start to its end, the check's
  phases (`*_duration_seconds{phase=…}` samples) as events, status ERROR for CRITICAL/UNKNOWN.
  Trace and span ids are derived from (agent, check, start time), so a result sent twice (the
  outbox is at-least-once) is the same span both times.

Failures, as the pump (exporters/base.py) sees them:
- 429/502/503/504 and connection failures: retried with backoff, `Retry-After` honoured. The SDK
  (1.45) also retries these itself, but only within `timeout` (its deadline covers every attempt
  and it never sleeps past it), so one push blocks its worker thread for at most ~`timeout`.
- 400 (the collector refuses the data): the results are dropped and counted
  (`mamori_outbox_dropped_total{reason="invalid"}`): resending identical data cannot succeed.
- 413: the batch is halved and resent; a single result still too large is dropped (invalid).
- 3xx: the SDK takes it for success, but nothing was delivered: retried, with a hint.
- any other status (401/403 bad credentials, 404 wrong path, 500): retried with backoff. OTLP
  says not to retry these, but the outbox keeps the results, and once the operator fixes the
  config they are delivered instead of lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from agent import __version__
from agent.backoff import parse_retry_after
from agent.catalog import CHECK_METRICS
from agent.delivery.outcome import PushResult
from agent.fields import Duration
from agent.files import skip
from agent.headers import name_problem, value_problem
from agent.model import CheckResult, Status
from agent.outbox import Record
from agent.secrets import read_secret_file, secrets_of
from exporters.base import ExportContext, ExporterBase
from exporters.config import ExtraMissing
from exporters.samples import flatten, unit

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricsData
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("mamori.exporters.otel")

MAX_TIMEOUT = 60.0
# Set by the SDK from the payload; a configured value would corrupt the request.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-encoding", "content-length", "transfer-encoding", "host"}
)
# Set from the agent's config; a resource attribute of the same key would contradict it.
_RESERVED_ATTRIBUTES = frozenset({"service.name", "service.version", "service.instance.id", "host.name"})
_UCUM = {"seconds": "s", "bytes": "By", "ratio": "1", "celsius": "Cel"}  # units OTLP expects
_SIGNAL_PATHS = ("/v1/metrics", "/v1/traces", "/v1/logs")
_SDK_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


class OtelConfig(ExporterBase):
    """`exporters: [{type: otel, name: …, endpoint: …}]`. Header values are secrets: they print as
    `**********` and never appear in a validation error (`hide_input_in_errors`)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["otel"]
    endpoint: str
    """The collector's OTLP/HTTP base URL, e.g. `http://collector:4318`; `/v1/metrics` and
    `/v1/traces` are appended (as for `OTEL_EXPORTER_OTLP_ENDPOINT`)."""
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    """Sent with every request, e.g. `Authorization: Bearer …`; values are treated as secrets."""
    header_files: dict[str, Path] = Field(default_factory=dict)
    """Header name -> file holding its value (read at load, trailing newline stripped)."""
    timeout: Duration = 10.0
    """Bounds one push: every attempt the SDK makes (its own quick retries included)."""
    compression: Literal["none", "gzip"] = "gzip"
    ca_file: Path | None = None
    """CA bundle to verify an https endpoint with (default: the system's)."""
    service_name: str = Field(default="mamori", min_length=1)
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    """Extra resource attributes, e.g. `deployment.environment: prod`."""
    traces: bool = False
    """Also send one span per check run, with its phases as events."""

    @model_validator(mode="before")
    @classmethod
    def _read_header_files(cls, data: Any) -> Any:
        """Merge `header_files` into `headers`, checking every header name where it was written."""
        if not isinstance(data, dict):
            return data
        headers, files = data.get("headers") or {}, data.get("header_files") or {}
        if not isinstance(headers, dict) or not isinstance(files, dict):
            return data  # the field types report it
        seen: set[str] = set()
        merged: dict[str, Any] = {}
        for key, entries in (("headers", headers), ("header_files", files)):
            for name, value in entries.items():
                name = str(name)
                if (problem := name_problem(name)) is not None:
                    raise ValueError(f"{key}: {name!r} {problem}")
                if name.lower() in _RESERVED_HEADERS:
                    raise ValueError(f"{key}: {name} is set by the exporter itself")
                if name.lower() in seen:
                    raise ValueError(f"{key}: header {name} is given twice")
                seen.add(name.lower())
                if key == "header_files" and skip(f"header_files {value}"):
                    value = "offline"
                elif key == "header_files":
                    try:
                        value = read_secret_file(str(value))
                    except ValueError as exc:
                        raise ValueError(f"{key}: cannot read {value}: {exc}") from None
                text = value.get_secret_value() if isinstance(value, SecretStr) else value
                if isinstance(text, str) and (problem := value_problem(text)) is not None:
                    raise ValueError(f"{key}: the value of {name} {problem}")
                merged[name] = value
        return {**data, "headers": merged, "header_files": {}}

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        # The message never repeats the URL: it is not meant to hold secrets, but may.
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "endpoint must be an http:// or https:// URL (OTLP/HTTP), e.g. http://collector:4318"
            )
        try:
            parts.port  # noqa: B018 (raises for a port out of range)
        except ValueError:
            raise ValueError("endpoint has an invalid port") from None
        if parts.username or parts.password:
            raise ValueError("endpoint must not carry credentials: put them in headers")
        if parts.query or parts.fragment:
            raise ValueError("endpoint must not have a query string or fragment")
        if parts.path.rstrip("/").endswith(_SIGNAL_PATHS):
            raise ValueError(
                "endpoint is the collector's base URL, e.g. http://collector:4318: "
                "/v1/metrics and /v1/traces are appended to it"
            )
        return value.rstrip("/")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value > MAX_TIMEOUT:
            raise ValueError(
                f"timeout must be at most {MAX_TIMEOUT:g}s: a push holds a worker thread that long"
            )
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not skip(f"ca_file {value}") and not value.is_file():
            raise ValueError(f"ca_file: {value} is not a readable file")
        return value

    @field_validator("resource_attributes")
    @classmethod
    def _resource_attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key:
                raise ValueError("an attribute name must not be empty")
            if key in _RESERVED_ATTRIBUTES or key.startswith("mamori."):
                raise ValueError(
                    f"{key} is set by the exporter (service_name, the agent's name, version and labels)"
                )
        return value


# `headers` holds secrets but is a map: `headers_file` (agent.fields.Model's `<secret>_file`) would
# read one file into it as a string. Per-header files are `header_files`.
OtelConfig._secret_fields = ()


def require(config: OtelConfig) -> None:
    """Raises ExtraMissing when the OpenTelemetry SDK is not installed."""
    for module in _SDK_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ExtraMissing.of_extra(
                f"{config.name} (type otel)", "the OpenTelemetry SDK", "otel"
            ) from None


def build(config: OtelConfig, context: ExportContext) -> OtelExporter:
    require(config)
    return OtelExporter(config, context)


def resource_attributes(config: OtelConfig, context: ExportContext) -> dict[str, str]:
    """The resource every metric and span is sent with (the agent, as OpenTelemetry sees it)."""
    attributes = {
        "service.name": config.service_name,
        "service.version": __version__,
        "service.instance.id": context.agent,
        "host.name": context.agent,
        "mamori.site": context.site,
    }
    for key, value in context.labels.items():
        attributes.setdefault(f"mamori.{key}", value)
    attributes.update(config.resource_attributes)
    return attributes


def unix_nano(seconds: float) -> int:
    """Unix seconds as OTLP's nanoseconds, exact to the float's own resolution (`round(s * 1e9)`
    would lose a few hundred nanoseconds to the product's rounding)."""
    whole = math.floor(seconds)
    return whole * 1_000_000_000 + round((seconds - whole) * 1e9)


def span_ids(agent: str, r: CheckResult) -> tuple[int, int]:
    """(trace id, span id) of a result's span: the same for the same run, never zero."""
    digest = hashlib.blake2b(f"{agent}\0{r.check}\0{r.started_at!r}".encode(), digest_size=24).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:], "big") or 1


def phase_events(r: CheckResult) -> list[tuple[str, int, dict[str, Any]]]:
    """(phase, start in ns, attributes) of each phase that took time, from the result's
    `*_duration_seconds{phase=…}` samples. Phases are recorded in the order they run; the last
    one ends when the run does (a retried run's phases are those of its last attempt)."""
    phases = [
        (dict(s.labels)["phase"], s.value, s.name)
        for s in r.samples
        if s.name.endswith("_duration_seconds") and "phase" in dict(s.labels) and math.isfinite(s.value)
    ]
    start, end = unix_nano(r.started_at), unix_nano(r.started_at + r.duration)
    at = max(start, end - unix_nano(sum(max(v, 0.0) for _, v, _ in phases)))
    events = []
    for phase, seconds, metric in phases:
        if seconds > 0:
            events.append(
                (phase, min(at, end), {"phase": phase, "duration_seconds": seconds, "metric": metric})
            )
            at += unix_nano(seconds)
    return events


@dataclass(frozen=True)
class _Answer:
    """What one export call came to: the last HTTP response the SDK got (its retries included)."""

    ok: bool
    status: int | None = None  # None: no HTTP answer
    retry_after: float | None = None
    body: bytes = b""
    failure: str = ""  # without an answer: why (an exception's type, never its headers)


class _Signal:
    """One SDK exporter (metrics or traces) and the session it sends with, recording answers.

    Calls are serialised: a push abandoned by a cancelled pump may still run in its thread when
    the next one starts (the shutdown drain), and the SDK exporters are not meant to be shared.
    """

    def __init__(self, path: str, make: Callable[[Any], Any]) -> None:
        import requests

        local = threading.local()

        class RecordingSession(requests.Session):
            def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
                try:
                    response = super().send(request, **kwargs)
                except Exception as exc:
                    local.failure = _describe(exc)
                    local.response = None
                    raise
                local.response = response
                return response

        self.path = path
        self._local = local
        self._lock = threading.Lock()
        self.exporter = make(RecordingSession())

    def send(self, export: Callable[[], bool]) -> _Answer:
        """Run `export` (in a worker thread) and say how it went."""
        with self._lock:
            self._local.response, self._local.failure = None, ""
            ok = export()
            response, failure = self._local.response, self._local.failure
        if response is None:
            return _Answer(ok, failure=failure or "the SDK refused to send the request")
        status = int(response.status_code)
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        return _Answer(ok, status, retry_after, bytes(response.content or b""))

    def close(self) -> None:
        self.exporter.shutdown()


def _describe(exc: BaseException) -> str:
    text = str(exc).lower()
    for needle, what in (("refused", "connection refused"), ("timed out", "timed out")):
        if needle in text:
            return f"{type(exc).__name__} ({what})"
    return type(exc).__name__


def _status_message(body: bytes) -> str:
    """The collector's `google.rpc.Status` message, for the log (one line, at most 200 chars)."""
    try:
        from google.rpc.status_pb2 import Status as RpcStatus  # type: ignore[import-untyped]

        message = str(RpcStatus.FromString(body).message)
    except Exception:
        return ""
    return " ".join(message.split())[:200]


class OtelExporter:
    """A PushExporter (exporters/base.py). `push()` never raises for a collector failure."""

    def __init__(self, config: OtelConfig, context: ExportContext) -> None:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        _quiet_sdk_logs()
        self.name = config.name
        self.batch = config.batch
        self.config = config
        self._secrets = secrets_of(config)  # a collector may quote the headers it was sent
        self._agent = context.agent
        self._resource = Resource(resource_attributes(config, context))
        self._scope = InstrumentationScope("mamori", __version__)
        options: dict[str, Any] = {
            "headers": {k: v.get_secret_value() for k, v in config.headers.items()},
            "timeout": config.timeout,
            "compression": Compression.Gzip if config.compression == "gzip" else Compression.NoCompression,
            "certificate_file": str(config.ca_file) if config.ca_file else None,
        }
        self._metrics = _Signal(
            "/v1/metrics",
            lambda session: OTLPMetricExporter(
                endpoint=f"{config.endpoint}/v1/metrics", session=session, **options
            ),
        )
        self._traces = (
            _Signal(
                "/v1/traces",
                lambda session: OTLPSpanExporter(
                    endpoint=f"{config.endpoint}/v1/traces", session=session, **options
                ),
            )
            if config.traces
            else None
        )
        # A push is two requests when traces are on. When the second fails, the first is not
        # repeated on the retry: the seq up to which each signal is delivered, and the results
        # dropped on the way (reported with the push that completes).
        self._done = {"metrics": -1, "traces": -1}
        self._dropped = 0
        self._closed = False

    async def start(self) -> None:
        """Nothing to connect: each push opens (or reuses) its HTTP connection."""

    async def push(self, records: Sequence[Record]) -> PushResult:
        if self._closed:
            return PushResult(0, "exporter closed")
        signals: list[tuple[str, _Signal, Callable[[list[CheckResult]], Callable[[], bool]]]] = [
            ("metrics", self._metrics, self._metrics_call)
        ]
        if self._traces is not None:
            signals.append(("traces", self._traces, self._traces_call))
        for kind, signal, call in signals:
            todo = [r.result for r in records if r.seq > self._done[kind]]
            if not todo:
                continue
            try:
                answer = await asyncio.to_thread(signal.send, call(todo))
            except Exception as exc:  # a bug in building the data must not stop the pump
                log.error("exporter %s: %s export failed: %s: %s", self.name, kind, type(exc).__name__, exc)
                return PushResult(0, f"{kind} export raised {type(exc).__name__}")
            failed = self._judge(kind, signal, answer, len(records), len(todo))
            if failed is not None:
                return failed
            self._done[kind] = records[-1].seq
        dropped, self._dropped = self._dropped, 0
        return PushResult(len(records), dropped={"invalid": dropped} if dropped else {})

    def _judge(self, kind: str, signal: _Signal, answer: _Answer, batch: int, sent: int) -> PushResult | None:
        """None when `kind` is done with (delivered, or refused for good); else the failed push."""
        where = signal.path
        status = answer.status
        if answer.ok and (status is None or status < 300):
            self._log_partial_success(kind, answer.body)
            return None
        if status is None:
            return PushResult(0, f"no answer from the collector ({where}): {answer.failure}")
        if 300 <= status < 400:  # the SDK takes any 3xx for success, yet nothing was delivered
            return PushResult(0, f"HTTP {status} from {where}: redirected (set endpoint to the new URL)")
        if status == 413 and batch > 1:
            self.batch = max(1, batch // 2)
            log.warning(
                "exporter %s: the collector found a request too large (HTTP 413); sending at most %d "
                "results per request from now on",
                self.name,
                self.batch,
            )
            return PushResult(0, f"HTTP 413 from {where}: request too large")
        if status in (400, 413):
            log.warning(
                "exporter %s: the collector refused the %s of %d results (HTTP %d%s); they are dropped",
                self.name,
                kind,
                sent,
                status,
                f": {self._secrets.mask(msg)}" if (msg := _status_message(answer.body)) else "",
            )
            if kind == "metrics":
                self._dropped += sent
            return None
        hint = {
            401: " (check the exporter's headers)",
            403: " (check the exporter's headers)",
            404: " (is endpoint the collector's OTLP/HTTP base URL?)",
        }.get(status, "")
        return PushResult(0, f"HTTP {status} from {where}{hint}", retry_after=answer.retry_after)

    def _log_partial_success(self, kind: str, body: bytes) -> None:
        """OTLP's partial success: a 200 saying some points or spans were rejected (logged only:
        the rest was accepted, and the same data would be rejected again)."""
        if not body:
            return
        try:
            if kind == "metrics":
                from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
                    ExportMetricsServiceResponse,
                )

                m = ExportMetricsServiceResponse.FromString(body).partial_success
                rejected, message = int(m.rejected_data_points), str(m.error_message)
            else:
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                    ExportTraceServiceResponse,
                )

                t = ExportTraceServiceResponse.FromString(body).partial_success
                rejected, message = int(t.rejected_spans), str(t.error_message)
        except Exception:
            return
        if rejected or message:
            what = "data points" if kind == "metrics" else "spans"
            log.warning(
                "exporter %s: the collector rejected %d %s: %s",
                self.name,
                rejected,
                what,
                self._secrets.mask(" ".join(message.split())[:200]) or "no reason given",
            )

    # --- the data -------------------------------------------------------------------------------
    def metrics_data(self, results: Sequence[CheckResult]) -> MetricsData:
        """Every sample of `results` (exporters/samples.py), one metric per name, one point each,
        stamped with its run's start time."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Gauge,
            Metric,
            MetricsData,
            NumberDataPoint,
            ResourceMetrics,
            ScopeMetrics,
            Sum,
        )

        points: dict[str, list[NumberDataPoint]] = {}
        for r in results:
            for s in flatten(r):
                point = NumberDataPoint(
                    attributes=dict(s.labels),
                    start_time_unix_nano=0,  # a gauge has none; a counter's reset time is unknown
                    time_unix_nano=unix_nano(s.timestamp),
                    value=float(s.value),
                )
                points.setdefault(s.name, []).append(point)
        metrics = []
        for name, data_points in points.items():
            spec = CHECK_METRICS.get(name)
            data: Gauge | Sum = (
                Sum(data_points, AggregationTemporality.CUMULATIVE, is_monotonic=True)
                if spec is not None and spec.type == "counter"
                else Gauge(data_points)
            )
            u = unit(name)
            metrics.append(
                Metric(
                    name=name,
                    description=spec.help if spec else "",
                    unit=_UCUM.get(u, "") if u else "",
                    data=data,
                )
            )
        scope = ScopeMetrics(scope=self._scope, metrics=metrics, schema_url="")
        return MetricsData([ResourceMetrics(resource=self._resource, scope_metrics=[scope], schema_url="")])

    def span(self, r: CheckResult) -> ReadableSpan:
        """The span of one check run: its phases as events, ERROR when CRITICAL or UNKNOWN."""
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
        from opentelemetry.trace.status import Status as SpanStatus
        from opentelemetry.trace.status import StatusCode

        trace_id, span_id = span_ids(self._agent, r)
        failed = r.status in (Status.CRITICAL, Status.UNKNOWN)
        start = unix_nano(r.started_at)
        return ReadableSpan(
            name=f"check {r.check}",
            context=SpanContext(
                trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
            ),
            resource=self._resource,
            attributes={
                "check": r.check,
                "type": r.check_type,
                "target": r.target,
                "status": r.status.name,
                "reason": r.reason.value,
                "attempts": r.attempts,
            },
            events=[Event(name, attributes, timestamp=at) for name, at, attributes in phase_events(r)],
            kind=SpanKind.INTERNAL,
            status=SpanStatus(StatusCode.ERROR, r.message) if failed else SpanStatus(StatusCode.UNSET),
            start_time=start,
            end_time=max(start, unix_nano(r.started_at + r.duration)),
            instrumentation_scope=self._scope,
        )

    def _metrics_call(self, results: list[CheckResult]) -> Callable[[], bool]:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        data = self.metrics_data(results)
        exporter = self._metrics.exporter
        return lambda: bool(exporter.export(data) is MetricExportResult.SUCCESS)

    def _traces_call(self, results: list[CheckResult]) -> Callable[[], bool]:
        from opentelemetry.sdk.trace.export import SpanExportResult

        assert self._traces is not None
        spans = [self.span(r) for r in results]
        exporter = self._traces.exporter
        return lambda: bool(exporter.export(spans) is SpanExportResult.SUCCESS)

    async def aclose(self) -> None:
        """Stop the SDK exporters (a retry wait in progress ends at once). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for signal in (self._metrics, self._traces):
            if signal is not None:
                signal.close()


class _SdkRetryNoise(logging.Filter):
    """The SDK logs every failed or retried request; the pump already reports an outage (when it
    starts, every tenth failure, and when it ends) with what it costs, so these would only
    repeat it once per push for as long as the collector is down."""

    _PREFIXES = ("Transient error", "Failed to export")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._PREFIXES)


def _quiet_sdk_logs() -> None:
    for name in (
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _SdkRetryNoise) for f in logger.filters):
            logger.addFilter(_SdkRetryNoise())
