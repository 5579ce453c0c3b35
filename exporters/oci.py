"""Push check results to OCI Monitoring as custom metrics (`type: oci`; extra `mamori[oci]`).

    exporters:
      - type: oci
        compartment_id: ocid1.compartment.oc1..aaaa...
        namespace: mamori
        region: ap-tokyo-1
        auth: instance_principal

Each result becomes the samples of `exporters.samples.flatten()` (the series `/metrics` shows),
one metric stream per (name, dimensions), each datapoint at the time the check ran. Dimensions are
the sample's labels (`check`, `target`, ...) plus `host` (the agent's name), the agent's labels
and the static `dimensions` of this config. Everything the service enforces that a config decides
(namespace, resource group, static dimensions, the 20-dimension limit, the compartment OCID, the
OCI config file and profile) is checked at load; what only data decides is defended at send time
(see docs/exporters/oci.md for the rules and for what is dropped and counted).

Delivery: one `PostMetricData` per push with at most 50 streams (the service's limit) and 1 000
datapoints, filled with results from the front of the batch; the result that would cross a limit
has its first streams in this request and the rest in the next (a result with more than 50
streams first goes 50 streams a request). `NON_ATOMIC`, so a refused stream never blocks the rest.
The tenancy allows 50 requests per second for the whole fleet, so requests are made full: the pump
holds back a push that would not fill one for up to `linger` (`fills()`), and requests start at
most `max_requests_per_second` apart, a backlog's drain included. The SDK runs in a worker thread
with its own retries and circuit breaker off: the pump (exporters/base.py) retries with backoff,
and nothing the service accepted is sent again, except after a timeout on a request the service
did accept, or a restart between the two requests a result was cut over (at-least-once, see the
docs).
"""

from __future__ import annotations

import asyncio
import configparser
import hashlib
import ipaddress
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.backoff import retry_after_header
from agent.catalog import CHECK_METRICS, PER_CHECK_LABELS
from agent.delivery.outcome import PushResult
from agent.errors import StartupError
from agent.fields import Duration, parse_duration, secret_value
from agent.files import skip
from exporters.base import ExportContext, ExporterBase
from exporters.config import ExtraMissing
from exporters.oci_client import NoRegion, import_sdk, monitoring_client, signer_for
from exporters.samples import flatten, unit

if TYPE_CHECKING:
    from agent.model import CheckResult
    from agent.outbox import Record

log = logging.getLogger("mamori.exporters.oci")

MAX_STREAMS = 50  # unique metric streams per PostMetricData request
MAX_DIMENSIONS = 20
# Datapoints per request: the service documents no limit (nor a body size); this keeps a request
# after an outage near 250 KB instead of megabytes. A result's own points always go together.
MAX_DATAPOINTS = 1000
MAX_KEY = 256  # dimension key, metadata key and value
MAX_VALUE = 512  # dimension value
MAX_AGE = 7200.0  # the service refuses datapoints 2 h old or older...
AGE_MARGIN = 300.0  # ...so we stop trying 5 min before that (queueing, request time, clock skew)
EMPTY_VALUE = "(empty)"  # the service refuses empty dimension values
HOST = "host"
TENANCY_TPS = 50  # PostMetricData requests per second per tenancy, for every agent together
MAX_LINGER = 10.0  # seconds a result may wait for a fuller request, at most
PACING_WARN_AFTER = 60.0  # paced without a break this long, and falling behind: say so...
PACING_WARN_EVERY = 600.0  # ...at most this often

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_OCID = re.compile(r"^ocid1\.(compartment|tenancy)\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_NAMESPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._$-]*$")
_DIM_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no space
_REGION = re.compile(r"^[a-z]+(-[a-z]+)+-[0-9]+$")
_RESERVED_PREFIXES = ("oci_", "oracle_")
_API_KEY_FIELDS = ("user", "fingerprint", "key_file", "tenancy")


def _catalog_labels() -> list[tuple[str, frozenset[str]]]:
    """Every per-check metric and the dimension keys it brings besides host and agent labels."""
    return [(name, frozenset((*PER_CHECK_LABELS, *spec.labels))) for name, spec in CHECK_METRICS.items()]


