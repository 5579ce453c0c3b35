"""HttpCheck against the real local servers of tests/servers.py, run through the harness."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.catalog import CHECK_METRICS
from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks import check_class
from checks.http.check import HttpCheck
from checks.http.config import HttpConfig, parse_json_path
from lab.ports import free_port
from tests.servers import Request, echo, json_ok, redirect, respond, response_bytes, serve_http

PHASES = ("resolve", "connect", "tls", "processing", "transfer")
HEALTHY_BODY = b'{"status": "ok", "db": {"status": "up"}}'


def check(url: str, **overrides: Any) -> HttpCheck:
    return HttpCheck.from_url(url, **{"timeout": 2.0, **overrides})


def value(result: CheckResult, name: str, **labels: str) -> float:
    found = [s.value for s in result.samples if s.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def assert_catalogued(result: CheckResult) -> None:
    for sample in result.samples:
        spec = CHECK_METRICS[sample.name]
        assert tuple(k for k, _ in sample.labels) == spec.labels, sample


async def run(url: str, **overrides: Any) -> CheckResult:
    result = await execute(check(url, **overrides))
    assert_catalogued(result)
    return result


async def test_registry_resolves_http() -> None:
    assert check_class("http") is HttpCheck


async def test_healthy_json_ok_with_every_sample() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/health"))
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert result.message.startswith(f"200 OK, {len(HEALTHY_BODY)} bytes in ")
    assert result.target == f"http://127.0.0.1:{srv.port}/health"
    for phase in PHASES:
        assert value(result, "probe_http_duration_seconds", phase=phase) >= 0
    assert value(result, "probe_http_duration_seconds", phase="tls") == 0
    assert value(result, "probe_http_duration_seconds", phase="connect") > 0
    assert value(result, "probe_http_status_code") == 200
    assert value(result, "probe_http_version") == 1.1
    assert value(result, "probe_http_redirects") == 0
    assert value(result, "probe_http_ssl") == 0
    assert value(result, "probe_http_content_length") == len(HEALTHY_BODY)
    assert value(result, "probe_failed_due_to_regex") == 0
    assert value(result, "probe_ip_protocol") == 4
    assert value(result, "probe_dns_lookup_time_seconds") >= 0
    assert not [s for s in result.samples if s.name.startswith("probe_ssl") or s.name.startswith("probe_tls")]


async def test_request_headers_host_and_user_headers() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/echo?x=1"), headers={"X-Probe": "yes", "User-Agent": "custom"})
        sent = srv.requests[-1]
    assert result.status == Status.OK
    assert sent.target == "/echo?x=1"
    assert sent.headers["host"] == f"127.0.0.1:{srv.port}"
    assert sent.headers["x-probe"] == "yes"
    assert sent.headers["user-agent"] == "custom"
    assert sent.headers["connection"] == "close"


async def test_post_body_is_sent() -> None:
    async with serve_http() as srv:
        result = await run(
            srv.url("/echo"), method="post", body="hello", json=[{"path": "body", "equals": "hello"}]
        )
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert srv.requests[-1].method == "POST"
    assert srv.requests[-1].headers["content-length"] == "5"


async def test_head_request_has_no_body() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/health"), method="HEAD")
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert value(result, "probe_http_content_length") == 0


# --- status, headers, body, json ---


async def test_unexpected_status() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/status/503"))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.STATUS_MISMATCH)
    assert result.message == "status 503 Service Unavailable, expected 2xx"
    assert value(result, "probe_http_status_code") == 503


@pytest.mark.parametrize("expected", [["5xx"], ["500-503"], [503], ["200", "503"]])
async def test_expected_status_forms(expected: list[Any]) -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/status/503"), expected_status=expected)
    assert (result.status, result.reason) == (Status.OK, Reason.OK)


async def test_header_conditions() -> None:
    async with serve_http() as srv:
        ok = await run(srv.url("/headers"), headers_match=[{"name": "x-mamori", "matches": "^pro"}])
        bad = await run(srv.url("/headers"), headers_match=[{"name": "X-Mamori", "matches": "^nope$"}])
        absent = await run(srv.url("/headers"), headers_match=[{"name": "Cache-Control", "absent": True}])
        missing = await run(srv.url("/headers"), headers_match=[{"name": "X-Other", "absent": False}])
    assert (ok.status, ok.reason) == (Status.OK, Reason.OK)
    assert (bad.status, bad.reason) == (Status.CRITICAL, Reason.HEADER_MISMATCH)
    assert bad.message == "header X-Mamori: 'probe' does not match /^nope$/"
    assert (absent.reason, absent.message) == (
        Reason.HEADER_MISMATCH,
        "header Cache-Control present, expected absent",
    )
    assert (missing.reason, missing.message) == (Reason.HEADER_MISMATCH, "header X-Other missing")


async def test_body_regexes() -> None:
    async with serve_http() as srv:
        ok = await run(srv.url("/health"), body_matches=['"status": "ok"'], body_not_matches=["error"])
        missing = await run(srv.url("/health"), body_matches=["maintenance"])
        present = await run(srv.url("/health"), body_not_matches=['"up"'])
    assert (ok.status, ok.reason) == (Status.OK, Reason.OK)
    assert value(ok, "probe_failed_due_to_regex") == 0
    assert (missing.status, missing.reason) == (Status.CRITICAL, Reason.BODY_MISMATCH)
    assert missing.message == "body does not match /maintenance/"
    assert value(missing, "probe_failed_due_to_regex") == 1
    assert (present.reason, present.message) == (Reason.BODY_MISMATCH, 'body matches /"up"/')


async def test_json_conditions_pass() -> None:
    conditions = [
        {"path": "status", "equals": "ok"},
        {"path": "db.status", "matches": "^u"},
        {"path": "db.status", "not_equals": "down"},
        {"path": "db", "exists": True},
        {"path": "db.replicas", "exists": False},
    ]
    async with serve_http() as srv:
        result = await run(srv.url("/health"), json=conditions)
    assert (result.status, result.reason) == (Status.OK, Reason.OK)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"path": "db.status", "equals": "down"}, 'json db.status is "up", expected "down"'),
        ({"path": "db.lag", "lt": 5}, "json db.lag not found"),
        ({"path": "status", "gt": 1}, 'json status is "ok", not a number'),
        ({"path": "db.status", "exists": False}, "json db.status is present, expected absent"),
    ],
)
async def test_json_condition_fails(condition: dict[str, Any], message: str) -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/health"), json=[condition])
    assert (result.status, result.reason, result.message) == (Status.CRITICAL, Reason.JSON_MISMATCH, message)


async def test_json_numbers_and_indexes() -> None:
    payload = {"items": [{"lag": 3}, {"lag": 12}], "ready": True}
    async with serve_http({"/": json_ok(payload)}) as srv:
        ok = await run(
            srv.url("/"), json=[{"path": "items[0].lag", "lt": 5}, {"path": "ready", "equals": True}]
        )
        bad = await run(srv.url("/"), json=[{"path": "items[-1].lag", "lt": 5}])
        not_one = await run(srv.url("/"), json=[{"path": "ready", "equals": 1}])
    assert (ok.status, ok.reason) == (Status.OK, Reason.OK), ok.message
    assert (bad.reason, bad.message) == (Reason.JSON_MISMATCH, "json items[-1].lag is 12, expected < 5")
    assert not_one.reason == Reason.JSON_MISMATCH  # JSON true is not 1


async def test_non_json_body_with_json_conditions() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/headers"), json=[{"path": "status", "exists": True}])
    assert (result.status, result.reason, result.message) == (
        Status.CRITICAL,
        Reason.JSON_MISMATCH,
        "body is not JSON",
    )


async def test_failure_precedence_status_before_body() -> None:
    async with serve_http() as srv:
        result = await run(
            srv.url("/status/500"), body_matches=["never"], json=[{"path": "x", "exists": True}]
        )
    assert result.reason == Reason.STATUS_MISMATCH
    assert value(result, "probe_failed_due_to_regex") == 0


# --- transport failures ---


async def test_connection_refused() -> None:
    port = free_port()
    result = await run(f"http://127.0.0.1:{port}/")
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.REFUSED)
    assert result.message == f"connection refused by 127.0.0.1:{port}"
    assert value(result, "probe_http_status_code") == 0
    assert value(result, "probe_ip_protocol") == 0


async def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # No real lookup: the test must not send a DNS query off this machine.
    async def no_such_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_name)
    result = await run("http://no-such-host.invalid/health")
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.DNS)
    assert result.message == "cannot resolve no-such-host.invalid: Name or service not known"


@pytest.mark.parametrize("code", [errno.EHOSTUNREACH, errno.ENETUNREACH])
async def test_unreachable(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    # An unreachable network cannot be produced on loopback without sending packets elsewhere.
    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, "No route to host")

    monkeypatch.setattr("checks.net.asyncio.open_connection", unreachable)
    result = await run("http://127.0.0.1:9/")
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.UNREACHABLE)
    assert result.message == "127.0.0.1:9 unreachable (No route to host)"


async def test_reset_after_request() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/reset"))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.CONNECTION_RESET)


async def test_http10_body_until_close() -> None:
    async def old_server(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from 1996")

    async with serve_http({"/": old_server}) as srv:
        result = await run(srv.url("/"), body_matches=["1996$"])
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert value(result, "probe_http_version") == 1.0
    assert value(result, "probe_http_content_length") == len(b"hello from 1996")


async def test_redirect_location_is_reencoded() -> None:
    async def to_unicode(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /caf\xc3\xa9 menu\r\nContent-Length: 0\r\n\r\n")

    async with serve_http({"/": to_unicode, "/caf%C3%A9%20menu": json_ok()}) as srv:
        result = await run(srv.url("/"))
    # the bytes of the Location header are percent-encoded as they are, as browsers do
    assert srv.requests[1].target == "/caf%C3%A9%20menu"
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message


async def test_deeply_nested_json_is_a_mismatch_not_a_bug() -> None:
    async with serve_http({"/": respond(200, b"[" * 200_000)}) as srv:
        result = await run(srv.url("/"), json=[{"path": "[0]", "exists": True}])
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.JSON_MISMATCH)


async def test_header_values_are_stripped() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/echo"), headers={"X-Pad": "  padded  "})
    assert result.status == Status.OK
    assert srv.requests[0].headers["x-pad"] == "padded"


async def test_close_mid_body_is_reset() -> None:
    async def truncated(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    async with serve_http({"/": truncated}) as srv:
        result = await run(srv.url("/"))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.CONNECTION_RESET)
    assert result.message == "the server closed the connection after 9 of 100 bytes of the body"
    assert value(result, "probe_http_status_code") == 200


async def test_timeout_names_the_phase() -> None:
    async with serve_http() as srv:
        t0 = time.monotonic()
        result = await run(srv.url("/slow?ms=3000"), timeout=0.3)
        elapsed = time.monotonic() - t0
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.TIMEOUT)
    assert result.message == "timeout after 0.3s waiting for the response"
    assert elapsed < 0.7  # the check's own deadline, not the harness's grace period
    assert 0.25 < value(result, "probe_http_duration_seconds", phase="processing") < 0.7


async def test_garbage_is_protocol_error() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/garbage"))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.PROTOCOL_ERROR)
    assert (
        result.message
        == 'not an HTTP response (it starts with "\\x00\\x01garbage, not HTTP at all\\x0d\\x0a\\x0d\\x0a")'
    )


async def test_malformed_status_line_is_protocol_error() -> None:
    async def bad(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 OK-ish\r\nX: y\r\n\r\n")

    async with serve_http({"/": bad}) as srv:
        result = await run(srv.url("/"))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.PROTOCOL_ERROR)
    assert result.message == 'invalid status line "HTTP/1.1 OK-ish"'


# --- body size ---


async def test_endless_body_is_bounded() -> None:
    async with serve_http() as srv:
        t0 = time.monotonic()
        result = await run(srv.url("/endless"), max_body_size="256KiB", timeout=5)
        elapsed = time.monotonic() - t0
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.BODY_TOO_LARGE)
    assert result.message == "body larger than max_body_size (262144 bytes)"
    assert elapsed < 2
    assert 256 * 1024 < value(result, "probe_http_content_length") <= 256 * 1024 + 64 * 1024 + 16


async def test_endless_body_with_short_timeout_is_timeout_or_too_large() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/endless"), max_body_size="1GiB", timeout=0.3)
    assert result.reason in (Reason.TIMEOUT, Reason.BODY_TOO_LARGE)
    assert result.status == Status.CRITICAL
    assert result.duration < 0.8


async def test_big_body_limit_is_exact() -> None:
    async with serve_http() as srv:
        at_limit = await run(srv.url("/big?bytes=1000"), max_body_size=1000)
        over = await run(srv.url("/big?bytes=1001"), max_body_size=1000)
    assert (at_limit.status, at_limit.reason) == (Status.OK, Reason.OK)
    assert value(at_limit, "probe_http_content_length") == 1000
    assert (over.status, over.reason) == (Status.CRITICAL, Reason.BODY_TOO_LARGE)


# --- redirects ---


async def test_redirect_followed() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/redirect"))
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert result.message.endswith("after 1 redirect")
    assert value(result, "probe_http_redirects") == 1
    assert value(result, "probe_http_status_code") == 200
    assert [r.path for r in srv.requests] == ["/redirect", "/health"]


async def test_redirect_not_followed() -> None:
    async with serve_http() as srv:
        plain = await run(srv.url("/redirect"), follow_redirects=False)
        accepted = await run(srv.url("/redirect"), follow_redirects=False, expected_status=["3xx"])
    assert (plain.reason, plain.message) == (Reason.STATUS_MISMATCH, "status 302 Found, expected 2xx")
    assert (accepted.status, accepted.reason) == (Status.OK, Reason.OK)


async def test_redirect_limit_and_loop() -> None:
    async with serve_http() as srv:
        within = await run(srv.url("/hops?n=3"), max_redirects=3)
        beyond = await run(srv.url("/hops?n=3"), max_redirects=2)
        loop = await run(srv.url("/loop/a"))
    assert (within.status, within.reason) == (Status.OK, Reason.OK)
    assert value(within, "probe_http_redirects") == 3
    assert (beyond.status, beyond.reason, beyond.message) == (
        Status.CRITICAL,
        Reason.REDIRECT_LIMIT,
        "more than 2 redirects",
    )
    assert (loop.reason, loop.message) == (
        Reason.REDIRECT_LIMIT,
        "redirect loop: /loop/a -> /loop/b -> /loop/a",
    )


async def test_303_turns_post_into_get() -> None:
    async with serve_http({"/submit": redirect("/echo", 303), "/echo": echo()}) as srv:
        result = await run(srv.url("/submit"), method="POST", body="x")
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert [(r.method, r.path, r.body) for r in srv.requests] == [
        ("POST", "/submit", b"x"),
        ("GET", "/echo", b""),
    ]


async def test_credentials_not_sent_to_another_host() -> None:
    async with serve_http() as other:
        target = other.url("/echo", host="localhost")  # another host name for the same loopback
        async with serve_http({"/": redirect(target)}) as front:
            result = await run(
                front.url("/"), bearer_token="tok-123", json=[{"path": "method", "equals": "GET"}]
            )
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert front.requests[0].headers["authorization"] == "Bearer tok-123"
    assert "authorization" not in other.requests[0].headers
    assert other.requests[0].headers["host"] == f"localhost:{other.port}"


# --- latency ---


async def test_latency_thresholds() -> None:
    async with serve_http() as srv:
        warning = await run(srv.url("/slow?ms=150"), latency_warning=0.05, latency_critical=5)
        critical = await run(srv.url("/slow?ms=150"), latency_warning=0.05, latency_critical=0.1)
        fine = await run(srv.url("/health"), latency_warning=1, latency_critical=2)
    assert (warning.status, warning.reason) == (Status.WARNING, Reason.LATENCY)
    assert warning.message.startswith("slow: 0.1") and warning.message.endswith("> 0.05s (warning)")
    assert (critical.status, critical.reason) == (Status.CRITICAL, Reason.LATENCY)
    assert critical.message.endswith("> 0.1s (critical)")
    assert (fine.status, fine.reason) == (Status.OK, Reason.OK)


async def test_latency_comes_after_content_checks() -> None:
    async with serve_http() as srv:
        result = await run(srv.url("/slow?ms=150"), latency_critical=0.05, body_matches=["nope"])
    assert result.reason == Reason.BODY_MISMATCH


# --- secrets ---


async def test_secrets_never_in_target_or_message(tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("pw-from-file\n")
    async with serve_http() as srv:
        url = f"http://127.0.0.1:{srv.port}/status/503?api_key=query-secret"
        basic = check(url, basic_auth={"username": "alice", "password_file": str(password_file)})
        result = await execute(basic)
        with_userinfo = check(f"http://bob:url-secret@127.0.0.1:{srv.port}/status/401?k=query-secret")
        userinfo = await execute(with_userinfo)
        sent = [r.headers["authorization"] for r in srv.requests]
    assert result.reason == Reason.STATUS_MISMATCH
    assert sent[0] == "Basic " + base64.b64encode(b"alice:pw-from-file").decode()
    assert sent[1] == "Basic " + base64.b64encode(b"bob:url-secret").decode()
    assert basic.target == f"http://127.0.0.1:{srv.port}/status/503"
    assert userinfo.target == f"http://127.0.0.1:{srv.port}/status/401"
    texts = (result.message, result.target, userinfo.message, userinfo.target)
    for text in (*texts, repr(basic.config), repr(with_userinfo.config)):
        for secret in ("pw-from-file", "url-secret", "query-secret", "bob"):
            assert secret not in text
    assert "alice" not in json.dumps(result.to_json())


async def test_bearer_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file\n")
    async with serve_http() as srv:
        result = await run(srv.url("/echo"), bearer_token_file=str(token_file))
    assert result.status == Status.OK
    assert srv.requests[0].headers["authorization"] == "Bearer tok-from-file"
    assert "tok-from-file" not in result.message


# --- construction, perfdata, config validation ---


def test_from_url_defaults() -> None:
    c = HttpCheck.from_url("https://user:pw@Example.com:8443/a/b?q=1#frag")
    assert c.config.interval == 60 and c.config.timeout == 10
    assert c.name == "example.com:8443/a/b"
    assert c.target == "https://example.com:8443/a/b"
    assert HttpCheck.from_url("http://example.com").target == "http://example.com/"


async def test_perfdata() -> None:
    async with serve_http() as srv:
        c = check(srv.url("/health"), latency_warning=1, latency_critical=2)
        result = await execute(c)
    perf = {p.label: p for p in c.perfdata(result)}
    assert list(perf) == ["time", *(f"time_{p}" for p in PHASES), "size"]
    assert (perf["time"].warn, perf["time"].crit, perf["time"].uom) == (1, 2, "s")
    assert perf["size"].value == len(HEALTHY_BODY) and perf["size"].uom == "B"
    assert perf["time"].render().startswith("'time'=")


def _config(**values: Any) -> HttpConfig:
    return HttpConfig.model_validate({"name": "t", "type": "http", "interval": 60, "timeout": 5, **values})


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"url": "ftp://example.com/"}, "unsupported URL scheme 'ftp'"),
        ({"url": "http:///path"}, "URL has no host"),
        ({"url": "http://example.com:99999/"}, "URL has an invalid port"),
        ({"url": "http://x/", "body_matches": ["("]}, "invalid regular expression '('"),
        ({"url": "http://x/", "expected_status": ["6xx"]}, "invalid expected_status '6xx'"),
        ({"url": "http://x/", "expected_status": ["2x"]}, "invalid expected_status '2x'"),
        ({"url": "http://x/", "expected_status": ["299-200"]}, "invalid expected_status '299-200'"),
        (
            {"url": "http://x/", "latency_warning": "2s", "latency_critical": "1s"},
            "latency_warning (2s) must be less",
        ),
        ({"url": "http://x/", "json": [{"path": "a", "equals": 1, "lt": 2}]}, "exactly one of"),
        ({"url": "http://x/", "json": [{"path": "a..b", "exists": True}]}, "invalid json path 'a..b'"),
        ({"url": "http://x/", "json": [{"path": "a", "matches": "["}]}, "invalid regular expression"),
        ({"url": "http://x/", "headers_match": [{"name": "a"}]}, "exactly one of matches or absent"),
        ({"url": "http://x/", "headers": {"Content-Length": "3"}}, "set by the check"),
        ({"url": "http://x/", "headers": {"X": "a\r\nB: c"}}, "the value of X contains a line break"),
        ({"url": "http://x/", "headers": {"X": "caf\u00e9"}}, "the value of X contains a non-ASCII"),
        ({"url": "http://x/", "headers": {"X": "a\x00b"}}, "the value of X contains a NUL character"),
        ({"url": "http://x/", "headers": {"X Y": "a"}}, "'X Y' is not a valid header name"),
        ({"url": "http://x/", "bearer_token": ""}, "the token is empty"),
        ({"url": "http://x/", "bearer_token": "abc\nX-Injected: 1"}, "the token contains a line break"),
        ({"url": "http://x/", "bearer_token": "t\u00f6ken"}, "the token contains a non-ASCII character"),
        ({"url": "http://x/", "bearer_token": "two words"}, "the token contains a space"),
        (
            {"url": "http://x/", "basic_auth": {"username": "a:b", "password": "p"}},
            "must not contain ':'",
        ),
        (
            {"url": "http://x/", "basic_auth": {"username": "a", "password": "p\n"}},
            "contains a control character or a line break",
        ),
        (
            {"url": "http://x/", "tls": {"ca_file": "/nonexistent/ca.pem"}},
            "file not found: /nonexistent/ca.pem",
        ),
        (
            {"url": "http://x/", "bearer_token": "a", "basic_auth": {"username": "u", "password": "p"}},
            "not both",
        ),
        ({"url": "http://x/", "unknown_key": 1}, "Extra inputs are not permitted"),
        ({"url": "http://x/a\x01"}, "URL must be printable ASCII"),
        ({"url": "http://x/café"}, "URL must be printable ASCII"),
        ({"url": "https://x/", "tls": {"server_name": "a b"}}, "invalid server_name 'a b'"),
        ({"url": "http://x/", "max_body_size": "lots"}, "invalid size 'lots'"),
    ],
)
def test_config_errors(values: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as info:
        _config(**values)
    assert error in str(info.value)


def test_config_defaults() -> None:
    cfg = _config(url="http://x/")
    assert cfg.expected_status == ((200, 299),)
    assert cfg.method == "GET" and cfg.follow_redirects and cfg.max_redirects == 10
    assert cfg.max_body_size == 1024 * 1024
    assert cfg.preferred_ip_protocol == "ip4" and cfg.ip_protocol_fallback
    assert cfg.tls.verify and cfg.tls.expiry_warning_days == 14 and cfg.tls.expiry_critical_days == 7


def test_json_path_parsing() -> None:
    assert parse_json_path("db.status") == ("db", "status")
    assert parse_json_path("items[0].name") == ("items", 0, "name")
    assert parse_json_path("[1][-1]") == (1, -1)
    for bad in ("", ".a", "a.", "a[x]", "a[0]b"):
        with pytest.raises(ValueError):
            parse_json_path(bad)


# --- a target echoing the credentials it was sent (issue 12, item 10) ---------------------------
TOKEN = "mamori-test-token-7f3a9c2e1b5d4f6a8c0e2b4d9e8d7c6b5a4f3e2d1c0b"  # longer than a message shows


def echo_credentials() -> Any:
    """A hostile target: quotes the Authorization header it got in its reason phrase, in a header
    and in a JSON body (with the whole request target)."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        auth = request.headers.get("authorization", "")
        body = json.dumps({"auth": auth, "target": request.target, "headers": request.headers}).encode()
        headers = {"Content-Type": "application/json", "X-Echo": auth}
        writer.write(response_bytes(401, body, headers, reason=f"Denied {auth}"))

    return handler


