"""A strict OTLP/HTTP receiver (what an OpenTelemetry collector's `otlp` receiver does with
`protocols: http`) on 127.0.0.1, for tests.

    async with otlp_receiver(required_headers={"Authorization": "Bearer t"}) as rx:
        config = OtelConfig(type="otel", name="otel", endpoint=rx.endpoint, ...)
        ...
        assert {p.metric for p in rx.points} >= {"probe_success"}

It checks a request as the OTLP/HTTP spec (protocol/otlp.md, "OTLP/HTTP") describes:
- `POST {prefix}/v1/metrics` and `POST {prefix}/v1/traces` only: another path is 404, another
  method 405;
- `Content-Type: application/x-protobuf` (binary protobuf; this receiver does not take the JSON
  encoding), else 415;
- `Content-Encoding: gzip` is decompressed; identity is taken as is; anything else, or a body
  that does not gunzip, is 400 (as the collector answers);
- the body must decode as `ExportMetricsServiceRequest` / `ExportTraceServiceRequest` and make
  sense: every metric named and holding data, every number point with a value and a non-zero
  `time_unix_nano`, sums with a temporality, spans with 16-byte trace and 8-byte span ids that are
  not all zero, a name, a start time and an end not before it, events with timestamps. Else 400.
- `required_headers` (optional): each must be present with exactly that value, else 401.
Success is 200 with an empty `Export…ServiceResponse` (or one carrying `partial_success`, see
`partial()`); an error is a `google.rpc.Status` in protobuf, as the spec requires.

Faults come from tests/fakes/http_faults.py (`fail_for(s, 503)`, `throttle(n, retry_after)`,
`down()`/`up()`, `hang()`); 429 and 503 carry `Retry-After` when given. `max_body` makes larger
requests (as received, before decompression) answer 413.

What was accepted is recorded decoded: `points` (one per number data point, with its resource
and attributes) and `spans` (with events); `requests` records every request's path and headers.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.rpc.status_pb2 import Status as RpcStatus  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric, NumberDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.fakes.http_faults import FakeHttpService, serve

PROTOBUF = "application/x-protobuf"
# google.rpc.Code values the collector maps HTTP statuses to
_RPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 429: 8, 500: 13, 502: 14, 503: 14, 504: 4}


@dataclass(frozen=True)
class Point:
    """One number data point as received."""

    resource: dict[str, Any]
    scope: str
    metric: str
    kind: str  # gauge | sum
    unit: str
    description: str
    attributes: dict[str, Any]
    start_time_unix_nano: int
    time_unix_nano: int
    value: float
    monotonic: bool | None  # sums only
    temporality: int | None  # sums only (AggregationTemporality)


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    resource: dict[str, Any]
    scope: str
    name: str
    trace_id: str  # hex
    span_id: str  # hex
    parent_span_id: str
    kind: int
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Any]
    status_code: int  # Status.StatusCode: 0 unset, 1 ok, 2 error
    status_message: str
    events: tuple[SpanEvent, ...]


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    size: int  # bytes as received
    status: int  # what this receiver answered


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _attribute_errors(kvs: Any, where: str) -> list[str]:
    errors = []
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        if not kv.key:
            errors.append(f"{where}: attribute with an empty key")
        elif kv.value.WhichOneof("value") is None:
            errors.append(f"{where}: attribute {kv.key!r} has no value")
    return errors


def _point_errors(point: NumberDataPoint, where: str) -> list[str]:
    errors = _attribute_errors(point.attributes, where)
    if point.WhichOneof("value") is None:
        errors.append(f"{where}: data point without a value")
    if point.time_unix_nano == 0:
        errors.append(f"{where}: data point without time_unix_nano")
    return errors


def metric_errors(request: ExportMetricsServiceRequest) -> list[str]:
    errors: list[str] = []
    for rm in request.resource_metrics:
        errors += _attribute_errors(rm.resource.attributes, "resource")
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                assert isinstance(m, Metric)
                where = f"metric {m.name!r}"
                if not m.name:
                    errors.append("metric without a name")
                kind = m.WhichOneof("data")
                if kind not in ("gauge", "sum"):
                    errors.append(f"{where}: no gauge or sum data (got {kind})")
                    continue
                if (
                    kind == "sum"
                    and m.sum.aggregation_temporality
                    == AggregationTemporality.AGGREGATION_TEMPORALITY_UNSPECIFIED
                ):
                    errors.append(f"{where}: sum without an aggregation temporality")
                for point in getattr(m, kind).data_points:
                    errors += _point_errors(point, where)
    return errors


def span_errors(request: ExportTraceServiceRequest) -> list[str]:
    errors: list[str] = []
    for rs in request.resource_spans:
        errors += _attribute_errors(rs.resource.attributes, "resource")
        for ss in rs.scope_spans:
            for s in ss.spans:
                assert isinstance(s, Span)
                where = f"span {s.name!r}"
                if not s.name:
                    errors.append("span without a name")
                if len(s.trace_id) != 16 or not any(s.trace_id):
                    errors.append(f"{where}: trace_id must be 16 bytes, not all zero")
                if len(s.span_id) != 8 or not any(s.span_id):
                    errors.append(f"{where}: span_id must be 8 bytes, not all zero")
                if s.parent_span_id and len(s.parent_span_id) != 8:
                    errors.append(f"{where}: parent_span_id must be empty or 8 bytes")
                if s.start_time_unix_nano == 0 or s.end_time_unix_nano < s.start_time_unix_nano:
                    errors.append(f"{where}: needs a start time and an end not before it")
                errors += _attribute_errors(s.attributes, where)
                for e in s.events:
                    if not e.name or e.time_unix_nano == 0:
                        errors.append(f"{where}: event without a name or a timestamp")
                    errors += _attribute_errors(e.attributes, f"{where} event {e.name!r}")
    return errors


def _status(http_status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = RpcStatus(code=_RPC_CODES.get(http_status, 2), message=message).SerializeToString()
    return web.Response(status=http_status, body=body, content_type=PROTOBUF, headers=headers)


class OtlpReceiver(FakeHttpService):
    def __init__(self, required_headers: Mapping[str, str] | None = None, prefix: str = "") -> None:
        super().__init__()
        self.required_headers = {k.lower(): v for k, v in (required_headers or {}).items()}
        self.prefix = prefix.rstrip("/")
        self.max_body: int | None = None
        self.points: list[Point] = []
        self.spans: list[ReceivedSpan] = []
        self.requests: list[ReceivedRequest] = []  # every request that reached serve()
        self.metric_requests = 0  # accepted
        self.trace_requests = 0  # accepted
        self._partial: tuple[int, str] | None = None

    @property
    def endpoint(self) -> str:
        """What to configure as the exporter's `endpoint` (the base URL)."""
        return f"{self.base_url}{self.prefix}"

    def partial(self, rejected: int, message: str) -> None:
        """Answer the next accepted request with a partial success naming `rejected` items."""
        self._partial = (rejected, message)

    def fault_answer(self, status: int, retry_after: float | None) -> web.Response:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        message = {429: "too many requests", 503: "server is not ready", 400: "invalid data"}.get(
            status, "fault injected"
        )
        return _status(status, message, headers)

    async def serve(self, request: web.BaseRequest) -> web.Response:
        response = await self._answer(request)
        self.requests.append(
            ReceivedRequest(
                request.path,
                {k.lower(): v for k, v in request.headers.items()},
                int(request.content_length or 0),
                response.status,
            )
        )
        return response

    async def _answer(self, request: web.BaseRequest) -> web.Response:
        signal = {f"{self.prefix}/v1/metrics": "metrics", f"{self.prefix}/v1/traces": "traces"}.get(
            request.path
        )
        if signal is None:
            return web.Response(status=404, text="404 page not found\n")
        if request.method != "POST":
            return web.Response(status=405, text="405 method not allowed, supported: [POST]\n")
        for name, value in self.required_headers.items():
            if request.headers.get(name) != value:
                return _status(401, "missing or invalid credentials")
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"415 unsupported media type, supported: [{PROTOBUF}]\n")
        raw = await request.read()
        if self.max_body is not None and len(raw) > self.max_body:
            return _status(413, f"request body of {len(raw)} bytes is over {self.max_body}")
        encoding = request.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                return _status(400, "invalid gzip body")
        elif encoding not in ("", "identity"):
            return _status(400, f"unsupported Content-Encoding {encoding!r}")
        if signal == "metrics":
            return self._metrics(raw)
        return self._traces(raw)

    def _metrics(self, raw: bytes) -> web.Response:
        try:
            req = ExportMetricsServiceRequest.FromString(raw)
        except DecodeError as exc:
            return _status(400, f"cannot decode ExportMetricsServiceRequest: {exc}")
        errors = metric_errors(req)
        if errors:
            return _status(400, "; ".join(errors[:5]))
        self.metric_requests += 1
        for rm in req.resource_metrics:
            resource = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    data = getattr(m, kind)
                    for p in data.data_points:
                        self.points.append(
                            Point(
                                resource=resource,
                                scope=sm.scope.name,
                                metric=m.name,
                                kind=str(kind),
                                unit=m.unit,
                                description=m.description,
                                attributes=attributes(p.attributes),
                                start_time_unix_nano=p.start_time_unix_nano,
                                time_unix_nano=p.time_unix_nano,
                                value=float(getattr(p, str(p.WhichOneof("value")))),
                                monotonic=m.sum.is_monotonic if kind == "sum" else None,
                                temporality=m.sum.aggregation_temporality if kind == "sum" else None,
                            )
                        )
        response = ExportMetricsServiceResponse()
        if self._partial is not None:
            response.partial_success.rejected_data_points, response.partial_success.error_message = (
                self._partial
            )
            self._partial = None
        return web.Response(status=200, body=response.SerializeToString(), content_type=PROTOBUF)

    def _traces(self, raw: bytes) -> web.Response:
        try:
            req = ExportTraceServiceRequest.FromString(raw)
        except DecodeError as exc:
            return _status(400, f"cannot decode ExportTraceServiceRequest: {exc}")
        errors = span_errors(req)
        if errors:
            return _status(400, "; ".join(errors[:5]))
        self.trace_requests += 1
        for rs in req.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        ReceivedSpan(
                            resource=resource,
                            scope=ss.scope.name,
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            start_time_unix_nano=s.start_time_unix_nano,
                            end_time_unix_nano=s.end_time_unix_nano,
                            attributes=attributes(s.attributes),
                            status_code=s.status.code,
                            status_message=s.status.message,
                            events=tuple(
                                SpanEvent(e.name, e.time_unix_nano, attributes(e.attributes))
                                for e in s.events
                            ),
                        )
                    )
        response = ExportTraceServiceResponse()
        if self._partial is not None:
            response.partial_success.rejected_spans, response.partial_success.error_message = self._partial
            self._partial = None
        return web.Response(status=200, body=response.SerializeToString(), content_type=PROTOBUF)


@asynccontextmanager
async def otlp_receiver(
    required_headers: Mapping[str, str] | None = None, prefix: str = ""
) -> AsyncIterator[OtlpReceiver]:
    """An OtlpReceiver listening on 127.0.0.1 (see tests/fakes/http_faults.py for the faults).

    aiohttp must hand over the body as sent: by default it gunzips request bodies itself, which
    would hide what the client really sent."""
    async with serve(OtlpReceiver(required_headers, prefix), auto_decompress=False) as receiver:
        yield receiver
