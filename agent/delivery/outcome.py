"""The one vocabulary of delivery: what a consumer says it did with what it was handed.

A notifier answers for one entry (`Delivery`), an exporter for a batch (`PushResult`, in the same
words: a prefix settled, the rest to retry). The published label values are these words
(`mamori_notifications_total{outcome}`: delivered, retry, rejected).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: 429, 5xx, timeout, connection error — after a backoff or Retry-After
    REJECTED = "rejected"  # permanent: 4xx other than 429 — never retried, dead-lettered or counted


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one entry (a notification)."""

    outcome: Outcome
    detail: str = ""  # one line, no secrets: why (RETRY, REJECTED)
    retry_after: float | None = None  # seconds, when the service said (Retry-After)


REJECTED_REASON = "rejected"  # the drop reason of an entry a consumer REJECTED as a whole


@dataclass
class PushResult:
    """The outcome of a batch. `handled`: how many entries, from the front, are settled —
    DELIVERED, or REJECTED and counted in `dropped` by reason (e.g. {"expired": 3}); the rest are
    to RETRY: `error` says why (one line without secrets), `retry_after` when the service asked
    to wait (429/503). `detail`: why entries were rejected, for the dead letters."""

    handled: int
    error: str = ""
    retry_after: float | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    detail: str = ""

    @classmethod
    def of(cls, delivery: Delivery) -> PushResult:
        """One entry's `Delivery` as the outcome of a batch of one."""
        if delivery.outcome is Outcome.DELIVERED:
            return cls(1)
        if delivery.outcome is Outcome.REJECTED:
            return cls(1, dropped={REJECTED_REASON: 1}, detail=delivery.detail or "rejected")
        return cls(0, delivery.detail, delivery.retry_after)

    @property
    def failed(self) -> bool:
        """Part of the batch is to be retried: the pump backs off."""
        return not self.handled or bool(self.error)
