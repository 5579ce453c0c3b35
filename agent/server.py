"""The agent's HTTP endpoint: /metrics, /healthz, /ready and /api/v1/results.

- `/healthz` answers 200 while the event loop turns (a liveness probe: if it does not answer,
  restart the agent).
- `/ready` answers 200 once the scheduler runs and until shutdown begins, else 503.
- `/api/v1/results` is the latest result per check as JSON (`?check=NAME` for one).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporters.prometheus import LatestResults


class AgentServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        latest: LatestResults,
        ready: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._latest = latest
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/ready", self._readyz)
        app.router.add_get("/api/v1/results", self._results)
        app.router.add_get("/", self._index)
        return app

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0 picks a free one). Raises OSError if it cannot bind."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        addr = sockets[0].getsockname() if sockets else (host, port)
        self.bound = (str(addr[0]), int(addr[1]))
        return self.bound

    async def aclose(self) -> None:
        """Stop listening. Safe to call twice and without `start()`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def _results(self, request: web.Request) -> web.Response:
        name = request.query.get("check")
        if name is not None:
            result = self._latest.get(name)
            if result is None:
                return _json({"error": f"no result for check {name!r}"}, status=404)
            return _json(result.to_json())
        return _json({"results": [r.to_json() for r in self._latest.all()]})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="Mamori agent\n/metrics  /healthz  /ready  /api/v1/results\n")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=1) + "\n", content_type="application/json"
    )
