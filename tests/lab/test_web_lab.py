"""The web lab end to end: real HAProxy terminating TLS in front of real app servers, on 127.0.0.1.

Requests are raw HTTP/1.1 over asyncio streams (one connection each, `Connection: close`), so a
test sees exactly what came back — or that nothing did.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.apps import AppServer
from lab.haproxy import Backend, HAProxy, HAProxyError
from lab.web import WebLab, web_lab

HOST = "127.0.0.1"
PUBLIC_NAME = "app.example.test"
NAMES = ["app-1", "app-2", "app-3"]


class NoAnswer(Exception):
    """The server closed the connection without sending a byte of response."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes
    seconds: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def instance(self) -> str:
        return self.headers["x-instance"]


async def fetch(
    port: int,
    path: str = "/api/health",
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    cookie: str | None = None,
    timeout: float = 5.0,
) -> Answer:
    """GET 127.0.0.1:port{path}; with `tls`, over TLS (SNI `server_hostname`, else the IP)."""
    started = time.perf_counter()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=tls, server_hostname=server_hostname if tls else None
        )
        try:
            head = f"GET {path} HTTP/1.1\r\nHost: {PUBLIC_NAME}\r\nConnection: close\r\n"
            if cookie is not None:
                head += f"Cookie: {cookie}\r\n"
            writer.write(f"{head}\r\n".encode())
            raw = await reader.read()
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
    if not raw:
        raise NoAnswer(f"127.0.0.1:{port} closed without answering")
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split(" ")[1]), headers, body, time.perf_counter() - started)


def healthy_json(instance: str) -> dict[str, Any]:
    return {"status": "ok", "db": {"status": "up"}, "instance": instance, "version": "1"}


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[WebLab]:
    async with web_lab(tmp_path) as started:
        yield started


@pytest.fixture
def ca(lab: WebLab) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(lab.ca_file))


async def via_lb(lab: WebLab, ca: ssl.SSLContext, cookie: str | None = None) -> Answer:
    return await fetch(lab.haproxy.port, tls=ca, cookie=cookie)


# --- lifecycle ----------------------------------------------------------------------------------


async def test_lab_starts_fast_with_every_app_up_and_stops_everything(tmp_path: Path) -> None:
    started = time.perf_counter()
    async with web_lab(tmp_path) as lab:
        startup = time.perf_counter() - started
        assert startup < 2.0
        assert [app.name for app in lab.apps] == NAMES
        assert lab.url == f"https://127.0.0.1:{lab.haproxy.port}/api/health"
        assert lab.public_name == PUBLIC_NAME
        assert lab.ca_file == tmp_path / "certs" / "ca.pem"
        assert await lab.haproxy.backend_states() == dict.fromkeys(NAMES, "UP")
        # UP at start means each app already answered a health check, and no traffic yet
        assert all(app.health_checks >= 1 for app in lab.apps)
        assert [app.requests for app in lab.apps] == [0, 0, 0]
        ports = [lab.haproxy.port, lab.haproxy.stats_port, *(app.port for app in lab.apps)]
        assert len(set(ports)) == 5
        assert lab.haproxy.pid is not None
    assert not lab.haproxy.running
    assert not any(app.listening for app in lab.apps)
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, port)
    await lab.stop()  # a second stop is harmless


async def test_stop_is_safe_before_start(tmp_path: Path) -> None:
    app = AppServer("never-started")
    await app.stop()
    await app.stop()
    lab = WebLab(tmp_path)
    await lab.stop()
    with pytest.raises(RuntimeError, match="not started"):
        lab.haproxy  # noqa: B018 - the property is what is tested


async def test_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    lab = WebLab(tmp_path)
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        lab.apps[1].port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await lab.start()
    assert not any(app.listening for app in lab.apps)
    with pytest.raises(RuntimeError, match="not started"):
        lab.haproxy  # noqa: B018


