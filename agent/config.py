"""The agent's configuration: one YAML file, validated completely at load into frozen models.

Every error names the file, the path in the document and the line, e.g.

    agent.yml:12: checks[1].timeout: invalid duration 'fast': expected a duration like 10s ...

Checks are validated one by one against the model of their `type`, which is imported only then
(see `checks.REGISTRY`), so an error inside a check points into that check.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from agent import yamldoc
from agent.errors import ConfigError, ConfigIssue
from agent.fields import Duration, Model, share_parts
from agent.files import read_regular_file
from agent.yamldoc import DocumentError, YamlDoc, format_path
from checks import REGISTRY, check_class
from checks.base import CheckConfig

__all__ = ["AgentConfig", "ConfigError", "ConfigIssue", "load", "parse"]

DEFAULT_CONFIG_NAME = "<embedded default>"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# A check runs at most every 100 ms (the tests' fastest is 200 ms) and at least weekly: past a
# week it is a typo, and a check that (almost) never runs watches nothing.
MIN_INTERVAL = 0.1
MAX_INTERVAL = 7 * 86400.0


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {value!r}: expected HOST:PORT, e.g. 0.0.0.0:9630")
    return host.strip("[]") or "0.0.0.0", int(port)


class AgentSection(Model):
    name: str = Field(default_factory=socket.gethostname, min_length=1)
    labels: dict[str, str] = {}
    listen: str = "127.0.0.1:9630"
    interval: Duration = 30.0
    timeout: Duration = 10.0
    series: Literal["full", "basic"] = "full"  # every check's default (checks/base.py)
    concurrency: int = Field(default=32, ge=1, le=10_000)
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    shutdown_timeout: Duration = 10.0
    # First runs after a start (or a reload's new checks) spread over at most this (agent/scheduler.py)
    start_spread: Duration = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if not re.match(LABEL_NAME, key):
                raise ValueError(f"invalid label name {key!r}: use letters, digits and _")
        return labels

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection
    checks: tuple[CheckConfig, ...]
    source: str
    # The agent's own alerting (alerts/): None when the file has no `alerts:` section, so an
    # agent without it never imports the alerting modules.
    alerts: Any = None  # alerts.config.AlertsConfig | None
    notifiers: tuple[Any, ...] = ()  # alerts.notifiers.config.NotifierConfig
    # Push exporters (exporters/): empty when the file has no `exporters:` section.
    outbox: Any = None  # exporters.config.OutboxConfig | None
    exporters: tuple[Any, ...] = ()  # each the config model exporters.config.EXPORTERS names
    # What is valid but probably not meant (a rule only another agent's results could match):
    # `agentctl validate` prints these, the agent logs them at start and on reload.
    warnings: tuple[ConfigIssue, ...] = ()

    def check(self, name: str) -> CheckConfig:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


_TOP_LEVEL = {"agent", "checks", "alerts", "notifiers", "outbox", "exporters"}
_LEADING_KEY = re.compile(r"^([a-z_]+)[ :]")


def _issues_from_validation(
    exc: ValidationError, doc: YamlDoc, file: str, prefix: yamldoc.Path
) -> list[ConfigIssue]:
    out = []
    for err in exc.errors(include_url=False):
        # Keep only the parts of pydantic's location that exist in the document (unions add
        # type names to it); a missing key is the last part and names what is missing.
        path: list[str | int] = list(prefix)
        node: Any = doc.data
        for part in prefix:
            node = node[part]
        loc = list(err["loc"])
        for i, part in enumerate(loc):
            in_dict = isinstance(node, dict) and part in node
            in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            if in_dict or in_list:
                node = node[part]
                path.append(part)
            elif i == len(loc) - 1 and isinstance(part, str) and isinstance(node, dict):
                path.append(part)
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx") or {}
            key = str(ctx.get("discriminator", "type")).strip("'")
            if isinstance(node, dict) and key in node:
                path.append(key)
            known = str(ctx.get("expected_tags", "")).replace("'", "")
            message = f"unknown {key} {ctx.get('tag')!r} (known: {known})"
        else:
            message = err["msg"].removeprefix("Value error, ")
            # A model-level rule names the key it is about first ("x_file: cannot read …",
            # "latency_warning (2s) must be …"): point at that key and its line.
            first = _LEADING_KEY.match(message)
            if first and isinstance(node, dict) and first.group(1) in node:
                path.append(first.group(1))
                message = message.removeprefix(f"{first.group(1)}: ")
        out.append(ConfigIssue(file, doc.line_of(tuple(path)), format_path(tuple(path)), message))
    return out


def _typed_entry(
    doc: YamlDoc,
    file: str,
    path: yamldoc.Path,
    raw: Any,
    known: Collection[str],
    kind: str,
    issues: list[ConfigIssue],
) -> str | None:
    """The `type` of one list entry (a check, an exporter), or None after recording why not:
    the entry is not a mapping, has no type, or names an unknown one."""
    if not isinstance(raw, dict):
        issues.append(ConfigIssue(file, doc.line_of(path), format_path(path), "expected a mapping"))
        return None
    type_name = raw.get("type")
    if isinstance(type_name, str) and type_name in known:
        return type_name
    where = path + ("type",) if "type" in raw else path
    if type_name is None:
        what = "required key is missing"
    elif isinstance(type_name, str):
        what = f"unknown {kind} type {yamldoc.shown(type_name)}"
    else:
        article = "an" if kind[0] in "aeiou" else "a"
        what = f"expected the name of {article} {kind} type, got {_kind_of(type_name)}"
    message = f"{what} (known: {', '.join(sorted(known))})"
    issues.append(ConfigIssue(file, doc.line_of(where), format_path(path + ("type",)), message))
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return yamldoc.shown(value)


def _human(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _interval_problem(seconds: float) -> str | None:
    if seconds < MIN_INTERVAL:
        return f"interval ({_human(seconds)}) is too short: at least {_human(MIN_INTERVAL)}"
    if seconds > MAX_INTERVAL:
        return f"interval ({_human(seconds)}) is too long: at most {_human(MAX_INTERVAL)}"
    return None


def parse(text: str, file: str, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Validate a whole config document. Raises ConfigError listing every problem found.

    Bounded for any text (see agent.yamldoc): never more than a few MiB, 100 000 nodes and a
    second or so, and every problem is a ConfigIssue, never another exception."""
    env = os.environ if env is None else env
    try:
        doc = yamldoc.load(text, env)
    except DocumentError as exc:
        raise ConfigError([ConfigIssue(file, exc.line, format_path(exc.path), exc.message)]) from None
    if doc.empty:
        # An agent started on an empty file would watch nothing and look healthy.
        message = "no checks: the file is empty (or only comments)"
        raise ConfigError([ConfigIssue(file, 0, "(document)", message)])
    if not isinstance(doc.data, dict):
        raise ConfigError([ConfigIssue(file, doc.line_of(()), "(document)", "expected a mapping")])
    issues: list[ConfigIssue] = []
    for key in doc.data:
        # `x-…` keys hold YAML anchors for reuse, as in Docker Compose files.
        if key not in _TOP_LEVEL and not key.startswith("x-"):
            issues.append(
                ConfigIssue(
                    file,
                    doc.line_of((key,)),
                    key,
                    f"unknown key (expected one of: {', '.join(sorted(_TOP_LEVEL))})",
                )
            )
    agent_raw = doc.data.get("agent") or {}
    agent = AgentSection()
    try:
        agent = AgentSection.model_validate(agent_raw)
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, doc, file, ("agent",)))
    else:
        if problem := _interval_problem(agent.interval):
            where: yamldoc.Path = ("agent", "interval")
            issues.append(ConfigIssue(file, doc.line_of(where), format_path(where), problem))
            # The checks that inherit it are validated with the default, not told again.
            agent = agent.model_copy(update={"interval": AgentSection.model_fields["interval"].default})

    checks_raw = doc.data.get("checks") or []
    checks: list[CheckConfig] = []
    if not isinstance(checks_raw, list):
        issues.append(ConfigIssue(file, doc.line_of(("checks",)), "checks", "expected a list of checks"))
        checks_raw = []
    checks_complete = True
    seen: dict[str, int] = {}
    shared: dict[Any, Any] = {}  # equal parts of the checks' models, held once (share_parts)
    for i, raw in enumerate(checks_raw):
        path: yamldoc.Path = ("checks", i)
        type_name = _typed_entry(doc, file, path, raw, REGISTRY, "check", issues)
        if type_name is None:
            checks_complete = False
            continue
        values = {"interval": agent.interval, "timeout": agent.timeout, "series": agent.series, **raw}
        if type_name == "fleet":  # where its views are: this agent's site, and its name
            values = {"site": agent.labels.get("site", "default"), "agent": agent.name, **values}
        elif type_name == "postgres":  # the agent witness: this agent's name and zone
            values = {"agent": agent.name, "agent_zone": agent.labels.get("zone", ""), **values}
        if type_name in ("http", "lb") and "db_witness" in raw:  # the zone of the apps on this host
            values = {"agent_zone": agent.labels.get("zone", ""), **values}
        try:
            cfg = check_class(type_name).config_model.model_validate(values)
        except ValidationError as exc:
            issues.extend(_issues_from_validation(exc, doc, file, path))
            checks_complete = False
            continue
        share_parts(cfg, shared)
        # An interval taken from `agent:` was judged there.
        if "interval" in raw and (problem := _interval_problem(cfg.interval)):
            where = path + ("interval",)
            issues.append(ConfigIssue(file, doc.line_of(where), format_path(where), problem))
        if cfg.timeout > cfg.interval:
            issues.append(
                ConfigIssue(
                    file,
                    doc.line_of(path + ("timeout",)),
                    format_path(path + ("timeout",)),
                    f"timeout ({cfg.timeout:g}s) must not exceed interval ({cfg.interval:g}s)",
                )
            )
        if cfg.name in seen:
            issues.append(
                ConfigIssue(
                    file,
                    doc.line_of(path + ("name",)),
                    format_path(path + ("name",)),
                    f"duplicate check name {cfg.name!r} (first at checks[{seen[cfg.name]}])",
                )
            )
        seen.setdefault(cfg.name, i)
        checks.append(cfg)
    alerts, notifiers = _alerting(doc, file, issues)
    outbox, exporters = _exporting(doc, file, issues, agent, checks)
    warnings: list[ConfigIssue] = []
    if not checks and not issues:
        no_checks: yamldoc.Path = ("checks",)
        message = "no checks: the agent watches nothing (it only serves its own metrics)"
        warnings.append(ConfigIssue(file, doc.line_of(no_checks), "checks", message, warning=True))
    exporters_complete = not any(i.path.startswith("exporters") for i in issues)
    if exporters_complete:
        _fleet_votes(doc, file, checks, seen, exporters, warnings)
    _witness_zone(doc, file, agent, checks, seen, warnings)
    # Without checks every rule matches nothing: the warning above says so once.
    if alerts is not None and checks and checks_complete and exporters_complete:
        _alert_targets(doc, file, alerts, checks, issues, warnings)
    if issues:
        raise ConfigError(issues)
    return AgentConfig(
        agent=agent,
        checks=tuple(checks),
        source=file,
        alerts=alerts,
        notifiers=notifiers,
        outbox=outbox,
        exporters=exporters,
        warnings=tuple(warnings),
    )


