"""Logging set-up: one line per event, text or JSON, to stderr."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, and the structured
    fields a record carries (`extra={"fields": {...}}`: a status change, agent/statuslog.py).
    Never a raw newline inside a line: a traceback is the `exc` string."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update((k, v) for k, v in fields.items() if k not in data)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class FailureLog:
    """Logs a failure that repeats every few seconds (a disk that stays full, a store that stays
    damaged) without flooding the log: the first one, then once a minute or when the error
    changes. `ok()` forgets it, so the next failure is logged at once."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: tuple[str, float] | None = None  # (error, when) of the last line

    def failed(self, error: str, msg: str, *args: object) -> None:
        """`msg % args` at ERROR, unless `error` was logged less than `interval` ago."""
        now = time.monotonic()
        if self._last is None or self._last[0] != error or now - self._last[1] >= self._interval:
            self._last = (error, now)
            self._log.error(msg, *args)

    def ok(self) -> None:
        self._last = None
