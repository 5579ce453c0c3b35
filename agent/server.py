"""The agent's HTTP endpoint: /metrics, /healthz, /ready and /api/v1/results.

- `/metrics` is the Prometheus text format 0.0.4 (every Prometheus version accepts it): the
  agent's own metrics (prometheus_client registry) followed by the per-check results.
- `/healthz` answers 200 while the event loop turns (a liveness probe: if it does not answer,
  restart the agent).
- `/ready` answers 200 `ready` once the scheduler runs and until shutdown begins, unless
  durability is degraded (a state file cannot be written, e.g. the disk is full); otherwise 503
  with one line saying why (`not ready: durability degraded: cannot write the outbox …`).
- `/api/v1/results` is the latest result per check as JSON (`?check=NAME` for one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from agent.httpserver import HttpServer, Response
from exporters.prometheus import LatestResults

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AgentServer:
    def __init__(
        self, registry: CollectorRegistry, latest: LatestResults, ready: Callable[[], str | None]
    ) -> None:
        """`ready()` returns None when ready, else why not (one line)."""
        self._registry = registry
        self._latest = latest
        self._ready = ready
        self._http = HttpServer(
            {
                "/metrics": self._metrics,
                "/healthz": lambda q: Response(200, b"ok\n"),
                "/ready": self._readyz,
                "/api/v1/results": self._results,
                "/": lambda q: Response(200, b"Mamori agent\n/metrics  /healthz  /ready  /api/v1/results\n"),
            }
        )

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0 picks a free one). Raises OSError if it cannot bind."""
        return await self._http.start(host, port)

    async def aclose(self) -> None:
        """Stop listening. Safe to call twice and without `start()`."""
        await self._http.aclose()

    def _metrics(self, query: Mapping[str, str]) -> Response:
        body = generate_latest(self._registry) + self._latest.exposition().encode()
        return Response(200, body, METRICS_CONTENT_TYPE)

    def _readyz(self, query: Mapping[str, str]) -> Response:
        why = self._ready()
        return Response(200, b"ready\n") if why is None else Response(503, f"not ready: {why}\n".encode())

    def _results(self, query: Mapping[str, str]) -> Response:
        name = query.get("check")
        if name is None:
            return _json({"results": [r.to_json() for r in self._latest.all()]})
        result = self._latest.get(name)
        if result is None:
            return _json({"error": f"no result for check {name!r}"}, status=404)
        return _json(result.to_json())


def _json(data: object, status: int = 200) -> Response:
    # Compact: a group check's result is tens of KB and indenting it costs 4x the CPU.
    return Response(status, json.dumps(data, separators=(",", ":")).encode() + b"\n", "application/json")