async def test_haproxy_that_cannot_start_reports_its_stderr(tmp_path: Path) -> None:
    lab = WebLab(tmp_path)  # only for its certificates
    lb = HAProxy(tmp_path / "lb", [Backend("bad name", 1)], lab.certs.valid)
    with pytest.raises(
        HAProxyError, match=r"(?s)exited with status 1: .*\[ALERT\].*unknown keyword '127\.0\.0\.1:1'"
    ):
        await lb.start()
    assert not lb.running
    assert lb.pid is None


async def test_haproxy_picks_other_ports_when_its_first_ones_are_taken(tmp_path: Path) -> None:
    lab = WebLab(tmp_path)  # only for its certificates
    lb = HAProxy(tmp_path / "lb", [Backend("app-1", 1)], lab.certs.valid)
    taken_port = lb.port
    with socket.socket() as taken:
        taken.bind((HOST, taken_port))
        taken.listen()
        try:
            await lb.start()
            assert lb.running
            assert lb.port != taken_port
            assert lb.url("/x") == f"https://127.0.0.1:{lb.port}/x"
        finally:
            await lb.stop()
    assert "cannot bind socket" not in (tmp_path / "lb" / "haproxy.stderr").read_text()


# --- the healthy path -------------------------------------------------------------------------


async def test_healthy_json_through_the_load_balancer(lab: WebLab, ca: ssl.SSLContext) -> None:
    answer = await via_lb(lab, ca)
    assert answer.status == 200
    assert answer.instance in NAMES
    assert answer.json == healthy_json(answer.instance)
    assert answer.headers["set-cookie"] == f"SERVERID={answer.instance}; path=/"
    # the public name verifies too (SNI), and a client without the lab's CA does not trust it
    assert (await fetch(lab.haproxy.port, tls=ca, server_hostname=PUBLIC_NAME)).status == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        await fetch(lab.haproxy.port, tls=ssl.create_default_context())
    page = await fetch(lab.haproxy.port, "/", tls=ca)
    assert (page.status, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert f"Mamori lab: {page.instance}".encode() in page.body


async def test_round_robin_spreads_requests_evenly(lab: WebLab, ca: ssl.SSLContext) -> None:
    instances = [(await via_lb(lab, ca)).instance for _ in range(6)]
    assert sorted(instances[:3]) == NAMES
    assert instances[3:] == instances[:3]
    assert [app.requests for app in lab.apps] == [2, 2, 2]


async def test_session_cookie_keeps_a_client_on_one_app(lab: WebLab, ca: ssl.SSLContext) -> None:
    first = await via_lb(lab, ca)
    pinned = first.instance
    cookie = f"SERVERID={pinned}"
    answers = [await via_lb(lab, ca, cookie) for _ in range(5)]
    assert [a.instance for a in answers] == [pinned] * 5
    assert all("set-cookie" not in a.headers for a in answers)  # `indirect`: not re-sent
    assert {app.name: app.requests for app in lab.apps} == {n: 6 if n == pinned else 0 for n in NAMES}
    other = next(n for n in NAMES if n != pinned)
    assert (await via_lb(lab, ca, f"SERVERID={other}")).instance == other


async def test_runtime_api_puts_an_app_in_maintenance(lab: WebLab, ca: ssl.SSLContext) -> None:
    assert (await lab.haproxy.runtime("disable server app/app-1")).strip() == ""
    await lab.wait_until_haproxy_sees({"app-1": "MAINT"}, timeout=1.0)
    instances = [(await via_lb(lab, ca)).instance for _ in range(4)]
    assert Counter(instances) == {"app-2": 2, "app-3": 2}
    assert "No such server" in await lab.haproxy.runtime("disable server app/app-9")


# --- faults -------------------------------------------------------------------------------------


async def test_app_down_is_detected_and_traffic_moves(lab: WebLab, ca: ssl.SSLContext) -> None:
    app1 = lab.app("app-1")
    port = app1.port
    await app1.down()
    with pytest.raises(ConnectionRefusedError):
        await fetch(port)
    detected = await lab.wait_until_haproxy_sees({"app-1": "DOWN"}, timeout=3.0)
    assert detected < 2.0
    assert await lab.haproxy.backend_states() == {"app-1": "DOWN", "app-2": "UP", "app-3": "UP"}

    answers = [await via_lb(lab, ca) for _ in range(4)]
    assert [a.status for a in answers] == [200] * 4
    assert Counter(a.instance for a in answers) == {"app-2": 2, "app-3": 2}
    assert app1.requests == 0
    # a client pinned to the dead app is moved and re-pinned
    moved = await via_lb(lab, ca, "SERVERID=app-1")
    assert moved.status == 200
    assert moved.instance in ("app-2", "app-3")
    assert moved.headers["set-cookie"] == f"SERVERID={moved.instance}; path=/"

    await app1.up()
    assert app1.port == port
    await lab.wait_until_haproxy_sees({"app-1": "UP"}, timeout=3.0)
    assert (await via_lb(lab, ca, "SERVERID=app-1")).instance == "app-1"


async def test_broken_route_answers_503_while_apps_are_fine(lab: WebLab, ca: ssl.SSLContext) -> None:
    port = lab.haproxy.port
    await lab.app("app-3").down()
    await lab.wait_until_haproxy_sees({"app-3": "DOWN"}, timeout=3.0)
    await lab.haproxy.break_route()
    assert lab.haproxy.port == port
    # the restart carried HAProxy's view over: app-3 is still DOWN, not back to "UP 1/2"
    assert await lab.haproxy.backend_states() == {"app-1": "UP", "app-2": "UP", "app-3": "DOWN"}
    await lab.app("app-3").up()
    broken = await via_lb(lab, ca)
    assert broken.status == 503
    assert b"No server is available" in broken.body
    for app in lab.apps:
        direct = await fetch(app.port)
        assert (direct.status, direct.json) == (200, healthy_json(app.name))
    assert [app.requests for app in lab.apps] == [1, 1, 1]  # only the direct requests got through
    await lab.wait_until_haproxy_sees(dict.fromkeys(NAMES, "UP"), timeout=3.0)

    await lab.haproxy.fix_route()
    assert (await via_lb(lab, ca)).status == 200


async def test_haproxy_stop_refuses_connections_and_start_restores(lab: WebLab, ca: ssl.SSLContext) -> None:
    lb = lab.haproxy
    port, old_pid = lb.port, lb.pid
    await lb.stop()
    assert (lb.running, lb.pid) == (False, None)
    with pytest.raises(ConnectionRefusedError):
        await via_lb(lab, ca)
    with pytest.raises(ConnectionRefusedError):
        await lb.backend_states()
    await lb.start()
    assert lb.port == port
    assert lb.pid not in (None, old_pid)
    assert (await via_lb(lab, ca)).status == 200


async def test_slow_app_is_measurably_slow(lab: WebLab, ca: ssl.SSLContext) -> None:
    lab.app("app-2").slow(300)
    slow = await via_lb(lab, ca, "SERVERID=app-2")
    assert (slow.status, slow.instance) == (200, "app-2")
    assert 0.3 <= slow.seconds < 1.0
    fast = await via_lb(lab, ca, "SERVERID=app-1")
    assert fast.seconds < 0.3
    assert (await fetch(lab.app("app-2").port)).seconds >= 0.3
    lab.app("app-2").healthy()
    assert (await via_lb(lab, ca, "SERVERID=app-2")).seconds < 0.3


async def test_slow_health_checks_keep_routing_to_a_dead_app(lab: WebLab, ca: ssl.SSLContext) -> None:
    app2 = lab.app("app-2")
    await lab.haproxy.slow_health_checks()
    await app2.down()  # right after the restart: the carried-over state keeps it UP regardless
    stuck = await via_lb(lab, ca, "SERVERID=app-2")
    assert stuck.status == 503  # connection refused, retried once, not redispatched
    assert b"No server is available" in stuck.body
    assert 1.0 <= stuck.seconds < 2.0  # HAProxy's 1 s turnaround before its retry
    assert (await lab.haproxy.backend_states())["app-2"] in ("UP", "UP 1/2")

    await lab.haproxy.fast_health_checks()
    assert await lab.wait_until_haproxy_sees({"app-2": "DOWN"}, timeout=3.0) < 2.0
    assert (await via_lb(lab, ca, "SERVERID=app-2")).status == 200


async def test_error_fails_health_checks_but_db_down_does_not(lab: WebLab) -> None:
    lab.app("app-1").error()
    failing = await fetch(lab.app("app-1").port)
    assert (failing.status, failing.json, failing.instance) == (503, {"status": "error"}, "app-1")
    lab.app("app-3").error(500)
    assert (await fetch(lab.app("app-3").port, "/")).status == 500

    degraded_app = lab.app("app-2")
    degraded_app.db_down()
    degraded = await fetch(degraded_app.port)
    assert (degraded.status, degraded.json) == (200, {**healthy_json("app-2"), "db": {"status": "down"}})

    await lab.wait_until_haproxy_sees({"app-1": "DOWN", "app-3": "DOWN"}, timeout=3.0)
    # HAProxy only looks at the status code: the app without its database stays in rotation
    checks_before = degraded_app.health_checks
    await asyncio.sleep(1.2)  # at least two more checks, 500 ms apart
    assert degraded_app.health_checks >= checks_before + 2
    assert (await lab.haproxy.backend_states())["app-2"] == "UP"


async def test_hung_app_answers_nothing_and_stops_cleanly(lab: WebLab) -> None:
    app = lab.app("app-1")
    app.hang()
    with pytest.raises(TimeoutError):
        await fetch(app.port, timeout=0.3)
    pending = asyncio.create_task(fetch(app.port))
    await asyncio.sleep(0.2)
    assert not pending.done()
    started = time.perf_counter()
    await app.stop()
    assert time.perf_counter() - started < 1.0
    with pytest.raises(NoAnswer):
        await pending
    assert app.requests == 2
    with pytest.raises(ConnectionRefusedError):
        await fetch(app.port)


async def test_leaving_hang_releases_waiting_requests(lab: WebLab) -> None:
    app = lab.app("app-1")
    app.hang()
    pending = asyncio.create_task(fetch(app.port))
    await asyncio.sleep(0.2)
    assert not pending.done()
    app.healthy()
    answer = await pending
    assert (answer.status, answer.json) == (200, healthy_json("app-1"))


# --- TLS to the backends ------------------------------------------------------------------------


async def test_backend_tls_serves_the_public_name_certificate(tmp_path: Path) -> None:
    async with web_lab(tmp_path, apps=2, backend_tls=True) as lab:
        ca = ssl.create_default_context(cafile=str(lab.ca_file))
        app1 = lab.app("app-1")
        assert app1.url == f"https://127.0.0.1:{app1.port}"
        direct = await fetch(app1.port, tls=ca, server_hostname=PUBLIC_NAME)
        assert (direct.status, direct.json) == (200, healthy_json("app-1"))
        # the certificate names the public name only: by IP, verification must fail
        with pytest.raises(ssl.SSLCertVerificationError):
            await fetch(app1.port, tls=ca)
        # HAProxy's health checks and traffic go over TLS too
        assert all(app.health_checks >= 1 for app in lab.apps)
        via = [(await fetch(lab.haproxy.port, tls=ca)).instance for _ in range(2)]
        assert sorted(via) == ["app-1", "app-2"]
        assert [app.requests for app in lab.apps] == [2, 1]