def assert_no_part_of(secret: str, text: str) -> None:
    parts = [secret[i : i + 8] for i in range(len(secret) - 7)]
    assert not [p for p in parts if p in text], text


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        ({}, "status 401 Denied Bearer ***, expected 2xx"),
        (  # cut at 57 characters by the message: the prefix left is masked too
            {"expected_status": [401], "headers_match": [{"name": "X-Echo", "matches": "^nothing$"}]},
            "header X-Echo: 'Bearer ***...' does not match /^nothing$/",
        ),
        (
            {"expected_status": [401], "json": [{"path": "auth", "equals": "x"}]},
            'json auth is "Bearer ***..., expected "x"',
        ),
        (  # every attempt's message is masked
            {"retries": 1, "retry_backoff": 0.01},
            "status 401 Denied Bearer ***, expected 2xx (attempt 2; before: status 401 Denied Bearer ***,",
        ),
    ],
)
async def test_a_target_echoing_the_bearer_token_never_gets_it_into_the_message(
    overrides: dict[str, Any], shown: str
) -> None:
    async with serve_http({"/": echo_credentials()}) as srv:
        result = await run(srv.url("/"), bearer_token=TOKEN, **overrides)
    assert srv.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert result.message.startswith(shown), result.message
    assert_no_part_of(TOKEN, json.dumps(result.to_json()))