def _fleet_votes(
    doc: YamlDoc,
    file: str,
    checks: list[CheckConfig],
    seen: Mapping[str, int],
    exporters: tuple[Any, ...],
    warnings: list[ConfigIssue],
) -> None:
    """A fleet check on a cluster this agent watches, while no mqtt exporter publishes this
    agent's views: the agent judges but does not vote (probably not meant)."""
    if any(getattr(getattr(e, "fleet", None), "enabled", False) for e in exporters):
        return
    # A postgres check's cluster is its `cluster`, else its name (checks/postgres/config.py).
    clusters = {getattr(c, "cluster", None) or c.name for c in checks if c.type == "postgres"}
    for c in checks:
        if c.type == "fleet" and getattr(c, "cluster", None) in clusters:
            where: yamldoc.Path = ("checks", seen[c.name])
            message = (
                f"this agent watches cluster {getattr(c, 'cluster', '')!r} but does not vote in its"
                " quorum: no mqtt exporter publishes its views (fleet: {enabled: true})"
            )
            warnings.append(ConfigIssue(file, doc.line_of(where), format_path(where), message, warning=True))


def _witness_zone(
    doc: YamlDoc,
    file: str,
    agent: AgentSection,
    checks: list[CheckConfig],
    seen: Mapping[str, int],
    warnings: list[ConfigIssue],
) -> None:
    """A postgres check whose nodes stand in zones, on an agent without one: its witness of the
    primary counts in no zone, so it can never help confirm a dead primary (docs/failover.md) —
    the usual cause is MAMORI_ZONE not set on this host."""
    if agent.labels.get("zone"):
        return
    for c in checks:
        nodes = getattr(c, "nodes", None) or ()
        if c.type == "postgres" and any(getattr(n, "zone", None) for n in nodes):
            where: yamldoc.Path = ("checks", seen[c.name])
            message = (
                "the nodes have zones but this agent has none (agent.labels.zone, e.g. from"
                " MAMORI_ZONE): its witness of the primary counts in no zone"
            )
            warnings.append(ConfigIssue(file, doc.line_of(where), format_path(where), message, warning=True))


