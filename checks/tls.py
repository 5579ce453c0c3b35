"""TLS options shared by the http and tcp checks, the handshake, and certificate inspection.

- `TlsConfig` is validated at load: files exist, client cert and key come together, the expiry
  warning band is wider than the critical one.
- `build_context` is called once per check instance (loading a CA bundle costs milliseconds).
- `handshake` upgrades a connection and returns a `TlsReport`, or raises `ProbeError` with a
  reason from the TLS family (tls_handshake, tls_verify, tls_hostname, tls_version, cert_expired,
  cert_not_yet_valid). When verification fails on a certificate's dates or names, it takes a
  second, inspection-only look (new connection, no verification) to say which certificate and
  which date, if the deadline leaves time for it.
- `TlsReport.verdict` turns the chain's dates into cert_expiring / cert_expired / cert_not_yet_valid.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from agent.fields import Model
from agent.files import skip
from agent.model import CheckResult, Reason, Sample, Status
from checks.base import PerfDatum
from checks.net import Address, Failure, ProbeError, abort, open_connection

DAY = 86400.0

_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}

# ssl.SSLObject.version() -> the `version` label blackbox_exporter uses.
_VERSION_LABELS = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) that get their own reason or wording.
_NOT_YET_VALID, _EXPIRED = 9, 10
_HOSTNAME_CODES = {62, 64}  # hostname mismatch, IP address mismatch
_VERIFY_WORDING = {
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "certificate issuer is not trusted",
    21: "unable to verify the first certificate",
}
# OpenSSL reason strings that mean "no TLS version both sides accept".
_VERSION_ERRORS = {
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "NO_PROTOCOLS_AVAILABLE",
    "VERSION_TOO_LOW",
    "VERSION_TOO_HIGH",
    "WRONG_SSL_VERSION",
    "TLSV1_ALERT_INAPPROPRIATE_FALLBACK",
}
# A DNS name in ASCII (IDNA A-labels for international names); it is also sent as the Host header.
_HOST_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")
# `ssl_failure`'s `when` for the handshake itself.
IN_HANDSHAKE = "in the TLS handshake"
# The inspection-only second look never takes longer than this, and is skipped if less is left.
_DIAGNOSE_BUDGET = 2.0
_DIAGNOSE_MIN = 0.05


class TlsConfig(Model):
    verify: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    min_version: Literal["1.0", "1.1", "1.2", "1.3"] | None = None
    expiry_warning_days: float = 14
    expiry_critical_days: float = 7

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not skip(f"tls file {path}") and not path.is_file():
            raise ValueError(f"file not found: {path}")
        return path

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, name: str | None) -> str | None:
        if name is not None and not _HOST_NAME.match(name):
            raise ValueError(f"invalid server_name {name!r}: expected a host name such as api.example.com")
        return name

    @model_validator(mode="after")
    def _cross_fields(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if self.expiry_warning_days <= self.expiry_critical_days:
            raise ValueError(
                f"expiry_warning_days ({self.expiry_warning_days:g}) must be greater than "
                f"expiry_critical_days ({self.expiry_critical_days:g})"
            )
        return self


def build_context(config: TlsConfig) -> ssl.SSLContext:
    """The client context for `config`. Call once per check: it reads the CA files."""
    if config.verify:
        ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    else:
        ctx = _unverified_context()  # loading the system CA store (~25 ms) would be wasted
    if config.min_version is not None:
        ctx.minimum_version = _VERSIONS[config.min_version]
    if config.cert_file is not None and config.key_file is not None:
        ctx.load_cert_chain(config.cert_file, config.key_file)
    return ctx


def _unverified_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # as ssl.create_default_context does
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@functools.cache
def _inspection_context() -> ssl.SSLContext:
    """Shared by every check: it holds no configuration, only "accept anything, show me the chain"."""
    ctx = _unverified_context()
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    return ctx


@dataclass(frozen=True, slots=True)
class CertInfo:
    common_name: str
    not_before: float  # unix seconds
    not_after: float

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> CertInfo:
        cn = ""
        for rdn in info.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = value
        return cls(
            cn or "(no CN)",
            ssl.cert_time_to_seconds(info["notBefore"]),
            ssl.cert_time_to_seconds(info["notAfter"]),
        )


def _chain(ssl_object: Any, verified: bool) -> tuple[CertInfo, ...]:
    # `_sslobj.get_(un)verified_chain` is private in 3.11 (public in 3.13) but present: it is the
    # only way to see the chain beyond the leaf from the standard library.
    sslobj = getattr(ssl_object, "_sslobj", None)
    getter = getattr(sslobj, "get_verified_chain" if verified else "get_unverified_chain", None)
    if getter is None:
        return ()
    return tuple(CertInfo.from_info(cert.get_info()) for cert in getter() or ())


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


@dataclass(frozen=True, slots=True)
class TlsReport:
    """What one handshake showed. `verified` is empty when verification is off."""

    version: str  # "TLS 1.3"
    presented: tuple[CertInfo, ...]
    verified: tuple[CertInfo, ...]

    @classmethod
    def from_ssl_object(cls, ssl_object: Any, verify: bool) -> TlsReport:
        raw = str(ssl_object.version() or "unknown")
        version = _VERSION_LABELS.get(raw, raw)
        return cls(version, _chain(ssl_object, False), _chain(ssl_object, True) if verify else ())

    def samples(self) -> tuple[Sample, ...]:
        out = [Sample("probe_tls_version_info", 1.0, (("version", self.version),))]
        if self.presented:
            out.append(Sample("probe_ssl_earliest_cert_expiry", min(c.not_after for c in self.presented)))
        if self.verified:
            out.append(
                Sample(
                    "probe_ssl_last_chain_expiry_timestamp_seconds", min(c.not_after for c in self.verified)
                )
            )
        return tuple(out)

    def verdict(self, config: TlsConfig, now: float | None = None) -> Failure | None:
        """The expiry verdict on the chain that matters (verified, else presented), or None if fine.

        Expired or not-yet-valid certificates can only be seen here when verification is off.
        """
        chain = self.verified or self.presented
        if not chain:
            return None
        now = time.time() if now is None else now
        soonest = min(chain, key=lambda c: c.not_after)
        days = (soonest.not_after - now) / DAY
        cert = f"certificate CN={soonest.common_name}"
        if days <= 0:
            return Failure(
                Status.CRITICAL,
                Reason.CERT_EXPIRED,
                f"{cert} expired {-days:.1f} days ago (notAfter {_day(soonest.not_after)})",
            )
        early = [c for c in chain if c.not_before > now]
        if early:
            first = early[0]
            message = (
                f"certificate CN={first.common_name} is not yet valid (notBefore {_day(first.not_before)})"
            )
            return Failure(Status.CRITICAL, Reason.CERT_NOT_YET_VALID, message)
        message = f"{cert} expires in {days:.1f} days (notAfter {_day(soonest.not_after)})"
        if days <= config.expiry_critical_days:
            return Failure(Status.CRITICAL, Reason.CERT_EXPIRING, message)
        if days <= config.expiry_warning_days:
            return Failure(Status.WARNING, Reason.CERT_EXPIRING, message)
        return None


def cert_days_perfdata(result: CheckResult, config: TlsConfig) -> list[PerfDatum]:
    """`cert_days`: the days the certificate chain has left at the run (the verified chain, else the
    presented one, as `TlsReport.verdict` judges it), with the expiry bands as lower limits;
    nothing when the run saw no certificate."""
    expiries = {
        s.name: s.value
        for s in result.samples
        if s.name in ("probe_ssl_last_chain_expiry_timestamp_seconds", "probe_ssl_earliest_cert_expiry")
    }
    expiry = expiries.get(
        "probe_ssl_last_chain_expiry_timestamp_seconds", expiries.get("probe_ssl_earliest_cert_expiry")
    )
    if expiry is None:
        return []
    days = round((expiry - result.started_at) / DAY, 2)
    return [
        PerfDatum(
            "cert_days", days, "", config.expiry_warning_days, config.expiry_critical_days, alert_below=True
        )
    ]


async def handshake(
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    server_hostname: str,
    address: Address,
    deadline: float | None,
) -> TlsReport:
    """Upgrade `writer`'s connection to TLS in place. Raises ProbeError with a TLS reason.

    `address` and `deadline` (loop time) allow the inspection-only second look on a certificate
    verification failure; the caller's own timeout still bounds everything.
    """
    try:
        await writer.start_tls(context, server_hostname=server_hostname)
    except ssl.SSLCertVerificationError as exc:
        chain = await _presented_chain(address, server_hostname, deadline)
        raise verify_failure(exc, chain) from None
    except ssl.SSLError as exc:
        raise ssl_failure(exc, IN_HANDSHAKE) from None
    except TimeoutError:
        raise  # the caller's deadline, which names the phase itself
    except (OSError, EOFError):
        raise ProbeError(Reason.TLS_HANDSHAKE, "connection closed during the TLS handshake") from None
    ssl_object = writer.get_extra_info("ssl_object")
    return TlsReport.from_ssl_object(ssl_object, context.verify_mode != ssl.CERT_NONE)


async def _presented_chain(
    address: Address, server_hostname: str, deadline: float | None
) -> tuple[CertInfo, ...]:
    """The chain the server presents, read without verification; () if it cannot be had in time."""
    loop = asyncio.get_running_loop()
    budget = _DIAGNOSE_BUDGET if deadline is None else min(_DIAGNOSE_BUDGET, deadline - loop.time() - 0.02)
    if budget < _DIAGNOSE_MIN:
        return ()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(budget):
            _, writer = await open_connection(address)
            await writer.start_tls(_inspection_context(), server_hostname=server_hostname)
            return _chain(writer.get_extra_info("ssl_object"), False)
    except (TimeoutError, OSError, ProbeError, EOFError):
        return ()
    finally:
        abort(writer)


def verify_failure(exc: ssl.SSLCertVerificationError, chain: tuple[CertInfo, ...] = ()) -> ProbeError:
    """A certificate verification error as a reason and a short message."""
    code = exc.verify_code
    message = str(exc.verify_message or "certificate verification failed")
    now = time.time()
    leaf = chain[0] if chain else None
    if code == _EXPIRED:
        expired = next((c for c in chain if c.not_after < now), None)
        detail = f" (notAfter {_day(expired.not_after)}, CN={expired.common_name})" if expired else ""
        return ProbeError(Reason.CERT_EXPIRED, f"certificate has expired{detail}")
    if code == _NOT_YET_VALID:
        early = next((c for c in chain if c.not_before > now), None)
        detail = f" (notBefore {_day(early.not_before)}, CN={early.common_name})" if early else ""
        return ProbeError(Reason.CERT_NOT_YET_VALID, f"certificate is not yet valid{detail}")
    if code in _HOSTNAME_CODES or "mismatch" in message.lower():
        _, _, name = message.partition("not valid for ")
        detail = f" (certificate is for CN={leaf.common_name})" if leaf else ""
        return ProbeError(
            Reason.TLS_HOSTNAME, f"certificate is not valid for {name.rstrip('.') or '?'}{detail}"
        )
    wording = _VERIFY_WORDING.get(code, message)
    detail = f" (CN={leaf.common_name})" if leaf else ""
    return ProbeError(Reason.TLS_VERIFY, f"{wording}{detail}")


def ssl_failure(exc: ssl.SSLError, when: str) -> ProbeError:
    """Any other SSL error (handshake or later): version mismatches apart, a handshake failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return verify_failure(exc)
    reason = str(getattr(exc, "reason", "") or "")
    if reason in _VERSION_ERRORS:
        return ProbeError(Reason.TLS_VERSION, f"no TLS version acceptable to both sides ({reason.lower()})")
    if reason == "WRONG_VERSION_NUMBER":
        if when == IN_HANDSHAKE:
            message = "the server did not answer with TLS (wrong version number)"
        else:
            message = f"the server sent data that is not TLS {when}"
        return ProbeError(Reason.TLS_HANDSHAKE, message)
    if isinstance(exc, ssl.SSLEOFError):
        return ProbeError(Reason.TLS_HANDSHAKE, f"connection closed {when}")
    # OpenSSL's reason code ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC") is the clue; the exception's
    # own text adds a source file and line of OpenSSL's, its type is Python's.
    detail = f": {reason.lower().replace('_', ' ')}" if reason else ""
    return ProbeError(Reason.TLS_HANDSHAKE, f"TLS error {when}{detail}")
