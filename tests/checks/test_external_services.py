"""The external-service checks of deploy/examples/production.yml (SendGrid, Stripe, LINE, S3),
exactly as shipped, against strict local fakes that answer as the real APIs document. Only the
URL's scheme and host are moved to 127.0.0.1: method, path, credentials and rules are the file's.
No request leaves loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from agent.model import Reason, Status
from agent.runner import execute
from checks.http.check import HttpCheck
from checks.http.config import HttpConfig
from checks.http.sigv4 import AwsSigV4, sign
from tests.deploy.test_deploy_files import FAKE_SECRETS, PRODUCTION, validate_example

SERVICES = ("sendgrid", "stripe", "line", "s3-bucket")
LINE_USER_ID = "U4af4980629" + "0" * 22


class FakeApis:
    """SendGrid, Stripe, LINE and S3 on one loopback port, each strict about its credentials."""

    def __init__(self, secrets: dict[str, str], sigv4: AwsSigV4) -> None:
        self.secrets = secrets
        self.sigv4 = sigv4
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        auth = request.headers.get("Authorization", "")
        route = (request.method, request.path)
        if route == ("GET", "/v3/scopes"):
            if auth != f"Bearer {self.secrets['sendgrid_api_key']}":
                return web.json_response(
                    {"errors": [{"field": None, "message": "authorization required"}]}, status=401
                )
            return web.json_response({"scopes": ["mail.send", "alerts.read"]})
        if route == ("GET", "/v1/balance"):
            if auth != f"Bearer {self.secrets['stripe_restricted_key']}":
                error = {"message": "Invalid API Key provided: rk_live_****", "type": "invalid_request_error"}
                return web.json_response({"error": error}, status=401)
            available = [{"amount": 0, "currency": "jpy", "source_types": {"card": 0}}]
            return web.json_response(
                {"object": "balance", "available": available, "livemode": True, "pending": available}
            )
        if route == ("GET", "/v2/bot/info"):
            if auth != f"Bearer {self.secrets['line_channel_access_token']}":
                return web.json_response({"message": "Authentication failed."}, status=401)
            return web.json_response(
                {
                    "userId": LINE_USER_ID,
                    "basicId": "@216ru",
                    "displayName": "Mamori",
                    "chatMode": "chat",
                    "markAsReadMode": "auto",
                }
            )
        if route == ("HEAD", "/"):
            # HeadBucket: 200 with the bucket's region when the signature is right, 403 if not.
            when = request.headers.get("x-amz-date", "")
            try:
                now = datetime.strptime(when, "%Y%m%dT%H%M%SZ")
            except ValueError:
                return web.Response(status=400)
            expected = dict(
                sign(self.sigv4, "HEAD", request.host, request.path, request.query_string, None, now)
            )
            if auth != expected["authorization"]:
                return web.Response(status=403)
            return web.Response(headers={"x-amz-bucket-region": "ap-northeast-1"})
        return web.json_response({"message": "not found"}, status=404)


@pytest.fixture
async def production(tmp_path: Path) -> AsyncIterator[tuple[dict[str, HttpConfig], FakeApis, str]]:
    cfg = validate_example(PRODUCTION, tmp_path)
    checks = {c.name: c for c in cfg.checks if c.name in SERVICES}
    assert set(checks) == set(SERVICES)
    s3 = checks["s3-bucket"].aws_sigv4
    assert s3 is not None
    fake = FakeApis(dict(FAKE_SECRETS), s3)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield checks, fake, base
    finally:
        await runner.cleanup()


def local(config: HttpConfig, base: str) -> HttpCheck:
    """The shipped check with its URL moved to the fake (the path and query kept)."""
    url = urlsplit(config.url)
    moved = base + url.path + (f"?{url.query}" if url.query else "")
    return HttpCheck(HttpConfig.model_validate({**_values(config), "url": moved}))


def _values(config: HttpConfig) -> dict[str, Any]:
    values = config.model_dump(by_alias=True, exclude_unset=True)
    # Secrets dump masked: give back the loaded values.
    for key in ("bearer_token",):
        if getattr(config, key) is not None:
            values[key] = getattr(config, key).get_secret_value()
    if config.aws_sigv4 is not None:
        values["aws_sigv4"] = {
            **config.aws_sigv4.model_dump(exclude_unset=True),
            "secret_access_key": config.aws_sigv4.secret_access_key.get_secret_value(),
        }
    return values


@pytest.mark.parametrize("name", SERVICES)
async def test_the_shipped_check_passes_against_the_documented_answer(
    production: tuple[dict[str, HttpConfig], FakeApis, str], name: str
) -> None:
    checks, fake, base = production
    result = await execute(local(checks[name], base))
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert all(method in ("GET", "HEAD") for method, _ in fake.seen), "read-only requests only"


@pytest.mark.parametrize("name", SERVICES)
async def test_a_refused_key_is_critical_and_never_shown(
    production: tuple[dict[str, HttpConfig], FakeApis, str], name: str
) -> None:
    checks, fake, base = production
    fake.secrets = {k: v + "-rotated" for k, v in fake.secrets.items()}  # the key was rotated
    if name == "s3-bucket":
        fake.sigv4 = fake.sigv4.model_copy(update={"access_key_id": "AKIAOTHERKEY00000000"})
    result = await execute(local(checks[name], base))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.STATUS_MISMATCH), result.message
    assert result.message.startswith(("status 401", "status 403")), result.message
    assert all(secret not in json.dumps(result.message) for secret in FAKE_SECRETS.values())


async def test_s3_headbucket_signature_matches_awss_published_example() -> None:
    """AWS's own example (S3 API reference, "Signature Calculations… GET Bucket Lifecycle")."""
    cfg = AwsSigV4(
        region="us-east-1",
        access_key_id="AKIAIOSFODNN7EXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    when = datetime.fromisoformat("2013-05-24T00:00:00+00:00")
    headers = dict(sign(cfg, "GET", "examplebucket.s3.amazonaws.com", "/", "lifecycle", None, when))
    assert headers["authorization"].endswith(
        "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
    )
    headers = dict(sign(cfg, "GET", "examplebucket.s3.amazonaws.com", "/", "max-keys=2&prefix=J", None, when))
    assert headers["authorization"].endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )
    assert headers["x-amz-date"] == "20130524T000000Z"


def test_aws_sigv4_config_errors() -> None:
    base = {"name": "s3", "type": "http", "url": "https://b.s3.amazonaws.com/", "interval": 60, "timeout": 5}
    sigv4 = {"region": "us-east-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "x"}
    with pytest.raises(ValueError, match="aws_sigv4 signs the request itself: give no other credentials"):
        HttpConfig.model_validate({**base, "aws_sigv4": sigv4, "bearer_token": "t"})
    with pytest.raises(ValueError, match="should match pattern"):
        HttpConfig.model_validate({**base, "aws_sigv4": {**sigv4, "region": "US East"}})
