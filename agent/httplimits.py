"""The endpoint's HTTP/1.1 server: aiohttp's low-level server with the limits a scrape target needs.

aiohttp does the HTTP: its C parser answers 400 and closes the connection for a malformed head, a
request line or header over 4 KiB, more than 32 headers, and an HTTP/2 preface; it keeps at most
32 parsed pipelined requests per connection (it stops reading past that, aiohttp >= 3.14.1) and
drops them when the client goes away: at most the request in hand is answered for a client that
is gone. On top of it, this module bounds what a client can hold:

- **One deadline per connection, which no byte moves.** A connection must deliver its first
  complete request head within `HEAD_TIMEOUT` of opening, and each further one within
  `KEEPALIVE_TIMEOUT` of the previous request (that time covers sending the answer, waiting idle
  and receiving the next head). Past it, the connection is closed — aborted if an answer is still
  unsent — whatever it is doing: idle, dribbling a head byte by byte (slowloris), or not reading
  its answers.
- **A bound on connections that cannot lock scrapers out.** At most `max_connections` are open
  (`MAX_CONNECTIONS`, or half the process's file descriptor limit if that is lower); a new
  connection over the bound closes the one whose last request is the oldest (an idle keep-alive,
  a slowloris, an unread answer), never the newcomer. A scraper therefore always gets in, and
  idle connections cannot take the descriptors the checks need.
- **At most `MAX_REQUESTS` requests per connection**, the last answered with `Connection: close`:
  a client that pipelines and never reads its answers (the kernel takes megabytes of them) costs
  that many renders, not thousands.
- **GET and HEAD only, no bodies.** A request with a body gets 413 and the connection is closed
  without reading the body; another method gets 405.

`answer(request)` renders the response, or returns an awaitable of it (for work done off the event
loop); it runs on the event loop and must be quick (it reads in-memory state). Nothing is logged
for a client's mistakes: they are answered, and anyone who can connect could otherwise write the
agent's log.

Lifecycle: `start()` once; `aclose()` closes the listener and every connection, is safe to call
twice and without `start()`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import resource
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response, StreamResponse
from aiohttp.web_server import Server

log = logging.getLogger("mamori.http")
# aiohttp reports each malformed request here with a traceback: a client's garbage, not ours.
_client_errors = logging.getLogger("mamori.http.client_errors")

HEAD_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 30.0
MAX_CONNECTIONS = 1024
LISTEN_BACKLOG = 1024
ACCEPT_BATCH = 16
MAX_REQUESTS = 32  # per connection; then `Connection: close`
MAX_LINE = 4096  # request line, and each header name or value
MAX_HEADERS = 32

Answer = Callable[[BaseRequest], StreamResponse | Awaitable[StreamResponse]]


def connection_limit() -> int:
    """MAX_CONNECTIONS, or half the soft file descriptor limit if that is lower (at least 16)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 2))


@dataclass(slots=True)
class _Connection:
    transport: asyncio.Transport
    deadline: float
    timer: asyncio.TimerHandle
    requests: int = 0


