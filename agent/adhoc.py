"""`agentctl check URL`'s ad hoc thresholds: command-line options mapped onto the http check's own
config keys (checks/http/config.py), so an ad hoc URL is judged by the same code as a configured
check. Imported when the parser is built: argparse only (`agentctl check URL` must start fast).

`--json-path` takes one condition as `PATH OP VALUE`: `db.status==up` (equals; the value is read
as JSON when it is JSON — `true`, `3`, `"3"` — else as a string), `db.status!=down`,
`version=~^2\\.` (regex), `queue.depth<100`, `ratio>0.5`, `db.status` (exists), `!error` (absent).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

# option dest -> how an error message names it (the config's words -> the command line's).
_FLAGS = {
    "expect_status": "--expect-status",
    "latency_warning": "--latency-warning",
    "latency_critical": "--latency-critical",
    "body_matches": "--body-matches",
    "body_not_matches": "--body-not-matches",
    "json_path": "--json-path",
    "tls_expiry_warning": "--tls-expiry-warning",
    "tls_expiry_critical": "--tls-expiry-critical",
    "ca_file": "--ca-file",
    "insecure": "--insecure",
}
# The http check's config keys in its validation messages -> the options that set them.
CONFIG_WORDS = {
    "expiry_warning_days": "--tls-expiry-warning",
    "expiry_critical_days": "--tls-expiry-critical",
    "latency_warning": "--latency-warning",
    "latency_critical": "--latency-critical",
    "expected_status": "--expect-status",
}
_CONDITION = re.compile(r"^(?P<neg>!)?(?P<path>[^=!<>~]+?)(?:(?P<op>==|!=|=~|<|>)(?P<value>.*))?$", re.S)


def add_arguments(parser: argparse.ArgumentParser, duration: Any) -> None:
    """The ad hoc threshold options, in their own help group; `duration` parses a duration."""
    g = parser.add_argument_group("thresholds for an ad hoc http(s):// URL (the http check's options)")
    g.add_argument(
        "--expect-status",
        action="append",
        metavar="CODE",
        help="acceptable status: 200, 2xx or 200-299 (repeatable; default 2xx)",
    )
    g.add_argument("--latency-warning", type=duration, metavar="DURATION", help="WARNING above this")
    g.add_argument("--latency-critical", type=duration, metavar="DURATION", help="CRITICAL above this")
    g.add_argument(
        "--body-matches", action="append", metavar="REGEX", help="the body must match (repeatable)"
    )
    g.add_argument(
        "--body-not-matches", action="append", metavar="REGEX", help="the body must not match (repeatable)"
    )
    g.add_argument(
        "--json-path",
        action="append",
        metavar="COND",
        help="a condition on the JSON body: PATH==VALUE, PATH!=VALUE, PATH=~REGEX, PATH<N, PATH>N,"
        " PATH (exists) or !PATH (absent), e.g. db.status==up (repeatable)",
    )
    g.add_argument(
        "--tls-expiry-warning",
        type=_days,
        metavar="DAYS",
        help="WARNING when the certificate expires sooner (14)",
    )
    g.add_argument(
        "--tls-expiry-critical", type=_days, metavar="DAYS", help="CRITICAL when it expires sooner (7)"
    )
    g.add_argument("--ca-file", metavar="FILE", help="trust this CA bundle (PEM) instead of the system's")
    g.add_argument(
        "--insecure", action="store_true", help="do not verify the certificate (expiry is still checked)"
    )


def given(args: argparse.Namespace) -> list[str]:
    """The threshold options given on the command line, as the user wrote them."""
    return [flag for dest, flag in _FLAGS.items() if getattr(args, dest, None) not in (None, False)]


def http_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The http check config keys the options ask for. Raises ValueError (one line) for a
    condition that cannot be read; the http config validates the rest."""
    out: dict[str, Any] = {}
    if args.expect_status:
        out["expected_status"] = tuple(args.expect_status)
    if args.latency_warning is not None:
        out["latency_warning"] = args.latency_warning
    if args.latency_critical is not None:
        out["latency_critical"] = args.latency_critical
    if args.body_matches:
        out["body_matches"] = tuple(args.body_matches)
    if args.body_not_matches:
        out["body_not_matches"] = tuple(args.body_not_matches)
    if args.json_path:
        out["json"] = tuple(json_condition(text) for text in args.json_path)
    tls: dict[str, Any] = {}
    if args.tls_expiry_warning is not None:
        tls["expiry_warning_days"] = args.tls_expiry_warning
    if args.tls_expiry_critical is not None:
        tls["expiry_critical_days"] = args.tls_expiry_critical
    if args.ca_file is not None:
        tls["ca_file"] = args.ca_file
    if args.insecure:
        tls["verify"] = False
    if tls:
        out["tls"] = tls
    return out


def json_condition(text: str) -> dict[str, Any]:
    """`db.status==up` -> {"path": "db.status", "equals": "up"} (the http check's `json` entry)."""
    m = _CONDITION.match(text.strip())
    if m is None or not m["path"].strip():
        raise ValueError(f"invalid --json-path {text!r}: expected e.g. db.status==up, count<10 or !error")
    path, op, value = m["path"].strip(), m["op"], m["value"]
    if m["neg"]:
        if op is not None:
            raise ValueError(f"invalid --json-path {text!r}: !PATH takes no operator (it means absent)")
        return {"path": path, "exists": False}
    if op is None:
        return {"path": path, "exists": True}
    value = value.strip()
    if op == "=~":
        return {"path": path, "matches": value}
    if op in ("<", ">"):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"invalid --json-path {text!r}: {op} needs a number") from None
        return {"path": path, "lt" if op == "<" else "gt": number}
    return {"path": path, "equals" if op == "==" else "not_equals": _json_value(value)}


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word: up, ok, green


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of days {text!r}") from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"invalid number of days {text!r}: must be more than 0")
    return value
