"""Configured secrets: reading a `<key>_file` secret safely, and masking what a peer echoes back.

A peer may quote what it was sent — a target answering with the `Authorization` header it got, a
webhook service answering an error with its own URL — and that text then travels into check
messages, `/api/v1/results`, exports, alert summaries, the state files and logs. `Secrets` holds
every secret of one component (a check, a notifier, an exporter), collected from its config by
`secrets_of`, and `mask()` replaces them in text before the text becomes ours. The harness
(`agent.runner.execute`) masks every check message; the notifiers mask every delivery detail.

The masking rule (docs/architecture.md, "Secrets"):
- a secret of `MIN_PART` (8) characters or more is masked wherever any part of it at least
  `MIN_PART` characters long appears, so a peer (or our own truncation) cutting it short still
  shows nothing that identifies it; runs of masked characters become one `***`;
- a shorter secret is masked only where it stands alone (not inside a longer word or number):
  masking every "abcd" would garble unrelated text, and so short a secret identifies little;
- the forms a peer may echo are masked the same way: URL-encoded (`%2F`, `+`), JSON- and
  Python-escaped, and for a user and password the base64 of `user:password` that Basic auth sends;
  an `Authorization`-style value (`Bearer X`) contributes its credential `X`;
- a secret that is a URL (a Slack webhook) contributes its userinfo and the parts of its path and
  query that look like tokens (8 characters or more, not a plain lower-case word such as
  `services`), not its scheme or host, so other URLs in the same text stay readable;
- a URL that is not itself secret (a check's `url`) contributes its userinfo password and the
  token-like values of its query string; header maps contribute the values of headers whose
  names say they carry a credential (`Authorization`, `Cookie`, `X-Api-Key`, `*token*`, …).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from pydantic import BaseModel, SecretStr

from agent.files import read_regular_file

__all__ = ["MASK", "MAX_SECRET_FILE", "MIN_PART", "Secrets", "read_secret_file", "redact_url", "secrets_of"]

MIN_PART = 8
MASK = "***"
MAX_SECRET_FILE = 64 * 1024  # a PEM key with its chain is a few KiB; a token far less

_WORD = re.compile(r"[a-z]+(?:[-_.][a-z]+)*")  # `services`, `enqueue`, `api-v`: not a token
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*@)?([^?#]*)(?:\?([^#]*))?")
_AUTH_VALUE = re.compile(  # `Bearer X`, `Basic X`, `Token X`: the scheme is no secret
    r"^(?:Bearer|Basic|Token|Digest|Negotiate|ApiKey|Api-Key|Key|OAuth|SSWS)\s+(\S+)\s*$", re.IGNORECASE
)
_CREDENTIAL_HEADER = re.compile(
    r"authorization|cookie|token|secret|key|passw|auth|session|signature|credential", re.IGNORECASE
)


class Secrets:
    """An immutable set of secret values and the masking of them. Empty is falsy and masks nothing.

    `mask()` never raises and is linear in the text (one set lookup per character)."""

    __slots__ = ("_grams", "_raw", "_short")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._raw = frozenset(v for v in values if v)
        forms = {f for v in self._raw for f in _forms(v) if f}
        self._grams = frozenset(
            f[i : i + MIN_PART] for f in forms if len(f) >= MIN_PART for i in range(len(f) - MIN_PART + 1)
        )
        short = sorted((f for f in forms if len(f) < MIN_PART), key=len, reverse=True)
        self._short = (
            re.compile(rf"(?<![A-Za-z0-9])(?:{'|'.join(map(re.escape, short))})(?![A-Za-z0-9])")
            if short
            else None
        )

    def __bool__(self) -> bool:
        return bool(self._raw)

    def __or__(self, other: Secrets) -> Secrets:
        return Secrets(self._raw | other._raw)

    def __repr__(self) -> str:
        return f"Secrets({len(self._raw)} values)"

    def mask(self, text: str) -> str:
        """`text` with every secret, every part of one of `MIN_PART` characters or more, and their
        encodings replaced by `***` (see the module docstring for the rule)."""
        if not self._raw or not text:
            return text
        covered = bytearray(len(text))
        grams, n = self._grams, MIN_PART
        if grams:
            for i in range(len(text) - n + 1):
                if text[i : i + n] in grams:
                    covered[i : i + n] = b"\x01" * n
        if self._short is not None:
            for m in self._short.finditer(text):
                covered[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
        if 1 not in covered:
            return text
        out: list[str] = []
        i = 0
        while i < len(text):
            if covered[i]:
                while i < len(text) and covered[i]:
                    i += 1
                out.append(MASK)
            else:
                j = covered.find(1, i)
                j = len(text) if j < 0 else j
                out.append(text[i:j])
                i = j
        return "".join(out)


NO_SECRETS = Secrets()
"""Nothing to mask (immutable, so shared)."""


def _forms(secret: str) -> set[str]:
    """`secret` and the encodings of it that a peer may quote back."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)}
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.add(repr(secret)[1:-1])
    return forms


