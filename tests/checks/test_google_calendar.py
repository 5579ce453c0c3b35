"""The Google Calendar check of deploy/examples/production.yml (`google_service_account`), as
shipped, against a strict local fake of Google's token endpoint (it verifies the JWT's RS256
signature with the key's public half, its header and every claim, and answers as Google does) and
of the Calendar API (it requires the token the fake issued). Only the URL's scheme and host and
the key's `token_uri` are moved to 127.0.0.1. No request leaves loopback."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256

from agent.model import Reason, Status
from agent.runner import execute
from checks.http.check import HttpCheck
from checks.http.config import HttpConfig
from tests.deploy.test_deploy_files import FAKE_SECRETS, PRODUCTION, validate_example

CALENDAR_ID = "ops-calendar@example.com"
READONLY = "https://www.googleapis.com/auth/calendar.readonly"
KEY = json.loads(FAKE_SECRETS["google_calendar_service_account"])


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class FakeGoogle:
    """oauth2.googleapis.com/token and the Calendar API's calendars.get on one loopback port."""

    public_key: Any
    client_email: str
    key_id: str
    scope: str = READONLY
    subject: str | None = None
    mode: str = "ok"  # ok | 429 | 500
    expires_in: int = 3599
    base: str = ""
    issued: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_get("/calendar/v3/calendars/{calendar_id}", self.calendar)
        return app

    @property
    def token_uri(self) -> str:
        return f"{self.base}/token"

    @staticmethod
    def _refuse(status: int, error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status)

    async def token(self, request: web.Request) -> web.Response:
        if self.mode == "429":
            return self._refuse(429, "rate_limit_exceeded", "Rate limit exceeded.")
        if self.mode == "500":
            return self._refuse(500, "internal_failure", "Backend Error")
        if request.content_type != "application/x-www-form-urlencoded":
            return self._refuse(400, "invalid_request", "Bad Request")
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._refuse(400, "unsupported_grant_type", "Invalid grant_type: ")
        parts = str(form.get("assertion", "")).split(".")
        if len(parts) != 3:
            return self._refuse(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token")
        header, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
        try:
            self.public_key.verify(
                _unb64(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), SHA256()
            )
        except InvalidSignature:
            return self._refuse(400, "invalid_grant", "Invalid JWT Signature.")
        if header != {"alg": "RS256", "typ": "JWT", "kid": self.key_id}:
            return self._refuse(400, "invalid_grant", "Invalid JWT header")
        if claims.get("iss") != self.client_email:
            return self._refuse(401, "invalid_client", "The OAuth client was not found.")
        now = int(time.time())
        iat, exp = claims.get("iat"), claims.get("exp")
        if not (isinstance(iat, int) and abs(iat - now) <= 60 and exp == iat + 3600):
            return self._refuse(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token")
        if claims.get("aud") != self.token_uri or claims.get("scope") != self.scope:
            return self._refuse(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        if claims.get("sub") != self.subject or set(claims) - {"iss", "scope", "aud", "iat", "exp", "sub"}:
            return self._refuse(
                401, "unauthorized_client", "Client is unauthorized to retrieve access tokens"
            )
        self.issued += 1
        return web.json_response(
            {"access_token": self.current, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    @property
    def current(self) -> str:
        return f"ya29.c.fake-access-token-{self.issued:04d}-XXXXXXXXXXXXXXXX"

    async def calendar(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.current}" or not self.issued:
            error = {"code": 401, "message": "Request had invalid authentication credentials."}
            return web.json_response({"error": error}, status=401)
        if request.match_info["calendar_id"] != CALENDAR_ID:
            return web.json_response({"error": {"code": 404, "message": "Not Found"}}, status=404)
        doc = {"kind": "calendar#calendar", "id": CALENDAR_ID, "summary": "Ops", "timeZone": "Asia/Tokyo"}
        if request.query.get("fields") == "id":
            doc = {"id": CALENDAR_ID}
        return web.json_response(doc)


def _public(pem: str) -> Any:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.public_key()


@pytest.fixture
async def google(tmp_path: Path) -> AsyncIterator[tuple[HttpConfig, FakeGoogle]]:
    cfg = validate_example(PRODUCTION, tmp_path)
    (shipped,) = [c for c in cfg.checks if c.name == "google-calendar"]
    fake = FakeGoogle(_public(KEY["private_key"]), KEY["client_email"], KEY["private_key_id"])
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield shipped, fake
    finally:
        await runner.cleanup()


def local(config: HttpConfig, fake: FakeGoogle, **account: Any) -> HttpCheck:
    """The shipped check with its URL and the key's token_uri moved to the fake."""
    url = urlsplit(config.url)
    values = config.model_dump(by_alias=True, exclude_unset=True)
    sa = config.google_service_account
    assert sa is not None
    values["url"] = fake.base + url.path + (f"?{url.query}" if url.query else "")
    values["google_service_account"] = {
        "scopes": sa.scopes,
        "client_email": sa.client_email,
        "private_key": sa.private_key.get_secret_value(),
        "private_key_id": sa.private_key_id,
        "token_uri": fake.token_uri,
        **account,
    }
    return HttpCheck(HttpConfig.model_validate(values))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def call_at(self, when: float, callback: Any, *args: Any) -> Any:
        raise NotImplementedError


def _never_shown(text: str, fake: FakeGoogle, private_key: str) -> None:
    body = "".join(private_key.splitlines()[1:-1])
    assert all(body[i : i + 16] not in text for i in range(0, len(body) - 16, 16)), "the key"
    assert "ya29." not in text and "fake-access-token" not in text, "the token"
    assert "eyJ" not in text, "the JWT"  # every JWT starts with the base64 of '{"'


def test_the_shipped_check_reads_the_calendar_readonly(google: tuple[HttpConfig, FakeGoogle]) -> None:
    shipped, _ = google
    sa = shipped.google_service_account
    assert sa is not None
    assert shipped.method == "GET" and urlsplit(shipped.url).path.startswith("/calendar/v3/calendars/")
    assert sa.scopes == (READONLY,) and sa.subject is None
    assert sa.token_uri == "https://oauth2.googleapis.com/token"  # from the key file


async def test_ok_and_the_token_is_kept_until_a_minute_before_it_ends(
    google: tuple[HttpConfig, FakeGoogle], caplog: pytest.LogCaptureFixture
) -> None:
    shipped, fake = google
    caplog.set_level(logging.DEBUG)
    fake.expires_in = 120
    check = local(shipped, fake)
    assert check.google is not None
    clock = Clock()
    check.google.clock = clock
    for _ in range(2):
        result = await execute(check)
        assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert fake.issued == 1  # the second run reused the token
    clock.now += 59.9  # 120 - 60 s not yet reached
    assert (await execute(check)).status == Status.OK and fake.issued == 1
    clock.now += 0.2
    result = await execute(check)
    assert (result.status, fake.issued) == (Status.OK, 2), result.message  # fetched again
    _never_shown(caplog.text + result.message, fake, KEY["private_key"])


async def test_a_wrong_key_is_auth_failed_in_googles_words(
    google: tuple[HttpConfig, FakeGoogle], caplog: pytest.LogCaptureFixture
) -> None:
    shipped, fake = google
    caplog.set_level(logging.DEBUG)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    result = await execute(local(shipped, fake, private_key=pem))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.AUTH_FAILED)
    assert result.message.startswith("Google token endpoint 127.0.0.1 refused the service account (400): ")
    assert "invalid_grant: Invalid JWT Signature." in result.message
    assert fake.issued == 0
    _never_shown(caplog.text + result.message, fake, pem)
    _never_shown(caplog.text + result.message, fake, KEY["private_key"])


@pytest.mark.parametrize(
    ("account", "words"),
    [
        ({"client_email": "someone-else@example-ops.iam.gserviceaccount.com"}, "(401): invalid_client"),
        ({"scopes": ["https://www.googleapis.com/auth/calendar"]}, "(400): invalid_scope"),
        ({"subject": "ops@example.com"}, "(401): unauthorized_client"),
    ],
)
async def test_google_refusals_are_auth_failed(
    google: tuple[HttpConfig, FakeGoogle], account: dict[str, Any], words: str
) -> None:
    shipped, fake = google
    result = await execute(local(shipped, fake, **account))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.AUTH_FAILED), result.message
    assert words in result.message


async def test_the_subject_is_sent_when_given(google: tuple[HttpConfig, FakeGoogle]) -> None:
    shipped, fake = google
    fake.subject = "ops@example.com"
    result = await execute(local(shipped, fake, subject="ops@example.com"))
    assert result.status == Status.OK, result.message


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("429", "Google token endpoint 127.0.0.1 answered 429: rate_limit_exceeded: Rate limit exceeded."),
        ("500", "Google token endpoint 127.0.0.1 answered 500: internal_failure: Backend Error"),
    ],
)
async def test_a_busy_or_failing_token_endpoint_says_so(
    google: tuple[HttpConfig, FakeGoogle], mode: str, message: str
) -> None:
    shipped, fake = google
    fake.mode = mode
    result = await execute(local(shipped, fake))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.STATUS_MISMATCH)
    assert result.message.startswith(message)  # and the retry said the same


