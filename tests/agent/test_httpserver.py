"""The endpoint's HTTP server: keep-alive, methods, limits — with raw sockets, byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent import httpserver
from agent.httpserver import HttpServer, Response


@pytest.fixture
async def server() -> AsyncIterator[int]:
    def boom(query: object) -> Response:
        raise ZeroDivisionError

    srv = HttpServer({"/x": lambda q: Response(200, f"x={q.get('v', '-')}\n".encode()), "/boom": boom})
    _, port = await srv.start("127.0.0.1", 0)
    yield port
    await srv.aclose()
    await srv.aclose()


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


async def test_keep_alive_serves_several_requests_on_one_connection(server: int) -> None:
    out = await exchange(
        server,
        b"GET /x?v=1 HTTP/1.1\r\nHost: a\r\n\r\nGET /x?v=2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200 ") == 2
    assert out.endswith(b"x=2\n") and b"x=1\n" in out


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"404"),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", b"405"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", b"413"),
        (b"GET /boom HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"500"),
    ],
)
async def test_errors_are_answered_with_their_status(
    server: int, request_bytes: bytes, status: bytes
) -> None:
    out = await exchange(server, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status + b" ")


async def test_head_has_no_body(server: int) -> None:
    out = await exchange(server, b"HEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\n")
    assert b"content-length: 4" in out.lower()


async def test_garbage_and_oversized_heads_close_the_connection(server: int) -> None:
    assert await exchange(server, b"\x16\x03\x01 not http\r\n\r\n") == b""
    assert await exchange(server, b"GET /x HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n") == b""
    # and the server still serves
    assert (await exchange(server, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")).endswith(
        b"x=-\n"
    )


async def test_a_stalled_head_is_cut_off(server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET /x HTTP/1.1\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(-1), 5) == b""
    writer.close()
