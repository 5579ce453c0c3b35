"""HttpCheck against the real local servers of tests/servers.py, run through the harness."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
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
from checks.http import HttpCheck, HttpConfig, parse_json_path
from tests.servers import Request, echo, free_port, json_ok, redirect, respond, serve_http

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
    assert result.message.startswith("not an HTTP response")


async def test_malformed_status_line_is_protocol_error() -> None:
    async def bad(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 OK-ish\r\nX: y\r\n\r\n")

    async with serve_http({"/": bad}) as srv:
        result = await run(srv.url("/"))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.PROTOCOL_ERROR)
    assert result.message.startswith("invalid HTTP response")


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
    from checks.base import Outcome

    outcome = Outcome(result.status, result.reason, result.message, result.samples)
    perf = {p.label: p for p in c.perfdata(result.duration, outcome)}
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
        ({"url": "http://x/", "headers": {"X": "a\r\nB: c"}}, "value must be printable ASCII on one line"),
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