async def test_a_target_echoing_basic_auth_or_url_credentials_never_gets_them_into_the_message() -> None:
    password = "pw-Xq81Lz0Rk3Vt"
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    async with serve_http({"/": echo_credentials()}) as srv:
        by_config = await run(
            srv.url("/"),
            basic_auth={"username": "alice", "password": password},
            expected_status=[401],
            json=[{"path": "auth", "equals": "x"}],
        )
        by_url = await run(
            f"http://alice:{password.replace('-', '%2D')}@127.0.0.1:{srv.port}/?key=QyZ81Lk0aPw9",
            expected_status=[401],
            json=[{"path": "target", "equals": "x"}],
        )
        by_header = await run(
            srv.url("/"),
            headers={"X-Api-Key": TOKEN},
            expected_status=[401],
            json=[{"path": "headers.x-api-key", "equals": "x"}],
        )
    assert [r.headers["authorization"] for r in srv.requests[:2]] == [f"Basic {basic}"] * 2
    assert by_config.message == 'json auth is "Basic ***", expected "x"'
    assert by_url.message == 'json target is "/?key=***", expected "x"'
    assert by_header.message == 'json headers.x-api-key is "***..., expected "x"'
    for secret in (password, basic, TOKEN, "QyZ81Lk0aPw9"):
        for result in (by_config, by_url, by_header):
            assert_no_part_of(secret, json.dumps(result.to_json()))


