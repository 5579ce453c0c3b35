"""TcpCheck against real local TCP servers, and the resolve/connect helpers shared with http."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from pydantic import ValidationError

from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks import check_class
from checks.net import ProbeError, resolve
from checks.tcp import TcpCheck, TcpConfig
from lab.ports import free_port
from tests.servers import banner, chatter, rst_after_read, serve_tcp, silent

from .test_http import assert_catalogued, value

TCP_PHASES = ("resolve", "connect", "tls", "expect")


async def run(port: int, **overrides: Any) -> CheckResult:
    result = await execute(TcpCheck.from_url(f"tcp://127.0.0.1:{port}", **{"timeout": 2.0, **overrides}))
    assert_catalogued(result)
    return result


async def test_registry_resolves_tcp() -> None:
    assert check_class("tcp") is TcpCheck


async def test_connect_only() -> None:
    async with serve_tcp(silent()) as srv:
        result = await run(srv.port)
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert result.message.startswith("connected in ")
    assert result.target == f"127.0.0.1:{srv.port}"
    for phase in TCP_PHASES:
        assert value(result, "mamori_tcp_duration_seconds", phase=phase) >= 0
    assert value(result, "mamori_tcp_duration_seconds", phase="connect") > 0
    assert value(result, "mamori_tcp_duration_seconds", phase="expect") == 0
    assert value(result, "probe_ip_protocol") == 4
    assert value(result, "probe_failed_due_to_regex") == 0
    assert value(result, "probe_dns_lookup_time_seconds") >= 0


async def test_banner_expect() -> None:
    async with serve_tcp(banner(b"SSH-2.0-OpenSSH_9.6\r\n")) as srv:
        result = await run(srv.port, expect=r"^SSH-2\.0-")
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert "matched /^SSH-2\\.0-/" in result.message
    assert value(result, "mamori_tcp_duration_seconds", phase="expect") > 0


async def test_send_and_expect_echo() -> None:
    async with serve_tcp(banner(b"")) as srv:
        result = await run(srv.port, send="PING 42\r\n", expect=r"PING 42")
    assert (result.status, result.reason) == (Status.OK, Reason.OK)


async def test_send_without_expect_is_delivered() -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await received.put(await reader.read())

    async with serve_tcp(record) as srv:
        result = await run(srv.port, send="QUIT\r\n")
        got = await asyncio.wait_for(received.get(), 2)
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert got == b"QUIT\r\n"
    assert value(result, "mamori_tcp_duration_seconds", phase="expect") > 0


async def test_expect_mismatch_on_other_banner() -> None:
    async with serve_tcp(banner(b"220 mail.example ESMTP\r\n")) as srv:
        t0 = time.monotonic()
        result = await run(srv.port, expect="^SSH", timeout=0.3)
        elapsed = time.monotonic() - t0
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.EXPECT_MISMATCH)
    assert result.message == "expected /^SSH/ within 0.3s, got '220 mail.example ESMTP\\r\\n'"
    assert value(result, "probe_failed_due_to_regex") == 1
    assert elapsed < 0.7


async def test_expect_mismatch_at_eof() -> None:
    async def say_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye\n")

    async with serve_tcp(say_and_close) as srv:
        result = await run(srv.port, expect="^hello")
    assert (result.status, result.reason, result.message) == (
        Status.CRITICAL,
        Reason.EXPECT_MISMATCH,
        "expected /^hello/, got 'bye\\n'",
    )


async def test_expect_read_is_bounded() -> None:
    async with serve_tcp(chatter()) as srv:
        t0 = time.monotonic()
        result = await run(srv.port, expect="never", timeout=5.0)
        elapsed = time.monotonic() - t0
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.EXPECT_MISMATCH)
    assert elapsed < 2
    assert result.message.startswith("expected /never/, got 'blah blah")


async def test_silent_server_is_timeout() -> None:
    async with serve_tcp(silent()) as srv:
        result = await run(srv.port, expect="anything", timeout=0.3)
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.TIMEOUT)
    assert result.message == "timeout after 0.3s waiting for the expected response"
    assert 0.25 < value(result, "mamori_tcp_duration_seconds", phase="expect") < 0.7


async def test_refused() -> None:
    port = free_port()
    result = await run(port)
    assert (result.status, result.reason, result.message) == (
        Status.CRITICAL,
        Reason.REFUSED,
        f"connection refused by 127.0.0.1:{port}",
    )
    assert value(result, "probe_ip_protocol") == 0


async def test_reset() -> None:
    async with serve_tcp(rst_after_read()) as srv:
        result = await run(srv.port, send="hello\n", expect="world")
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.CONNECTION_RESET)
    assert result.message == "connection reset by peer in the conversation"


async def test_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_such_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_name)
    result = await execute(TcpCheck.from_url("tcp://db.invalid:5432", timeout=2.0))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.DNS)
    assert result.message == "cannot resolve db.invalid: Name or service not known"


# --- resolve and the IP protocol preference (shared with http) ---


def _fake_getaddrinfo(*addresses: tuple[socket.AddressFamily, str]) -> Any:
    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port)) for family, ip in addresses]

    return getaddrinfo


@pytest.mark.parametrize(
    ("preferred", "fallback", "records", "expected"),
    [
        ("ip4", True, ("v6", "v4"), "127.0.0.1"),
        ("ip6", True, ("v4", "v6"), "::1"),
        ("ip6", True, ("v4",), "127.0.0.1"),
        ("ip4", True, ("v6",), "::1"),
    ],
)
async def test_ip_preference(
    monkeypatch: pytest.MonkeyPatch, preferred: Any, fallback: bool, records: tuple[str, ...], expected: str
) -> None:
    table = {"v4": (socket.AF_INET, "127.0.0.1"), "v6": (socket.AF_INET6, "::1")}
    monkeypatch.setattr(
        asyncio.get_running_loop(), "getaddrinfo", _fake_getaddrinfo(*(table[r] for r in records))
    )
    address = await resolve("both.test", 80, preferred, fallback)
    assert address.host == expected
    assert address.ip_version == (6 if ":" in expected else 4)


async def test_no_fallback_is_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        asyncio.get_running_loop(), "getaddrinfo", _fake_getaddrinfo((socket.AF_INET, "127.0.0.1"))
    )
    with pytest.raises(ProbeError) as info:
        await resolve("v4only.test", 80, "ip6", False)
    assert info.value.failure.reason == Reason.DNS
    assert (
        info.value.failure.message
        == "cannot resolve v4only.test: no IPv6 address (ip_protocol_fallback is off)"
    )


async def test_ipv6_loopback_probe() -> None:
    """A real IPv6 connection over ::1, to show probe_ip_protocol=6 end to end."""

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi\n")
        writer.close()

    try:
        server = await asyncio.start_server(hello, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await execute(TcpCheck.from_url(f"tcp://[::1]:{port}", timeout=2.0, expect="hi"))
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert result.target == f"[::1]:{port}"
    assert value(result, "probe_ip_protocol") == 6


# --- construction, perfdata, config ---


def test_from_url() -> None:
    plain = TcpCheck.from_url("tcp://db.example:5432")
    assert (plain.config.host, plain.config.port, plain.config.tls) == ("db.example", 5432, None)
    assert (plain.name, plain.target, plain.config.interval, plain.config.timeout) == (
        "db.example:5432",
        "db.example:5432",
        60,
        10,
    )
    secure = TcpCheck.from_url("tls://db.example:5433", timeout=3)
    assert secure.config.tls is not None and secure.config.tls.verify
    assert secure.config.timeout == 3
    for bad in ("tcp://db.example", "http://db.example:80", "tcp://:80", "tcp://db.example:99999"):
        with pytest.raises(ValidationError, match="expected tcp://HOST:PORT or tls://HOST:PORT"):
            TcpCheck.from_url(bad)


async def test_perfdata() -> None:
    async with serve_tcp(silent()) as srv:
        check = TcpCheck.from_url(f"tcp://127.0.0.1:{srv.port}", timeout=2.0)
        result = await execute(check)
    perf = check.perfdata(result)
    assert [p.label for p in perf] == ["time", "time_connect"]
    assert perf[1].value == value(result, "mamori_tcp_duration_seconds", phase="connect")


def _config(**values: Any) -> TcpConfig:
    return TcpConfig.model_validate({"name": "t", "type": "tcp", "interval": 60, "timeout": 5, **values})


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"host": "h", "port": 0}, "greater than or equal to 1"),
        ({"host": "h", "port": 65536}, "less than or equal to 65535"),
        ({"host": "h", "port": 1, "expect": "(unclosed"}, "invalid regular expression '(unclosed'"),
        ({"host": "", "port": 1}, "at least 1 character"),
        (
            {"host": "h", "port": 1, "tls": {"expiry_warning_days": 1}},
            "must be greater than expiry_critical_days",
        ),
        ({"host": "h", "port": 1, "preferred_ip_protocol": "ip5"}, "preferred_ip_protocol"),
    ],
)
def test_config_errors(values: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as info:
        _config(**values)
    assert error in str(info.value)