def dimension_budget(static: Mapping[str, str], agent_labels: Mapping[str, str]) -> str | None:
    """Why the dimensions of some catalog metric would exceed the service's 20, or None.

    Sample labels override agent labels of the same name and reach the service once, so the
    count is of distinct keys, per metric."""
    base = set(static) | set(agent_labels) | {HOST}
    worst_name, worst = "", 0
    for name, keys in _catalog_labels():
        n = len(base | keys)
        if n > worst:
            worst_name, worst = name, n
    if worst <= MAX_DIMENSIONS:
        return None
    return (
        f"{len(static)} static dimensions + host + {len(agent_labels)} agent labels + the labels of "
        f"{worst_name} ({', '.join(sorted(dict(_catalog_labels())[worst_name]))}) make {worst} "
        f"dimensions; OCI Monitoring allows {MAX_DIMENSIONS} per metric stream"
    )


def _check_dimension(key: str, value: str, what: str) -> None:
    if not key or len(key) > MAX_KEY or not _DIM_KEY.match(key):
        raise ValueError(f"{what} key {key!r}: 1-{MAX_KEY} printable ASCII characters without spaces")
    if not value:
        raise ValueError(f"{what} {key!r}: the value must not be empty")
    if len(value) > MAX_VALUE:
        raise ValueError(f"{what} {key!r}: the value is {len(value)} characters; at most {MAX_VALUE}")


