"""TLS through HttpCheck and TcpCheck against real local TLS servers with generated certificates."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.http.check import HttpCheck
from checks.net import Failure
from checks.tcp import TcpCheck
from checks.tls import CertInfo, TlsConfig, TlsReport
from lab.certs import Certs, Leaf, make_certs, server_context
from tests.servers import banner, redirect, serve_handshake_only, serve_http, serve_tcp

from .test_http import assert_catalogued, value

DAY = 86400.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def probe(leaf: Leaf, certs: Certs, path: str = "/health", **tls: Any) -> CheckResult:
    """One HTTPS probe of a server presenting `leaf`; TLS options default to trusting the test CA."""
    async with serve_http(ssl_context=server_context(leaf)) as srv:
        options = {"ca_file": str(certs.ca_file), **tls}
        result = await execute(HttpCheck.from_url(srv.url(path), timeout=2.0, tls=options))
    assert_catalogued(result)
    return result


async def test_valid_certificate(certs: Certs) -> None:
    result = await probe(certs.valid, certs)
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert value(result, "probe_http_ssl") == 1
    assert value(result, "probe_http_duration_seconds", phase="tls") > 0
    assert value(result, "probe_tls_version_info", version="TLS 1.3") == 1
    not_after = certs.valid.not_after.timestamp()
    assert value(result, "probe_ssl_earliest_cert_expiry") == pytest.approx(not_after, abs=DAY)
    assert value(result, "probe_ssl_earliest_cert_expiry") == not_after  # exact: whole seconds
    # the verified chain is leaf + CA; the leaf expires first
    assert value(result, "probe_ssl_last_chain_expiry_timestamp_seconds") == not_after


@pytest.mark.parametrize(
    ("leaf", "reason", "message"),
    [
        ("expired", Reason.CERT_EXPIRED, "certificate has expired (notAfter {after}, CN=127.0.0.1)"),
        (
            "not_yet_valid",
            Reason.CERT_NOT_YET_VALID,
            "certificate is not yet valid (notBefore {before}, CN=127.0.0.1)",
        ),
        (
            "wrong_host",
            Reason.TLS_HOSTNAME,
            "certificate is not valid for '127.0.0.1' (certificate is for CN=other.example.test)",
        ),
        ("self_signed", Reason.TLS_VERIFY, "self-signed certificate (CN=127.0.0.1)"),
    ],
)
async def test_verification_failures(certs: Certs, leaf: str, reason: Reason, message: str) -> None:
    cert: Leaf = getattr(certs, leaf)
    result = await probe(cert, certs)
    expected = message.format(after=f"{cert.not_after:%Y-%m-%d}", before=f"{cert.not_before:%Y-%m-%d}")
    assert (result.status, result.reason, result.message) == (Status.CRITICAL, reason, expected)
    assert not [s for s in result.samples if s.name.startswith("probe_ssl")]


async def test_unknown_issuer(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    # No ca_file: the system store does not know the test CA. Point it at an empty store so the
    # result does not depend on what the machine trusts.
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.self_signed.cert_file))
    monkeypatch.setenv("SSL_CERT_DIR", str(certs.ca_file.parent / "nonexistent"))
    async with serve_http(ssl_context=server_context(certs.valid)) as srv:
        result = await execute(HttpCheck.from_url(srv.url("/"), timeout=2.0))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.TLS_VERIFY)
    assert result.message == "certificate issuer is not trusted (CN=127.0.0.1)"


async def test_sni_and_host_when_probing_by_ip(certs: Certs) -> None:
    seen_sni: list[str | None] = []
    ctx = server_context(certs.named)
    ctx.sni_callback = lambda sslobj, name, context: seen_sni.append(name)
    async with serve_http(ssl_context=ctx) as srv:
        options = {"ca_file": str(certs.ca_file), "server_name": "app.example.test"}
        named = await execute(HttpCheck.from_url(srv.url("/echo"), timeout=2.0, tls=options))
        unnamed = await execute(
            HttpCheck.from_url(srv.url("/echo"), timeout=2.0, tls={"ca_file": str(certs.ca_file)})
        )
        host_header = srv.requests[0].headers["host"]
    assert (named.status, named.reason) == (Status.OK, Reason.OK), named.message
    assert named.target == f"https://127.0.0.1:{srv.port}/echo"
    assert seen_sni[0] == "app.example.test"
    assert host_header == f"app.example.test:{srv.port}"
    assert (unnamed.status, unnamed.reason) == (Status.CRITICAL, Reason.TLS_HOSTNAME)


async def test_verify_off_expired_is_seen_by_inspection(certs: Certs) -> None:
    result = await probe(certs.expired, certs, verify=False)
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.CERT_EXPIRED)
    assert (
        result.message
        == f"certificate CN=127.0.0.1 expired 2.0 days ago (notAfter {certs.expired.not_after:%Y-%m-%d})"
    )
    assert value(result, "probe_ssl_earliest_cert_expiry") == certs.expired.not_after.timestamp()
    assert not [s for s in result.samples if s.name == "probe_ssl_last_chain_expiry_timestamp_seconds"]
    assert value(result, "probe_http_status_code") == 200  # the request itself went through


async def test_verify_off_accepts_self_signed(certs: Certs) -> None:
    result = await probe(certs.self_signed, certs, verify=False)
    assert (result.status, result.reason) == (Status.OK, Reason.OK)


async def test_expiring_in_3_days_is_critical(certs: Certs) -> None:
    result = await probe(certs.expiring_3d, certs)
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.CERT_EXPIRING)
    assert (
        result.message
        == f"certificate CN=127.0.0.1 expires in 3.0 days (notAfter {certs.expiring_3d.not_after:%Y-%m-%d})"
    )
    expiry = value(result, "probe_ssl_earliest_cert_expiry")
    assert expiry == pytest.approx(time.time() + 3 * DAY, abs=DAY)


async def test_expiring_in_10_days_is_warning(certs: Certs) -> None:
    result = await probe(certs.expiring_10d, certs)
    assert (result.status, result.reason) == (Status.WARNING, Reason.CERT_EXPIRING)
    assert result.message.startswith("certificate CN=127.0.0.1 expires in 10.0 days")
    assert result.success


async def test_expiry_thresholds_are_configurable(certs: Certs) -> None:
    result = await probe(certs.expiring_3d, certs, expiry_warning_days=2, expiry_critical_days=1)
    assert (result.status, result.reason) == (Status.OK, Reason.OK)


async def test_status_wins_over_cert_expiry(certs: Certs) -> None:
    result = await probe(certs.expiring_3d, certs, path="/status/503")
    assert result.reason == Reason.STATUS_MISMATCH


async def test_tls_version_mismatch(certs: Certs) -> None:
    old_server = server_context(certs.valid, max_version=ssl.TLSVersion.TLSv1_2)
    async with serve_handshake_only(old_server) as port:
        strict = TcpCheck.from_url(
            f"tls://127.0.0.1:{port}", timeout=2.0, tls={"ca_file": str(certs.ca_file), "min_version": "1.3"}
        )
        lenient = TcpCheck.from_url(
            f"tls://127.0.0.1:{port}", timeout=2.0, tls={"ca_file": str(certs.ca_file)}
        )
        failed = await execute(strict)
        passed = await execute(lenient)
    assert (failed.status, failed.reason) == (Status.CRITICAL, Reason.TLS_VERSION)
    assert failed.message == "no TLS version acceptable to both sides (tlsv1_alert_protocol_version)"
    assert (passed.status, passed.reason) == (Status.OK, Reason.OK)
    assert value(passed, "probe_tls_version_info", version="TLS 1.2") == 1


async def test_plain_server_on_https_is_handshake_failure() -> None:
    async with serve_tcp(banner(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")) as srv:
        result = await execute(HttpCheck.from_url(f"https://127.0.0.1:{srv.port}/", timeout=2.0))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.TLS_HANDSHAKE)
    assert result.message == "the server did not answer with TLS (wrong version number)"


async def test_silent_server_times_out_in_tls_phase() -> None:
    from tests.servers import silent

    async with serve_tcp(silent()) as srv:
        result = await execute(HttpCheck.from_url(f"https://127.0.0.1:{srv.port}/", timeout=0.3))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.TIMEOUT)
    assert result.message == "timeout after 0.3s in the TLS handshake"


async def test_client_certificate(certs: Certs) -> None:
    mtls = server_context(certs.valid, client_ca=certs.ca_file)
    client = {
        "ca_file": str(certs.ca_file),
        "cert_file": str(certs.client.cert_file),
        "key_file": str(certs.client.key_file),
    }
    async with serve_http(ssl_context=mtls) as srv:
        with_cert = await execute(HttpCheck.from_url(srv.url("/"), timeout=2.0, tls=client))
    # Without a certificate a real server sends an alert; the blocking test server does too.
    async with serve_handshake_only(server_context(certs.valid, client_ca=certs.ca_file)) as port:
        without = await execute(
            HttpCheck.from_url(f"https://127.0.0.1:{port}/", timeout=2.0, tls={"ca_file": str(certs.ca_file)})
        )
    assert (with_cert.status, with_cert.reason) == (Status.OK, Reason.OK), with_cert.message
    assert (without.status, without.reason) == (Status.CRITICAL, Reason.TLS_HANDSHAKE)
    assert without.message == "TLS error after the handshake: tlsv13 alert certificate required"


async def test_redirect_from_http_to_https(certs: Certs) -> None:
    async with (
        serve_http(ssl_context=server_context(certs.valid)) as secure,
        serve_http({"/": redirect(secure.url("/health"), 301)}) as plain,
    ):
        result = await execute(
            HttpCheck.from_url(plain.url("/"), timeout=2.0, tls={"ca_file": str(certs.ca_file)})
        )
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert value(result, "probe_http_redirects") == 1
    assert value(result, "probe_http_ssl") == 1
    assert value(result, "probe_tls_version_info", version="TLS 1.3") == 1


async def test_tcp_with_tls_and_expect(certs: Certs) -> None:
    async with serve_tcp(banner(b"220 ready\r\n"), server_context(certs.valid)) as srv:
        ok = await execute(
            TcpCheck.from_url(
                f"tls://127.0.0.1:{srv.port}", timeout=2.0, expect="^220", tls={"ca_file": str(certs.ca_file)}
            )
        )
    async with serve_tcp(banner(b"220 ready\r\n"), server_context(certs.expiring_3d)) as srv:
        expiring = await execute(
            TcpCheck.from_url(
                f"tls://127.0.0.1:{srv.port}", timeout=2.0, expect="^220", tls={"ca_file": str(certs.ca_file)}
            )
        )
    assert (ok.status, ok.reason) == (Status.OK, Reason.OK), ok.message
    assert ok.message.startswith("connected over TLS 1.3, matched /^220/ in ")
    assert value(ok, "mamori_tcp_duration_seconds", phase="tls") > 0
    assert value(ok, "probe_ssl_earliest_cert_expiry") == certs.valid.not_after.timestamp()
    assert (expiring.status, expiring.reason) == (Status.CRITICAL, Reason.CERT_EXPIRING)


# --- units: verdict and config ---


def _report(*days: float, verified: bool = True, not_before: float = -DAY) -> TlsReport:
    now = time.time()
    chain = tuple(CertInfo(f"c{i}", now + not_before, now + d * DAY) for i, d in enumerate(days))
    return TlsReport("TLS 1.3", chain, chain if verified else ())


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ((90.0, 3650.0), None),
        ((14.5,), None),
        ((13.9, 3650.0), (Status.WARNING, Reason.CERT_EXPIRING)),
        ((3650.0, 6.9), (Status.CRITICAL, Reason.CERT_EXPIRING)),  # the CA expiring counts too
        ((-1.0,), (Status.CRITICAL, Reason.CERT_EXPIRED)),
    ],
)
def test_verdict_bands(days: tuple[float, ...], expected: tuple[Status, Reason] | None) -> None:
    verdict: Failure | None = _report(*days).verdict(TlsConfig())
    assert (None if verdict is None else (verdict.status, verdict.reason)) == expected


def test_verdict_not_yet_valid_and_samples() -> None:
    report = _report(90.0, not_before=DAY, verified=False)
    verdict = report.verdict(TlsConfig())
    assert verdict is not None and verdict.reason == Reason.CERT_NOT_YET_VALID
    names = [s.name for s in report.samples()]
    assert names == ["probe_tls_version_info", "probe_ssl_earliest_cert_expiry"]


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"expiry_warning_days": 7, "expiry_critical_days": 7}, "expiry_warning_days (7) must be greater"),
        ({"ca_file": "/nonexistent.pem"}, "file not found: /nonexistent.pem"),
        ({"min_version": "1.4"}, "min_version"),
        ({"server_name": "https://x"}, "invalid server_name"),
    ],
)
def test_tls_config_errors(values: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as info:
        TlsConfig.model_validate(values)
    assert error in str(info.value)


def test_client_cert_needs_key(certs: Certs) -> None:
    with pytest.raises(ValidationError, match="cert_file and key_file must be given together"):
        TlsConfig.model_validate({"cert_file": str(certs.client.cert_file)})
    with pytest.raises(ValidationError, match="file not found"):
        TlsConfig.model_validate(
            {"cert_file": str(certs.client.cert_file), "key_file": str(Path("/nope.key"))}
        )