def _alert_targets(
    doc: YamlDoc,
    file: str,
    alerts: Any,
    checks: list[CheckConfig],
    issues: list[ConfigIssue],
    warnings: list[ConfigIssue],
) -> None:
    """Rules and connectivity guard entries that name no check (a typo: they could never fire)."""
    from alerts.config import validate_targets

    check_tags = {c.name: c.tags for c in checks}
    for path, message, warning in validate_targets(alerts, check_tags):
        issue = ConfigIssue(file, doc.line_of(path), format_path(path), message, warning=warning)
        (warnings if warning else issues).append(issue)


def _exporting(
    doc: YamlDoc, file: str, issues: list[ConfigIssue], agent: AgentSection, checks: list[CheckConfig]
) -> tuple[Any, tuple[Any, ...]]:
    """The `outbox:` and `exporters:` sections, validated only when present (lazy imports)."""
    if "exporters" not in doc.data and "outbox" not in doc.data:
        return None, ()
    from exporters.config import EXPORTERS, OutboxConfig, validate_exporter

    outbox = OutboxConfig()
    try:
        outbox = OutboxConfig.model_validate(doc.data.get("outbox") or {})
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, doc, file, ("outbox",)))
    raw_exporters = doc.data.get("exporters") or []
    if not isinstance(raw_exporters, list):
        issues.append(
            ConfigIssue(file, doc.line_of(("exporters",)), "exporters", "expected a list of exporters")
        )
        raw_exporters = []
    exporters: list[Any] = []
    for i, raw in enumerate(raw_exporters):
        path: yamldoc.Path = ("exporters", i)
        type_name = _typed_entry(doc, file, path, raw, EXPORTERS, "exporter", issues)
        if type_name is None:
            continue
        try:
            context = {
                "agent_name": agent.name,
                "agent_labels": dict(agent.labels),
                "check_names": [c.name for c in checks],
            }
            exporters.append(validate_exporter(raw, context))
        except ValidationError as exc:
            issues.extend(_issues_from_validation(exc, doc, file, path))
    names = [e.name for e in exporters]
    for name in sorted({n for n in names if names.count(n) > 1 or n == "outbox"}):
        where = ("exporters", names.index(name), "name")
        what = "is reserved" if name == "outbox" else "is a duplicate"
        issues.append(
            ConfigIssue(file, doc.line_of(where), format_path(where), f"exporter name {name!r} {what}")
        )
    return outbox, tuple(exporters)


