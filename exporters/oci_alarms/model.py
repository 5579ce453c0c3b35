"""The alarms file (deploy/oci/alarms.yaml): its model and its validation, every problem one
`file:line: path: message` like the agent's config (agent/yamldoc.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from agent import yamldoc
from agent.errors import ConfigError, ConfigIssue
from agent.yamldoc import DocumentError, YamlDoc, format_path
from exporters.oci_alarms.mql import check_query, normalize_query

MANAGED_TAG = ("managed-by", "mamori")  # a freeform tag on every alarm this command writes
VARIABLE_FLAGS = {"OCI_COMPARTMENT_ID": "--compartment OCID", "OCI_TOPIC_ID": "--topic OCID"}


OCID_COMPARTMENT = re.compile(r"^ocid1\.(compartment|tenancy)\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_OCID_DESTINATION = re.compile(r"^ocid1\.(onstopic|stream)\.[a-z0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_NAMESPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESOURCE_GROUP = re.compile(r"^[A-Za-z][A-Za-z0-9._$-]*$")
_DIMENSION_KEY = re.compile(r"^[\x21-\x7e]{1,256}$")
_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_ALERT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def iso_seconds(text: str) -> int | None:
    """Seconds of an ISO 8601 duration such as PT5M, PT1H30M or P30D; None if not one."""
    m = _ISO.match(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        return None
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def _iso_within(low: int, high: int, span: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        seconds = iso_seconds(value)
        if seconds is None:
            raise ValueError(f"invalid duration {value!r}: ISO 8601, e.g. PT5M or PT1H")
        if not low <= seconds <= high:
            raise ValueError(f"{value} is outside {span}")
        return value

    return check


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


def _compartment(value: str) -> str:
    if not OCID_COMPARTMENT.match(value):
        raise ValueError(
            f"not a compartment or tenancy OCID: {value!r} (expected ocid1.compartment.<realm>..<id>)"
        )
    return value


def _namespace(value: str) -> str:
    if not _NAMESPACE.match(value):
        raise ValueError(f"invalid namespace {value!r}: a letter, then letters, digits and _")
    if value.lower().startswith(("oci_", "oracle_")):
        raise ValueError(
            f"namespace {value!r}: oci_ and oracle_ are Oracle's; the agent's metrics cannot be there"
        )
    return value


def _resource_group(value: str) -> str:
    if not _RESOURCE_GROUP.match(value):
        raise ValueError(f"invalid resourceGroup {value!r}: a letter, then letters, digits, ., _, - and $")
    return value


def _destinations(value: tuple[str, ...]) -> tuple[str, ...]:
    kinds: list[str] = []
    for item in value:
        m = _OCID_DESTINATION.match(item)
        if m is None:
            raise ValueError(f"{item!r} is not a Notifications topic (ocid1.onstopic.…) or stream OCID")
        kinds.append(m.group(1))
    if len(set(kinds)) != len(kinds):
        raise ValueError("at most one topic and one stream (the service's limit)")
    return value


def _runbook(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"runbook {value!r}: expected an http(s) URL")
    return value


def _display_name(value: str) -> str:
    if value != value.strip() or not value:
        raise ValueError("must not be empty nor start or end with spaces")
    return value


Compartment = Annotated[str, AfterValidator(_compartment)]
OptionalCompartment = Annotated[Compartment | None, BeforeValidator(_empty_is_none)]
PendingDuration = Annotated[str, AfterValidator(_iso_within(60, 3600, "PT1M..PT1H"))]
RepeatDuration = Annotated[str, AfterValidator(_iso_within(60, 30 * 86400, "PT1M..P30D"))]
Severity = Literal["CRITICAL", "ERROR", "WARNING", "INFO"]
MessageFormat = Literal["RAW", "PRETTY_JSON", "ONS_OPTIMIZED"]


class AlarmSpec(BaseModel):
    """One alarm, its keys the API's (camelCase; see CreateAlarmDetails). Defaults come from the
    file's `defaults:` mapping, then from here."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=False)

    display_name: Annotated[str, Field(max_length=255), AfterValidator(_display_name)]
    query: str
    severity: Severity
    compartment_id: Compartment
    metric_compartment_id: OptionalCompartment = None
    """The compartment of the metrics (the exporter's `compartment_id`); default: the alarm's."""
    namespace: Annotated[str, AfterValidator(_namespace)] = "mamori"
    resource_group: Annotated[
        Annotated[str, AfterValidator(_resource_group)] | None, BeforeValidator(_empty_is_none)
    ] = None
    destinations: Annotated[tuple[str, ...], Field(min_length=1), AfterValidator(_destinations)]
    pending_duration: PendingDuration = "PT1M"
    resolution: Literal["1m"] = "1m"
    body: Annotated[str | None, BeforeValidator(_empty_is_none)] = None
    runbook: Annotated[Annotated[str, AfterValidator(_runbook)] | None, BeforeValidator(_empty_is_none)] = (
        None
    )
    mirrors: tuple[Annotated[str, Field(pattern=_ALERT_NAME.pattern)], ...] = ()
    """The Prometheus alerts (alerts/rules/*.yml) this alarm mirrors; documentation only."""
    message_format: MessageFormat = "RAW"
    repeat_notification_duration: Annotated[RepeatDuration | None, BeforeValidator(_empty_is_none)] = None
    is_notifications_per_metric_dimension_enabled: bool = False
    is_enabled: bool = True

    @field_validator("query")
    @classmethod
    def _query(cls, value: str, info: ValidationInfo) -> str:
        context = info.context if isinstance(info.context, Mapping) else {}
        check_query(value, context.get("dimensions", ()))
        return normalize_query(value)

    @property
    def alarm_body(self) -> str | None:
        """The notification body: `body`, then the runbook link."""
        parts = [
            p for p in ((self.body or "").strip(), f"Runbook: {self.runbook}" if self.runbook else "") if p
        ]
        return "\n\n".join(parts) or None

    def details(self) -> dict[str, Any]:
        """The SDK's CreateAlarmDetails keyword arguments (None: not sent)."""
        return {
            "display_name": self.display_name,
            "compartment_id": self.compartment_id,
            "metric_compartment_id": self.metric_compartment_id or self.compartment_id,
            "namespace": self.namespace,
            "resource_group": self.resource_group,
            "query": self.query,
            "resolution": self.resolution,
            "pending_duration": self.pending_duration,
            "severity": self.severity,
            "body": self.alarm_body,
            "is_notifications_per_metric_dimension_enabled": (
                self.is_notifications_per_metric_dimension_enabled
            ),
            "message_format": self.message_format,
            "destinations": list(self.destinations),
            "repeat_notification_duration": self.repeat_notification_duration,
            "is_enabled": self.is_enabled,
            "freeform_tags": dict([MANAGED_TAG]),
        }


