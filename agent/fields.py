"""Field types shared by every config model: durations, byte sizes, secrets read from files."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from agent.files import skip
from agent.secrets import read_secret_file

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


MAX_DURATION = 366 * 86400.0
"""No duration in a config is longer than a year: past that it is a typo (`100000d`), and an
infinite or huge one would make a check or a timer never fire."""


def parse_duration(value: Any) -> Any:
    """`1m30s`, `250ms`, `2h`, or a bare number of seconds; finite and at most `MAX_DURATION`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 10s, 1m30s or 250ms")
    if isinstance(value, int | float):
        return _bounded(value, value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return _bounded(float(text), value)
        except ValueError as exc:
            if "invalid duration" in str(exc):
                raise
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos == len(text) and text:
            return _bounded(total, value)
        raise ValueError(f"invalid duration {_written(value)}: expected a duration like 10s, 1m30s or 250ms")
    return value


def _written(value: Any) -> str:
    """What the user wrote, for a message: repr, at most about 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bounded(seconds: float, written: Any) -> float:
    try:
        seconds = float(seconds)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {_written(written)}: must be a finite duration like 10s or 2h")
    if seconds > MAX_DURATION:
        raise ValueError(f"invalid duration {_written(written)}: longer than a year (at most 366d)")
    return seconds


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}


def parse_size(value: Any) -> Any:
    if isinstance(value, str):
        m = _SIZE.match(value.strip())
        if not m:
            raise ValueError(f"invalid size {value!r}: expected e.g. 512KiB, 10MB or a number of bytes")
        return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""Seconds, written as `10s`, `1m`, `250ms` or a number."""

ByteSize = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]


def _port(value: Any) -> Any:
    # YAML's `true` would otherwise become port 1.
    if isinstance(value, bool):
        raise ValueError(f"invalid port {str(value).lower()}: expected a number from 1 to 65535")
    return value


Port = Annotated[int, BeforeValidator(_port), Field(ge=1, le=65535)]
"""A TCP port, 1-65535 (a string of digits from `${VAR}` is accepted, a boolean is not)."""

# RFC 1123 labels (and `_`, which Docker service names use), at most 253 characters.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


def check_host(value: str) -> str:
    """`value` if it is a host name or an IP address (IPv6 without brackets); else ValueError."""
    # The name first: it also matches every IPv4 address, and a failed ip_address() costs an
    # exception (a config of 10 000 checks: a third of a second).
    if _HOSTNAME.match(value):
        return value
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    hint = ""
    if value.startswith("[") and value.endswith("]"):
        hint = f" (write an IPv6 address without brackets: {value[1:-1]})"
    raise ValueError(f"invalid host {_written(value)}: expected a host name or an IP address{hint}")


Host = Annotated[str, Field(min_length=1), AfterValidator(check_host)]
"""A host name (letters, digits, `-`, `_`, dots) or an IPv4/IPv6 address."""


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys rejected.

    Any `SecretStr` field `x` may instead be given as `x_file: PATH`; the file is read at load
    (one trailing newline stripped), so secrets can come from Docker/Kubernetes secret mounts.
    Only a regular file of at most 64 KiB is read (`agent.secrets.read_secret_file`): a FIFO or a
    device is refused at once, never waited on. Validating offline (`agent.files.offline`), the
    file is not read and the field gets a stand-in (`_offline_secrets`, else "offline").
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    _secret_fields: ClassVar[tuple[str, ...]] = ()
    # A value each secret field accepts, used for `x_file` when validating offline (agent.files).
    _offline_secrets: ClassVar[dict[str, str]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._secret_fields = tuple(
            name for name, f in cls.model_fields.items() if "SecretStr" in repr(f.annotation)
        )

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls._secret_fields:
            return data
        for name in cls._secret_fields:
            file_key = f"{name}_file"
            if file_key not in data:
                continue
            data = dict(data)
            path = data.pop(file_key)
            if data.get(name) is not None:
                raise ValueError(f"give either {name} or {file_key}, not both")
            if skip(f"{file_key} {path}"):  # validating offline: a stand-in the field accepts
                data[name] = cls._offline_secrets.get(name, "offline")
                continue
            try:
                data[name] = read_secret_file(str(path))
            except ValueError as exc:
                raise ValueError(f"{file_key}: cannot read {path}: {exc}") from None
        return data


def share_parts(model: BaseModel, pool: dict[Any, Any]) -> None:
    """Make a validated config model share its equal parts with the models shared before it
    through the same `pool`: strings, tuples and the set of the fields given (pydantic keeps one
    per model, ~0.7 KB). 10 000 checks of one type hold ~9 MB less (issue 16).

    Safe because a config model is frozen: its fields and `model_fields_set` never change
    (`model_copy` copies the set). A tuple is keyed by its repr too, so `(1,)` and `(True,)`
    (equal, but not the same value) stay apart."""
    values = model.__dict__
    for key, value in values.items():
        if type(value) is str:
            values[key] = pool.setdefault(value, value)
        elif type(value) is tuple:
            with contextlib.suppress(TypeError):  # a tuple holding something unhashable stays its own
                values[key] = pool.setdefault((tuple, repr(value), value), value)
        elif isinstance(value, BaseModel):
            share_parts(value, pool)
    given = frozenset(model.__pydantic_fields_set__)
    shared_given = pool.setdefault(given, model.__pydantic_fields_set__)
    object.__setattr__(model, "__pydantic_fields_set__", shared_given)


def secret_value(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()
