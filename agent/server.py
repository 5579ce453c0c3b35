"""The agent's HTTP endpoint: /metrics, /healthz, /ready and /api/v1/results.

- `/metrics` is the Prometheus text format 0.0.4 (every Prometheus version accepts it): the
  agent's own metrics (agent/metrics.py) followed by the per-check results.
- `/healthz` answers 200 while the event loop turns (a liveness probe: if it does not answer,
  restart the agent).
- `/ready` answers 200 `ready` once the scheduler runs and until shutdown begins, unless
  durability is degraded (a state file cannot be written, e.g. the disk is full); otherwise 503
  with one line saying why (`not ready: durability degraded: cannot write the outbox …`).
- `/api/v1/results` is the latest result per check as JSON (`?check=NAME` for one), each with
  its recent history and last status change (agent/history.py).
- `/` is the status page (agent/statuspage.py), which reads `/api/v1/results`.

The bodies of `/metrics` and `/api/v1/results` are rendered once and shared by every request
until a new result arrives (and, for `/metrics`, whose own metrics move without one, for at most
`METRICS_MAX_AGE`), gzipped once for scrapers that accept it: a burst of scrapes or of pipelined
requests costs one render. `/metrics` is never rendered on the event loop: the loop freezes the
values (references to the latest results' cached lines and to the per-check counters' cached
lines, a copy of the few other instruments' values) and a worker thread renders and gzips that
snapshot, so a scrape holds no check back and shows each check's latest result exactly once. A
/metrics body (27 MB at 10 000 checks) is kept for `METRICS_MAX_AGE` only, and buffers that large
are given back to the system when freed (`release_big_buffers()`), so the agent's RSS does not
keep a scrape's worth of memory.
The HTTP server and its limits are `agent/httplimits.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gzip
import importlib
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response, StreamResponse

from agent.httplimits import Listener
from agent.metrics import Frozen, MetricRegistry, render_snapshot_parts
from agent.model import CheckResult
from exporters.prometheus import ExpositionSnapshot, LatestResults

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_MAX_AGE = 1.0
GZIP_MIN_SIZE = 1024  # smaller bodies are not worth a header
# /metrics compresses at level 1: at 10 000 checks (27 MB) it takes 60 ms where level 6 takes
# 210 ms, for a body 5 % larger (1.02 MB against 0.96 MB).
METRICS_GZIP_LEVEL = 1


@functools.cache
def _isal() -> Any:
    """ISA-L's zlib, imported on the first compression (a small agent may never compress)."""
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:  # no wheel for this platform: zlib does the same, slower
        return None


def _fresh(
    made_from: Sequence[CheckResult], made: float, results: Sequence[CheckResult], now: float, max_age: float
) -> bool:
    """Whether a body made at `made` from `made_from` still stands for `results` now: young
    enough and the same results, by identity (a result never changes once made)."""
    return (
        now - made < max_age
        and len(results) == len(made_from)
        and all(a is b for a, b in zip(results, made_from, strict=True))
    )


@dataclass(slots=True)
class _Body:
    """One rendered body, the results it was rendered from (by identity) and when."""

    results: tuple[CheckResult, ...]
    made: float
    raw: bytes
    _gzipped: bytes | None = None

    def fresh(self, results: Sequence[CheckResult], now: float, max_age: float) -> bool:
        return _fresh(self.results, self.made, results, now, max_age)

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.raw, compresslevel=6, mtime=0)
        return self._gzipped


class _LazyBody:
    """A body rendered on first demand in a worker thread, and gzipped there from that when a
    client asks for it; shared by every request that asks meanwhile."""

    __slots__ = ("_gzip", "_plain", "_render", "made", "results")

    def __init__(self, results: tuple[CheckResult, ...], made: float, render: Callable[[], bytes]) -> None:
        self.results = results  # the results it is rendered from, by identity
        self.made = made
        self._render = render
        self._plain: asyncio.Future[bytes] | None = None
        self._gzip: asyncio.Future[bytes] | None = None

    def fresh(self, results: Sequence[CheckResult], now: float, max_age: float) -> bool:
        return _fresh(self.results, self.made, results, now, max_age)

    async def content(self, gzipped: bool) -> tuple[bytes, bool]:
        """The body, and whether it is gzipped (a small one never is)."""
        if self._plain is None:
            self._plain = asyncio.ensure_future(asyncio.to_thread(self._render))
        plain = await asyncio.shield(self._plain)
        if not gzipped or len(plain) < GZIP_MIN_SIZE:
            return plain, False
        if self._gzip is None:
            self._gzip = asyncio.ensure_future(asyncio.to_thread(gzip_stream, [plain], METRICS_GZIP_LEVEL))
        return await asyncio.shield(self._gzip), True