# --- what the server did, in HTTP's words (issue 12, items 13 and 16) ---------------------------
# Never h11's wording or a Python type: the messages below are the whole contract.
INTERNALS = re.compile(r"h11|Error\(|Exception|Traceback|[A-Z][a-z]+Error\b|\bb'|NEED_DATA|_SWITCH")

HOSTILE = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", Reason.CONNECTION_RESET,
     "the server closed the connection after 9 of 100 bytes of the body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", Reason.CONNECTION_RESET,
     "the server closed the connection after 5 bytes of a chunked body, before its last chunk"),
    (b"HTTP/1.1 200 OK\r\nContent-Ty", Reason.CONNECTION_RESET,
     "the server closed the connection in the middle of the response head"),
    (b"HTTP/1.1 100 Continue\r\n\r\n", Reason.CONNECTION_RESET,
     "the server closed the connection after a 1xx response, before the final response"),
    (b"", Reason.CONNECTION_RESET, "the server closed the connection without a response"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", Reason.PROTOCOL_ERROR,
     'not an HTTP response (it starts with "SSH-2.0-OpenSSH_9.6\\x0d\\x0a")'),
    (b"HTTP/1.1 OK-ish\r\n\r\n", Reason.PROTOCOL_ERROR, 'invalid status line "HTTP/1.1 OK-ish"'),
    (b"HTTP/1.1 099 Odd\r\n\r\n", Reason.PROTOCOL_ERROR, "invalid status code 099"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Reason.PROTOCOL_ERROR,
     "101 Switching Protocols, but the request asked for no upgrade"),
    (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", Reason.PROTOCOL_ERROR, 'invalid header line "NoColon"'),
    (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", Reason.PROTOCOL_ERROR,
     "invalid header line (the first header is a continuation line)"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", Reason.PROTOCOL_ERROR,
     "conflicting Content-Length headers"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", Reason.PROTOCOL_ERROR,
     "invalid Content-Length header"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", Reason.PROTOCOL_ERROR,
     "unsupported Transfer-Encoding (a response body is framed only by chunked)"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
     Reason.PROTOCOL_ERROR, "more than one Transfer-Encoding header"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Reason.PROTOCOL_ERROR,
     'invalid chunk size line "zz"'),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n", Reason.PROTOCOL_ERROR,
     "invalid chunked body (a chunk's data is not followed by CRLF)"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", Reason.PROTOCOL_ERROR,
     "response head longer than 16 KiB"),
    (b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n", Reason.PROTOCOL_ERROR,
     "redirect to an invalid URL (http:...)"),
    (b"HTTP/1.1 503 \x1b[31mDown\x1b[0m\r\nContent-Length: 0\r\n\r\n", Reason.STATUS_MISMATCH,
     "status 503 \\x1b[31mDown\\x1b[0m, expected 2xx"),
    (b"HTTP/1.1 503 Caf\xc3\xa9 \xe2\x80\xa8ferm\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
     Reason.STATUS_MISMATCH, "status 503 Café \\u2028fermé, expected 2xx"),
    (b"HTTP/1.1 500 " + b"x" * 20_000 + b"\r\nContent-Length: 0\r\n\r\n", Reason.STATUS_MISMATCH,
     f"status 500 {'x' * 77}..., expected 2xx"),
]  # fmt: skip


