"""A strict fake OCI Monitoring ingestion endpoint (`POST /20180401/metrics`) on 127.0.0.1, and a
fake instance metadata service + Auth Service federation endpoint for instance principals.

    key = ApiKey.create(tmp_path)                 # an RSA key and an ~/.oci/config-style file
    async with fake_oci_monitoring() as oci:
        oci.register(key.key_id, key.public_key)  # the keyId the SDK signs with
        ...  MonitoringClient(service_endpoint=oci.base_url) ...
        assert oci.duplicates() == []

What it checks, in the order the real service does (authentication before the body):
- the path (404 `NotAuthorizedOrNotFound`) and the method (405);
- the draft-cavage signature: `Authorization: Signature version="1",keyId,algorithm="rsa-sha256",
  headers,signature`, the headers list covering `date (request-target) host content-length
  content-type x-content-sha256`, `x-content-sha256` = base64(SHA-256(body)), `content-length`
  = the body's length, `date` within 5 minutes of the real clock, RSASSA-PKCS1-v1_5/SHA-256 with
  the public key registered for the keyId (`ST$<token>` for session tokens). Anything else is
  401 `NotAuthenticated`, the real service's answer;
- the body: JSON (bare `NaN`/`Infinity` are not JSON: 400 `CannotParseRequest`), camelCase keys
  only (an unknown key, e.g. snake_case `metric_data`, is 400 `CannotParseRequest`: the fake is
  stricter than documented here, on purpose, so a dict sent instead of the SDK's models fails),
  `metricData` present and non-empty (400 `MissingParameter`), `batchAtomicity` ATOMIC or
  NON_ATOMIC (default NON_ATOMIC), at most 50 unique streams (400 `InvalidParameter`), every
  stream's compartment one this fake authorizes (404 `NotAuthorizedOrNotFound`);
- each stream: namespace (starts with a letter; letters, digits, `_`; not `oci_`/`oracle_`),
  resourceGroup and name (starts with a letter; letters, digits, `.`, `_`, `-`, `$`), 1-20
  dimensions (key printable ASCII without spaces, 1-256 chars; value 1-512 chars), metadata
  keys/values <= 256 chars, >= 1 datapoint, each with an RFC 3339 timestamp less than 2 h in the
  past and less than 10 min in the future (by `wall`, default the real clock), a finite numeric
  value and, if given, an integer `count` > 0. Under NON_ATOMIC a bad stream comes back in
  `failedMetrics` (HTTP 200) and the rest is accepted; under ATOMIC the whole request is 400.

The fake is one tenancy: past `max_tps` (50) PostMetricData requests in the last second (by its
`clock`), a request is answered 429 `TooManyRequests` (counted in `throttled`), as the real
service throttles a tenancy's 50 TPS.

Every answer carries `opc-request-id`; errors are `{"code", "message"}` JSON. Accepted datapoints
are recorded one by one (`points`) so a test can assert exactly-once per (stream, timestamp), and
accepted requests (`posts`) with their stream count and arrival time (by `clock`).
Faults (500 for a while, 429 with Retry-After, held requests) come from tests/fakes/http_faults.py;
`fail_after(n, status)` fails one request after n more, `date_clock` skews the clock the `date`
header is checked against. `wall` (the datapoint window) and `clock` (timed faults) may be a
test's fake clock; the signature's `date` is always checked against `date_clock` (real time),
since the SDK signs with the real time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.fakes.http_faults import FakeHttpService, serve

PATH = "/20180401/metrics"
MAX_STREAMS = 50
MAX_DIMENSIONS = 20
MAX_PAST = timedelta(hours=2)
MAX_FUTURE = timedelta(minutes=10)
MAX_SKEW = 300.0
MAX_TPS = 50  # PostMetricData requests per second per tenancy
SIGNED_HEADERS = ("date", "(request-target)", "host", "content-length", "content-type", "x-content-sha256")

_NAMESPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._$-]*$")
_DIM_KEY = re.compile(r"^[\x21-\x7e]{1,256}$")
_OCID = re.compile(r"^ocid1\.(compartment|tenancy)\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_PARAM = re.compile(r'(\w+)="([^"]*)"')
_STREAM_KEYS = {"namespace", "resourceGroup", "compartmentId", "name", "dimensions", "metadata", "datapoints"}
_POINT_KEYS = {"timestamp", "value", "count"}

NOT_AUTHENTICATED = "The required information to complete authentication was not provided or was incorrect."

PublicKey = rsa.RSAPublicKey
StreamKey = tuple[str, str, str, tuple[tuple[str, str], ...]]  # namespace, compartment, name, dims


# --- keys, config files, tokens -----------------------------------------------------------------


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def fingerprint(key: PublicKey) -> str:
    """An OCI API key fingerprint: MD5 of the DER public key, colon-separated hex."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.md5(der).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def ocid(kind: str, realm: str = "oc1", region: str = "") -> str:
    return f"ocid1.{kind}.{realm}.{region}.aaaaaaaa{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ApiKey:
    """A user's API signing key and the `~/.oci/config`-style file that names it."""

    tenancy: str
    user: str
    private_key: rsa.RSAPrivateKey
    key_file: Path
    config_file: Path
    profile: str

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def key_id(self) -> str:
        return f"{self.tenancy}/{self.user}/{self.fingerprint}"

    @classmethod
    def create(cls, directory: Path, profile: str = "DEFAULT", region: str | None = "us-ashburn-1") -> ApiKey:
        directory.mkdir(parents=True, exist_ok=True)
        key = new_key()
        key_file = directory / f"oci_api_key_{uuid.uuid4().hex[:8]}.pem"
        key_file.write_bytes(private_pem(key))
        key_file.chmod(0o600)
        tenancy, user = ocid("tenancy"), ocid("user")
        lines = [
            f"[{profile}]",
            f"user={user}",
            f"fingerprint={fingerprint(key.public_key())}",
            f"key_file={key_file}",
            f"tenancy={tenancy}",
        ]
        if region:
            lines.append(f"region={region}")
        config_file = directory / "config"
        config_file.write_text("\n".join(lines) + "\n")
        config_file.chmod(0o600)
        return cls(tenancy, user, key, key_file, config_file, profile)


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT with `alg: none`: the SDK reads its claims without verifying it (the real service
    would check Oracle's signature; this fake trusts tokens by the key registered for them)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


def session_token(tenancy: str, lifetime: float = 3600.0, **claims: Any) -> str:
    now = int(time.time())
    base = {"iss": "authService.oracle.com", "sub": ocid("instance"), "res_tenant": tenancy}
    return unsigned_jwt({**base, "iat": now, "exp": now + int(lifetime), **claims})


# --- signature verification ----------------------------------------------------------------------


def verify_signature(
    request: web.BaseRequest,
    body: bytes,
    keys: dict[str, PublicKey],
    required: tuple[str, ...] = SIGNED_HEADERS,
    now: float | None = None,
) -> str | None:
    """The keyId if `request` is signed as OCI requires, else None."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Signature "):
        return None
    params = dict(_PARAM.findall(auth))
    if params.get("version") != "1" or params.get("algorithm") != "rsa-sha256":
        return None
    key_id, signed = str(params.get("keyId", "")), params.get("headers", "").split()
    if key_id not in keys or not set(required) <= set(signed) or "signature" not in params:
        return None
    if "x-content-sha256" in required:
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if request.headers.get("x-content-sha256") != digest:
            return None
        if request.headers.get("content-length") != str(len(body)):
            return None
    try:
        date = parsedate_to_datetime(request.headers.get("date", "")).timestamp()
    except (TypeError, ValueError):
        return None
    if abs((time.time() if now is None else now) - date) > MAX_SKEW:
        return None
    lines = []
    for name in signed:
        if name == "(request-target)":
            lines.append(f"(request-target): {request.method.lower()} {request.raw_path}")
        elif name in request.headers:
            lines.append(f"{name}: {request.headers[name]}")
        else:
            return None
    try:
        keys[key_id].verify(
            base64.b64decode(params["signature"]),
            "\n".join(lines).encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, ValueError):
        return None
    return key_id


# --- the Monitoring fake ----------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One accepted datapoint."""

    namespace: str
    compartment_id: str
    resource_group: str | None
    name: str
    dimensions: tuple[tuple[str, str], ...]  # sorted
    timestamp: float  # unix seconds
    value: float
    metadata: tuple[tuple[str, str], ...]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.dimensions)


