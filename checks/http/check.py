"""HTTP(S) probe: one fresh connection per request, every phase timed, every failure a reason.

Built on asyncio streams and h11 (`wire.py`) rather than an HTTP client library,
because the probe must see each phase on its own: resolve -> connect -> TLS handshake ->
processing (request written until the response head is read: time to first byte, for any sane
head) -> transfer (body). Phases are summed over redirects.

Guarantees:
- `run()` never raises for anything a target does; every failure is a `CheckOutcome` with a reason.
- One deadline covers all redirects: `timeout`, or what a retry has left of it
  (`Check.time_left`); a timeout names the phase it interrupted.
- Memory per probe is bounded by `max_body_size` plus one read (64 KiB); a never-ending body
  ends as body_too_large (or timeout), never as a hang.
- Credentials (basic auth, bearer token, URL userinfo, a Google access token) are never logged
  and never appear in a message or in `target`; they are not sent to a host other than the
  original one.
- Failure precedence follows the pipeline: connect, tls, status, headers, body size, body regex,
  json, certificate expiry, latency. The first failure wins.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import ipaddress
import json
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

import h11

from agent.fields import secret_value
from agent.fleetview import witness_samples
from agent.model import CheckResult, Reason, Sample, Status
from checks.base import Check, CheckConfig, CheckOutcome, PerfDatum
from checks.http.config import DEFAULT_PORTS, HttpConfig, check_url, format_status
from checks.http.google import GoogleToken
from checks.http.sigv4 import sign
from checks.http.wire import HttpWire
from checks.net import (
    Failure,
    Phases,
    ProbeError,
    abort,
    open_connection,
    peer_text,
    resolve,
    timeout_failure,
)
from checks.tls import TlsReport, build_context, cert_days_perfdata, handshake

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
# Everything printable in ASCII is left alone when a Location header is re-encoded.
_URL_SAFE = "".join(chr(c) for c in range(33, 127))
# A charset name is ASCII and at most 40 characters (RFC 2978).
_CHARSET = re.compile(r"\bcharset\s*=\s*[\"']?([A-Za-z0-9._:-]{1,40})", re.IGNORECASE)
# Python codecs that `codecs` counts as text encodings but that are not charsets a body is
# written in: they refuse errors="replace" (idna, undefined), fail on any non-ASCII byte
# (punycode), or turn backslash escapes in the body into other characters.
_NOT_CHARSETS = frozenset({"undefined", "idna", "punycode", "unicode-escape", "raw-unicode-escape"})


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


class Answer:
    """The final response of a probe as a caller may read it: headers and body text."""

    __slots__ = ("_response",)

    def __init__(self, response: _Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    def headers(self, name: str) -> list[str]:
        """Every value of the header `name` (any case), in the order received."""
        name = name.lower()
        return [v for k, v in self._response.headers if k == name]

    def text(self) -> str:
        """The body (as far as it was read) as text, decoded as `_Response.text`. Never raises."""
        return self._response.text()


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
    # The body parsed as JSON once, for `json` conditions and `db_witness` alike: the document,
    # or (None, why not) when it is not JSON.
    parsed: tuple[Any, str | None] | None = None
    witness: str = "unknown"  # what db_witness reads in the answer (WITNESS_STATES)


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
        self._target = _display(self._url)
        self._ssl_context: ssl.SSLContext | None = None
        # The first request of every run is the same (URL, method, body and headers all come from
        # the config): built and validated by h11 once, not once per probe.
        self._origin_request: h11.Request | None = None
        # The access token of `google_service_account`, kept across runs until it nears its end.
        self.google: GoogleToken | None = None
        if config.google_service_account is not None:
            self.google = GoogleToken(config.google_service_account, self)
        self._bearer: str | None = None

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
        return self._target

    def _context(self) -> ssl.SSLContext:
        # Built on first use and kept: an http:// check that never redirects to https never pays for it.
        if self._ssl_context is None:
            self._ssl_context = build_context(self.config.tls)
        return self._ssl_context

    async def run(self) -> CheckOutcome:
        return (await self.probe())[0]

    async def probe(self) -> tuple[CheckOutcome, Answer | None]:
        """`run()`, and what the final response said (None when there was none), for a caller
        that reads more of it than the verdict (the `lb` check's session persistence). Never
        raises for anything a target does."""
        state = _State()
        try:
            async with asyncio.timeout(self.time_left()) as scope:
                state.deadline = scope.when()
                if self.google is not None:
                    self._bearer = await self.google.token()
                response = await self._follow(state)
        except TimeoutError:
            failure: Failure | None = timeout_failure(self.config.timeout, _DOING[state.phases.current])
        except ProbeError as exc:
            failure = exc.failure
        else:
            failure = self._evaluate(response, state)
            if self.config.db_witness is not None:
                # Whatever the status: a health endpoint answers 503 when its database is down.
                # A body cut at max_body_size is not read: its end may say something else.
                doc, not_json = (None, "too large") if response.too_large else _parse(response, state)
                state.witness = "unknown" if not_json else self.config.db_witness.state(doc)
        answer = Answer(state.response) if state.response is not None else None
        return self._outcome(state, failure), answer

    @property
    def witness_zone(self) -> str:
        """The zone of the answering app: `db_witness.zone`, else the agent's for an app on this
        host (a loopback URL), else "" (it may run anywhere)."""
        witness = self.config.db_witness
        if witness is not None and witness.zone is not None:
            return witness.zone
        return self.config.agent_zone if _is_loopback(self._url.hostname or "") else ""

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
            check_url(target)
        except ValueError:
            scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]{0,15}:", location.strip())
            shown = f" ({scheme.group()}...)" if scheme else ""
            raise ProbeError(Reason.PROTOCOL_ERROR, f"redirect to an invalid URL{shown}") from None
        return parts._replace(fragment="")

    async def _exchange(self, state: _State, url: SplitResult, method: str, body: str | None) -> _Response:
        """One request on a fresh connection; returns the response (body read unless it is followed)."""
        host, port = url.hostname or "", url.port or DEFAULT_PORTS[url.scheme]
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
        request = self._request(url, method, body, payload)
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

    def _request(self, url: SplitResult, method: str, body: str | None, payload: bytes | None) -> h11.Request:
        # A signed request carries its time, a Google token changes: built afresh every run.
        first = url is self._url and method == self.config.method and body == self.config.body
        first = first and self.config.aws_sigv4 is None and self.google is None
        if first and self._origin_request is not None:
            return self._origin_request
        request = h11.Request(
            method=method, target=self._request_target(url), headers=self._headers(url, method, payload)
        )
        if first:
            self._origin_request = request
        return request

    @staticmethod
    def _request_target(url: SplitResult) -> str:
        return (url.path or "/") + (f"?{url.query}" if url.query else "")

    def _headers(self, url: SplitResult, method: str, payload: bytes | None) -> list[tuple[str, str]]:
        on_origin = _same_origin_host(url, self._url)
        host = url.hostname or ""
        if on_origin and self.config.tls.server_name:
            host = self.config.tls.server_name
        host = f"[{host}]" if ":" in host else host
        if url.port is not None and url.port != DEFAULT_PORTS[url.scheme]:
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
        if on_origin and not downgrade and self.config.aws_sigv4 is not None:
            out += sign(self.config.aws_sigv4, method, host, url.path, url.query, payload)
        if payload is not None:
            out.append(("Content-Length", str(len(payload))))
        out.append(("Connection", "close"))
        return out

    def _authorization(self) -> str | None:
        cfg = self.config
        if self.google is not None:
            return f"Bearer {self._bearer}" if self._bearer else None
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
        doc, not_json = _parse(response, state)
        if not_json is not None:
            return _critical(Reason.JSON_MISMATCH, not_json)
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

    def _outcome(self, state: _State, failure: Failure | None) -> CheckOutcome:
        samples = self._samples(state)
        if failure is not None:
            return CheckOutcome(failure.status, failure.reason, failure.message, samples)
        r = state.response
        assert r is not None  # no failure means a response was evaluated
        via = (
            f" after {state.redirects} redirect{'s' if state.redirects != 1 else ''}"
            if state.redirects
            else ""
        )
        message = f"{_status_line(r)}, {r.received} bytes in {state.phases.total:.3f}s{via}"
        return CheckOutcome(Status.OK, Reason.OK, message, samples)

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
        if (witness := self.config.db_witness) is not None:
            samples.extend(
                witness_samples(witness.cluster, f"app:{self.name}", self.witness_zone, state.witness)
            )
        return tuple(samples)

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        """check_http's perfdata: total time with the latency thresholds, each phase, body size, and
        the certificate's days left with the expiry bands (over https)."""
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
            *cert_days_perfdata(result, cfg.tls),
        ]


def _parse(response: _Response, state: _State) -> tuple[Any, str | None]:
    """The body as a JSON document, or (None, why not); parsed once per run. Never raises."""
    if state.parsed is None:
        try:
            state.parsed = (json.loads(response.text()), None)
        except ValueError:
            state.parsed = (None, "body is not JSON")
        except RecursionError:  # e.g. a megabyte of "[[[[": a hostile body must not look like a bug
            state.parsed = (None, "body is JSON nested too deeply")
    return state.parsed


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _status_line(response: _Response) -> str:
    """`503 Service Unavailable`: the code and the reason phrase as sent (made printable)."""
    return f"{response.status} {response.reason}".strip()


def _critical(reason: Reason, message: str) -> Failure:
    return Failure(Status.CRITICAL, reason, message)
