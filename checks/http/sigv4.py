"""AWS Signature Version 4 for the `http` check (`aws_sigv4:`): an authenticated S3 HeadBucket
without an AWS SDK. Standard library only (hmac, hashlib), as AWS documents the algorithm:
https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html

Only the request line, `host`, `x-amz-date` and `x-amz-content-sha256` are signed: the check
sends no body worth protecting, and every other header may then change without breaking the
signature. The secret key is used only in memory and never appears in a header or a message.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote

from pydantic import Field, SecretStr

from agent.fields import Model

ALGORITHM = "AWS4-HMAC-SHA256"
_UNRESERVED = "-_.~"


class AwsSigV4(Model):
    """Credentials of an IAM user (or role) and the scope they sign for."""

    region: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    service: str = Field(default="s3", pattern=r"^[a-z0-9-]{1,32}$")
    access_key_id: str = Field(pattern=r"^[A-Z0-9]{16,128}$")
    secret_access_key: SecretStr  # or secret_access_key_file
    session_token: SecretStr | None = None  # temporary credentials (STS): x-amz-security-token


def sign(
    cfg: AwsSigV4,
    method: str,
    host: str,
    path: str,
    query: str,
    payload: bytes | None,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """The headers that authenticate one request: x-amz-date, x-amz-content-sha256, (the session
    token,) and Authorization. `host` is the Host header as sent (with a non-default port)."""
    when = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    day = when[:8]
    body_hash = hashlib.sha256(payload or b"").hexdigest()
    signed_headers = {"host": host, "x-amz-content-sha256": body_hash, "x-amz-date": when}
    token = cfg.session_token.get_secret_value() if cfg.session_token is not None else None
    if token is not None:
        signed_headers["x-amz-security-token"] = token
    names = ";".join(sorted(signed_headers))
    canonical = "\n".join(
        [
            method,
            path or "/",  # as sent: the config's URL is already percent-encoded, S3 encodes once
            _canonical_query(query),
            "".join(f"{k}:{signed_headers[k].strip()}\n" for k in sorted(signed_headers)),
            names,
            body_hash,
        ]
    )
    scope = f"{day}/{cfg.region}/{cfg.service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, when, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{cfg.secret_access_key.get_secret_value()}".encode()
    for part in (day, cfg.region, cfg.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = [(name, value) for name, value in signed_headers.items() if name != "host"]
    out.append(
        (
            "authorization",
            f"{ALGORITHM} Credential={cfg.access_key_id}/{scope}, SignedHeaders={names}, "
            f"Signature={signature}",
        )
    )
    return out


def _canonical_query(query: str) -> str:
    pairs = [
        (quote(k, safe=_UNRESERVED), quote(v, safe=_UNRESERVED))
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))