class OciConfig(ExporterBase):
    """One OCI Monitoring destination. See docs/exporters/oci.md."""

    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["oci"]
    name: str = Field(default="oci", pattern=_NAME)
    batch: int = Field(default=100, ge=1, le=10_000)
    """Results read from the outbox per push. A request takes the prefix that fits 50 streams and
    1 000 datapoints, so more than ~200 is never used, and every result read is decoded: with many
    checks a request holds ~10 results, so a smaller batch wastes less."""
    compartment_id: str
    """The compartment (or tenancy) OCID the metrics are posted to."""
    namespace: str
    resource_group: str | None = None
    dimensions: dict[str, str] = {}
    """Static dimensions added to every stream (e.g. `env: prod`)."""
    region: str | None = None
    """e.g. `ap-tokyo-1`; default: the region of the chosen auth (config file, instance, resource)."""
    endpoint: str | None = None
    """The ingestion endpoint itself (tests, private endpoints); overrides `region`."""
    auth: Literal["config_file", "instance_principal", "resource_principal"] = "config_file"
    config_file: Path = Path("~/.oci/config")
    profile: str = "DEFAULT"
    pass_phrase: SecretStr | None = None
    """The API key's passphrase, if not in the config file (or `pass_phrase_file`)."""
    federation_endpoint: str | None = None
    """Instance principals: the Auth Service endpoint (default: the region's); tests point it home."""
    timeout: Duration = 10.0
    """Per request (connect and read). A timeout is retried: see the exactly-once caveat."""
    linger: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 2.0
    """How long results may wait for more to fill a request (50 streams). 0: send at once."""
    max_requests_per_second: float = Field(default=10.0, gt=0)
    """Requests this agent starts per second, at most: the tenancy's 50 are for the whole fleet."""

    @field_validator("compartment_id")
    @classmethod
    def _compartment(cls, value: str) -> str:
        if not _OCID.match(value):
            raise ValueError(
                "not a compartment or tenancy OCID (expected ocid1.compartment.<realm>.<region>.<id> "
                "or ocid1.tenancy.<realm>.<region>.<id>)"
            )
        return value

    @field_validator("linger")
    @classmethod
    def _linger(cls, value: float) -> float:
        if value > MAX_LINGER:
            raise ValueError(
                f"{value:g}s is too long: at most {MAX_LINGER:g}s (a short wait for a fuller request; "
                "OCI Monitoring alarms evaluate every minute)"
            )
        return value

    @field_validator("max_requests_per_second")
    @classmethod
    def _rate(cls, value: float) -> float:
        if value > TENANCY_TPS:
            raise ValueError(
                f"{value:g} is more than OCI Monitoring allows a whole tenancy ({TENANCY_TPS} requests "
                "a second, shared by every agent)"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError(
                f"invalid namespace {value!r}: must start with a letter and contain only letters, "
                "digits and _"
            )
        if value.lower().startswith(_RESERVED_PREFIXES):
            raise ValueError(f"invalid namespace {value!r}: the prefixes oci_ and oracle_ are reserved")
        return value

    @field_validator("resource_group")
    @classmethod
    def _resource_group(cls, value: str | None) -> str | None:
        if value is not None and not _METRIC_NAME.match(value):
            raise ValueError(
                f"invalid resource_group {value!r}: must start with a letter and contain only letters, "
                "digits, ., _, - and $"
            )
        return value

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = {HOST} | set().union(*(keys for _, keys in _catalog_labels()))
        for key, v in value.items():
            _check_dimension(key, v, "dimension")
            if key in reserved:
                raise ValueError(
                    f"dimension {key!r} is set by the agent itself (host, check, target and the "
                    "metrics' labels): choose another name"
                )
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.match(value):
            raise ValueError(f"invalid region {value!r}: expected a region identifier like ap-tokyo-1")
        return value

    @field_validator("endpoint", "federation_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/?#@\s]+/?[^?#@\s]*$", value):
            raise ValueError(f"invalid URL {value!r}: expected https://host[:port][/path]")
        parts = urlsplit(value)
        if parts.scheme != "https" and not _is_loopback(parts.hostname):
            raise ValueError(f"{value!r} must use https:// (plain http only for a loopback host)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> OciConfig:
        given = self.model_fields_set
        if self.auth != "config_file":
            for key in ("config_file", "profile", "pass_phrase"):
                if key in given:
                    raise ValueError(f"{key}: only used with auth: config_file (auth is {self.auth})")
        if self.auth != "instance_principal" and "federation_endpoint" in given:
            raise ValueError("federation_endpoint: only used with auth: instance_principal")
        if self.auth == "config_file" and not skip(f"config_file {self.config_file}"):
            self._check_config_file()
        # The agent section, when the loader passes it (agent/config.py), completes the count.
        context = info.context if isinstance(info.context, Mapping) else {}
        labels: Mapping[str, str] = context.get("agent_labels") or {}
        problem = _agent_label_problem(self.dimensions, labels) or dimension_budget(self.dimensions, labels)
        if problem:
            raise ValueError(f"dimensions: {problem}")
        return self

    def _check_config_file(self) -> None:
        """The file, profile and key that `oci.config.from_file` will need, without the SDK."""
        path = self.config_file.expanduser()
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with path.open(encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as exc:
            raise ValueError(f"config_file: cannot read {path}: {exc.strerror or exc}") from None
        except configparser.Error:
            raise ValueError(f"config_file: {path} is not an OCI config file (INI format)") from None
        if not (parser.has_section(self.profile) or (self.profile == "DEFAULT" and parser.defaults())):
            raise ValueError(f"profile: no profile [{self.profile}] in {path}")
        section = parser[self.profile]
        missing = [k for k in _API_KEY_FIELDS if not section.get(k)]
        if missing:
            raise ValueError(
                f"profile: [{self.profile}] in {path} lacks {', '.join(missing)} (API key authentication)"
            )
        key_file = Path(str(section["key_file"])).expanduser()
        if not os.access(key_file, os.R_OK):
            raise ValueError(f"profile: the key_file of [{self.profile}] in {path} is not readable")
        if self.region is None and self.endpoint is None and not section.get("region"):
            raise ValueError(f"region: not set here nor in [{self.profile}] of {path}")


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _agent_label_problem(static: Mapping[str, str], agent_labels: Mapping[str, str]) -> str | None:
    if HOST in agent_labels:
        return "the agent label 'host' collides with the host dimension (the agent's name)"
    clash = sorted(set(static) & set(agent_labels))
    if clash:
        return f"{', '.join(clash)}: both a static dimension and an agent label; keep one"
    return None


# --- the exporter -----------------------------------------------------------------------------


def fix_value(value: str) -> str:
    """A dimension value the service accepts: empty becomes "(empty)"; over 512 characters is cut
    to 500 plus "~" and 11 hex digits of its SHA-1, so two long values stay two streams."""
    if not value:
        return EMPTY_VALUE
    if len(value) <= MAX_VALUE:
        return value
    return value[:500] + "~" + hashlib.sha1(value.encode()).hexdigest()[:11]


StreamKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _Stream:
    name: str
    dimensions: dict[str, str]
    unit: str | None
    points: list[tuple[float, float]] = field(default_factory=list)  # (timestamp, value)
    seqs: set[int] = field(default_factory=set)  # outbox records with a point in it


@dataclass
class _Progress:
    """A result whose streams went out over several requests: those the service took so far
    (kept in memory only: after a restart the whole result is sent again)."""

    seq: int
    sent: set[StreamKey] = field(default_factory=set)
    refused: bool = False  # a stream of it was refused: counted `invalid` when it is done


def _add(plan: dict[StreamKey, _Stream], seq: int, streams: Iterable[tuple[StreamKey, _Stream]]) -> None:
    """Put these streams of result `seq` in the request `plan` (a stream's points are joined)."""
    for key, stream in streams:
        target = plan.setdefault(key, _Stream(stream.name, stream.dimensions, stream.unit))
        target.points.extend(stream.points)
        target.seqs.add(seq)


def _fill(
    plan: dict[StreamKey, _Stream], seq: int, streams: dict[StreamKey, _Stream], points: int
) -> set[StreamKey]:
    """Add to `plan` (holding `points` datapoints) what fits of result `seq`'s `streams`, up to
    50 streams and 1 000 datapoints; those the plan has already first, as they cost no stream.
    The keys added."""
    taken: set[StreamKey] = set()
    for key, stream in sorted(streams.items(), key=lambda item: item[0] not in plan):
        if (key in plan or len(plan) < MAX_STREAMS) and points + len(stream.points) <= MAX_DATAPOINTS:
            _add(plan, seq, [(key, stream)])
            points += len(stream.points)
            taken.add(key)
    return taken


class _AuthSetupError(Exception):
    """Making the SDK client (signer included) failed: no request went out."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class _Failure:
    """A push that did not go through: what the pump needs and what the operator reads."""

    error: str
    retry_after: float | None = None


class OciExporter:
    """The `PushExporter` for OCI Monitoring. `clock` is the wall clock the 2-hour window is
    measured on; `monotonic` and `sleep` space the requests (tests replace all three). One push
    at a time (the pump's contract)."""

    def __init__(
        self,
        config: OciConfig,
        context: ExportContext,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.name = config.name
        self.batch = config.batch
        self.linger = config.linger  # the pump holds back a push that `fills()` says is not full
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        base = dict(config.dimensions)
        base.update((k, fix_value(v)) for k, v in context.labels.items())
        base[HOST] = fix_value(context.agent)
        self._base = base  # keys checked at load (static) or by the agent section (labels)
        self._client: Any = None
        self._models: Any = None
        # Samples not sent, by reason (non_finite, invalid_name, invalid_dimensions): they are
        # part of results that were sent, so the outbox's per-result counters do not show them.
        self.skipped: Counter[str] = Counter()
        self.refused_streams = 0  # streams the service refused (failedMetrics)
        self.requests = 0  # PostMetricData requests answered 200
        self.datapoints = 0  # datapoints in those requests
        self._progress: _Progress | None = None  # the head result, when part of it went already
        self._next_request = -math.inf  # monotonic: the earliest start of the next request
        self._paced: tuple[float, float] | None = None  # (since, head age then): paced without a break
        self._paced_warned = -math.inf
        self._head_age = 0.0  # of the push in progress
        self._narrow = False  # after a 400 on several records: one record per request
        self._warned: set[tuple[str, str]] = set()
        self._last_problem = ""

    async def start(self) -> None:
        """Nothing to connect: the client (and, for principals, its token) is made on first push."""

    async def aclose(self) -> None:
        """Close the SDK's HTTP session. Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            session = getattr(client.base_client, "session", None)
            if session is not None:
                await asyncio.to_thread(session.close)

    # --- push ------------------------------------------------------------------------------------
    def fills(self, records: Sequence[Record]) -> bool:
        """Whether one request from `records` would be full (50 streams or 1 000 datapoints), so
        the pump need not hold them back for more (exporters/base.py). Also True when the pump
        could not offer more, when one of them is expired (dropped at once) and after a request
        refused as a whole (one result per request then)."""
        if self._narrow or len(records) >= self.batch:
            return True
        cutoff = self.clock() - (MAX_AGE - AGE_MARGIN)
        keys: set[StreamKey] = set()
        points = 0
        for record in records:
            if record.result.started_at <= cutoff:
                return True
            streams, _ = self._remaining(record)
            keys.update(streams)
            points += sum(len(s.points) for s in streams.values())
            if len(keys) >= MAX_STREAMS or points >= MAX_DATAPOINTS:
                return True
        return False

    async def push(self, records: Sequence[Record]) -> PushResult:
        head = records[0]
        if self._progress is not None and head.seq > self._progress.seq:
            self._progress = None  # that result left the outbox (its size cap)
        self._head_age = self.clock() - head.result.started_at
        cutoff = self.clock() - (MAX_AGE - AGE_MARGIN)
        plan: dict[StreamKey, _Stream] = {}
        skipped: Counter[str] = Counter()
        included = expired = with_points = points = 0
        tail: tuple[int, set[StreamKey]] | None = None  # the result cut at the end, its streams here
        for record in records:
            if record.result.started_at <= cutoff:
                expired += 1
                included += 1
                self._done(record.seq)
                continue
            streams, skips = self._remaining(record)
            while not included and len(streams) > MAX_STREAMS:
                # The first result has more streams than a request carries (an lb check with many
                # members): requests of 50 of them first; the rest goes with the results after it.
                chunk = dict(list(streams.items())[:MAX_STREAMS])
                outcome = await self._send(list(chunk.values()))
                if isinstance(outcome, _Failure):
                    return PushResult(0, outcome.error, outcome.retry_after)
                self._took(record.seq, set(chunk), bool(outcome))
                streams = {key: s for key, s in streams.items() if key not in chunk}
            new = sum(1 for key in streams if key not in plan)
            size = sum(len(s.points) for s in streams.values())
            full = len(plan) + new > MAX_STREAMS or (bool(plan) and points + size > MAX_DATAPOINTS)
            if full or (self._narrow and with_points):
                if plan and not self._narrow:  # fill the request with the first streams of this one
                    taken = _fill(plan, record.seq, streams, points)
                    tail = (record.seq, taken) if taken else None
                break  # (the expired records before a big one: done with them first)
            skipped.update(skips)
            _add(plan, record.seq, streams.items())
            included += 1
            with_points += bool(streams)
            points += size
        dropped = {"expired": expired} if expired else {}
        if expired:
            log.warning(
                "exporter %s: %d results older than %.0f min dropped (OCI Monitoring refuses them)",
                self.name,
                expired,
                (MAX_AGE - AGE_MARGIN) / 60,
            )
        if not plan:
            self.skipped.update(skipped)
            return PushResult(included, dropped=dropped)
        outcome = await self._send(list(plan.values()))
        if isinstance(outcome, _Failure):
            if outcome.error.startswith(("400", "413")) and with_points + (tail is not None) > 1:
                self._narrow = True  # find the record the service refuses, keep sending the others
            return PushResult(0, outcome.error, outcome.retry_after)
        self._narrow = False
        self.skipped.update(skipped)  # counted once, when the results they belong to are done
        invalid = sum(self._done(r.seq) or r.seq in outcome for r in records[:included])
        if tail is not None:
            self._took(tail[0], tail[1], tail[0] in outcome)
        if invalid:
            dropped["invalid"] = invalid
        return PushResult(included, dropped=dropped)

    def _remaining(self, record: Record) -> tuple[dict[StreamKey, _Stream], Counter[str]]:
        """The streams of a result that no earlier request carried, and its samples left out."""
        streams, skips = self._streams(record.seq, record.result)
        progress = self._progress
        if progress is not None and progress.seq == record.seq:
            streams = {k: v for k, v in streams.items() if k not in progress.sent}
        return streams, skips

    def _took(self, seq: int, keys: set[StreamKey], refused: bool) -> None:
        """The service took `keys` of result `seq` (and refused some of them if `refused`)."""
        if self._progress is None or self._progress.seq != seq:
            self._progress = _Progress(seq)
        self._progress.sent |= keys
        self._progress.refused |= refused

    def _done(self, seq: int) -> bool:
        """Result `seq` is done with: forget what went of it. Whether a stream of it was refused."""
        progress = self._progress
        if progress is None or progress.seq != seq:
            return False
        self._progress = None
        return progress.refused

    def _streams(self, seq: int, result: CheckResult) -> tuple[dict[StreamKey, _Stream], Counter[str]]:
        """The streams of one result, and the samples left out by reason."""
        out: dict[StreamKey, _Stream] = {}
        skips: Counter[str] = Counter()
        for sample in flatten(result):
            if not math.isfinite(sample.value):
                skips[self._skip("non_finite", sample.name, "a NaN or infinite value")] += 1
                continue
            if not _METRIC_NAME.match(sample.name):
                skips[self._skip("invalid_name", sample.name, "a name OCI Monitoring does not accept")] += 1
                continue
            dims = dict(self._base)
            for label, value in sample.labels:
                dims[label] = fix_value(value)
            bad_key = any(len(k) > MAX_KEY or not _DIM_KEY.match(k) for k, _ in sample.labels)
            if len(dims) > MAX_DIMENSIONS or bad_key:
                why = "over 20 dimensions or an invalid label name"
                skips[self._skip("invalid_dimensions", sample.name, why)] += 1
                continue
            key = (sample.name, tuple(sorted(dims.items())))
            stream = out.get(key)
            if stream is None:
                stream = out[key] = _Stream(sample.name, dims, unit(sample.name))
            stream.points.append((sample.timestamp, sample.value))
            stream.seqs.add(seq)
        return out, skips

    def _skip(self, reason: str, name: str, why: str) -> str:
        """Log a kind of left-out sample once per metric name; returns `reason`."""
        if (reason, name) not in self._warned and len(self._warned) < 100:
            self._warned.add((reason, name))
            log.warning(
                "exporter %s: samples of %s not sent: %s (counted, logged once)", self.name, name, why
            )
        return reason

    # --- one request -----------------------------------------------------------------------------
    async def _pace(self) -> None:
        """Start requests at least 1/max_requests_per_second apart, failed ones included: the
        tenancy's 50 a second are shared by every agent. Says so (WARNING, at most every 10 min)
        when requests have waited for their turn for a minute while the oldest result got older:
        results arrive faster than the rate lets them out."""
        now = self.monotonic()
        if now >= self._next_request:
            self._paced = None
        else:
            if self._paced is None:
                self._paced = (now, self._head_age)
            since, age = self._paced
            if now - since >= PACING_WARN_AFTER:
                if self._head_age > age and now - self._paced_warned >= PACING_WARN_EVERY:
                    self._paced_warned = now
                    log.warning(
                        "exporter %s: sending at max_requests_per_second (%g) for %.0f s and the "
                        "oldest waiting result got older (%.0f s): results arrive faster than that "
                        "many requests of 50 streams carry; raise max_requests_per_second (the "
                        "tenancy allows %d for all agents together)",
                        self.name,
                        self.config.max_requests_per_second,
                        now - since,
                        self._head_age,
                        TENANCY_TPS,
                    )
                self._paced = (now, self._head_age)
            await self.sleep(self._next_request - now)
            now = max(self.monotonic(), self._next_request)
        self._next_request = now + 1.0 / self.config.max_requests_per_second

    async def _send(self, streams: list[_Stream]) -> set[int] | _Failure:
        """POST the streams, in turn (`_pace`). Returns the records that had a stream refused
        (NON_ATOMIC), or why nothing was accepted."""
        await self._pace()
        try:
            response = await asyncio.to_thread(self._post, streams)
        except Exception as exc:
            return self._failure(exc)
        self.requests += 1
        self.datapoints += sum(len(s.points) for s in streams)
        if self._last_problem:
            log.info("exporter %s: OCI Monitoring accepts requests again", self.name)
            self._last_problem = ""
        return self._refused(streams, response)

    def _post(self, streams: list[_Stream]) -> Any:
        """In a worker thread: make the client if needed (principals fetch a token over the
        network), then one PostMetricData."""
        if self._client is None:
            try:
                self._client = self._make_client()
            except Exception as exc:
                raise _AuthSetupError(exc) from exc
        m = self._models
        cfg = self.config
        details = m.PostMetricDataDetails(
            metric_data=[
                m.MetricDataDetails(
                    namespace=cfg.namespace,
                    compartment_id=cfg.compartment_id,
                    resource_group=cfg.resource_group,
                    name=s.name,
                    dimensions=s.dimensions,
                    metadata={"unit": s.unit} if s.unit else None,
                    datapoints=[
                        m.Datapoint(timestamp=datetime.fromtimestamp(t, UTC), value=v) for t, v in s.points
                    ],
                )
                for s in streams
            ],
            batch_atomicity="NON_ATOMIC",
        )
        return self._client.post_metric_data(details)

    def _make_client(self) -> Any:
        oci = _sdk()

        cfg = self.config
        self._models = oci.monitoring.models
        signer, sdk_config, region = signer_for(
            oci,
            cfg.auth,
            config_file=cfg.config_file,
            profile=cfg.profile,
            pass_phrase=secret_value(cfg.pass_phrase) if cfg.pass_phrase is not None else None,
            region=cfg.region,
            federation_endpoint=cfg.federation_endpoint,
        )
        try:
            client, _ = monitoring_client(
                oci,
                signer,
                sdk_config,
                region=region,
                endpoint=cfg.endpoint,
                timeout=cfg.timeout,
                ingestion=True,
            )
        except NoRegion:
            raise ValueError("no region: set `region` (the auth method did not name one)") from None
        return client

    def _refused(self, streams: list[_Stream], response: Any) -> set[int]:
        data = response.data
        failed = list(getattr(data, "failed_metrics", None) or [])
        if not failed:
            return set()
        by_key = {(s.name, tuple(sorted(s.dimensions.items()))): s for s in streams}
        seqs: set[int] = set()
        for item in failed:
            md = item.metric_data
            stream = by_key.get((md.name, tuple(sorted((md.dimensions or {}).items())))) if md else None
            if stream is not None:
                seqs |= stream.seqs
        self.refused_streams += len(failed)
        first = failed[0]
        log.error(
            "exporter %s: OCI Monitoring refused %d of %d streams (not retried; e.g. %s: %s; "
            "opc-request-id %s)",
            self.name,
            len(failed),
            len(streams),
            first.metric_data.name if first.metric_data else "?",
            first.message,
            response.headers.get("opc-request-id", "-"),
        )
        return seqs

    def _failure(self, exc: Exception) -> _Failure:
        oci = _sdk()

        if isinstance(exc, _AuthSetupError):
            # Before any request went out: the key, the config file, the metadata service or
            # the resource principal's environment. The client is made again next time.
            cause = exc.cause
            first_line = (str(cause).splitlines() or [""])[0][:200]
            problem = f"cannot authenticate ({self.config.auth}): {type(cause).__name__}: {first_line}"
            if problem != self._last_problem:
                self._last_problem = problem
                log.error("exporter %s: %s; results are kept and retried with backoff", self.name, problem)
            return _Failure(f"cannot authenticate ({self.config.auth}): {type(cause).__name__}")
        if isinstance(exc, oci.exceptions.ServiceError):
            status, code = int(exc.status), str(exc.code)
            error = f"{status} {code} (opc-request-id {exc.request_id or '-'})"
            if status == 429 or status >= 500:
                return _Failure(error, retry_after_header(exc.headers))
            hint = {
                400: "the request was refused as a whole; it is retried one result at a time and "
                "dropped as expired after 2 h",
                401: "check the key, its fingerprint, the user/tenancy OCIDs and the host's clock "
                "(within 5 min)",
                404: "check compartment_id and the IAM policy ('use metrics' in that compartment)",
            }.get(status, "")
            problem = f"{status} {code}: {exc.message}"
            if problem != self._last_problem:  # once per distinct problem, at ERROR: it needs a human
                self._last_problem = problem
                log.error(
                    "exporter %s: OCI Monitoring answered %s (opc-request-id %s); results are kept and "
                    "retried with backoff. %s",
                    self.name,
                    problem,
                    exc.request_id or "-",
                    hint,
                )
            return _Failure(error)
        if isinstance(exc, oci.exceptions.RequestException | oci.exceptions.ConnectTimeout):
            inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
            kind = "timeout" if "Timeout" in type(inner).__name__ else "connection failed"
            return _Failure(f"{kind} ({type(inner).__name__})")
        # A session token that could not be refreshed, or a bug: say what, keep the results.
        first_line = (str(exc).splitlines() or [""])[0][:200]
        problem = f"push failed: {type(exc).__name__}: {first_line}"
        if problem != self._last_problem:
            self._last_problem = problem
            log.error("exporter %s: %s; results are kept and retried with backoff", self.name, problem)
        return _Failure(f"push failed ({type(exc).__name__})")


def _sdk() -> Any:
    """The `oci` package (untyped; imported only when an oci exporter is built)."""
    return import_sdk()


def require(config: OciConfig) -> None:
    """Raises ExtraMissing when the OCI SDK is not installed."""
    try:
        _sdk()
    except ImportError:
        raise ExtraMissing.of_extra(f"{config.name} (type oci)", "the OCI SDK", "oci") from None


def build(config: OciConfig, context: ExportContext) -> OciExporter:
    require(config)
    problem = _agent_label_problem(config.dimensions, context.labels) or dimension_budget(
        config.dimensions, context.labels
    )
    if problem:
        raise StartupError(f"exporter {config.name}: {problem}")
    return OciExporter(config, context)