async def test_an_unreachable_token_endpoint_names_it(google: tuple[HttpConfig, FakeGoogle]) -> None:
    shipped, fake = google
    check = local(shipped, fake, token_uri="http://127.0.0.1:9/token")
    result = await execute(check)
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.REFUSED), result.message
    assert result.message.startswith("Google token endpoint 127.0.0.1: ")


async def test_a_calendar_not_shared_is_a_status_mismatch(google: tuple[HttpConfig, FakeGoogle]) -> None:
    shipped, fake = google
    values = shipped.model_dump(by_alias=True, exclude_unset=True)
    moved = HttpConfig.model_validate(
        {**values, "url": shipped.url.replace("ops-calendar%40example.com", "other%40example.com")}
    )
    result = await execute(local(moved, fake))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.STATUS_MISMATCH)
    assert result.message.startswith("status 404")


def _config(tmp_path: Path, key: Any, **extra: Any) -> dict[str, Any]:
    path = tmp_path / "key.json"
    path.write_text(key if isinstance(key, str) else json.dumps(key))
    return {
        "name": "cal",
        "type": "http",
        "url": "https://www.googleapis.com/calendar/v3/calendars/x",
        "interval": 60,
        "timeout": 5,
        "google_service_account": {"key_file": str(path), "scopes": [READONLY]},
        **extra,
    }


@pytest.mark.parametrize(
    ("key", "extra", "error"),
    [
        ("{not json", {}, "key_file: cannot read .*: not JSON"),
        ({**KEY, "type": "authorized_user"}, {}, "not a service account key"),
        ({k: v for k, v in KEY.items() if k != "private_key"}, {}, "private_key is missing"),
        (
            {**KEY, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            {},
            "private_key is not an unencrypted PEM private key",
        ),
        ({**KEY, "token_uri": "http://oauth2.example.com/token"}, {}, "token_uri must be an https:// URL"),
        (KEY, {"bearer_token": "t"}, "google_service_account sends a token of its own"),
    ],
)
def test_config_errors_never_quote_the_key(
    tmp_path: Path, key: Any, extra: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        HttpConfig.model_validate(_config(tmp_path, key, **extra))
    assert "PRIVATE KEY" not in str(caught.value).replace("-----BEGIN PRIVATE KEY-----", "")
    assert KEY["private_key"][40:80] not in str(caught.value)
