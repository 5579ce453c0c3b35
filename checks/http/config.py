"""The `http` check's config: URL, method, headers, credentials, and the rules a response must
meet (status, headers, body, JSON, certificate, latency)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    field_validator,
    model_validator,
)

from agent.fields import ByteSize, Duration, Model, check_host
from agent.headers import check_headers, token_problem
from checks.base import CheckConfig
from checks.http.google import GoogleServiceAccount
from checks.http.sigv4 import AwsSigV4
from checks.net import (
    IpProtocol,
    Regex,
    printable,
)
from checks.tls import TlsConfig

# The scheme's default port; the schemes a URL may have.
DEFAULT_PORTS = {"http": 80, "https": 443}
# Headers that frame the message: the check sets them, a config may not.
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_status(value: Any) -> Any:
    """200, "200", "2xx" or "200-299" -> (low, high). A (low, high) tuple (the default) passes."""
    if isinstance(value, tuple):
        return value
    text = str(value).strip().lower() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if re.fullmatch(r"[1-5]xx", text):
        low = int(text[0]) * 100
        return (low, low + 99)
    m = re.fullmatch(r"(\d{3})(?:\s*-\s*(\d{3}))?", text)
    if m:
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if 100 <= low <= high <= 599:
            return (low, high)
    raise ValueError(
        f"invalid expected_status {value!r}: expected a code (200), a class (2xx) or a range (200-299)"
    )


StatusRange = Annotated[tuple[int, int], BeforeValidator(parse_status)]


def format_status(ranges: tuple[tuple[int, int], ...]) -> str:
    def one(low: int, high: int) -> str:
        if low == high:
            return str(low)
        if low % 100 == 0 and high == low + 99:
            return f"{low // 100}xx"
        return f"{low}-{high}"

    return ", ".join(one(*r) for r in ranges)


_PATH_TOKEN = re.compile(r"(\.?)([^.\[\]]+)|\[(-?\d+)\]")


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """`db.status`, `items[0].name`, `[1]` -> ("db", "status"), ("items", 0, "name"), (1,)."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        # A name needs a dot before it, except at the very start.
        if m is None or (m.group(2) is not None and bool(m.group(1)) == (pos == 0)):
            raise ValueError(f"invalid json path {path!r}: expected e.g. db.status or items[0].name")
        tokens.append(m.group(2) if m.group(2) is not None else int(m.group(3)))
        pos = m.end()
    if not tokens:
        raise ValueError("json path is empty")
    return tuple(tokens)


def _json_path(path: str) -> str:
    parse_json_path(path)
    return path


JsonPath = Annotated[str, AfterValidator(_json_path)]  # checked at load, parsed again per use

_MISSING: Any = object()
_OPERATORS = ("equals", "not_equals", "matches", "exists", "lt", "gt")


def _lookup(doc: Any, tokens: tuple[str | int, ...]) -> Any:
    node = doc
    for token in tokens:
        in_list = isinstance(token, int) and isinstance(node, list) and -len(node) <= token < len(node)
        in_dict = isinstance(token, str) and isinstance(node, dict) and token in node
        if not (in_list or in_dict):
            return _MISSING
        node = node[token]
    return node


def _same(a: Any, b: Any) -> bool:
    # JSON true is not 1: compare booleans only with booleans.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return printable(text if len(text) <= 60 else text[:57] + "...")