class LimitedServer(Server):
    """aiohttp's `web.Server` (a protocol factory) plus the connection table: bound and deadlines."""

    def __init__(self, answer: Answer, max_connections: int) -> None:
        super().__init__(
            self._handle,
            access_log=None,
            logger=_client_errors,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            lingering_time=0,  # never read a body we refuse
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            auto_decompress=False,
        )
        self._answer = answer
        self.max_connections = max_connections
        # Oldest request first: the front is what a new connection over the bound closes.
        self._table: OrderedDict[RequestHandler, _Connection] = OrderedDict()

    @property
    def open_connections(self) -> int:
        return len(self._table)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HEAD_TIMEOUT
        timer = loop.call_at(deadline, self._expire, handler)
        self._table[handler] = _Connection(transport, deadline, timer)
        while len(self._table) > self.max_connections:
            self.shed()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        conn = self._table.pop(handler, None)
        if conn is not None:
            conn.timer.cancel()

    def shed(self) -> None:
        """Close the connection whose last request is the oldest, if any."""
        if self._table:
            _, oldest = self._table.popitem(last=False)
            oldest.timer.cancel()
            oldest.transport.abort()

    def close_all(self) -> None:
        """Abort every connection. Safe to call twice."""
        while self._table:
            _, conn = self._table.popitem()
            conn.timer.cancel()
            conn.transport.abort()

    def _expire(self, handler: RequestHandler) -> None:
        conn = self._table.get(handler)
        if conn is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < conn.deadline:  # a request came in meanwhile: wait for the new deadline
            conn.timer = loop.call_at(conn.deadline, self._expire, handler)
            return
        del self._table[handler]
        if conn.transport.get_write_buffer_size():
            conn.transport.abort()  # close() would wait for a client that does not read
        else:
            conn.transport.close()

    async def _handle(self, request: BaseRequest) -> StreamResponse:
        conn = self._table.get(request.protocol)
        if conn is not None:
            loop = asyncio.get_running_loop()
            conn.deadline = loop.time() + KEEPALIVE_TIMEOUT
            if conn.deadline < conn.timer.when():
                conn.timer.cancel()
                conn.timer = loop.call_at(conn.deadline, self._expire, request.protocol)
            self._table.move_to_end(request.protocol)
        if request.body_exists:
            response: StreamResponse = Response(status=413, text="request bodies are not accepted\n")
            response.force_close()
        elif request.method not in ("GET", "HEAD"):
            response = Response(status=405, text="method not allowed\n", headers={"Allow": "GET, HEAD"})
        else:
            try:
                answer = self._answer(request)
                response = await answer if isinstance(answer, Awaitable) else answer
            except Exception:
                log.exception("answering %s failed", request.path)
                response = Response(status=500, text="internal error\n")
        response.headers["Server"] = "mamori"
        if conn is not None:
            conn.requests += 1
            if conn.requests >= MAX_REQUESTS:
                response.force_close()  # the rest of what it pipelined is dropped unanswered
        return response


class Listener:
    """The listening sockets, accepting into a `LimitedServer` at most `ACCEPT_BATCH` connections
    at a time (the event loop's own server accepts up to the listen backlog at once).

    A batch is registered, each new connection closing the oldest over the bound, before the next
    batch is accepted: a flood of connections never holds more than `max_connections +
    ACCEPT_BATCH` descriptors, and a scraper's connection is read and answered long before
    `max_connections` newer ones have been accepted after it. What is not accepted yet waits in
    the kernel's listen queue."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._last_warning = -math.inf
        self.http: LimitedServer | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (0 picks a free port) and return the (first) bound address.

        Raises OSError if the address cannot be resolved or bound."""
        _client_errors.setLevel(logging.CRITICAL)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, type_, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, type_, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
        except OSError:
            self._close_sockets()
            raise
        self.http = http = LimitedServer(self._answer, connection_limit())
        self._acceptors = [loop.create_task(self._accept(sock, http)) for sock in self._sockets]
        bound = self._sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def aclose(self) -> None:
        """Stop listening and drop open connections. Safe to call twice and without `start()`."""
        for task in self._acceptors:
            task.cancel()
        await asyncio.gather(*self._acceptors, return_exceptions=True)
        self._acceptors = []
        self._close_sockets()
        if self.http is not None:
            http, self.http = self.http, None
            http.close_all()
            await http.shutdown(1.0)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    async def _accept(self, sock: socket.socket, http: LimitedServer) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch: list[socket.socket] = []
            try:
                batch.append((await loop.sock_accept(sock))[0])
                while len(batch) < ACCEPT_BATCH:
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    batch.append(conn)
            except (BlockingIOError, InterruptedError):
                pass  # the listen queue is empty
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors (the checks hold the rest): free one, wait a little.
                    if loop.time() - self._last_warning > 60:
                        self._last_warning = loop.time()
                        log.warning("endpoint: cannot accept a connection (%s); closing the oldest", exc)
                    http.shed()
                    await asyncio.sleep(0.1)
                elif not batch:  # the client gave up before we accepted it (or worse: no spinning)
                    await asyncio.sleep(0.01)
            connected = await asyncio.gather(
                *(loop.connect_accepted_socket(http, conn) for conn in batch), return_exceptions=True
            )
            for conn, outcome in zip(batch, connected, strict=True):
                if isinstance(outcome, BaseException):
                    conn.close()
