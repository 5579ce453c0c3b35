"""A strict fake of the OCI Monitoring alarms API (`/20180401/alarms`) on 127.0.0.1.

    key = ApiKey.create(tmp_path)                     # tests/fakes/oci_monitoring.py
    async with fake_oci_alarms() as fake:
        fake.register(key.key_id, key.public_key)
        fake.authorize(compartment)
        ... MonitoringClient(config, service_endpoint=fake.base_url) ...
        assert fake.writes() == []

Operations, as the service documents them (`oci.monitoring.MonitoringClient`):
- `GET /20180401/alarms?compartmentId=…[&page][&limit][&displayName][&lifecycleState][&sortBy]
  [&sortOrder]` — ListAlarms: a JSON array of AlarmSummary; more pages announced by the
  `opc-next-page` header, fetched with `page=<that token>`. Only ACTIVE alarms unless
  `lifecycleState` says otherwise. Pages hold at most `min(limit, page_size)` items (`page_size`
  is this fake's knob, so a test can make the SDK paginate with a handful of alarms).
- `POST /20180401/alarms` — CreateAlarm (CreateAlarmDetails); honours `opc-retry-token`: the same
  token with the same body answers the alarm created the first time, with another body 409.
- `GET /20180401/alarms/{alarmId}` — GetAlarm.
- `PUT /20180401/alarms/{alarmId}` — UpdateAlarm (UpdateAlarmDetails, every field optional);
  `if-match` must equal the alarm's etag (412 otherwise); an alarm not ACTIVE is 409.
- `DELETE /20180401/alarms/{alarmId}` — DeleteAlarm (204; the alarm becomes DELETED).

Checked in the order the service does, authentication first: the path (404
`NotAuthorizedOrNotFound`), the method (405), the draft-cavage signature with the verifier of
tests/fakes/oci_monitoring.py (`date (request-target) host` for GET/DELETE, plus `content-length
content-type x-content-sha256` for POST/PUT; otherwise 401 `NotAuthenticated`), the compartment
(one this fake authorizes, else 404), then the body: JSON with camelCase keys only (an unknown key
is 400 `CannotParseRequest`), the required fields of CreateAlarmDetails (`displayName,
compartmentId, metricCompartmentId, namespace, query, severity, destinations, isEnabled`), and
400 `InvalidParameter` for: severity not CRITICAL|ERROR|WARNING|INFO; pendingDuration not ISO-8601
within PT1M..PT1H; repeatNotificationDuration not within PT1M..P30D; resolution other than `1m`;
messageFormat not RAW|PRETTY_JSON|ONS_OPTIMIZED; a namespace that does not start with a letter or
has characters other than letters, digits and `_` (service namespaces such as `oci_computeagent`
are valid for alarms); a resourceGroup outside `[A-Za-z][A-Za-z0-9._$-]*`; an OCID of the wrong
kind; destinations empty, not Notifications topic / Streaming stream OCIDs, or more than one per
service; a displayName empty or over 255 characters (*unverified* limit); a query that fails the
basic MQL check below.

The MQL check (deliberately independent of exporters/oci_alarms/mql.py's parser): joins of conditions with
`&&` / `||`; a condition is `metric[interval]{dim = "v", dim =~ "a|b*"}.grouping().statistic()`
or `….groupBy(d1, d2).statistic()` followed by `op number` or `in (a, b)` / `not in (a, b)`, or
ending in `absent()`; a nested condition is `(condition).grouping-function.statistic() …`.
Intervals 1m-60m, 1h-24h, 1d; statistics absent, count, increment, last, max, mean, min,
percentile(0<p<1), rate, sum.

Every answer carries `opc-request-id`; errors are `{"code", "message"}` JSON (401, 404, 400, 409,
412, 429 `TooManyRequests` with Retry-After, 500 `InternalServerError`). Faults: `throttle(n,
retry_after)` and `fail_for(seconds)` of tests/fakes/http_faults.py (before authentication),
`fail_next(n, status)` here (after authentication, like a real overload), and
`lose_next_answers(n)` (the write is done, the answer is a 500). Every request is recorded in
`calls`; `writes()` are the POST/PUT/DELETE answered 2xx.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes.http_faults import FakeHttpService, serve
from tests.fakes.oci_monitoring import NOT_AUTHENTICATED, SIGNED_HEADERS, PublicKey, verify_signature

BASE = "/20180401/alarms"
GET_SIGNED = ("date", "(request-target)", "host")
MAX_PAGE = 1000

REQUIRED = (
    "displayName",
    "compartmentId",
    "metricCompartmentId",
    "namespace",
    "query",
    "severity",
    "destinations",
    "isEnabled",
)
FIELDS = {
    *REQUIRED,
    "metricCompartmentIdInSubtree",
    "resourceGroup",
    "resolution",
    "pendingDuration",
    "body",
    "isNotificationsPerMetricDimensionEnabled",
    "messageFormat",
    "repeatNotificationDuration",
    "suppression",
    "freeformTags",
    "definedTags",
    "overrides",
    "ruleName",
    "notificationVersion",
    "notificationTitle",
    "evaluationSlackDuration",
    "alarmSummary",
}
SUMMARY_FIELDS = (
    "id",
    "displayName",
    "compartmentId",
    "metricCompartmentId",
    "namespace",
    "query",
    "severity",
    "destinations",
    "suppression",
    "isEnabled",
    "isNotificationsPerMetricDimensionEnabled",
    "freeformTags",
    "definedTags",
    "lifecycleState",
    "resourceGroup",
)
LIST_PARAMS = {
    "compartmentId",
    "page",
    "limit",
    "displayName",
    "lifecycleState",
    "sortBy",
    "sortOrder",
    "compartmentIdInSubtree",
}
SEVERITIES = ("CRITICAL", "ERROR", "WARNING", "INFO")
FORMATS = ("RAW", "PRETTY_JSON", "ONS_OPTIMIZED")

_COMPARTMENT = re.compile(r"^ocid1\.(compartment|tenancy)\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_DESTINATION = re.compile(r"^ocid1\.(onstopic|stream)\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_NAMESPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,255}$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._$-]*$")
_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")

NOT_FOUND = "Authorization failed or requested resource not found."
_BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("fake_body", dict)  # for the record of the call


# --- a basic MQL syntax check -----------------------------------------------------------------

_NUM = r"-?\d+(?:\.\d+)?"
_QUERY = re.compile(
    r"^(?P<metric>[A-Za-z][A-Za-z0-9._$-]*)\[(?P<interval>\d+[mhd])\]"
    r"(?:\{(?P<dims>[^{}]*)\})?"
    r"(?P<tail>(?:\.(?:grouping\(\)|groupBy\([^()]*\)))?\.[A-Za-z]+\([^()]*\))"
    r"\s*(?P<predicate>.*)$",
    re.S,
)
_TAIL = re.compile(
    r"^(?:\.(?:grouping\(\)|groupBy\((?P<by>[^()]*)\)))?\.(?P<stat>[A-Za-z]+)\((?P<arg>[^()]*)\)"
)
_DIM = re.compile(r'^\s*[A-Za-z][A-Za-z0-9_.-]*\s*(=~|=)\s*"[^"]*"\s*$')
_PREDICATE = re.compile(rf"^(?:(?:>=|<=|==|!=|>|<)\s*{_NUM}|(?:not\s+)?in\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\))$")
_STATISTICS = {"absent", "count", "increment", "last", "max", "mean", "min", "percentile", "rate", "sum"}


def _split_top(text: str, seps: tuple[str, ...]) -> list[str]:
    """`text` cut at `seps` outside parentheses and quotes."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
        elif not quoted and depth == 0 and any(text.startswith(s, i) for s in seps):
            parts.append(text[start:i])
            i += 2
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _interval_ok(interval: str) -> bool:
    n, unit = int(interval[:-1]), interval[-1]
    return (unit == "m" and 1 <= n <= 60) or (unit == "h" and 1 <= n <= 24) or (unit == "d" and n == 1)


