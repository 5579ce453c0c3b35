"""The agent's HTTP endpoint under attack (issue 12, items 1-3), and its routes, byte for byte.

The attacks run against a real agent process (`agentctl run`, 127.0.0.1, a free port) started
with the file descriptor limit systemd gives a service (1024), so that the bound on connections
is the one a deployed agent has. The deadlines and the bound are tested in-process with short
timeouts, against `AgentServer` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import httplimits, server
from agent.metrics import GaugeFamily, MetricRegistry
from agent.model import CheckResult, Sample, Status
from agent.server import AgentServer
from agent.telemetry import AgentMetrics
from exporters.prometheus import LatestResults
from lab.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SERVICE_FD_LIMIT = 1024  # systemd's default soft LimitNOFILE


# --- clients ------------------------------------------------------------------------------------


def request(path: str, *headers: str, method: str = "GET", close: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.transport.abort()


def status_of(answer: bytes) -> int:
    """The status code of the first answer in `answer` (0 if there is none)."""
    head = answer.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) >= 2 and head[0].startswith(b"HTTP/1.") else 0


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_of(answer), headers, body


async def scrape(port: int, path: str = "/metrics", timeout: float = 10.0) -> tuple[int, float]:
    """A scrape on a fresh connection: (status, seconds); status 0 if it failed or timed out."""
    t0 = time.monotonic()
    try:
        answer = await asyncio.wait_for(exchange(port, request(path), timeout), timeout)
    except (OSError, TimeoutError):
        return 0, time.monotonic() - t0
    return status_of(answer), time.monotonic() - t0


def blocking_scrape(port: int, path: str, timeout: float) -> tuple[int, float]:
    """`scrape()` with a blocking socket, for a thread."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request(path))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError
    except OSError:  # TimeoutError included
        return 0, time.monotonic() - t0
    return status_of(answer), time.monotonic() - t0


