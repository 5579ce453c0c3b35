"""HTTP(S) probe: one fresh connection per request, every phase timed, every failure a reason.

Built on asyncio streams and h11 (`checks/http_wire.py`) rather than an HTTP client library,
because the probe must see each phase on its own: resolve -> connect -> TLS handshake ->
processing (request written until the response head is read: time to first byte, for any sane
head) -> transfer (body). Phases are summed over redirects.

Guarantees:
- `run()` never raises for anything a target does; every failure is an `Outcome` with a reason.
- One deadline covers all redirects: `timeout`, or what a retry has left of it
  (`Check.time_left`); a timeout names the phase it interrupted.
- Memory per probe is bounded by `max_body_size` plus one read (64 KiB); a never-ending body
  ends as body_too_large (or timeout), never as a hang.
- Credentials (basic auth, bearer token, URL userinfo) are never logged and never appear in a
  message or in `target`; they are not sent to a host other than the original one.
- Failure precedence follows the pipeline: connect, tls, status, headers, body size, body regex,
  json, certificate expiry, latency. The first failure wins.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import re
import ssl
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

import h11
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    field_validator,
    model_validator,
)

from agent.headers import check_headers, token_problem
from agent.model import CheckResult, Reason, Sample, Status
from agent.types import ByteSize, Duration, Model, check_host, secret_value
from checks.base import Check, CheckConfig, Outcome, PerfDatum
from checks.http_wire import HttpWire
from checks.net import (
    Failure,
    IpProtocol,
    Phases,
    ProbeError,
    Regex,
    abort,
    open_connection,
    peer_text,
    printable,
    resolve,
    timeout_failure,
)
from checks.tls import TlsConfig, TlsReport, build_context, handshake

PHASES = ("resolve", "connect", "tls", "processing", "transfer")
_DOING = {
    "resolve": "resolving the host name",
    "connect": "connecting",
    "tls": "in the TLS handshake",
    "processing": "waiting for the response",
    "transfer": "reading the body",
}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "Mamori/0.1"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Headers that frame the message: the check sets them, a config may not.
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Everything printable in ASCII is left alone when a Location header is re-encoded.
_URL_SAFE = "".join(chr(c) for c in range(33, 127))
# A charset name is ASCII and at most 40 characters (RFC 2978).
_CHARSET = re.compile(r"\bcharset\s*=\s*[\"']?([A-Za-z0-9._:-]{1,40})", re.IGNORECASE)
# Python codecs that `codecs` counts as text encodings but that are not charsets a body is
# written in: they refuse errors="replace" (idna, undefined), fail on any non-ASCII byte
# (punycode), or turn backslash escapes in the body into other characters.
_NOT_CHARSETS = frozenset({"undefined", "idna", "punycode", "unicode-escape", "raw-unicode-escape"})


# --- config -------------------------------------------------------------------------------------


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

    path: str
    equals: JsonValue = None
    not_equals: JsonValue = None
    matches: Regex | None = None
    exists: bool | None = None
    lt: float | None = None
    gt: float | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        parse_json_path(path)
        return path

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


def _check_url(url: str) -> SplitResult:
    if not all(" " < c < "\x7f" for c in url):
        raise ValueError("URL must be printable ASCII without spaces (percent-encode other characters)")
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
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
    tls: TlsConfig = Field(default_factory=TlsConfig)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = _check_url(url)
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
        if self.method == "HEAD":
            # A HEAD response has no body: these rules would fail (or pass) on every run.
            for key in ("body_matches", "body_not_matches", "json"):
                if getattr(self, "json_conditions" if key == "json" else key):
                    raise ValueError(f"{key}: a HEAD response has no body to test (use method: GET)")
        return self


# --- one probe ----------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    reason: str
    version: float
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytearray = field(default_factory=bytearray)  # kept as read: no copy of up to max_body_size
    received: int = 0  # body bytes received (decoded from chunking), possibly past the limit
    too_large: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def text(self) -> str:
        """The body as text, in its charset (`body_charset`); bytes that do not decode become
        U+FFFD. Never raises."""
        try:
            return self.body.decode(body_charset(self.header("content-type")), errors="replace")
        except ValueError:  # a text codec that fails even with errors="replace"
            return self.body.decode("utf-8", errors="replace")


def body_charset(content_type: str | None) -> str:
    """The codec a body is read with: the charset of `content_type` when Python has it as a text
    encoding (not base64, zlib, rot13… nor `_NOT_CHARSETS`), else UTF-8, as a browser falls back
    for a label it does not know."""
    m = _CHARSET.search(content_type or "")
    if m is None:
        return "utf-8"
    try:
        info = codecs.lookup(m.group(1))
    except LookupError:
        return "utf-8"
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return "utf-8"
    return info.name


@dataclass
class _State:
    """Everything one run learns; samples are built from it whether the run failed or not."""

    phases: Phases = field(default_factory=lambda: Phases(PHASES))
    deadline: float | None = None
    dns_time: float | None = None
    ip_version: int = 0
    redirects: int = 0
    ssl: bool = False
    tls: TlsReport | None = None
    response: _Response | None = None
    regex_failed: bool = False


def _display(url: SplitResult) -> str:
    """scheme://host[:port]/path: no userinfo, no query, bounded."""
    host = url.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{url.port}" if url.port is not None else ""
    path = url.path or "/"
    path = path if len(path) <= 200 else path[:197] + "..."
    return f"{url.scheme}://{host}{port}{path}"