def _tail_problem(tail: str, predicate: str) -> str | None:
    m = _TAIL.match(tail)
    if m is None or m.end() != len(tail):
        return "expected .groupBy(...)/.grouping() then .statistic()"
    if m.group("by") is not None and not all(
        re.match(r"^\s*[A-Za-z][A-Za-z0-9_.-]*\s*$", d) for d in m.group("by").split(",")
    ):
        return "invalid groupBy() dimensions"
    stat, arg = m.group("stat"), m.group("arg").strip()
    if stat not in _STATISTICS:
        return f"unknown statistic {stat}()"
    if stat == "percentile":
        try:
            if not 0 < float(arg) < 1:
                return "percentile() takes a number between 0 and 1"
        except ValueError:
            return "percentile() takes a number between 0 and 1"
    elif stat == "absent":
        if arg and not re.match(r"^\d+[mhd]?$", arg):
            return "invalid absent() detection period"
        if predicate:
            return "absent() takes no comparison"
        return None
    elif arg:
        return f"{stat}() takes no argument"
    if not predicate:
        return "an alarm query needs a comparison or absent()"
    if not _PREDICATE.match(predicate):
        return f"invalid comparison {predicate!r}"
    return None


def mql_problem(query: str) -> str | None:
    """Why the service would refuse `query` as an alarm query, or None."""
    for part in _split_top(query, ("&&", "||")):
        text = part.strip()
        if not text:
            return "empty operand of && or ||"
        if text.startswith("("):
            depth, end = 0, -1
            for i, c in enumerate(text):
                depth += c == "("
                depth -= c == ")"
                if depth == 0:
                    end = i
                    break
            if end < 0:
                return "unbalanced parentheses"
            inner = mql_problem(text[1:end])
            if inner:
                return inner
            rest = text[end + 1 :].strip()
            m = re.match(
                r"^((?:\.(?:grouping\(\)|groupBy\([^()]*\)))?\.[A-Za-z]+\([^()]*\))\s*(.*)$", rest, re.S
            )
            if m is None:
                return "a nested query needs .statistic() after its parentheses"
            problem = _tail_problem(m.group(1), m.group(2).strip())
            if problem:
                return problem
            continue
        m = _QUERY.match(text)
        if m is None:
            return "expected metric[interval]{dimensions}.statistic() and a comparison"
        if not _interval_ok(m.group("interval")):
            return f"invalid interval [{m.group('interval')}]"
        dims = m.group("dims")
        if dims is not None and not all(_DIM.match(d) for d in dims.split(",")):
            return "invalid dimension filter"
        problem = _tail_problem(m.group("tail"), m.group("predicate").strip())
        if problem:
            return problem
    return None