@contextlib.contextmanager
def fd_limit(at_least: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE (and the hard one if needed: the tests run as
    root) for the attacker's sockets; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= at_least:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, max(hard, at_least)))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def open_idle(port: int, count: int, first: bytes = b"") -> list[asyncio.StreamWriter]:
    """`count` connections (at most 200 connecting at once), each having sent `first`."""
    gate = asyncio.Semaphore(200)

    async def one() -> asyncio.StreamWriter | None:
        async with gate:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                if first:
                    writer.write(first)
            except (OSError, TimeoutError):
                return None
            return writer

    return [w for w in await asyncio.gather(*(one() for _ in range(count))) if w is not None]


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (a FIN or a reset) within 2 s."""
    try:
        return await asyncio.wait_for(reader.read(-1), 2) == b""
    except ConnectionResetError:
        return True


def hang_up(writers: Iterable[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.transport.abort()


# --- a real agent -------------------------------------------------------------------------------


@dataclass
class RunningAgent:
    port: int
    process: psutil.Process

    def rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / 2**20


def _has_results(port: int, count: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/api/v1/results")
        answer = conn.getresponse()
        return answer.status == 200 and len(json.loads(answer.read())["results"]) == count
    except OSError:
        return False
    finally:
        conn.close()


def _service_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVICE_FD_LIMIT, hard))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """`agentctl run` with 20 checks (so /api/v1/results is ~10 KB), fd limit 1024."""
    tmp = tmp_path_factory.mktemp("endpoint")
    port = free_port()
    lines = [
        "agent: {interval: 1s, timeout: 1s}",
        "checks:",
        f"  - {{name: self, type: http, url: 'http://127.0.0.1:{port}/healthz'}}",
    ]
    lines += [
        f"  - {{name: closed-{i:02d}, type: tcp, host: 127.0.0.1, port: {free_port()}}}" for i in range(19)
    ]
    (tmp / "agent.yml").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMORI_")}
    log = (tmp / "agent.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "-c",
            str(tmp / "agent.yml"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env=env,
        preexec_fn=_service_fd_limit,
    )
    try:
        deadline = time.monotonic() + 30
        while not _has_results(port, 20):
            assert proc.poll() is None, (tmp / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent did not produce its results"
            time.sleep(0.2)
        yield RunningAgent(port, psutil.Process(proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def test_pipelined_requests_of_clients_that_hang_up_cost_no_memory(agent: RunningAgent) -> None:
    """64 clients pipeline ~1500 `GET /api/v1/results` each and hang up, again and again for 4 s:
    the agent's memory stays put and /healthz answers throughout (the h11 server answered every
    buffered request of every gone client and grew to GBs)."""
    pipelined = request("/api/v1/results", close=False) * 1500
    before = agent.rss_mb()
    peak = before
    stop = time.monotonic() + 4.0
    health: list[tuple[int, float]] = []
    sent = 0

    async def attacker() -> None:
        nonlocal sent
        while time.monotonic() < stop:
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", agent.port), 2)
                writer.write(pipelined)
                await asyncio.wait_for(writer.drain(), 2)
                sent += 1
                writer.close()  # all of it is in the agent's socket, then a FIN
            await asyncio.sleep(0.2)  # ~300 connections a second: an attack, not a CPU race

    def watch() -> None:  # a thread of its own: the attackers keep this test's event loop busy
        nonlocal peak
        while time.monotonic() < stop + 1.0:
            peak = max(peak, agent.rss_mb())
            health.append(blocking_scrape(agent.port, "/healthz", timeout=3.0))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        await asyncio.gather(*(attacker() for _ in range(64)))
    finally:
        await asyncio.to_thread(watcher.join)
    assert sent >= 64
    assert len(health) >= 5 and all(status == 200 for status, _ in health), health
    assert peak - before < 40, f"RSS grew from {before:.0f} MB to {peak:.0f} MB"


async def test_slowloris_clients_do_not_delay_a_scrape(agent: RunningAgent) -> None:
    """600 clients (more than the agent keeps open) each dribble a request head, a byte every
    quarter second: every scrape meanwhile is answered at once (within 3 s on a loaded machine;
    the h11 server answered none for 100 s)."""
    with fd_limit(2000):
        clients = await open_idle(agent.port, 600, b"GET /metrics HTTP/1.1\r\nHost: a\r\n")
        try:
            await asyncio.sleep(0.5)
            answers = []
            for i in range(10):
                for writer in clients:
                    with contextlib.suppress(OSError):
                        writer.write(b"Xabcdefghij"[i % 11 : i % 11 + 1])
                answers.append(await scrape(agent.port, timeout=5.0))
                await asyncio.sleep(0.25)
        finally:
            hang_up(clients)
    assert len(clients) >= 500
    assert all(status == 200 for status, _ in answers), answers
    assert max(seconds for _, seconds in answers) < 3.0, answers


async def test_2000_idle_connections_do_not_lock_scrapers_out(agent: RunningAgent) -> None:
    """More idle connections than the agent has file descriptors: each new one closes the one
    that has waited longest, so scrapes get in (h11 server: 0 of 40 answered)."""
    with fd_limit(4096):
        idle = await open_idle(agent.port, 2000)
        try:
            answers = [await scrape(agent.port, timeout=5.0) for _ in range(20)]
        finally:
            hang_up(idle)
    assert len(idle) >= 1900
    assert all(status == 200 for status, _ in answers), answers
    assert max(seconds for _, seconds in answers) < 3.0, answers


async def test_a_burst_of_300_clients_is_answered(agent: RunningAgent) -> None:
    with fd_limit(2000):
        answers = await asyncio.gather(*(scrape(agent.port, timeout=15.0) for _ in range(300)))
    assert [status for status, _ in answers] == [200] * 300, answers[:5]


async def test_a_1_mb_header_is_refused_and_the_connection_closed(agent: RunningAgent) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    sent, answer = 0, b""
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: ")
        while sent < 2**20 and not answer:
            writer.write(b"a" * 16384)
            await writer.drain()
            sent += 16384
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(65536), 0.5)
        answer += await asyncio.wait_for(reader.read(-1), 5)  # then the server closes
    finally:
        writer.transport.abort()
    assert status_of(answer) in (400, 431), answer[:200]
    assert sent <= 64 * 1024  # refused at the first 16 KiB, not after reading a megabyte
    assert (await scrape(agent.port))[0] == 200


async def test_a_100_mb_body_is_refused_without_being_read(agent: RunningAgent) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    sent = 0
    try:
        writer.write(request("/metrics", "Content-Length: 100000000", method="POST", close=False))
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert status_of(answer) == 413, answer
        with contextlib.suppress(OSError):  # the agent hung up: sending fails soon
            while sent < 100_000_000:
                writer.write(b"x" * 2**20)
                await asyncio.wait_for(writer.drain(), 5)
                sent += 2**20
    finally:
        writer.transport.abort()
    assert sent < 20 * 2**20
    chunked = request("/metrics", "Transfer-Encoding: chunked", close=False)
    assert status_of(await exchange(agent.port, chunked + b"5\r\nhello\r\n")) == 413


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET /metrics HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        b"BLAH\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",  # a TLS ClientHello
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    ],
)
async def test_a_malformed_request_gets_400(agent: RunningAgent, garbage: bytes) -> None:
    answer = await exchange(agent.port, garbage)
    assert status_of(answer) == 400, answer[:200]


async def test_an_http2_preface_is_refused_not_405(agent: RunningAgent) -> None:
    answer = await exchange(agent.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert status_of(answer) in (400, 505), answer[:200]


async def test_agentctl_check_does_not_import_aiohttp() -> None:
    """`agentctl check URL` stays a cold start of ~0.2 s: the endpoint's aiohttp is not in it."""
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-X", "importtime", "-m", "agent.cli", "check", f"http://127.0.0.1:{free_port()}/"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.stdout.startswith("HTTP CRITICAL"), out.stdout + out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "checks.http" in imported
    assert not {m for m in imported if m.split(".")[0] in ("aiohttp", "prometheus_client")}


