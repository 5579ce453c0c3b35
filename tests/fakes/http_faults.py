"""The base of the strict HTTP fakes of hosted services (PagerDuty, Slack): a loopback aiohttp
server plus the faults a test injects.

    async with serve(FakeX()) as fake:
        fake.fail_for(2.0, status=503)   # every request for 2 s answers 503
        fake.throttle(3, retry_after=7)  # the next 3 requests answer 429 with Retry-After: 7
        fake.fail_after(1, status=503)   # serve the next request, then answer 503 to every one
        fake.hang()                      # requests wait, unanswered, until release() or exit
        await fake.down(); await fake.up()  # connections refused, then served again (same port)

Timed faults read `fake.clock` (default `time.monotonic`); a test that drives a client on a fake
clock points it at the same clock, so "503 for ten minutes" takes no real time.

Faults are checked in that order before the service's own `serve()` sees the request, so a
faulted request is never recorded as accepted. Every answer closes its connection, so `down()`
takes effect at once for a client holding a pooled connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from aiohttp import web

from lab.ports import free_port


class FakeHttpService:
    """Subclasses implement `serve()` and `fault_answer()`; `attempts` counts every request that
    reached the server, faulted ones included."""

    def __init__(self) -> None:
        self.port = 0
        self.attempts = 0
        self.clock: Callable[[], float] = time.monotonic
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._fail_until = 0.0
        self._fail_status = 500
        self._throttled = 0
        self._throttle_retry_after: float | None = None
        self._served_before_failing: int | None = None
        self._hanging = False
        self._release = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- faults -------------------------------------------------------------------------------
    def fail_for(self, seconds: float, status: int = 500) -> None:
        """Answer `status` to every request for the next `seconds`."""
        self._fail_until = self.clock() + seconds
        self._fail_status = status

    def throttle(self, n: int, retry_after: float | None = 1.0) -> None:
        """Answer the next `n` requests 429, with `Retry-After: <retry_after>` unless None."""
        self._throttled = n
        self._throttle_retry_after = retry_after

    def fail_after(self, n: int, status: int = 500) -> None:
        """Serve the next `n` requests, then answer `status` to every request after them."""
        self._served_before_failing = n
        self._fail_status = status

    def hang(self) -> None:
        """Hold every request unanswered until `release()` (or the fake's exit)."""
        self._hanging = True
        self._release.clear()

    def release(self) -> None:
        """End `hang()`; requests held so far are answered 503 and not processed."""
        self._hanging = False
        self._release.set()

    async def down(self) -> None:
        """Stop listening: connections are refused until `up()`."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def up(self) -> None:
        """Listen again on the same port."""
        assert self._runner is not None
        if self._site is None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

    # --- serving ------------------------------------------------------------------------------
    async def serve(self, request: web.BaseRequest) -> web.Response:
        raise NotImplementedError

    def fault_answer(self, status: int, retry_after: float | None) -> web.Response:
        """The service's answer to an injected failure or throttle."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return web.Response(status=status, text="fault injected", headers=headers)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.attempts += 1
        if self._hanging:
            await self._release.wait()
            response = web.Response(status=503, text="released")
        elif self.clock() < self._fail_until or self._served_before_failing == 0:
            response = self.fault_answer(self._fail_status, None)
        elif self._throttled > 0:
            self._throttled -= 1
            response = self.fault_answer(429, self._throttle_retry_after)
        else:
            if self._served_before_failing is not None:
                self._served_before_failing -= 1
            response = await self.serve(request)
        response.force_close()
        return response


F = TypeVar("F", bound=FakeHttpService)


@asynccontextmanager
async def serve(fake: F, *, auto_decompress: bool = True) -> AsyncIterator[F]:
    """Serve `fake` on 127.0.0.1 at a free port. Leaving releases hung requests and closes all.
    `auto_decompress=False` hands the fake request bodies as sent (gzip included)."""
    server = web.Server(fake._handle, access_log=None, auto_decompress=auto_decompress)
    runner = web.ServerRunner(server, shutdown_timeout=0.5)
    await runner.setup()
    fake._runner = runner
    fake.port = free_port()
    await fake.up()
    try:
        yield fake
    finally:
        fake.release()
        await runner.cleanup()