def sends(data: bytes) -> Any:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(data)

    return handler


@pytest.mark.parametrize(("data", "reason", "message"), HOSTILE, ids=[m for _, _, m in HOSTILE])
async def test_a_broken_response_is_said_in_http_words(data: bytes, reason: Reason, message: str) -> None:
    async with serve_http({"/": sends(data)}) as srv:
        result = await run(srv.url("/"))
    assert (result.status, result.reason, result.message) == (Status.CRITICAL, reason, message)


@pytest.mark.parametrize(
    "charset", ["undefined", "idna", "punycode", "utf-7", "rot13", "base64", "zlib", "hex", "unicode_escape"]
)
async def test_a_charset_that_is_not_a_text_encoding_reads_the_body_as_utf8(charset: str) -> None:
    body = "café +AGE- \\x41 ok".encode()
    headers = {"Content-Type": f"text/plain; charset={charset}"}
    async with serve_http({"/": respond(200, body, headers)}) as srv:
        result = await run(srv.url("/"), body_matches=["café", "ok$"])
    if charset == "utf-7":  # a real charset: the body is read in it, and "café" is not there
        assert (result.status, result.reason) == (Status.CRITICAL, Reason.BODY_MISMATCH)
    else:
        assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message


async def test_no_message_of_a_hostile_target_shows_internals() -> None:
    """Every hostile case of these tests, and the default hostile routes, by http and tcp."""
    from checks.tcp import TcpCheck
    from tests.servers import chatter, rst_after_read, serve_tcp, silent

    messages: list[str] = []
    for data, _, _ in HOSTILE:
        async with serve_http({"/": sends(data)}) as srv:
            messages.append((await run(srv.url("/"), timeout=0.5)).message)
    async with serve_http() as srv:
        for path in ("/reset", "/garbage", "/endless", "/loop/a", "/status/503", "/slow?ms=2000"):
            messages.append((await run(srv.url(path), timeout=0.3, max_body_size=1000)).message)
    messages.append((await run(f"http://127.0.0.1:{free_port()}/")).message)
    for handler in (silent(), chatter(), rst_after_read()):
        async with serve_tcp(handler) as srv:
            tcp = TcpCheck.from_url(f"tcp://127.0.0.1:{srv.port}", timeout=0.3, send="hi\n", expect="^OK")
            messages.append((await execute(tcp)).message)
    assert len(messages) == len(HOSTILE) + 10
    for message in messages:
        assert message.isprintable() and not INTERNALS.search(message), message