# --- durations ---------------------------------------------------------------------------------


def iso_seconds(value: str) -> int | None:
    m = _ISO.match(value)
    if m is None or value in ("P", "PT") or value.endswith("T"):
        return None
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


# --- the fake ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request the fake answered (faults included)."""

    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None
    status: int


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"code": code, "message": message}),
        content_type="application/json",
        headers={"opc-request-id": uuid.uuid4().hex.upper(), **(headers or {})},
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeOciAlarms(FakeHttpService):
    def __init__(self, region: str = "iad") -> None:
        super().__init__()
        self.region = region
        self.keys: dict[str, PublicKey] = {}
        self.compartments: set[str] = set()
        self.alarms: dict[str, dict[str, Any]] = {}  # id -> the Alarm, in creation order
        self.page_size = MAX_PAGE
        self.calls: list[Call] = []
        self._retry_tokens: dict[str, tuple[str, str]] = {}  # token -> (alarm id, body digest)
        self._fail_next: list[int] = []
        self._lose = 0

    def register(self, key_id: str, public_key: PublicKey) -> None:
        self.keys[key_id] = public_key

    def authorize(self, compartment_id: str) -> None:
        self.compartments.add(compartment_id)

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer `status` to the next `n` authenticated requests."""
        self._fail_next = [status] * n

    def lose_next_answers(self, n: int) -> None:
        """Process the next `n` writes, then answer 500 as if the answer had been lost on the way
        (what a retried create must survive without making a second alarm)."""
        self._lose = n

    def seed(self, **fields: Any) -> str:
        """Put an alarm there as if someone had created it (camelCase fields; validated)."""
        problem = self._validate(fields, create=True)
        assert problem is None, problem
        return self._create(fields)

    # --- what tests assert on ---------------------------------------------------------------------
    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method in ("POST", "PUT", "DELETE") and c.status < 300]

    def active(self) -> dict[str, dict[str, Any]]:
        """displayName -> alarm, of the ACTIVE alarms (the last one for a repeated name)."""
        return {a["displayName"]: a for a in self.alarms.values() if a["lifecycleState"] == "ACTIVE"}

    # --- serving ----------------------------------------------------------------------------------
    def fault_answer(self, status: int, retry_after: float | None) -> web.Response:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        if status == 429:
            return _error(429, "TooManyRequests", "Too many requests for the tenancy.", headers)
        if status == 503:
            return _error(503, "ServiceUnavailable", "The service is currently unavailable.", headers)
        return _error(status, "InternalServerError", "Internal error occurred.", headers)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        response = await super()._handle(request)
        body = request.get(_BODY)  # set by serve(); faults answer before it
        self.calls.append(Call(request.method, request.path, dict(request.query), body, response.status))
        return response

    async def serve(self, request: web.BaseRequest) -> web.Response:
        body = await request.read()
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            request[_BODY] = doc
        try:
            return self._route(request, body)
        except _Refused as exc:
            return _error(exc.status, exc.code, exc.message)

    def _route(self, request: web.BaseRequest, body: bytes) -> web.Response:
        path, method = request.path, request.method
        alarm_id = path[len(BASE) + 1 :] if path.startswith(BASE + "/") else None
        if path != BASE and (alarm_id is None or not alarm_id or "/" in alarm_id):
            raise _Refused(404, "NotAuthorizedOrNotFound", NOT_FOUND)
        allowed = ("GET", "POST") if alarm_id is None else ("GET", "PUT", "DELETE")
        if method not in allowed:
            raise _Refused(405, "MethodNotAllowed", f"Method {method} is not allowed.")
        required = SIGNED_HEADERS if method in ("POST", "PUT") else GET_SIGNED
        if verify_signature(request, body, self.keys, required) is None:
            raise _Refused(401, "NotAuthenticated", NOT_AUTHENTICATED)
        if self._fail_next:
            status = self._fail_next.pop(0)
            return self.fault_answer(status, None)
        if alarm_id is None:
            if method == "GET":
                return self._list(request)
            return self._lost(self._post(request, body))
        alarm = self.alarms.get(alarm_id)
        if alarm is None or alarm["compartmentId"] not in self.compartments:
            raise _Refused(404, "NotAuthorizedOrNotFound", NOT_FOUND)
        if method == "GET":
            return self._answer(alarm)
        if method == "DELETE":
            if alarm["lifecycleState"] != "ACTIVE":
                raise _Refused(409, "IncorrectState", "The alarm is not ACTIVE.")
            self._check_etag(request, alarm)
            alarm["lifecycleState"] = "DELETED"
            return self._lost(web.Response(status=204, headers={"opc-request-id": uuid.uuid4().hex.upper()}))
        return self._lost(self._put(request, body, alarm))

    def _lost(self, response: web.Response) -> web.Response:
        if self._lose > 0:
            self._lose -= 1
            return self.fault_answer(500, None)
        return response

    def _answer(self, alarm: dict[str, Any]) -> web.Response:
        return web.Response(
            text=json.dumps(alarm),
            content_type="application/json",
            headers={"opc-request-id": uuid.uuid4().hex.upper(), "etag": alarm["_etag"]},
        )

    @staticmethod
    def _check_etag(request: web.BaseRequest, alarm: dict[str, Any]) -> None:
        if_match = request.headers.get("if-match")
        if if_match is not None and if_match != alarm["_etag"]:
            raise _Refused(412, "NoEtagMatch", "The resource's etag does not match the If-Match header.")

    def _list(self, request: web.BaseRequest) -> web.Response:
        q = dict(parse_qsl(request.query_string, keep_blank_values=True))
        unknown = sorted(set(q) - LIST_PARAMS)
        if unknown:
            raise _Refused(400, "InvalidParameter", f"Unknown query parameter(s): {', '.join(unknown)}.")
        compartment = q.get("compartmentId")
        if not compartment:
            raise _Refused(400, "MissingParameter", "compartmentId is required.")
        if not _COMPARTMENT.match(compartment) or compartment not in self.compartments:
            raise _Refused(404, "NotAuthorizedOrNotFound", NOT_FOUND)
        if q.get("compartmentIdInSubtree") == "true" and not compartment.startswith("ocid1.tenancy."):
            raise _Refused(
                400, "InvalidParameter", "compartmentIdInSubtree may be true only for the tenancy OCID."
            )
        try:
            limit = int(q.get("limit", str(MAX_PAGE)))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise _Refused(400, "InvalidParameter", f"limit must be between 1 and {MAX_PAGE}.")
        state = q.get("lifecycleState", "ACTIVE")
        if state not in ("ACTIVE", "DELETING", "DELETED"):
            raise _Refused(400, "InvalidParameter", "Invalid lifecycleState.")
        sort_by, order = q.get("sortBy"), q.get("sortOrder", "ASC")
        if sort_by not in (None, "displayName", "severity") or order not in ("ASC", "DESC"):
            raise _Refused(400, "InvalidParameter", "Invalid sortBy or sortOrder.")
        start = 0
        if "page" in q:
            try:
                start = int(base64.urlsafe_b64decode(q["page"].encode()).decode().removeprefix("offset:"))
            except ValueError:
                raise _Refused(400, "InvalidParameter", "Invalid page token.") from None
        items = [
            a
            for a in self.alarms.values()
            if a["compartmentId"] == compartment
            and a["lifecycleState"] == state
            and ("displayName" not in q or a["displayName"] == q["displayName"])
        ]
        if sort_by:
            items.sort(key=lambda a: str(a[sort_by]), reverse=order == "DESC")
        size = min(limit, self.page_size)
        page = items[start : start + size]
        headers = {"opc-request-id": uuid.uuid4().hex.upper()}
        if start + size < len(items):
            headers["opc-next-page"] = base64.urlsafe_b64encode(f"offset:{start + size}".encode()).decode()
        summaries = [{k: a.get(k) for k in SUMMARY_FIELDS} for a in page]
        return web.Response(text=json.dumps(summaries), content_type="application/json", headers=headers)

    def _parse(self, request: web.BaseRequest, body: bytes) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _Refused(400, "CannotParseRequest", "Content-Type must be application/json.")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise _Refused(400, "CannotParseRequest", f"Request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _Refused(400, "CannotParseRequest", "Request body must be a JSON object.")
        unknown = sorted(set(doc) - FIELDS)
        if unknown:
            raise _Refused(400, "CannotParseRequest", f"Unrecognized field(s): {unknown}")
        return doc

    def _post(self, request: web.BaseRequest, body: bytes) -> web.Response:
        doc = self._parse(request, body)
        self._authorized(doc)
        problem = self._validate(doc, create=True)
        if problem:
            raise _Refused(400, "InvalidParameter", problem)
        token = request.headers.get("opc-retry-token")
        digest = base64.b64encode(body).decode()
        if token is not None and token in self._retry_tokens:
            alarm_id, seen = self._retry_tokens[token]
            if seen != digest:
                raise _Refused(409, "InvalidatedRetryToken", "The retry token was used for another request.")
            return self._answer(self.alarms[alarm_id])
        alarm_id = self._create(doc)
        if token is not None:
            self._retry_tokens[token] = (alarm_id, digest)
        return self._answer(self.alarms[alarm_id])

    def _put(self, request: web.BaseRequest, body: bytes, alarm: dict[str, Any]) -> web.Response:
        doc = self._parse(request, body)
        if alarm["lifecycleState"] != "ACTIVE":
            raise _Refused(409, "IncorrectState", "The alarm is not ACTIVE.")
        self._check_etag(request, alarm)
        self._authorized(doc)
        problem = self._validate(doc, create=False)
        if problem:
            raise _Refused(400, "InvalidParameter", problem)
        alarm.update(doc)
        alarm["timeUpdated"] = _now()
        alarm["_etag"] = uuid.uuid4().hex
        return self._answer(alarm)

    def _authorized(self, doc: dict[str, Any]) -> None:
        for key in ("compartmentId", "metricCompartmentId"):
            value = doc.get(key)
            if isinstance(value, str) and _COMPARTMENT.match(value) and value not in self.compartments:
                raise _Refused(404, "NotAuthorizedOrNotFound", NOT_FOUND)

    def _create(self, doc: dict[str, Any]) -> str:
        alarm_id = f"ocid1.alarm.oc1.{self.region}.aaaaaaaa{uuid.uuid4().hex}"
        now = _now()
        alarm: dict[str, Any] = {
            "id": alarm_id,
            "metricCompartmentIdInSubtree": False,
            "resourceGroup": None,
            "resolution": "1m",
            "pendingDuration": "PT1M",
            "body": None,
            "isNotificationsPerMetricDimensionEnabled": False,
            "messageFormat": "RAW",
            "repeatNotificationDuration": None,
            "suppression": None,
            "freeformTags": {},
            "definedTags": {},
            **doc,
            "lifecycleState": "ACTIVE",
            "timeCreated": now,
            "timeUpdated": now,
        }
        alarm["_etag"] = uuid.uuid4().hex
        self.alarms[alarm_id] = alarm
        return alarm_id

    @staticmethod
    def _validate(doc: dict[str, Any], create: bool) -> str | None:
        """The service's reason to refuse the details, or None."""
        if create:
            missing = [k for k in REQUIRED if doc.get(k) is None]
            if missing:
                return f"Missing required field(s): {', '.join(missing)}."
        strings = (
            "displayName",
            "compartmentId",
            "metricCompartmentId",
            "namespace",
            "query",
            "severity",
            "resourceGroup",
            "resolution",
            "pendingDuration",
            "body",
            "messageFormat",
            "repeatNotificationDuration",
        )
        for key in strings:
            if key in doc and doc[key] is not None and not isinstance(doc[key], str):
                return f"{key} must be a string."
        for key in ("isEnabled", "isNotificationsPerMetricDimensionEnabled", "metricCompartmentIdInSubtree"):
            if key in doc and not isinstance(doc[key], bool):
                return f"{key} must be a boolean."
        name = doc.get("displayName")
        if name is not None and not 1 <= len(name) <= 255:
            return "displayName must be 1 to 255 characters."
        for key in ("compartmentId", "metricCompartmentId"):
            if key in doc and not _COMPARTMENT.match(str(doc[key])):
                return f"Invalid {key}: not a compartment or tenancy OCID."
        if "namespace" in doc and not _NAMESPACE.match(str(doc["namespace"])):
            return "Invalid namespace: must start with a letter and contain only letters, digits and '_'."
        group = doc.get("resourceGroup")
        if group is not None and not _NAME.match(group):
            return "Invalid resourceGroup."
        if "severity" in doc and doc["severity"] not in SEVERITIES:
            return f"Invalid severity: must be one of {', '.join(SEVERITIES)}."
        if "resolution" in doc and doc["resolution"] != "1m":
            return "Invalid resolution: the supported value is 1m."
        if "messageFormat" in doc and doc["messageFormat"] not in FORMATS:
            return f"Invalid messageFormat: must be one of {', '.join(FORMATS)}."
        if "pendingDuration" in doc:
            seconds = iso_seconds(str(doc["pendingDuration"]))
            if seconds is None or not 60 <= seconds <= 3600:
                return "Invalid pendingDuration: an ISO 8601 duration from PT1M to PT1H."
        if doc.get("repeatNotificationDuration") is not None:
            seconds = iso_seconds(str(doc["repeatNotificationDuration"]))
            if seconds is None or not 60 <= seconds <= 30 * 86400:
                return "Invalid repeatNotificationDuration: an ISO 8601 duration from PT1M to P30D."
        if "destinations" in doc:
            dest = doc["destinations"]
            if not isinstance(dest, list) or not dest:
                return "destinations must be a non-empty list."
            kinds = []
            for d in dest:
                m = _DESTINATION.match(d) if isinstance(d, str) else None
                if m is None:
                    return f"Invalid destination {d!r}: a Notifications topic or Streaming stream OCID."
                kinds.append(m.group(1))
            if len(kinds) != len(set(kinds)):
                return "At most one destination per destination service."
        tags = doc.get("freeformTags")
        if tags is not None and (
            not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values())
        ):
            return "freeformTags must map strings to strings."
        if "query" in doc:
            problem = mql_problem(str(doc["query"]))
            if problem:
                return f"Invalid query: {problem}."
        return None


@asynccontextmanager
async def fake_oci_alarms() -> AsyncIterator[FakeOciAlarms]:
    """A FakeOciAlarms on 127.0.0.1 (faults: tests/fakes/http_faults.py and `fail_next`)."""
    async with serve(FakeOciAlarms()) as fake:
        yield fake