PER_ALARM_ONLY = ("displayName", "query", "mirrors")
_TOP_LEVEL = ("defaults", "dimensions", "alarms")


@dataclass(frozen=True)
class AlarmsFile:
    source: str
    alarms: tuple[AlarmSpec, ...]
    dimensions: tuple[str, ...]

    @property
    def compartments(self) -> list[str]:
        return list(dict.fromkeys(a.compartment_id for a in self.alarms))


def _issue(doc: YamlDoc, file: str, path: yamldoc.Path, message: str) -> ConfigIssue:
    return ConfigIssue(file, doc.line_of(path), format_path(path), message)


def _validation_issues(
    exc: ValidationError,
    doc: YamlDoc,
    file: str,
    index: int,
    own: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> list[ConfigIssue]:
    out = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        key = str(loc[0]) if loc else ""
        # A value the alarm took from `defaults:` is reported there, once for all alarms.
        base: yamldoc.Path = ("defaults",) if key in defaults and key not in own else ("alarms", index)
        path: yamldoc.Path = base + tuple(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
            if key in ("compartmentId", "destinations"):
                message += " (set it in defaults:, usually from ${OCI_COMPARTMENT_ID} / ${OCI_TOPIC_ID})"
        else:
            message = err["msg"].removeprefix("Value error, ")
        out.append(_issue(doc, file, path, message))
    return out


def parse(text: str, file: str, env: Mapping[str, str]) -> AlarmsFile:
    """Validate a whole alarms document; raises ConfigError listing every problem."""
    try:
        doc = yamldoc.load(text, env)
    except DocumentError as exc:
        message = exc.message
        unset = re.match(r"environment variable (\w+) is not set", message)
        if unset:
            name = unset.group(1)
            flag = f"{VARIABLE_FLAGS[name]}, " if name in VARIABLE_FLAGS else ""
            message = (
                f"variable {name} is not set: give {flag}--var {name}=VALUE or set it in the environment"
            )
        raise ConfigError([ConfigIssue(file, exc.line, format_path(exc.path), message)]) from None
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError([_issue(doc, file, (), "expected a mapping with defaults, dimensions and alarms")])
    issues: list[ConfigIssue] = []
    for key in data:
        if key not in _TOP_LEVEL and not key.startswith("x-"):
            issues.append(
                _issue(doc, file, (key,), f"unknown key (expected one of: {', '.join(_TOP_LEVEL)})")
            )
    dimensions: list[str] = []
    raw_dims = data.get("dimensions") or []
    if not isinstance(raw_dims, list):
        issues.append(_issue(doc, file, ("dimensions",), "expected a list of dimension names"))
        raw_dims = []
    for i, name in enumerate(raw_dims):
        if not isinstance(name, str) or not _DIMENSION_KEY.match(name):
            issues.append(
                _issue(
                    doc, file, ("dimensions", i), "a dimension name: 1-256 printable characters, no spaces"
                )
            )
        else:
            dimensions.append(name)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        issues.append(_issue(doc, file, ("defaults",), "expected a mapping of alarm keys"))
        defaults = {}
    for key in defaults:
        if key in PER_ALARM_ONLY:
            issues.append(_issue(doc, file, ("defaults", key), "set per alarm, not in defaults"))
    raw_alarms = data.get("alarms")
    if not isinstance(raw_alarms, list) or not raw_alarms:
        issues.append(_issue(doc, file, ("alarms",), "expected a non-empty list of alarms"))
        raw_alarms = []
    alarms: list[AlarmSpec] = []
    seen: dict[str, int] = {}
    context = {"dimensions": tuple(dimensions)}
    for i, raw in enumerate(raw_alarms):
        if not isinstance(raw, dict):
            issues.append(_issue(doc, file, ("alarms", i), "expected a mapping"))
            continue
        merged = {k: v for k, v in defaults.items() if k not in PER_ALARM_ONLY} | raw
        try:
            alarm = AlarmSpec.model_validate(merged, context=context)
        except ValidationError as exc:
            issues.extend(_validation_issues(exc, doc, file, i, raw, defaults))
            continue
        if alarm.display_name in seen:
            path = ("alarms", i, "displayName")
            first = seen[alarm.display_name]
            issues.append(
                _issue(
                    doc,
                    file,
                    path,
                    f"duplicate displayName {alarm.display_name!r} (first at alarms[{first}])",
                )
            )
        seen.setdefault(alarm.display_name, i)
        alarms.append(alarm)
    if issues:
        raise ConfigError(sorted(dict.fromkeys(issues), key=lambda i: i.line))
    return AlarmsFile(file, tuple(alarms), tuple(dimensions))


def load(path: str | Path, env: Mapping[str, str]) -> AlarmsFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(path), 0, "(file)", f"cannot read: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", "not a UTF-8 text file")]) from None
    return parse(text, str(path), env)