class _MetricsBody:
    """One /metrics body: the snapshot it is rendered from (taken on the event loop: references
    to cached bytes, no text), rendered on first demand in a worker thread, plain or gzipped,
    once for every request that asks meanwhile. A gzip scrape (Prometheus always asks for it)
    compresses the page a slice of pieces at a time, so the plain page is never built whole."""

    __slots__ = ("_futures", "_own", "_results", "made", "version")

    def __init__(self, own: list[Frozen], results: ExpositionSnapshot, made: float, version: int) -> None:
        self._own = own
        self._results = results
        self.made = made
        self.version = version  # the `LatestResults.version` it was rendered from
        self._futures: dict[bool, asyncio.Future[bytes]] = {}

    async def content(self, gzipped: bool) -> bytes:
        future = self._futures.get(gzipped)
        if future is None:
            work = self._gzipped if gzipped else self._plain
            future = self._futures[gzipped] = asyncio.ensure_future(asyncio.to_thread(work))
        return await asyncio.shield(future)

    def _pieces(self) -> list[bytes]:
        return [*render_snapshot_parts(self._own), *self._results.parts()]

    def _plain(self) -> bytes:
        return b"".join(self._pieces())

    def _gzipped(self) -> bytes:
        return gzip_stream(self._pieces(), METRICS_GZIP_LEVEL)


def _compressobj(level: int) -> Any:
    """A gzip compressor (wbits 31: gzip's header and trailer, mtime 0): ISA-L's when the `isal`
    package is there (the same format, ~4x as fast as zlib at level 1 and smaller), else zlib's."""
    isal = _isal()
    if isal is not None:
        return isal.compressobj(min(level, isal.ISAL_BEST_COMPRESSION), isal.DEFLATED, 31)
    return zlib.compressobj(level, zlib.DEFLATED, 31)


_SLICE = 4096  # pieces (a check's lines of one family, mostly) compressed at a time: ~300 KB


def gzip_stream(pieces: Sequence[bytes], level: int) -> bytes:
    """One gzip member of the concatenation of `pieces`, compressed a slice of pieces at a time
    so the whole is never joined (slicing by count keeps Python's work per piece nil; the
    compressor releases the GIL while it works)."""
    compressor = _compressobj(level)
    out = [compressor.compress(b"".join(pieces[i : i + _SLICE])) for i in range(0, len(pieces), _SLICE)]
    out.append(compressor.flush())
    return b"".join(out)