def test_an_agent_without_state_files_does_not_load_sqlite() -> None:
    """The default config has no outbox and no alerting: sqlite3 (about 1 MB of the 50 MB RSS
    budget, issue 12) is loaded only by the modules that open a state file. Same budget: the agent
    renders its metrics itself (no prometheus_client) and uses frozenlist's pure-Python twin."""
    code = (
        "import sys, agent.cli, agent.runtime, checks.host.check, checks.http.check, exporters.prometheus;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlite3', '_sqlite3')))"
    )
    code += (
        ";print(sorted({m.split('.')[0] for m in sys.modules} & {'prometheus_client', 'wsgiref'}));"
        "import frozenlist; print(frozenlist.FrozenList is frozenlist.PyFrozenList)"
    )
    env = {k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "[]", "True"], out.stdout


# --- the server in-process: routes, caching, deadlines, the bound ------------------------------


class CountingCollector:
    def __init__(self) -> None:
        self.collections = 0

    def collect(self) -> Iterable[GaugeFamily]:
        self.collections += 1
        yield GaugeFamily("test_renders", "How often /metrics was rendered.", value=self.collections)


def result(check: str, message: str = "") -> CheckResult:
    return CheckResult(
        check=check,
        check_type="tcp",
        target="127.0.0.1:1",
        status=Status.OK,
        started_at=1.0,
        duration=0.001,
        message=message,
    )


@dataclass
class Served:
    port: int
    server: AgentServer
    latest: LatestResults
    collector: CountingCollector
    why_not_ready: list[str | None]

    @property
    def open_connections(self) -> int:
        http = self.server._listener.http
        assert http is not None
        return http.open_connections


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    registry = MetricRegistry()
    collector = CountingCollector()
    registry.register(collector)
    latest = LatestResults()
    latest.put(result("a", "x" * 2000))
    why: list[str | None] = [None]
    srv = AgentServer(registry, latest, lambda: why[0])
    _, port = await srv.start("127.0.0.1", 0)
    yield Served(port, srv, latest, collector, why)
    await srv.aclose()
    await srv.aclose()


async def test_every_route_keeps_its_answer_and_content_type(served: Served) -> None:
    port = served.port
    status, headers, body = split(await exchange(port, request("/")))
    assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert body.startswith(b"<!DOCTYPE html>") and b"<title>Mamori agent: status</title>" in body
    status, headers, body = split(await exchange(port, request("/healthz")))
    assert (status, headers["content-type"], body) == (200, "text/plain; charset=utf-8", b"ok\n")
    assert split(await exchange(port, request("/ready")))[::2] == (200, b"ready\n")
    served.why_not_ready[0] = "starting"
    assert split(await exchange(port, request("/ready")))[::2] == (503, b"not ready: starting\n")
    status, headers, body = split(await exchange(port, request("/metrics")))
    assert (status, headers["content-type"]) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert b"\ntest_renders 1.0\n" in body and b'probe_success{check="a"' in body
    assert headers["server"] == "mamori"
    status, headers, body = split(await exchange(port, request("/api/v1/results")))
    assert (status, headers["content-type"]) == (200, "application/json")
    assert [r["check"] for r in json.loads(body)["results"]] == ["a"]
    status, _, body = split(await exchange(port, request("/api/v1/results?check=a")))
    assert status == 200 and json.loads(body)["message"] == "x" * 2000
    status, headers, body = split(await exchange(port, request("/api/v1/results?check=nope")))
    assert (status, headers["content-type"], json.loads(body)) == (
        404,
        "application/json",
        {"error": "no result for check 'nope'"},
    )
    assert status_of(await exchange(port, request("/nope"))) == 404


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request("/metrics", "Content-Length: 0", method="POST"), 405),
        (request("/metrics", "Content-Length: 3", close=False) + b"abc", 413),
        (request("/metrics", "Content-Length: 3", method="POST", close=False) + b"abc", 413),
    ],
)
async def test_methods_and_bodies_are_refused(served: Served, data: bytes, status: int) -> None:
    status_, headers, _ = split(await exchange(served.port, data))
    assert status_ == status
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