@dataclass
class Post:
    """One request the fake processed (authenticated and parsed)."""

    key_id: str
    streams: int
    datapoints: int
    atomicity: str
    status: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    at: float = 0.0  # when it arrived, by the fake's `clock`


class _Invalid(Exception):
    """A stream the service refuses: its message as the service words it."""


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"code": code, "message": message}),
        content_type="application/json",
        headers={"opc-request-id": uuid.uuid4().hex.upper(), **(headers or {})},
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON literal {name}")


class FakeOciMonitoring(FakeHttpService):
    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, PublicKey] = {}
        self.compartments: set[str] = set()  # those the registered principals may post to
        self.wall: Callable[[], float] = time.time  # for the datapoint timestamp window
        self.date_clock: Callable[[], float] = time.time  # what the `date` header is checked against
        self._fail_after: tuple[int, int] | None = None
        self.points: list[Point] = []
        self.posts: list[Post] = []
        self.unauthenticated = 0  # requests answered 401
        self.max_tps = MAX_TPS
        self.throttled = 0  # requests answered 429 for going past max_tps
        self._recent: deque[float] = deque()  # arrival of the requests in the last second
        self.errors: list[tuple[int, str, str]] = []  # (status, code, message) of 4xx answers

    def register(self, key_id: str, public_key: PublicKey) -> None:
        """Accept requests signed by `public_key` under `key_id` (`ST$<token>` for a session)."""
        self.keys[key_id] = public_key

    def authorize(self, compartment_id: str) -> None:
        self.compartments.add(compartment_id)

    def fail_after(self, accepted: int, status: int = 500) -> None:
        """Answer `status` to one request, after `accepted` more have passed authentication."""
        self._fail_after = (accepted, status)

    # --- what tests assert on ---------------------------------------------------------------------
    def datapoints(self) -> Counter[tuple[str, tuple[tuple[str, str], ...], float]]:
        """How many times each (name, dimensions, timestamp) was accepted."""
        return Counter((p.name, p.dimensions, p.timestamp) for p in self.points)

    def duplicates(self) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        return [k for k, n in self.datapoints().items() if n > 1]

    def streams(self) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {(p.name, p.dimensions) for p in self.points}

    # --- serving ------------------------------------------------------------------------------
    def fault_answer(self, status: int, retry_after: float | None) -> web.Response:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        if status == 429:
            return _error(429, "TooManyRequests", "Too many requests for the tenancy.", headers)
        if status == 503:
            return _error(503, "ServiceUnavailable", "The service is currently unavailable.", headers)
        if status == 400:
            return _error(400, "InvalidParameter", "Injected: the request is invalid.", headers)
        return _error(status, "InternalServerError", "Internal error occurred.", headers)

    def _fail(self, status: int, code: str, message: str) -> web.Response:
        self.errors.append((status, code, message))
        if status == 401:
            self.unauthenticated += 1
        return _error(status, code, message)

    async def serve(self, request: web.BaseRequest) -> web.Response:
        arrived = self.clock()
        if request.path != PATH:
            return self._fail(
                404, "NotAuthorizedOrNotFound", "Authorization failed or requested resource not found."
            )
        if request.method != "POST":
            return self._fail(405, "MethodNotAllowed", f"Method {request.method} is not allowed.")
        while self._recent and arrived - self._recent[0] >= 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.max_tps:
            self.throttled += 1
            return _error(429, "TooManyRequests", "Too many requests for the tenancy.")
        self._recent.append(arrived)
        body = await request.read()
        key_id = verify_signature(request, body, self.keys, now=self.date_clock())
        if key_id is None:
            return self._fail(401, "NotAuthenticated", NOT_AUTHENTICATED)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return self._fail(400, "CannotParseRequest", "Content-Type must be application/json.")
        try:
            doc = json.loads(body, parse_constant=_reject_constant)
        except ValueError as exc:
            return self._fail(400, "CannotParseRequest", f"Request body is not valid JSON: {exc}")
        if not isinstance(doc, dict):
            return self._fail(400, "CannotParseRequest", "Request body must be a JSON object.")
        if self._fail_after is not None:
            left, status = self._fail_after
            self._fail_after = (left - 1, status) if left > 0 else None
            if left == 0:
                return self.fault_answer(status, None)
        unknown = set(doc) - {"metricData", "batchAtomicity"}
        if unknown:
            return self._fail(400, "CannotParseRequest", f"Unrecognized field(s): {sorted(unknown)}")
        data = doc.get("metricData")
        if not isinstance(data, list) or not data:
            return self._fail(400, "MissingParameter", "metricData is required and must not be empty.")
        atomicity = doc.get("batchAtomicity", "NON_ATOMIC")
        if atomicity not in ("ATOMIC", "NON_ATOMIC"):
            return self._fail(400, "InvalidParameter", "batchAtomicity must be ATOMIC or NON_ATOMIC.")
        for item in data:
            if not isinstance(item, dict):
                return self._fail(400, "CannotParseRequest", "metricData items must be objects.")
            extra = set(item) - _STREAM_KEYS
            if extra:
                return self._fail(400, "CannotParseRequest", f"Unrecognized field(s): {sorted(extra)}")
            for point in item.get("datapoints") or []:
                if not isinstance(point, dict) or set(point) - _POINT_KEYS:
                    return self._fail(400, "CannotParseRequest", "datapoints items must be objects.")
        identities = {
            json.dumps(
                [
                    i.get("namespace"),
                    i.get("resourceGroup"),
                    i.get("compartmentId"),
                    i.get("name"),
                    i.get("dimensions"),
                ],
                sort_keys=True,
            )
            for i in data
        }
        if len(identities) > MAX_STREAMS:
            return self._fail(
                400,
                "InvalidParameter",
                f"The request has {len(identities)} unique metric streams; the limit is {MAX_STREAMS}.",
            )
        for item in data:
            compartment = item.get("compartmentId")
            if (
                isinstance(compartment, str)
                and _OCID.match(compartment)
                and compartment not in self.compartments
            ):
                return self._fail(
                    404, "NotAuthorizedOrNotFound", "Authorization failed or requested resource not found."
                )
        now = self.wall()
        good: list[list[Point]] = []
        failed: list[dict[str, Any]] = []
        for item in data:
            try:
                good.append(self._stream(item, now))
            except _Invalid as exc:
                failed.append({"message": str(exc), "metricData": item})
        if failed and atomicity == "ATOMIC":
            return self._fail(400, "InvalidParameter", str(failed[0]["message"]))
        post = Post(key_id, len(identities), sum(len(g) for g in good), atomicity, 200, failed, at=arrived)
        self.posts.append(post)
        for points in good:
            self.points.extend(points)
        answer = {"failedMetricsCount": len(failed), "failedMetrics": failed}
        return web.Response(
            text=json.dumps(answer),
            content_type="application/json",
            headers={"opc-request-id": uuid.uuid4().hex.upper()},
        )

    def _stream(self, item: dict[str, Any], now: float) -> list[Point]:
        """The datapoints of one valid stream; raises _Invalid with the service's reason."""
        namespace, name = item.get("namespace"), item.get("name")
        compartment, group = item.get("compartmentId"), item.get("resourceGroup")
        if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
            raise _Invalid(
                "Invalid namespace: must start with a letter and contain only letters, digits and '_'."
            )
        if namespace.lower().startswith(("oci_", "oracle_")):
            raise _Invalid("Invalid namespace: the prefixes 'oci_' and 'oracle_' are reserved.")
        if not isinstance(compartment, str) or not _OCID.match(compartment):
            raise _Invalid("Invalid compartmentId.")
        if group is not None and (not isinstance(group, str) or not _NAME.match(group)):
            raise _Invalid("Invalid resourceGroup.")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _Invalid(
                "Invalid metric name: must start with a letter and contain only letters, digits, "
                "'.', '_', '-' and '$'."
            )
        dims = item.get("dimensions")
        if not isinstance(dims, dict) or not 1 <= len(dims) <= MAX_DIMENSIONS:
            raise _Invalid(f"A metric must have between 1 and {MAX_DIMENSIONS} dimensions.")
        for key, value in dims.items():
            if not _DIM_KEY.match(key):
                raise _Invalid(f"Invalid dimension key {key!r}: 1-256 printable ASCII characters, no spaces.")
            if not isinstance(value, str) or not 1 <= len(value) <= 512:
                raise _Invalid(f"Invalid value for dimension {key!r}: 1-512 characters.")
        metadata = item.get("metadata") or {}
        if not isinstance(metadata, dict) or any(
            not isinstance(v, str) or not 1 <= len(k) <= 256 or len(v) > 256 for k, v in metadata.items()
        ):
            raise _Invalid("Invalid metadata: keys and values are at most 256 characters.")
        points = item.get("datapoints")
        if not isinstance(points, list) or not points:
            raise _Invalid("At least one datapoint is required.")
        out = []
        low = now - MAX_PAST.total_seconds()
        high = now + MAX_FUTURE.total_seconds()
        for point in points:
            try:
                ts = datetime.fromisoformat(str(point.get("timestamp")))
            except ValueError:
                raise _Invalid("Invalid datapoint timestamp: expected RFC 3339.") from None
            if ts.tzinfo is None:
                raise _Invalid("Invalid datapoint timestamp: expected RFC 3339 with a time zone.")
            t = ts.timestamp()
            if not low < t < high:
                raise _Invalid(
                    "Datapoint timestamp out of range: must be less than 2 hours in the past and less "
                    "than 10 minutes in the future."
                )
            value = point.get("value")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise _Invalid("Invalid datapoint value.")
            count = point.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
                raise _Invalid("Invalid datapoint count: must be greater than 0.")
            out.append(
                Point(
                    namespace,
                    compartment,
                    group,
                    name,
                    tuple(sorted(dims.items())),
                    t,
                    float(value),
                    tuple(sorted(metadata.items())),
                )
            )
        return out