def _same_origin_host(a: SplitResult, b: SplitResult) -> bool:
    return (a.hostname or "").lower() == (b.hostname or "").lower()


def _name_for(url: str) -> str:
    try:
        text = _display(urlsplit(url)).split("://", 1)[-1]
    except ValueError:
        text = url
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", text).strip("/")[:128] or "http"


class HttpCheck(Check[HttpConfig]):
    type_name: ClassVar[str] = "http"
    config_model: ClassVar[type[CheckConfig]] = HttpConfig

    def __init__(self, config: HttpConfig) -> None:
        super().__init__(config)
        self._url = urlsplit(config.url)
        self._ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> HttpCheck:
        """A check for `url` without a config file (`agentctl check URL`): interval 60s, timeout 10s.

        Raises pydantic.ValidationError (a ValueError) for an invalid URL or override.
        """
        values: dict[str, Any] = {
            "name": _name_for(url),
            "type": "http",
            "url": url,
            "interval": 60.0,
            "timeout": 10.0,
        }
        return cls(HttpConfig.model_validate({**values, **overrides}))

    @property
    def target(self) -> str:
        return _display(self._url)

    def _context(self) -> ssl.SSLContext:
        # Built on first use and kept: an http:// check that never redirects to https never pays for it.
        if self._ssl_context is None:
            self._ssl_context = build_context(self.config.tls)
        return self._ssl_context

    async def run(self) -> Outcome:
        state = _State()
        try:
            async with asyncio.timeout(self.time_left()) as scope:
                state.deadline = scope.when()
                response = await self._follow(state)
        except TimeoutError:
            failure: Failure | None = timeout_failure(self.config.timeout, _DOING[state.phases.current])
        except ProbeError as exc:
            failure = exc.failure
        else:
            failure = self._evaluate(response, state)
        return self._outcome(state, failure)

    # --- request pipeline ---

    async def _follow(self, state: _State) -> _Response:
        url, method, body = self._url, self.config.method, self.config.body
        trail = [url]
        while True:
            response = await self._exchange(state, url, method, body)
            location = response.header("location")
            if location is None or not self._follows(response):
                return response
            next_url = self._next_url(url, location)
            if any(_display(u) == _display(next_url) and u.query == next_url.query for u in trail):
                path = " -> ".join(u.path or "/" for u in [*trail, next_url])
                raise ProbeError(Reason.REDIRECT_LIMIT, f"redirect loop: {path}")
            if state.redirects >= self.config.max_redirects:
                raise ProbeError(Reason.REDIRECT_LIMIT, f"more than {self.config.max_redirects} redirects")
            state.redirects += 1
            trail.append(next_url)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None  # what browsers do
            url = next_url

    def _follows(self, response: _Response) -> bool:
        redirecting = response.status in REDIRECT_STATUSES and response.header("location") is not None
        return self.config.follow_redirects and redirecting

    @staticmethod
    def _next_url(current: SplitResult, location: str) -> SplitResult:
        # Header values were decoded as latin-1, so this gives back the bytes sent; a browser
        # percent-encodes those bytes as they are (a UTF-8 Location stays UTF-8).
        raw = location.strip().encode("latin-1", errors="replace")
        try:
            # urljoin and urlsplit raise ValueError too, for a bracketed host that is not an IPv6 address.
            target = urljoin(current.geturl(), quote(raw, safe=_URL_SAFE))
            parts = urlsplit(target)
            _check_url(target)
        except ValueError:
            scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]{0,15}:", location.strip())
            shown = f" ({scheme.group()}...)" if scheme else ""
            raise ProbeError(Reason.PROTOCOL_ERROR, f"redirect to an invalid URL{shown}") from None
        return parts._replace(fragment="")

    async def _exchange(self, state: _State, url: SplitResult, method: str, body: str | None) -> _Response:
        """One request on a fresh connection; returns the response (body read unless it is followed)."""
        host, port = url.hostname or "", url.port or _DEFAULT_PORTS[url.scheme]
        phases = state.phases
        state.ssl, state.tls, state.response = url.scheme == "https", None, None
        with phases.phase("resolve"):
            address = await resolve(
                host, port, self.config.preferred_ip_protocol, self.config.ip_protocol_fallback
            )
        if state.dns_time is None:
            state.dns_time = phases.seconds["resolve"]
        writer: asyncio.StreamWriter | None = None
        try:
            with phases.phase("connect"):
                reader, writer = await open_connection(address)
            state.ip_version = address.ip_version
            if state.ssl:
                with phases.phase("tls"):
                    state.tls = await handshake(
                        writer, self._context(), self._sni(url), address, state.deadline
                    )
            wire = HttpWire(reader, writer)
            return await self._transact(state, wire, url, method, body)
        finally:
            abort(writer)

    def _sni(self, url: SplitResult) -> str:
        name = self.config.tls.server_name
        return name if name and _same_origin_host(url, self._url) else url.hostname or ""

    async def _transact(
        self, state: _State, wire: HttpWire, url: SplitResult, method: str, body: str | None
    ) -> _Response:
        payload = body.encode() if body is not None else None
        request = h11.Request(
            method=method, target=self._request_target(url), headers=self._headers(url, payload)
        )
        events: list[h11.Event] = [request]
        if payload:
            events.append(h11.Data(data=payload))
        with state.phases.phase("processing"):
            await wire.send(*events, h11.EndOfMessage())
            head = await wire.next_event()
            while isinstance(head, h11.InformationalResponse):
                head = await wire.next_event()
        if not isinstance(head, h11.Response):
            raise ProbeError(Reason.CONNECTION_RESET, "the server closed the connection without a response")
        response = _Response(
            status=head.status_code,
            reason=peer_text(head.reason),
            version=float(head.http_version.decode("ascii", "replace") or 0),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers],
        )
        state.response = response
        if not self._follows(response):
            with state.phases.phase("transfer"):
                await self._read_body(wire, response)
        return response

    @staticmethod
    def _request_target(url: SplitResult) -> str:
        return (url.path or "/") + (f"?{url.query}" if url.query else "")

    def _headers(self, url: SplitResult, payload: bytes | None) -> list[tuple[str, str]]:
        on_origin = _same_origin_host(url, self._url)
        host = url.hostname or ""
        if on_origin and self.config.tls.server_name:
            host = self.config.tls.server_name
        host = f"[{host}]" if ":" in host else host
        if url.port is not None and url.port != _DEFAULT_PORTS[url.scheme]:
            host = f"{host}:{url.port}"
        headers = {
            "host": ("Host", host),
            "user-agent": ("User-Agent", USER_AGENT),
            "accept": ("Accept", "*/*"),
        }
        for name, value in self.config.headers.items():
            if name.lower() != "host" or on_origin:
                headers[name.lower()] = (name, value)
        # Credentials go only to the original host, and never down from https to http.
        downgrade = self._url.scheme == "https" and url.scheme == "http"
        if on_origin and not downgrade and (auth := self._authorization()):
            headers["authorization"] = ("Authorization", auth)
        out = list(headers.values())
        if payload is not None:
            out.append(("Content-Length", str(len(payload))))
        out.append(("Connection", "close"))
        return out

    def _authorization(self) -> str | None:
        cfg = self.config
        if cfg.bearer_token is not None:
            return f"Bearer {secret_value(cfg.bearer_token)}"
        if cfg.basic_auth is not None:
            user, password = cfg.basic_auth.username, secret_value(cfg.basic_auth.password) or ""
        elif self._url.username is not None:
            user, password = unquote(self._url.username), unquote(self._url.password or "")
        else:
            return None
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    async def _read_body(self, wire: HttpWire, response: _Response) -> None:
        """Read until the end of the body or just past `max_body_size`, whichever comes first."""
        limit = self.config.max_body_size
        body = response.body
        while True:
            event = await wire.next_event()
            if isinstance(event, h11.Data):
                body.extend(event.data)
                if len(body) > limit:
                    response.received, response.too_large = len(body), True
                    del body[limit:]
                    return
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                response.received = len(body)
                return

    # --- verdict ---

    def _evaluate(self, response: _Response, state: _State) -> Failure | None:
        for rule in (
            self._status_rule,
            self._header_rule,
            self._size_rule,
            self._regex_rule,
            self._json_rule,
            self._cert_rule,
            self._latency_rule,
        ):
            failure = rule(response, state)
            if failure is not None:
                return failure
        return None

    def _status_rule(self, response: _Response, state: _State) -> Failure | None:
        if any(low <= response.status <= high for low, high in self.config.expected_status):
            return None
        expected = format_status(self.config.expected_status)
        return _critical(Reason.STATUS_MISMATCH, f"status {_status_line(response)}, expected {expected}")

    def _header_rule(self, response: _Response, state: _State) -> Failure | None:
        for condition in self.config.headers_match:
            if (why := condition.failure(response.headers)) is not None:
                return _critical(Reason.HEADER_MISMATCH, why)
        return None

    def _size_rule(self, response: _Response, state: _State) -> Failure | None:
        if response.too_large:
            return _critical(
                Reason.BODY_TOO_LARGE, f"body larger than max_body_size ({self.config.max_body_size} bytes)"
            )
        return None

    def _regex_rule(self, response: _Response, state: _State) -> Failure | None:
        if not (self.config.body_matches or self.config.body_not_matches):
            return None
        text = response.text()
        why = next(
            (f"body does not match /{p.pattern}/" for p in self.config.body_matches if not p.search(text)),
            None,
        )
        why = why or next(
            (f"body matches /{p.pattern}/" for p in self.config.body_not_matches if p.search(text)), None
        )
        if why is None:
            return None
        state.regex_failed = True
        return _critical(Reason.BODY_MISMATCH, why)

    def _json_rule(self, response: _Response, state: _State) -> Failure | None:
        if not self.config.json_conditions:
            return None
        try:
            doc = json.loads(response.text())
        except ValueError:
            return _critical(Reason.JSON_MISMATCH, "body is not JSON")
        except RecursionError:  # e.g. a megabyte of "[[[[": a hostile body must not look like a bug
            return _critical(Reason.JSON_MISMATCH, "body is JSON nested too deeply")
        for condition in self.config.json_conditions:
            if (why := condition.failure(doc)) is not None:
                return _critical(Reason.JSON_MISMATCH, why)
        return None

    def _cert_rule(self, response: _Response, state: _State) -> Failure | None:
        return state.tls.verdict(self.config.tls) if state.tls is not None else None

    def _latency_rule(self, response: _Response, state: _State) -> Failure | None:
        total, cfg = state.phases.total, self.config
        for limit, status in ((cfg.latency_critical, Status.CRITICAL), (cfg.latency_warning, Status.WARNING)):
            if limit is not None and total > limit:
                level = "critical" if status is Status.CRITICAL else "warning"
                return Failure(status, Reason.LATENCY, f"slow: {total:.3f}s > {limit:g}s ({level})")
        return None

    # --- results ---

    def _outcome(self, state: _State, failure: Failure | None) -> Outcome:
        samples = self._samples(state)
        if failure is not None:
            return Outcome(failure.status, failure.reason, failure.message, samples)
        r = state.response
        assert r is not None  # no failure means a response was evaluated
        via = (
            f" after {state.redirects} redirect{'s' if state.redirects != 1 else ''}"
            if state.redirects
            else ""
        )
        message = f"{_status_line(r)}, {r.received} bytes in {state.phases.total:.3f}s{via}"
        return Outcome(Status.OK, Reason.OK, message, samples)

    def _samples(self, state: _State) -> tuple[Sample, ...]:
        r = state.response
        dns = state.dns_time if state.dns_time is not None else state.phases.seconds["resolve"]
        samples = [
            *state.phases.samples("probe_http_duration_seconds"),
            Sample("probe_http_status_code", float(r.status if r else 0)),
            Sample("probe_http_version", r.version if r else 0.0),
            Sample("probe_http_redirects", float(state.redirects)),
            Sample("probe_http_ssl", 1.0 if state.ssl else 0.0),
            Sample("probe_http_content_length", float(r.received if r else 0)),
            Sample("probe_failed_due_to_regex", 1.0 if state.regex_failed else 0.0),
            Sample("probe_dns_lookup_time_seconds", round(dns, 9)),
            Sample("probe_ip_protocol", float(state.ip_version)),
        ]
        if state.tls is not None:
            samples.extend(state.tls.samples())
        return tuple(samples)

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        """check_http's perfdata: total time with the latency thresholds, each phase, body size."""
        phases = {
            dict(s.labels).get("phase"): s.value
            for s in result.samples
            if s.name == "probe_http_duration_seconds"
        }
        size = next((s.value for s in result.samples if s.name == "probe_http_content_length"), 0.0)
        cfg = self.config
        return [
            PerfDatum("time", result.duration, "s", cfg.latency_warning, cfg.latency_critical, min=0),
            *(PerfDatum(f"time_{p}", phases.get(p, 0.0), "s", min=0) for p in PHASES),
            PerfDatum("size", size, "B", min=0),
        ]


def _status_line(response: _Response) -> str:
    """`503 Service Unavailable`: the code and the reason phrase as sent (made printable)."""
    return f"{response.status} {response.reason}".strip()


def _critical(reason: Reason, message: str) -> Failure:
    return Failure(Status.CRITICAL, reason, message)