class AgentServer:
    def __init__(
        self, registry: MetricRegistry, latest: LatestResults, ready: Callable[[], str | None]
    ) -> None:
        """`ready()` returns None when ready, else why not (one line)."""
        self._registry = registry
        self._latest = latest
        self._ready = ready
        self._listener = Listener(self._answer)
        self._metrics_body: _MetricsBody | None = None
        self._results_body: _LazyBody | None = None
        self._one_body: dict[str, _Body] = {}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0 picks a free one). Raises OSError if it cannot bind."""
        release_big_buffers()
        return await self._listener.start(host, port)

    async def aclose(self) -> None:
        """Stop listening. Safe to call twice and without `start()`."""
        await self._listener.aclose()

    def _answer(self, request: BaseRequest) -> StreamResponse | Awaitable[StreamResponse]:
        path = request.path
        if path == "/metrics":
            return self._send_metrics(request)
        if path == "/api/v1/results":
            name = request.query.get("check")
            if name is None:
                return self._send_results(request)
            body = self._one(name)
            if body is None:
                return _json({"error": f"no result for check {name!r}"}, status=404)
            return _send(request, body, "application/json")
        if path == "/healthz":
            return _text(200, b"ok\n")
        if path == "/ready":
            why = self._ready()
            return _text(200, b"ready\n") if why is None else _text(503, f"not ready: {why}\n".encode())
        if path == "/":
            # Imported when first asked for: an agent nobody looks at does not keep the page.
            from agent import statuspage

            return Response(body=statuspage.PAGE, headers=statuspage.HEADERS)
        return _text(404, b"not found\n")

    async def _send_metrics(self, request: BaseRequest) -> StreamResponse:
        body = self.metrics_body()
        headers = {"Content-Type": METRICS_CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            headers["Content-Encoding"] = "gzip"
            return Response(body=await body.content(gzipped=True), headers=headers)
        return Response(body=await body.content(gzipped=False), headers=headers)

    def metrics_body(self) -> _MetricsBody:
        """The current /metrics body: the cached one while fresh, else one of a snapshot taken
        now (the rendering is the body's, in a worker thread, shared by the requests that ask
        meanwhile)."""
        body = self._metrics_body
        if (
            body is not None
            and body.version == self._latest.version
            and time.monotonic() - body.made < METRICS_MAX_AGE
        ):
            return body
        version, made = self._latest.version, time.monotonic()
        body = self._metrics_body = _MetricsBody(
            self._registry.snapshot(), self._latest.snapshot(), made, version
        )
        asyncio.get_running_loop().call_later(METRICS_MAX_AGE, self._release_metrics, body)
        return body

    def _release_metrics(self, body: _MetricsBody) -> None:
        """Forget a /metrics body once it is stale: the next scrape renders anyway."""
        if self._metrics_body is body:
            self._metrics_body = None

    async def _send_results(self, request: BaseRequest) -> StreamResponse:
        # A result never changes once made, so this body is current until a new result arrives.
        # Rendered in a worker thread (7 MB of JSON with the history at 10 000 checks, ~0.35 s)
        # from the results and a copy of their history taken now, on the loop.
        results, now = self._latest.all(), time.monotonic()
        body = self._results_body
        if body is None or not body.fresh(results, now, float("inf")):
            frozen, history = tuple(results), self._latest.history.snapshot()

            def render() -> bytes:
                return _compact({"results": [{**r.to_json(), **history.to_json(r.check)} for r in frozen]})

            body = self._results_body = _LazyBody(frozen, now, render)
        gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        content, gzipped = await body.content(gzipped)
        headers = {
            "Content-Type": "application/json",
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return Response(body=content, headers=headers)

    def _one(self, name: str) -> _Body | None:
        result = self._latest.get(name)
        if result is None:
            return None
        body = self._one_body.get(name)
        if body is None or body.results[0] is not result:
            if len(self._one_body) > 4 * len(self._latest.all()):  # forget removed checks
                self._one_body.clear()
            data = {**result.to_json(), **self._latest.history.to_json(name)}
            body = self._one_body[name] = _Body((result,), time.monotonic(), _compact(data))
        return body


_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter


def release_big_buffers() -> None:
    """Have glibc's malloc map every block of 1 MiB or more on its own, so that freeing it returns
    it to the system. By default the threshold grows to the largest block freed (up to 32 MiB):
    after the first scrape, each /metrics body (tens of MB, at thousands of checks) was carved
    from the heap and its pages stayed in the agent's RSS (+50 MB at 10 000 checks). Not glibc
    (musl, macOS): nothing to do."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _send(request: BaseRequest, body: _Body, content_type: str) -> Response:
    headers = {"Content-Type": content_type, "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
    if len(body.raw) >= GZIP_MIN_SIZE and accepts_gzip(request.headers.get("Accept-Encoding", "")):
        headers["Content-Encoding"] = "gzip"
        return Response(body=body.gzipped(), headers=headers)
    return Response(body=body.raw, headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header value accepts gzip (`gzip;q=0` refuses it)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def _text(status: int, body: bytes) -> Response:
    return Response(status=status, body=body, headers={"Content-Type": "text/plain; charset=utf-8"})


def _compact(data: object) -> bytes:
    # Compact: a group check's result is tens of KB and indenting it costs 4x the CPU.
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _json(data: object, status: int = 200) -> Response:
    return Response(status=status, body=_compact(data), headers={"Content-Type": "application/json"})