def _alerting(doc: YamlDoc, file: str, issues: list[ConfigIssue]) -> tuple[Any, tuple[Any, ...]]:
    """The `alerts:` and `notifiers:` sections, validated only when present (lazy imports)."""
    if "alerts" not in doc.data and "notifiers" not in doc.data:
        return None, ()
    from pydantic import TypeAdapter

    from alerts.config import AlertsConfig, validate_routes
    from alerts.notifiers.config import NotifierConfig

    notifiers: list[Any] = []
    raw_notifiers = doc.data.get("notifiers") or []
    if not isinstance(raw_notifiers, list):
        issues.append(
            ConfigIssue(file, doc.line_of(("notifiers",)), "notifiers", "expected a list of notifiers")
        )
        raw_notifiers = []
    adapter: TypeAdapter[Any] = TypeAdapter(NotifierConfig)
    for i, raw in enumerate(raw_notifiers):
        try:
            notifiers.append(adapter.validate_python(raw))
        except ValidationError as exc:
            issues.extend(_issues_from_validation(exc, doc, file, ("notifiers", i)))
    names = [n.name for n in notifiers]
    for name in sorted({n for n in names if names.count(n) > 1}):
        where = ("notifiers", names.index(name), "name")
        issues.append(
            ConfigIssue(file, doc.line_of(where), format_path(where), f"duplicate notifier name {name!r}")
        )
    alerts = None
    try:
        alerts = AlertsConfig.model_validate(doc.data.get("alerts") or {})
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, doc, file, ("alerts",)))
    if alerts is not None and len(notifiers) == len(raw_notifiers):
        for message in validate_routes(alerts, names):
            # Messages name their place: "alerts.routes.critical: unknown notifier …".
            place, sep, text = message.partition(": ")
            named = bool(sep) and place.startswith("alerts.")
            parts: yamldoc.Path = tuple(place.split(".")) if named else ("alerts", "routes")
            shown = text if named else message
            issues.append(ConfigIssue(file, doc.line_of(parts), format_path(parts), shown))
    return alerts, tuple(notifiers)


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Load a file, or the embedded default config when `path` is None.

    Reads at most `yamldoc.MAX_BYTES` (4 MiB) of the file: a larger one is refused before parsing."""
    if path is None:
        text = resources.files("agent").joinpath("default.yml").read_text(encoding="utf-8")
        return parse(text, DEFAULT_CONFIG_NAME, env)
    limit = yamldoc.MAX_BYTES
    try:
        data = read_regular_file(path, limit)  # a FIFO or a device is refused, never waited on
    except ValueError as exc:
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", f"cannot read: {exc}")]) from None
    if len(data) > limit:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        what = f"{size / 2**20:.1f} MiB" if size > limit else f"more than {limit // 2**20} MiB"
        message = f"the file is too large ({what}; a config may be at most {limit // 2**20} MiB)"
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", message)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", "not a UTF-8 text file")]) from None
    return parse(text, str(path), env)