def basic_credentials(user: str, password: str) -> str:
    """The base64 that HTTP Basic auth sends for `user` and `password`."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _is_token(part: str) -> bool:
    return len(part) >= MIN_PART and not _WORD.fullmatch(part)


def _url_parts(url: str, *, secret_url: bool) -> Iterator[str]:
    """The secret parts of `url`: its userinfo (password; or the user when there is no password:
    then it is a token), the base64 Basic auth made of it, the token-like values of its query and,
    for a `secret_url`, the token-like segments of its path."""
    m = _URL.match(url)
    if m is None:
        return
    _, userinfo, path, query = m.groups()
    if userinfo:
        user, colon, password = userinfo[:-1].partition(":")
        if colon and password:
            yield from (password, unquote(password))
        elif user:
            yield from (user, unquote(user))
        yield basic_credentials(unquote(user), unquote(password))
    if secret_url:  # the host is the first segment: an address, not a secret
        yield from (s for s in (path or "").split("/")[1:] if _is_token(s))
    for _, value in parse_qsl(query or "", keep_blank_values=False):
        if _is_token(value):
            yield value


def _credential(value: str) -> str:
    """The credential of an `Authorization`-style value (`Bearer X` → `X`), else `value`."""
    m = _AUTH_VALUE.match(value)
    return m.group(1) if m else value


def _collect(obj: Any, out: set[str], field: str = "") -> None:
    if isinstance(obj, SecretStr):
        value = obj.get_secret_value()
        parts = set(_url_parts(value, secret_url=True)) if _URL.match(value) else set()
        if parts:
            out.update(parts)
        else:  # not a URL, or one with no token in it: the whole value then
            out.add(_credential(value))
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            _collect(getattr(obj, name, None), out, name)
        password = getattr(obj, "password", None)
        user = getattr(obj, "username", None) or getattr(obj, "user", None)
        if isinstance(password, SecretStr) and isinstance(user, str):
            out.add(basic_credentials(user, password.get_secret_value()))
    elif isinstance(obj, str):
        if "://" in obj and ("@" in obj or "?" in obj):
            out.update(_url_parts(obj, secret_url=False))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if field.endswith("headers") and isinstance(value, str):
                if _CREDENTIAL_HEADER.search(str(key)):
                    out.add(_credential(value))
            else:
                _collect(value, out, str(key))
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            _collect(item, out, field)


def secrets_of(*objects: Any) -> Secrets:
    """Every secret configured in `objects` (config models, or lists, tuples and dicts of them):
    every `SecretStr` field anywhere in them, URL userinfo and query tokens, credential-named
    header values, and the Basic auth form of a user and password. Never raises."""
    found: set[str] = set()
    for obj in objects:
        _collect(obj, found)
    # Most checks have none: one shared empty Secrets, not ~0.5 KB each (issue 16).
    return Secrets(found) if found else NO_SECRETS


def redact_url(text: str) -> str:
    """`text` with the userinfo of a URL at its start replaced (`http://user:***@host/`,
    `http://***@host/`), for messages that must quote what the user typed. Never raises."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@", text)
    if m is None:
        return text
    user, colon, _ = m.group(2).partition(":")
    shown = f"{user}:{MASK}" if colon else MASK
    return f"{m.group(1)}{shown}@{text[m.end() :]}"


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """The text of a secret file with one trailing newline removed.

    Reads only a regular file (a symlink to one is fine: secret mounts use them) of at most
    `MAX_SECRET_FILE` bytes of UTF-8, never blocking (agent/files.py). Raises ValueError with a
    one-line reason that never contains the file's content."""
    data = read_regular_file(path, MAX_SECRET_FILE)
    if len(data) > MAX_SECRET_FILE:
        raise ValueError(f"larger than {MAX_SECRET_FILE // 1024} KiB: not a secret file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    return text