async def test_a_failing_route_answers_500_and_the_server_goes_on(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> str | None:
        raise ZeroDivisionError

    served.why_not_ready[0] = None
    monkeypatch.setattr(served.server, "_ready", boom)
    assert status_of(await exchange(served.port, request("/ready"))) == 500
    assert status_of(await exchange(served.port, request("/healthz"))) == 200


async def test_keep_alive_and_pipelining_answer_in_order_and_head_has_no_body(served: Served) -> None:
    out = await exchange(
        served.port,
        request("/healthz", close=False) + request("/ready", method="HEAD", close=False) + request("/"),
    )
    assert out.count(b"HTTP/1.1 200 ") == 3
    assert out.index(b"ok\n") < out.index(b"Content-Length: 6") < out.index(b"Mamori agent")
    assert b"ready\n" not in out


async def test_gzip_only_for_scrapers_that_accept_it(served: Served) -> None:
    _, plain_headers, plain = split(await exchange(served.port, request("/metrics")))
    _, headers, body = split(await exchange(served.port, request("/metrics", "Accept-Encoding: gzip")))
    assert "content-encoding" not in plain_headers
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == plain and len(body) < len(plain)
    refused = split(await exchange(served.port, request("/metrics", "Accept-Encoding: gzip;q=0")))
    assert "content-encoding" not in refused[1]
    assert server.accepts_gzip("deflate, GZip;q=0.5") and not server.accepts_gzip("br")


async def test_the_metrics_body_is_rendered_once_for_a_burst_of_scrapes(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    burst = httplimits.MAX_REQUESTS - 1
    pipelined = request("/metrics", close=False) * burst + request("/api/v1/results")
    out = await exchange(served.port, pipelined)
    assert out.count(b"HTTP/1.1 200 ") == burst + 1
    assert served.collector.collections == 1
    served.latest.put(result("b"))  # a new result: rendered again
    assert b'check="b"' in split(await exchange(served.port, request("/metrics")))[2]
    assert b'"check":"b"' in split(await exchange(served.port, request("/api/v1/results")))[2]
    assert served.collector.collections == 2
    monkeypatch.setattr(server, "METRICS_MAX_AGE", 0.0)  # the agent's own metrics move on too
    await exchange(served.port, request("/metrics"))
    assert served.collector.collections == 3


async def test_a_head_sent_byte_by_byte_is_cut_at_its_deadline(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte arrives well within any per-read timeout; the head as a whole does not."""
    monkeypatch.setattr(httplimits, "HEAD_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    t0 = time.monotonic()
    closed = asyncio.ensure_future(reader.read(-1))
    try:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 100:
            if closed.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(closed, 5) == b""
    finally:
        writer.transport.abort()
    assert 0.4 < time.monotonic() - t0 < 3.0


async def test_an_idle_keep_alive_connection_and_an_unread_answer_are_closed(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httplimits, "KEEPALIVE_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(request("/healthz", close=False))
    t0 = time.monotonic()
    assert (await asyncio.wait_for(reader.read(-1), 5)).endswith(b"ok\n")  # answered, then closed
    assert 0.4 < time.monotonic() - t0 < 3.0
    writer.transport.abort()

    served.latest.put(result("big", "y" * 200_000))  # a client that never reads its answers
    _, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.transport.set_write_buffer_limits(high=2**30)
    writer.write(request("/api/v1/results", close=False) * 200)
    try:
        for _ in range(50):
            await asyncio.sleep(0.1)
            if served.open_connections == 0:
                break
        assert served.open_connections == 0
    finally:
        writer.transport.abort()


async def test_a_connection_over_the_bound_closes_the_oldest_not_the_newcomer(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    await served.server.aclose()
    monkeypatch.setattr(httplimits, "connection_limit", lambda: 4)
    _, port = await served.server.start("127.0.0.1", 0)
    oldest = await asyncio.open_connection("127.0.0.1", port)
    others = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await asyncio.sleep(0.1)
    try:
        assert status_of(await exchange(port, request("/healthz"))) == 200  # the fifth
        assert await closed(oldest[0])
        for reader, _ in others:  # still open
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.1)
    finally:
        hang_up([oldest[1], *(w for _, w in others)])


async def test_a_connection_answers_at_most_max_requests_then_closes(served: Served) -> None:
    out = await exchange(served.port, request("/healthz", close=False) * (httplimits.MAX_REQUESTS + 8))
    assert out.count(b"HTTP/1.1 200 ") == httplimits.MAX_REQUESTS
    assert out.count(b"Connection: close") == 1 and out.endswith(b"ok\n")


def counted_results(body: bytes) -> dict[str, list[float]]:
    """Each check's `mamori_check_last_run_timestamp_seconds` values in a /metrics body."""
    out: dict[str, list[float]] = {}
    for line in body.decode().splitlines():
        if line.startswith("mamori_check_last_run_timestamp_seconds{"):
            check = line.split('check="', 1)[1].split('"', 1)[0]
            out.setdefault(check, []).append(float(line.rsplit(" ", 1)[1]))
    return out


async def test_a_scrape_while_results_arrive_shows_every_check_once_from_one_moment(served: Served) -> None:
    """The body is rendered off the event loop from a snapshot: results that arrive meanwhile (in
    name order here) are all in the next scrape or none of them, never half of a check's lines."""
    names = [f"c{i:04d}" for i in range(3000)]
    for name in names:
        served.latest.put(result(name).with_(started_at=1.0))
    for generation in (2.0, 3.0):
        scrape = asyncio.ensure_future(exchange(served.port, request("/metrics", "Accept-Encoding: gzip")))
        for name in names:
            served.latest.put(result(name).with_(started_at=generation))
            if name.endswith("00"):
                await asyncio.sleep(0)
        status, headers, body = split(await scrape)
        assert status == 200 and headers["content-encoding"] == "gzip"
        seen = counted_results(gzip.decompress(body))
        assert sorted(seen) == ["a", *names]
        assert all(len(values) == 1 for values in seen.values())
        stamps = [seen[name][0] for name in names]
        new = stamps.count(generation)  # the snapshot was taken after the first `new` results
        assert stamps == [generation] * new + [generation - 1.0] * (len(names) - new)
        body_now = split(await exchange(served.port, request("/metrics")))[2]
        assert {n: v for n, v in counted_results(body_now).items() if n != "a"} == {
            n: [generation] for n in names
        }


async def test_a_big_exposition_passes_promtool_and_its_gzip_is_the_same_body(served: Served) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package prometheus (`make test` does)")
    metrics = AgentMetrics(served.server._registry)
    for i in range(2000):
        name = f"web-{i:04d}"
        samples = (
            Sample("probe_http_status_code", 200.0),
            Sample("probe_http_duration_seconds", 0.001, (("phase", "connect"),)),
        )
        served.latest.put(result(name).with_(check_type="http", samples=samples) if i % 2 else result(name))
        metrics.check_counters(name).count_run(result(name))  # 8 series per check, as the scheduler's
    _, _, plain = split(await exchange(served.port, request("/metrics")))
    _, headers, body = split(await exchange(served.port, request("/metrics", "Accept-Encoding: gzip")))
    assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == plain
    assert plain.count(b"\nmamori_check_runs_total{") == 4 * 2000
    out = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=plain, capture_output=True, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=3000), max_size=400),
    isal=st.booleans(),
    piece_slice=st.sampled_from([1, 7, 4096]),
)
def test_the_streamed_gzip_of_the_pieces_is_the_gzip_of_the_page(
    parts: list[bytes], isal: bool, piece_slice: int
) -> None:
    """/metrics compresses its pieces as they come (never joining the page), with ISA-L when the
    package is there and zlib otherwise: either way one gzip member of exactly the joined page."""
    with pytest.MonkeyPatch.context() as mp:
        if not isal:
            mp.setattr(server, "_isal", lambda: None)
        mp.setattr(server, "_SLICE", piece_slice)
        body = server.gzip_stream(parts, server.METRICS_GZIP_LEVEL)
    assert gzip.decompress(body) == b"".join(parts)
    assert body[:2] == b"\x1f\x8b" and body[4:8] == b"\0\0\0\0"  # gzip, no mtime: same page, same bytes


def test_isal_is_there_where_it_has_a_wheel() -> None:
    """The faster compressor is a dependency: on this machine it must have been installed."""
    assert server._isal() is not None