@asynccontextmanager
async def fake_oci_monitoring() -> AsyncIterator[FakeOciMonitoring]:
    """A FakeOciMonitoring on 127.0.0.1 (faults: tests/fakes/http_faults.py)."""
    async with serve(FakeOciMonitoring()) as fake:
        yield fake


# --- instance principals: metadata service + Auth Service federation ----------------------------


@dataclass(frozen=True)
class InstanceIdentity:
    """What the metadata service of an OCI VM hands out: a leaf certificate naming the tenancy
    (`OU=opc-tenant:<tenancy>`), its key, and an intermediate CA certificate."""

    tenancy: str
    leaf_key: rsa.RSAPrivateKey
    leaf_pem: bytes
    intermediate_pem: bytes

    @classmethod
    def create(cls) -> InstanceIdentity:
        tenancy = ocid("tenancy")
        ca_key, leaf_key = new_key(), new_key()
        now = datetime.now(UTC)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake intermediate CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        leaf_name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, ocid("instance")),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "opc-certtype:instance"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"opc-tenant:{tenancy}"),
            ]
        )
        leaf = (
            x509.CertificateBuilder()
            .subject_name(leaf_name)
            .issuer_name(ca_name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        return cls(tenancy, leaf_key, leaf.public_bytes(pem), ca.public_bytes(pem))

    @property
    def key_id(self) -> str:
        cert = x509.load_pem_x509_certificate(self.leaf_pem)
        sha1 = cert.fingerprint(hashes.SHA1())
        return f"{self.tenancy}/fed-x509/" + ":".join(f"{b:02X}" for b in sha1)


def _bare(pem: bytes | str) -> str:
    """A PEM's base64 body on one line, as the SDK sends certificates and keys."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    return "".join(line for line in text.splitlines() if line and not line.startswith("-----"))


class FakeOciIdentity(FakeHttpService):
    """The instance metadata service (`GET /opc/v2/...`, `Authorization: Bearer Oracle` required)
    and the Auth Service federation endpoint (`POST /v1/x509`) on one loopback port. A token is
    issued only for a request signed with the leaf certificate's key under
    `<tenancy>/fed-x509/<SHA-1 fingerprint>` that carries that certificate; the session public key
    it carries is registered with `monitoring` under `ST$<token>`."""

    def __init__(self, monitoring: FakeOciMonitoring, region: str = "us-ashburn-1") -> None:
        super().__init__()
        self.monitoring = monitoring
        self.region = region
        self.identity = InstanceIdentity.create()
        self.tokens: list[str] = []
        self.metadata_requests = 0

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/opc/v2"

    @property
    def federation_url(self) -> str:
        return f"{self.base_url}/v1/x509"

    async def serve(self, request: web.BaseRequest) -> web.Response:
        if request.path.startswith("/opc/v2/"):
            return self._metadata(request)
        if request.path == "/v1/x509" and request.method == "POST":
            return await self._federate(request)
        return _error(404, "NotFound", "Not found.")

    def _metadata(self, request: web.BaseRequest) -> web.Response:
        self.metadata_requests += 1
        if request.headers.get("Authorization") != "Bearer Oracle":
            return web.Response(status=401, text="Unauthorized")
        answers = {
            "/opc/v2/instance/region": self.region,
            "/opc/v2/identity/cert.pem": self.identity.leaf_pem.decode(),
            "/opc/v2/identity/key.pem": private_pem(self.identity.leaf_key).decode(),
            "/opc/v2/identity/intermediate.pem": self.identity.intermediate_pem.decode(),
        }
        if request.path not in answers:
            return web.Response(status=404, text="Not Found")
        return web.Response(text=answers[request.path])

    async def _federate(self, request: web.BaseRequest) -> web.Response:
        body = await request.read()
        keys = {self.identity.key_id: self.identity.leaf_key.public_key()}
        required = ("date", "(request-target)", "content-length", "content-type", "x-content-sha256")
        if verify_signature(request, body, keys, required) is None:
            return _error(401, "NotAuthenticated", NOT_AUTHENTICATED)
        try:
            doc = json.loads(body)
            certificate, public_key = str(doc["certificate"]), str(doc["publicKey"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "InvalidParameter", "certificate and publicKey are required.")
        if certificate != _bare(self.identity.leaf_pem):
            return _error(401, "NotAuthenticated", "The certificate is not the one the key signs for.")
        session_key = serialization.load_pem_public_key(
            f"-----BEGIN PUBLIC KEY-----\n{public_key}\n-----END PUBLIC KEY-----\n".encode()
        )
        if not isinstance(session_key, rsa.RSAPublicKey):
            return _error(400, "InvalidParameter", "publicKey must be an RSA key.")
        token = session_token(self.identity.tenancy)
        self.tokens.append(token)
        self.monitoring.register(f"ST${token}", session_key)
        return web.Response(text=json.dumps({"token": token}), content_type="application/json")


@asynccontextmanager
async def fake_oci_identity(monitoring: FakeOciMonitoring) -> AsyncIterator[FakeOciIdentity]:
    async with serve(FakeOciIdentity(monitoring)) as fake:
        yield fake
