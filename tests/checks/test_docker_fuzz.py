"""The Docker API client against whatever a socket answers (issue 12, items 13 and 16).

`checks/docker_api.py` does not use the http check's code: aiohttp parses the engine's answers.
So the same generated responses as tests/checks/test_http_fuzz.py are sent by a raw server on a
unix socket, and whatever it sends, `DockerClient` returns the engine's JSON or raises
`DockerError` — never anything else —, within its timeout, with one printable line that names
the socket and says what the engine did, without aiohttp's or Python's internals. The docker
check on top of it is then UNKNOWN `unavailable`, never `check_error`. Deterministic, ~5 s.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.model import Reason, Status
from agent.runner import execute
from checks.docker import DockerCheck, DockerConfig
from checks.docker_api import DockerClient, DockerError
from checks.net import printable, quote_bytes
from tests.checks.test_http_fuzz import BODIES, FUZZ, INTERNALS, MARGIN, REASONS, TIMEOUT, Reply, replies
from tests.servers import hard_reset

# aiohttp's words, which a message must not use either.
AIOHTTP = r"aiohttp|ClientResponse|ClientPayload|ClientOS|ServerDisconnected|TransferEncoding|ContentLength"


@st.composite
def engine_errors(draw: st.DrawFn) -> Reply:
    """What the engine answers when it refuses: a status and a JSON `{"message": …}`, or not."""
    status = draw(st.sampled_from([b"400", b"404", b"409", b"500", b"503", b"302"]))
    message = draw(st.sampled_from([m.decode("latin-1") for m in REASONS]) | st.text(max_size=20))
    body = draw(
        st.sampled_from(BODIES)
        | st.builds(lambda m: json.dumps({"message": m}).encode(), st.just(message))
        | st.builds(lambda m: b'{"message": "' + m.encode("utf-8", "surrogatepass") + b'"}', st.just(message))
    )
    head = b"HTTP/1.1 " + status + b" Error\r\nContent-Type: application/json\r\n"
    data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return Reply(data, draw(st.sampled_from(["close", "close", "reset"])), True)


@asynccontextmanager
async def serve_unix(reply: Reply) -> AsyncIterator[Path]:
    """`reply` on every connection to a fresh unix socket."""
    writers: set[asyncio.StreamWriter] = set()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        with suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            if reply.read_first:
                await reader.readuntil(b"\r\n\r\n")
            writer.write(reply.data)
            await writer.drain()
            if reply.ending == "reset":
                hard_reset(writer)
            elif reply.ending == "hang":
                await reader.read()
        writer.transport.abort() if reply.ending != "close" else writer.close()

    with tempfile.TemporaryDirectory(prefix="mamori-docker-") as tmp:
        path = Path(tmp) / "docker.sock"
        server = await asyncio.start_unix_server(handler, str(path))
        try:
            yield path
        finally:
            server.close()
            for writer in writers:
                writer.transport.abort()
            await server.wait_closed()


def assert_one_plain_line(message: str, reply: Reply, socket: Path) -> None:
    assert message and message.isprintable(), repr(message)
    assert len(message) <= 600, len(message)
    # The socket's path is ours (a random temp name may spell "h11"): only the rest can leak.
    message = message.replace(str(socket), "<socket>")
    sent = reply.quoted()
    forms = (sent, printable(sent), quote_bytes(reply.data, len(reply.data)))
    found = [m.group() for m in INTERNALS.finditer(message)]
    found += [m.group() for m in __import__("re").finditer(AIOHTTP, message)]
    leaks = [text for text in found if not any(text in f for f in forms)]
    assert not leaks, (leaks, message)


@settings(FUZZ, max_examples=250)
@given(reply=st.one_of(replies(), engine_errors()), inspect=st.booleans())
# The escape this fuzzer found (issue 12): an error answer nested too deeply for json.loads.
@example(
    reply=Reply(b"HTTP/1.1 500 Error\r\nContent-Length: 5000\r\n\r\n" + b"[" * 5000, "close", True),
    inspect=False,
)
def test_whatever_the_engine_socket_sends_is_json_or_a_docker_error(reply: Reply, inspect: bool) -> None:
    async def run() -> tuple[object, float, Path]:
        async with serve_unix(reply) as path:
            client = DockerClient(path, timeout=TIMEOUT)
            t0 = time.monotonic()
            try:
                answer: object = await (client.inspect("web-1") if inspect else client.list_containers({}))
            except DockerError as exc:
                answer = exc
            finally:
                elapsed = time.monotonic() - t0
                await client.aclose()
            return answer, elapsed, path

    answer, elapsed, path = asyncio.run(run())
    assert elapsed < TIMEOUT + MARGIN
    if isinstance(answer, DockerError):
        assert_one_plain_line(str(answer), reply, path)
    else:
        assert isinstance(answer, dict if inspect else list)


@settings(FUZZ, max_examples=40)
@given(reply=replies())
def test_whatever_the_engine_socket_sends_the_docker_check_is_a_result(reply: Reply) -> None:
    async def run() -> tuple[Status, Reason, str, Path]:
        async with serve_unix(reply) as path:
            check = DockerCheck(
                DockerConfig.model_validate(
                    {"name": "d", "type": "docker", "interval": 60, "timeout": TIMEOUT, "socket": str(path)}
                )
            )
            try:
                result = await execute(check)
            finally:
                await check.aclose()
            assert result.duration < TIMEOUT + MARGIN
            return result.status, result.reason, result.message, path

    status, reason, message, path = asyncio.run(run())
    assert reason is not Reason.CHECK_ERROR, message
    assert status in (Status.OK, Status.WARNING, Status.CRITICAL) or reason is Reason.UNAVAILABLE
    assert_one_plain_line(message, reply, path)