class JsonCondition(Model):
    """One condition on the JSON body: `path` and exactly one operator."""

    path: JsonPath
    equals: JsonValue = None
    not_equals: JsonValue = None
    matches: Regex | None = None
    exists: bool | None = None
    lt: float | None = None
    gt: float | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> JsonCondition:
        given = [op for op in _OPERATORS if op in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(
                f"a json condition needs exactly one of {', '.join(_OPERATORS)} (got {len(given)})"
            )
        if given[0] not in ("equals", "not_equals") and getattr(self, given[0]) is None:
            raise ValueError(f"{given[0]} must not be null")
        return self

    @property
    def operator(self) -> str:
        return next(op for op in _OPERATORS if op in self.model_fields_set)

    def failure(self, doc: Any) -> str | None:
        """Why `doc` fails this condition, or None if it holds."""
        value = _lookup(doc, parse_json_path(self.path))
        op = self.operator
        if op == "exists":
            if (value is not _MISSING) != self.exists:
                return f"json {self.path} is {'missing' if self.exists else 'present, expected absent'}"
            return None
        if value is _MISSING:
            return f"json {self.path} not found"
        if op == "equals" and not _same(value, self.equals):
            return f"json {self.path} is {_show(value)}, expected {_show(self.equals)}"
        if op == "not_equals" and _same(value, self.not_equals):
            return f"json {self.path} is {_show(value)}, expected anything else"
        if op == "matches" and self.matches is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            if not self.matches.search(text):
                return f"json {self.path} is {_show(value)}, expected to match /{self.matches.pattern}/"
        if op in ("lt", "gt"):
            return self._compare(value, op)
        return None

    def _compare(self, value: Any, op: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"json {self.path} is {_show(value)}, not a number"
        limit = self.lt if op == "lt" else self.gt
        assert limit is not None  # guaranteed by _one_operator
        ok = value < limit if op == "lt" else value > limit
        return (
            None
            if ok
            else f"json {self.path} is {_show(value)}, expected {'<' if op == 'lt' else '>'} {limit:g}"
        )


# A label value: what the postgres check accepts as a cluster's name, and as a zone.
LABEL_VALUE = r"^[A-Za-z0-9_.:-]{1,64}$"
WitnessValue = str | bool | int | float


def _matches(value: Any, wanted: tuple[WitnessValue, ...]) -> bool:
    # Strings compare without case: Spring Boot's actuator says "UP", Next.js apps say "up".
    if isinstance(value, str):
        return any(isinstance(w, str) and w.casefold() == value.casefold() for w in wanted)
    return any(_same(value, w) for w in wanted)


class DbWitness(Model):
    """The app as a witness of a Postgres cluster's primary: where its health answer says
    whether it reaches the database, and which values mean up or down."""

    cluster: str = Field(pattern=LABEL_VALUE)
    path: JsonPath = "db.status"
    up: tuple[WitnessValue, ...] = Field(default=("up", "ok", True), min_length=1)
    down: tuple[WitnessValue, ...] = Field(default=("down", "error", False), min_length=1)
    zone: str | None = Field(default=None, pattern=LABEL_VALUE)

    @model_validator(mode="after")
    def _disjoint(self) -> DbWitness:
        both = [_show(v) for v in self.up if _matches(v, self.down)]
        if both:
            raise ValueError(f"a value cannot mean both up and down: {', '.join(both)}")
        return self

    def state(self, doc: Any) -> str:
        """reachable, down or unknown (one of agent.catalog.WITNESS_STATES) for a JSON document."""
        value = _lookup(doc, parse_json_path(self.path))
        if value is _MISSING:
            return "unknown"
        if _matches(value, self.up):
            return "reachable"
        if _matches(value, self.down):
            return "down"
        return "unknown"


class HeaderCondition(Model):
    """A response header must match a regex, or (`absent: true`) must not be present."""

    name: str = Field(min_length=1)
    matches: Regex | None = None
    absent: bool | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> HeaderCondition:
        if (self.matches is None) == (self.absent is None):
            raise ValueError("a header condition needs exactly one of matches or absent")
        return self

    def failure(self, headers: list[tuple[str, str]]) -> str | None:
        values = [v for k, v in headers if k == self.name.lower()]
        if self.absent is not None:
            if bool(values) == self.absent:
                return f"header {self.name} {'present, expected absent' if values else 'missing'}"
            return None
        if not values:
            return f"header {self.name} missing"
        joined = ", ".join(values)
        if self.matches is not None and not self.matches.search(joined):
            shown = joined if len(joined) <= 60 else joined[:57] + "..."
            return f"header {self.name}: {shown!r} does not match /{self.matches.pattern}/"
        return None


class BasicAuth(Model):
    username: str
    password: SecretStr  # or password_file

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("must not contain ':' (Basic auth joins user and password with it)")
        if any(c < " " or c == "\x7f" for c in value):
            raise ValueError("contains a control character or a line break")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        # Base64 would carry a line break, but one is always a mistake (a file with two newlines).
        if any(c < " " or c == "\x7f" for c in value.get_secret_value()):
            raise ValueError("contains a control character or a line break")
        return value


def check_url(url: str) -> SplitResult:
    # Printable ASCII without spaces (str methods: a loop over characters costs a config of
    # 10 000 checks a tenth of a second).
    if not (url.isascii() and url.isprintable()) or " " in url:
        raise ValueError("URL must be printable ASCII without spaces (percent-encode other characters)")
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}: expected http or https")
    if not parts.hostname:
        raise ValueError("URL has no host")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ValueError("URL has an invalid port") from None
    return parts


class HttpConfig(CheckConfig):
    # A validation error never repeats the input: it may be a token or a URL with a password.
    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["http"] = "http"
    url: str = Field(repr=False)  # it may carry userinfo or a token in the query: keep it out of logs
    method: str = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    basic_auth: BasicAuth | None = None
    bearer_token: SecretStr | None = None
    aws_sigv4: AwsSigV4 | None = None  # sign every request to the URL's host (S3 HeadBucket)
    # An OAuth 2.0 token from a service account's key, sent as a bearer token (Google APIs).
    google_service_account: GoogleServiceAccount | None = None
    expected_status: tuple[StatusRange, ...] = Field(default_factory=lambda: ((200, 299),), min_length=1)
    body_matches: tuple[Regex, ...] = ()
    body_not_matches: tuple[Regex, ...] = ()
    json_conditions: tuple[JsonCondition, ...] = Field(default=(), alias="json")
    headers_match: tuple[HeaderCondition, ...] = ()
    follow_redirects: bool = True
    max_redirects: int = Field(default=10, ge=0, le=100)
    max_body_size: ByteSize = 1024 * 1024
    latency_warning: Duration | None = None
    latency_critical: Duration | None = None
    preferred_ip_protocol: IpProtocol = "ip4"
    ip_protocol_fallback: bool = True
    # One shared default (the model is frozen): building one per check costs 10 000 checks 0.2 s.
    tls: TlsConfig = TlsConfig()
    # Evidence for a Postgres cluster's failover verdict (issue 15), not a health rule.
    db_witness: DbWitness | None = None
    # The agent's `labels.zone` (filled in by agent/config.py): the zone of an app on this host.
    agent_zone: str = Field(default="", max_length=1024)

    def require(self) -> None:
        if self.google_service_account is not None:
            from checks.http.google import require

            require(self.name)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = check_url(url)
        if parts.port == 0:
            raise ValueError("URL has an invalid port: 0 (expected 1-65535)")
        # A name with quotes or brackets left in it would only ever be a failed DNS lookup.
        check_host(parts.hostname or "")
        return url

    @field_validator("method")
    @classmethod
    def _method(cls, method: str) -> str:
        if not _TOKEN.match(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        return method.upper()

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        check_headers(headers)
        for name in headers:
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by the check and cannot be configured")
        # HTTP ignores surrounding whitespace in a value and h11 refuses to send it.
        return {name: value.strip() for name, value in headers.items()}

    @field_validator("bearer_token")
    @classmethod
    def _bearer_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := token_problem(value.get_secret_value())) is not None:
            raise ValueError(f"the token {problem}")
        return value

    @model_validator(mode="after")
    def _cross_fields(self) -> HttpConfig:
        warning, critical = self.latency_warning, self.latency_critical
        if warning is not None and critical is not None and warning >= critical:
            raise ValueError(
                f"latency_warning ({warning:g}s) must be less than latency_critical ({critical:g}s)"
            )
        if self.basic_auth is not None and self.bearer_token is not None:
            raise ValueError("give basic_auth or bearer_token, not both")
        if urlsplit(self.url).username is not None and (self.basic_auth or self.bearer_token):
            raise ValueError("the URL has credentials: do not also give basic_auth or bearer_token")
        if self.aws_sigv4 is not None and (
            self.basic_auth or self.bearer_token or urlsplit(self.url).username
        ):
            raise ValueError("aws_sigv4 signs the request itself: give no other credentials")
        if self.google_service_account is not None and (
            self.basic_auth or self.bearer_token or self.aws_sigv4 or urlsplit(self.url).username
        ):
            raise ValueError("google_service_account sends a token of its own: give no other credentials")
        if self.method == "HEAD":
            # A HEAD response has no body: these rules would fail (or pass) on every run.
            for key in ("body_matches", "body_not_matches", "json"):
                if getattr(self, "json_conditions" if key == "json" else key):
                    raise ValueError(f"{key}: a HEAD response has no body to test (use method: GET)")
            if self.db_witness is not None:
                raise ValueError("db_witness: a HEAD response has no body to read (use method: GET)")
        return self
