"""Field types shared by every config model: durations, byte sizes, secrets read from files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """`1m30s`, `250ms`, `2h`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 10s, 1m30s or 250ms")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos == len(text) and text:
            return total
        raise ValueError(f"invalid duration {value!r}: expected a duration like 10s, 1m30s or 250ms")
    return value


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


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys rejected.

    Any `SecretStr` field `x` may instead be given as `x_file: PATH`; the file is read at load
    (trailing newline stripped), so secrets can come from Docker/Kubernetes secret mounts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    _secret_fields: ClassVar[tuple[str, ...]] = ()

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
            try:
                data[name] = Path(str(path)).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{file_key}: cannot read {path}: {exc.strerror or exc}") from None
        return data


def secret_value(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()
