"""The one backoff of everything that sends (the agent's notifier, the push exporters,
`agentctl oci-alarms`): exponential backoff with jitter, and the reading of a service's
`Retry-After` (with a cap on how long it is honoured)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
RETRY_AFTER_CAP = 3600.0


def backoff(
    attempts: int,
    rand: Callable[[], float] = random.random,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
) -> float:
    """Delay after `attempts` failed attempts in a row (>= 1): `base` (1 s) doubling to `cap`
    (5 min), times a random factor in [0.5, 1) so that many senders do not retry in step."""
    delay = min(cap, base * 2.0 ** min(attempts - 1, 30))
    return delay * (0.5 + rand() / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds >= 0: delta-seconds or an HTTP date; None when absent or garbled."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_after_header(headers: Mapping[str, str] | None) -> float | None:
    """`parse_retry_after` of a header mapping that may or may not be case-insensitive."""
    headers = headers or {}
    return parse_retry_after(headers.get("retry-after") or headers.get("Retry-After"))
