"""Real local servers for tests and benchmarks: loopback only, free ports, async context managers.

    async with serve_http() as srv:                      # the default routes below
        url = srv.url("/health")
    async with serve_http({"/": slow(0.5)}, ssl=ctx) as srv: ...
    async with serve_tcp(banner(b"SSH-2.0-test\\r\\n")) as srv: ...
    async with serve_handshake_only(ctx) as port: ...   # blocking TLS, sends real TLS alerts

The HTTP server is deliberately raw (asyncio streams, hand-written responses) so a route can
misbehave in ways a real framework would not allow: reset, garbage, bodies that never end.
Leaving the context closes the listener and cancels every connection still being served.

Default routes (`DEFAULT_ROUTES`), by path (query strings tune some of them):
    /, /health          200 {"status":"ok","db":{"status":"up"}}
    /slow?ms=N          the healthy JSON after N ms (default 2000)
    /reset              reads the request, then resets the connection (RST)
    /endless            200, chunked, never ends
    /loop/a, /loop/b    redirect to each other
    /redirect           302 to /health;  /hops?n=N: N redirects, then /health
    /garbage            non-HTTP bytes, then close
    /status/<code>      that status (e.g. /status/503), small text body
    /big?bytes=N        200 with an N-byte body (default 2 MiB)
    /headers            200 with X-Mamori: probe and Cache-Control: no-store
    /echo               200, JSON of the request: method, target, headers, body
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
HEALTHY = {"status": "ok", "db": {"status": "up"}}


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def query(self, name: str, default: str) -> str:
        return parse_qs(urlsplit(self.target).query).get(name, [default])[0]


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def response_bytes(
    status: int, body: bytes = b"", headers: Mapping[str, str] | None = None, reason: str | None = None
) -> bytes:
    phrase = reason if reason is not None else HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- route builders -----------------------------------------------------------------------------


def respond(status: int = 200, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes(status, body, headers))

    return handler


def json_ok(payload: Any = None) -> Handler:
    body = json.dumps(HEALTHY if payload is None else payload).encode()
    return respond(200, body, {"Content-Type": "application/json"})


def slow(seconds: float, then: Handler | None = None) -> Handler:
    inner = then or json_ok()

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(float(request.query("ms", str(seconds * 1000))) / 1000)
        await inner(request, writer)

    return handler


def reset() -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        hard_reset(writer)

    return handler


def endless() -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
        while True:  # until the client goes away (drain raises) or the server is closed (cancelled)
            writer.write(chunk)
            await writer.drain()

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    return respond(status, b"", {"Location": location})


def hops() -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        n = int(request.query("n", "3"))
        location = f"/hops?n={n - 1}" if n > 1 else "/health"
        writer.write(response_bytes(302, b"", {"Location": location}))

    return handler


def garbage() -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\x01garbage, not HTTP at all\r\n\r\n")

    return handler


def status_from_path() -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        code = int(request.path.rsplit("/", 1)[-1])
        writer.write(response_bytes(code, f"status {code}\n".encode()))

    return handler


def big() -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes(200, b"x" * int(request.query("bytes", str(2 * 1024 * 1024)))))

    return handler


def echo() -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        doc = {
            "method": request.method,
            "target": request.target,
            "headers": request.headers,
            "body": request.body.decode("utf-8", "replace"),
        }
        writer.write(response_bytes(200, json.dumps(doc).encode(), {"Content-Type": "application/json"}))

    return handler


DEFAULT_ROUTES: dict[str, Handler] = {
    "/": json_ok(),
    "/health": json_ok(),
    "/slow": slow(2.0),
    "/reset": reset(),
    "/endless": endless(),
    "/loop/a": redirect("/loop/b"),
    "/loop/b": redirect("/loop/a"),
    "/redirect": redirect("/health"),
    "/hops": hops(),
    "/garbage": garbage(),
    "/status/": status_from_path(),
    "/big": big(),
    "/headers": respond(200, b"ok\n", {"X-Mamori": "probe", "Cache-Control": "no-store"}),
    "/echo": echo(),
}


# --- the servers ----------------------------------------------------------------------------------


def hard_reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN: what a crashing server or a firewall does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Server:
    host: str
    port: int
    scheme: str = "http"
    requests: list[Request] = field(default_factory=list)

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"


@asynccontextmanager
async def serve(handler: StreamHandler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """Any stream handler on 127.0.0.1:<free port>. Connections still open at exit are cancelled."""
    tasks: set[asyncio.Task[Any]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        closed = False
        try:
            await handler(reader, writer)
            writer.close()  # graceful: everything written is flushed before the FIN
            await writer.wait_closed()
            closed = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the probe went away first: expected for resets, limits and timeouts
        except asyncio.CancelledError:
            # The server is closing. Ending normally matters: in 3.11 asyncio's stream callback
            # calls task.exception() on a cancelled task and logs the resulting error.
            pass
        finally:
            if not closed:
                writer.transport.abort()
            tasks.discard(task)

    server = await asyncio.start_server(tracked, HOST, 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Server(HOST, port, "https" if ssl_context else "http")
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> Request:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, target, headers, body)


def _route(routes: Mapping[str, Handler], path: str) -> Handler:
    if path in routes:
        return routes[path]
    prefixes = [p for p in routes if p.endswith("/") and p != "/" and path.startswith(p)]
    return routes[max(prefixes, key=len)] if prefixes else respond(404, b"not found\n")


@asynccontextmanager
async def serve_http(
    routes: Mapping[str, Handler] | None = None, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    """The raw HTTP server: one request per connection, routed by path (exact, then `/prefix/`).

    Every request received is appended to `server.requests`.
    """
    table = DEFAULT_ROUTES if routes is None else routes
    requests: list[Request] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        requests.append(request)
        await _route(table, request.path)(request, writer)

    async with serve(handle, ssl_context) as server:
        server.requests = requests
        yield server


# --- raw TCP behaviours -------------------------------------------------------------------------


def banner(text: bytes) -> StreamHandler:
    """Send `text` on connect, then echo every line back until the client leaves."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text)
        await writer.drain()
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()

    return handler


