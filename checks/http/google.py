"""Google service-account auth for the `http` check (`google_service_account:`): an OAuth 2.0
access token by the flow Google documents for server-to-server applications
(https://developers.google.com/identity/protocols/oauth2/service-account), sent as
`Authorization: Bearer`.

A JWT (header `{"alg": "RS256", "typ": "JWT", "kid": private_key_id}`; claims iss = the key's
`client_email`, scope = the scopes joined by spaces, aud = the key's `token_uri`, iat, exp =
iat + 3600, and sub when a user is impersonated) is signed with the key file's `private_key` and
POSTed form-encoded to `token_uri` (grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer,
assertion=JWT). The answer's token is kept by the check until 60 s before its `expires_in` ends;
a reload makes a new check, and so a new token.

RS256 needs `cryptography`: the `google` extra, imported only when a check uses the option
(`require()`, the check `agentctl validate` and `run` make). The private key, the JWT and the
token never appear in a message: a refusal quotes only Google's `error` and `error_description`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from agent.clock import REAL_CLOCK, Clock
from agent.errors import ExtraMissing
from agent.fields import Model
from agent.files import skip
from agent.model import Reason, Status
from agent.secrets import read_secret_file
from checks.net import ProbeError, printable

if TYPE_CHECKING:
    from checks.http.check import HttpCheck

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
LIFETIME = 3600  # the longest Google accepts
EARLY = 60.0  # a token is replaced this long before it expires
_KEY_FIELDS = ("client_email", "private_key", "private_key_id", "token_uri")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def require(check: str) -> None:
    """Raises ExtraMissing when `cryptography` (the `google` extra) is not installed."""
    try:
        import cryptography.hazmat.primitives.asymmetric.padding  # noqa: F401
    except ImportError:
        raise ExtraMissing.of_extra(
            f"{check} (type http, google_service_account)", "the cryptography package", "google", kind="check"
        ) from None


def _load_key(pem: str) -> Any:
    """The RSA private key of a PEM text. Raises ValueError (never quoting the key)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("private_key is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("private_key is not an RSA key (RS256 needs one)")
    return key


class GoogleServiceAccount(Model):
    """A service account's JSON key (`key_file`, read like every `_file` secret; its fields
    `client_email`, `private_key`, `private_key_id` and `token_uri` are taken from it), the scopes
    asked for, and the user to impersonate (`subject`, domain-wide delegation only)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    scopes: tuple[str, ...] = Field(min_length=1)
    subject: str | None = Field(default=None, pattern=r"^[^\s@]+@[^\s@]+$")
    client_email: str = Field(pattern=r"^[^\s@]+@[^\s@]+$")
    private_key: SecretStr
    private_key_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,128}$")
    token_uri: str = GOOGLE_TOKEN_URI

    @model_validator(mode="before")
    @classmethod
    def _key_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "key_file" not in data:
            if "private_key" not in data:
                raise ValueError("key_file is required: the service account's JSON key")
            return data
        data = dict(data)
        path = data.pop("key_file")
        if any(k in data for k in _KEY_FIELDS):
            raise ValueError(f"give key_file or the key's fields ({', '.join(_KEY_FIELDS)}), not both")
        if skip(f"key_file {path}"):  # validating offline: stand-ins the fields accept
            return {**data, "client_email": "offline@offline", "private_key": "offline"}
        try:
            doc = json.loads(read_secret_file(str(path)))
        except ValueError as exc:  # json's error names a position, never the content
            why = "not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise ValueError(f"key_file: cannot read {path}: {why}") from None
        if not isinstance(doc, dict) or doc.get("type") != "service_account":
            raise ValueError(f"key_file {path}: not a service account key (its type is not service_account)")
        for name in ("client_email", "private_key"):
            if not isinstance(doc.get(name), str):
                raise ValueError(f"key_file {path}: {name} is missing")
        if not isinstance(doc.get("token_uri", GOOGLE_TOKEN_URI), str):
            raise ValueError(f"key_file {path}: token_uri is not a URL")
        try:
            require("")
        except ExtraMissing:
            pass  # the key is checked where it can be: `validate` fails on the missing extra
        else:
            _load_key(doc["private_key"])
        return {**data, **{k: doc[k] for k in _KEY_FIELDS if doc.get(k) is not None}}

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        for scope in scopes:
            if not scope or not scope.isascii() or not scope.isprintable() or " " in scope:
                raise ValueError(f"invalid scope {printable(scope)!r}: one scope per item, no spaces")
        return scopes

    @field_validator("token_uri")
    @classmethod
    def _token_uri(cls, uri: str) -> str:
        parts = urlsplit(uri)
        # The assertion is a credential for an hour: plain HTTP only to this machine (tests).
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)
        ):
            raise ValueError("token_uri must be an https:// URL")
        return uri


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def assertion(cfg: GoogleServiceAccount, key: Any, now: float) -> str:
    """The signed JWT that asks `token_uri` for a token valid from `now` (Unix seconds)."""
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.hashes import SHA256

    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if cfg.private_key_id:
        header["kid"] = cfg.private_key_id
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": cfg.client_email,
        "scope": " ".join(cfg.scopes),
        "aud": cfg.token_uri,
        "iat": iat,
        "exp": iat + LIFETIME,
    }
    if cfg.subject:
        claims["sub"] = cfg.subject
    signing_input = ".".join(_b64(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims))
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _words(doc: Any) -> str:
    """Google's `error` and `error_description`, printable and short; "" when there are none."""
    if not isinstance(doc, dict):
        return ""
    parts = [doc.get("error"), doc.get("error_description")]
    text = ": ".join(printable(str(p)) for p in parts if isinstance(p, str) and p)
    return text if len(text) <= 200 else text[:197] + "..."


class GoogleToken:
    """One check's access token: fetched when there is none or it is within `EARLY` of its end,
    kept otherwise. `clock` (monotonic, for the cache) and `wall` (Unix time, for the JWT) are
    injectable for tests."""

    def __init__(self, cfg: GoogleServiceAccount, check: HttpCheck) -> None:
        self.cfg = cfg
        self._check = check
        self._key: Any = None
        self._token: str | None = None
        self._until = 0.0
        self.clock: Clock = REAL_CLOCK
        self.wall: Callable[[], float] = time.time

    async def token(self) -> str:
        """The access token to send. Raises ProbeError (the check's result) when none can be had:
        auth_failed for a refusal, status_mismatch for a rate limit or a server error, the
        connection's own reason when the endpoint cannot be reached, protocol_error for an answer
        that is not Google's."""
        if self._token is not None and self.clock.monotonic() < self._until:
            return self._token
        self._token = None
        if self._key is None:
            try:
                require(self._check.config.name)
            except ExtraMissing as exc:
                raise ProbeError(Reason.CHECK_ERROR, str(exc), Status.UNKNOWN) from None
            self._key = _load_key(self.cfg.private_key.get_secret_value())
        started = self.clock.monotonic()
        status, doc = await self._post(assertion(self.cfg, self._key, self.wall()))
        where = f"Google token endpoint {urlsplit(self.cfg.token_uri).hostname}"
        words = _words(doc)
        if status != 200:
            said = f": {words}" if words else ""
            if status == 429 or status >= 500:
                raise ProbeError(Reason.STATUS_MISMATCH, f"{where} answered {status}{said}")
            raise ProbeError(Reason.AUTH_FAILED, f"{where} refused the service account ({status}){said}")
        token = doc.get("access_token") if isinstance(doc, dict) else None
        expires_in = doc.get("expires_in", LIFETIME) if isinstance(doc, dict) else None
        if (
            not isinstance(token, str)
            or not token
            or not token.isascii()
            or not token.isprintable()
            or " " in token
            or isinstance(expires_in, bool)
            or not isinstance(expires_in, int | float)
        ):
            raise ProbeError(Reason.PROTOCOL_ERROR, f"{where} answered 200 without an access token")
        self._token, self._until = token, started + float(expires_in) - EARLY
        return token

    async def _post(self, jwt: str) -> tuple[int, Any]:
        """POST the assertion; (status, the JSON answer or None). Raises ProbeError when no answer
        came."""
        from checks.http.check import HttpCheck
        from checks.http.config import HttpConfig

        outer = self._check
        cfg = HttpConfig.model_validate(
            {
                "name": f"{outer.config.name}.token"[:128],
                "url": self.cfg.token_uri,
                "method": "POST",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                "body": urlencode({"grant_type": GRANT_TYPE, "assertion": jwt}),
                "expected_status": ["100-599"],
                "follow_redirects": False,
                "max_body_size": 64 * 1024,
                "preferred_ip_protocol": outer.config.preferred_ip_protocol,
                "ip_protocol_fallback": outer.config.ip_protocol_fallback,
                "interval": outer.config.interval,
                # A little before the check's own deadline, so a slow endpoint is named as such.
                "timeout": max(0.01, outer.time_left() - 0.05),
            }
        )
        outcome, answer = await HttpCheck(cfg).probe()
        if answer is None:
            host = urlsplit(self.cfg.token_uri).hostname
            raise ProbeError(outcome.reason, f"Google token endpoint {host}: {outcome.message}")
        try:
            doc = json.loads(answer.text())
        except ValueError:
            doc = None
        return answer.status, doc
