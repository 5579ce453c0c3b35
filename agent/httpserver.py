"""A small HTTP/1.1 server for the agent's few GET endpoints: asyncio streams + h11.

Why not aiohttp.web: importing it costs ~11 MB of RSS and ~0.1 s, a fifth of the agent's
footprint, for four read-only endpoints (see docs/benchmarks.md). h11 (already used by the http
check) does the HTTP framing, so this module only routes and bounds resources:

- keep-alive, as Prometheus scrapes with one connection;
- a request head larger than 16 KiB, or one that takes longer than `HEAD_TIMEOUT`, closes the
  connection; idle keep-alive connections close after `IDLE_TIMEOUT`;
- at most `MAX_CONNECTIONS` connections at once: more are closed at accept;
- GET and HEAD only (405 otherwise); request bodies are refused (413).

Handlers are plain functions returning a `Response`; they run on the event loop and must be
quick (they render in-memory state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import h11

log = logging.getLogger("mamori.http")

HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
MAX_CONNECTIONS = 64
MAX_HEAD_SIZE = 16 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[Mapping[str, str]], Response]


class HttpServer:
    def __init__(self, routes: Mapping[str, Handler], server_header: str = "mamori") -> None:
        self._routes = routes
        self._server_header = server_header.encode()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (0 picks a free port) and return the bound address.

        Raises OSError if the address cannot be bound."""
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    async def aclose(self) -> None:
        """Stop listening and drop open connections. Safe to call twice and without `start()`."""
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, h11.ProtocolError, TimeoutError, asyncio.CancelledError):
            pass  # the client went away, sent garbage or stalled: nothing to answer
        finally:
            self._connections.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        while True:
            request = await self._next_event(conn, reader, IDLE_TIMEOUT)
            if not isinstance(request, h11.Request):
                return  # closed, or a state we do not serve
            if _has_body(request):
                # Nothing here takes a body; refusing it without reading it ends the connection.
                await self._send(conn, writer, request, Response(413, b"request bodies are not accepted\n"))
                return
            if not isinstance(await self._next_event(conn, reader, HEAD_TIMEOUT), h11.EndOfMessage):
                return
            await self._send(conn, writer, request, self._respond(request))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # Connection: close, or HTTP/1.0
            conn.start_next_cycle()

    async def _next_event(
        self, conn: h11.Connection, reader: asyncio.StreamReader, timeout: float
    ) -> h11.Event:
        """The next event; waiting for the first byte may take `timeout`, the rest HEAD_TIMEOUT."""
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            async with asyncio.timeout(timeout):
                data = await reader.read(65536)
            conn.receive_data(data)
            timeout = HEAD_TIMEOUT

    def _respond(self, request: h11.Request) -> Response:
        method = request.method.decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n")
        target = urlsplit(request.target.decode("ascii", "replace"))
        handler = self._routes.get(target.path)
        if handler is None:
            return Response(404, b"not found\n")
        try:
            return handler(dict(parse_qsl(target.query)))
        except Exception:
            log.exception("handler for %s failed", target.path)
            return Response(500, b"internal error\n")

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, response: Response
    ) -> None:
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            (b"server", self._server_header),
        ]
        if response.status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        data = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if request.method != b"HEAD":
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def _has_body(request: h11.Request) -> bool:
    return any(
        (name == b"content-length" and value != b"0") or name == b"transfer-encoding"
        for name, value in request.headers
    )