def silent() -> StreamHandler:
    """Accept and never say anything."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    return handler


def chatter() -> StreamHandler:
    """Talk forever without ever saying anything a test expects."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(b"blah " * 1000)
            await writer.drain()

    return handler


def rst_after_read() -> StreamHandler:
    """Wait for the client's first bytes, then reset the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        hard_reset(writer)

    return handler


@asynccontextmanager
async def serve_tcp(
    handler: StreamHandler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    async with serve(handler, ssl_context) as server:
        server.scheme = "tcp"
        yield server


@asynccontextmanager
async def serve_handshake_only(ssl_context: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS server in a thread that only does handshakes, then reads until the client leaves.

    asyncio's server side drops the connection on a failed handshake without sending the alert.
    This one sends it, as real servers do (protocol_version, certificate_required), and reads
    what the client already sent before closing, so the close is a FIN: an RST would make the
    client's kernel discard the alert before the client reads it.
    """
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, suppress(OSError):
                conn.settimeout(2.0)
                _handshake_then_drain(conn, ssl_context)

    thread = threading.Thread(target=accept_loop, name="tls-handshake-only", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 5.0)
        listener.close()


def _handshake_then_drain(conn: socket.socket, ssl_context: ssl.SSLContext) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl_context.wrap_bio(incoming, outgoing, server_side=True)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            conn.sendall(outgoing.read())
            data = conn.recv(65536)
            if not data:
                return
            incoming.write(data)
        except ssl.SSLError:
            break  # the alert is in `outgoing`
    conn.sendall(outgoing.read())
    while conn.recv(65536):
        pass
