"""What Grafana does with grafana/dashboards/*.json, for the tests: walk the panels, resolve the
template variables (`label_values(...)`), interpolate them into the PromQL of every target the
way Grafana's Prometheus datasource does, and find the metric names an expression reads.

No Grafana runs here (it is not packaged for Debian), so the parts of it that decide which query
reaches Prometheus are restated from its source (public/app/features/templating/template_srv.ts
and the Prometheus datasource's `interpolateQueryExpr`): a single value of a variable that is
neither multi-value nor has "All" is inserted as is; otherwise each value is regex-escaped and
several are joined as `(a|b)`; "All" with an `allValue` inserts that value unescaped, without one
it is every option joined. Unknown variables and formats raise, so a dashboard cannot depend on
something this module does not model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "grafana" / "dashboards"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "mamori.yml"
PROVIDERS = REPO / "grafana" / "provisioning" / "dashboards" / "mamori.yml"
DATASOURCE_UID = "mamori-prometheus"

# Grafana's variable syntaxes: $var, [[var]] / [[var:fmt]], ${var} / ${var.field} / ${var:fmt}.
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
_LABEL_VALUES = re.compile(
    r"\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*", re.S
)


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard file, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The panels that query something (every panel but rows)."""
    return (p for p in panels(dashboard) if p.get("type") != "row")


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


def variable_query(variable: Mapping[str, Any]) -> str:
    """The query of a query variable (Grafana stores a string, or `{query: …}` since 10)."""
    query = variable.get("query")
    if isinstance(query, Mapping):
        query = query.get("query")
    if not isinstance(query, str):
        raise ValueError(f"variable {variable.get('name')}: no query")
    return query


def parse_label_values(query: str) -> tuple[str | None, str]:
    """`label_values(selector, label)` or `label_values(label)` -> (selector or None, label)."""
    m = _LABEL_VALUES.fullmatch(query)
    if m is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    return m.group("selector"), m.group("label")


@dataclass(frozen=True)
class Selection:
    """What is chosen for one variable: some of its `options`, or All."""

    variable: Mapping[str, Any]
    options: tuple[str, ...]  # every value the variable's query returned
    chosen: tuple[str, ...]  # the values picked (all of `options` when `all`)
    all: bool


def select(variable: Mapping[str, Any], options: list[str], wanted: list[str] | None) -> Selection:
    """Pick `wanted` (each must be an option), or All when None (what the dashboards default to)."""
    opts = tuple(options)
    if wanted is None:
        if not variable.get("includeAll"):
            raise ValueError(f"variable {variable['name']} has no All option to default to")
        return Selection(variable, opts, opts, True)
    missing = [w for w in wanted if w not in opts]
    if missing:
        raise ValueError(f"variable {variable['name']}: {missing} not among its values {list(opts)}")
    if len(wanted) > 1 and not variable.get("multi"):
        raise ValueError(f"variable {variable['name']} is single-value")
    return Selection(variable, opts, tuple(wanted), False)


def _regex_escape(value: str) -> str:
    """Grafana's regexEscape (the `:regex` format)."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def _prometheus_special_regex_escape(value: str) -> str:
    """The Prometheus datasource's escape for a value inside a PromQL regex string literal: the
    regex escape doubled, since the string literal unescapes once."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def _format(sel: Selection, fmt: str | None) -> str:
    variable = sel.variable
    all_value = variable.get("allValue")
    if sel.all and all_value:
        return str(all_value)
    values = list(sel.chosen)
    if fmt is None:  # the Prometheus datasource's interpolateQueryExpr
        if not variable.get("multi") and not variable.get("includeAll"):
            (value,) = values
            return value.replace("\\", "\\\\").replace("'", "\\\\'")
        escaped = [_prometheus_special_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "regex":
        escaped = [_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "raw" and len(values) == 1:
        return values[0]
    raise ValueError(f"format {fmt!r} of variable {variable['name']} is not modelled here")


def interpolate(text: str, selections: Mapping[str, Selection], builtins: Mapping[str, str]) -> str:
    """`text` with every variable replaced as Grafana would. `builtins` gives the `$__…` ones
    (e.g. `__rate_interval`); any other unknown name raises."""

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if m.group(5):
            raise ValueError(f"${{{name}.{m.group(5)}}}: field paths are not modelled here")
        if name in builtins:
            return builtins[name]
        if name not in selections:
            raise ValueError(f"unknown variable ${name} in {text!r}")
        return _format(selections[name], fmt)

    return _VARIABLE.sub(replace, text)


def referenced_variables(text: str) -> set[str]:
    return {m.group(1) or m.group(2) or m.group(4) for m in _VARIABLE.finditer(text)}


# --- metric names in PromQL ----------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset(
    ("and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right")
    + ("offset", "bool", "atan2", "inf", "nan")
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. Strings, label matchers, range/subquery
    brackets and grouping label lists are removed first; an identifier followed by `(` is a
    function or an aggregation; keywords are skipped. Raises on a `__name__` matcher, whose
    metrics cannot be read off the text."""
    if "__name__" in expr:
        raise ValueError(f"__name__ matchers are not supported: {expr!r}")
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        token = m.group(0)
        if token.lower() in _KEYWORDS or text[m.end() :].lstrip().startswith("("):
            continue
        names.add(token)
    return names
