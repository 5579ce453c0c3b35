"""HTTP header names and values as a config gives them (checks, notifiers, exporters), validated at
load.

At load, because h11 and aiohttp refuse a bad header only when the request is built: every run
(or every notification) would then fail as a bug, and their errors quote the value — a token.
So the messages here never contain a value, only what is wrong with it. Strict on purpose: a
value is visible ASCII with inner spaces or tabs (RFC 9110 allows obs-text, but nothing a config
needs), a bearer token is one word of visible ASCII.
"""

from __future__ import annotations

import re

TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token: a header name, a method


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a header name, or None."""
    if not TOKEN.match(name):
        return "is not a valid header name (letters, digits and !#$%&'*+.^_`|~-)"
    return None


def value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a header value, or None. Never quotes the value."""
    for c in value:
        if c in "\r\n":
            return "contains a line break"
        if c == "\x00":
            return "contains a NUL character"
        if (c < " " and c != "\t") or c == "\x7f":
            return "contains a control character"
        if c > "\x7e":
            return "contains a non-ASCII character (percent-encode it, or use its ASCII form)"
    return None


def token_problem(token: str) -> str | None:
    """Why `token` cannot be sent as `Authorization: Bearer <token>`, or None."""
    if not token:
        return "is empty"
    problem = value_problem(token)
    if problem is not None:
        return problem
    if any(c in " \t" for c in token):
        return "contains a space (a token is one word)"
    return None


def check_headers(headers: dict[str, str], key: str = "") -> dict[str, str]:
    """Raise ValueError naming the first bad header (`the value of X-Token contains a line
    break`, prefixed with `key: ` when given); returns `headers` unchanged."""
    prefix = f"{key}: " if key else ""
    for name, value in headers.items():
        if (problem := name_problem(name)) is not None:
            raise ValueError(f"{prefix}{name!r} {problem}")
        if (problem := value_problem(value)) is not None:
            raise ValueError(f"{prefix}the value of {name} {problem}")
    return headers
