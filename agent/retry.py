"""The one retry schedule of everything that sends (the agent's notifier, the push exporters):
exponential backoff from 1 s doubling to a 5-minute cap, with jitter, and a cap on how long a
service's Retry-After is honoured."""

from __future__ import annotations

import random
from collections.abc import Callable

BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
RETRY_AFTER_CAP = 3600.0


def backoff(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Delay after `attempts` failed attempts in a row (>= 1): 1 s doubling to 5 min, times a
    random factor in [0.5, 1) so that many senders do not retry in step."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempts - 1, 30))
    return delay * (0.5 + rand() / 2)
