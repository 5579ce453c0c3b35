"""What the agent's own alerting passes around: alert states and the notifications they cause.

The engine (alerts/engine.py) turns check results into `Alert` state changes; each change that
must reach people becomes a `Notification`, stored durably before any attempt to send it
(alerts/store.py), and delivered by a `Notifier` (alerts/notifiers/) that answers with a
`Delivery` (agent/delivery/outcome.py). Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

# The one vocabulary of delivery (agent/delivery/outcome.py), shared with the push exporters.
from agent.delivery.outcome import Delivery as Delivery
from agent.delivery.outcome import Outcome as Outcome


class AlertState(enum.StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"  # condition true, `for` not yet elapsed
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Event(enum.StrEnum):
    TRIGGER = "trigger"
    RESOLVE = "resolve"
    REMIND = "remind"  # a reminder of a still-firing alert (same dedup key as its trigger)
    TEST = "test"  # agentctl notify-test


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one route. `dedup_key` is stable for the life of an alert (PagerDuty uses
    it to append a re-trigger and to find the incident to resolve)."""

    id: str  # unique per notification; the store's primary key
    route: str  # the configured notifier's name
    event: Event
    dedup_key: str
    alert: str  # rule name
    severity: Severity
    summary: str  # one line: what failed, where, why, the measured value
    details: dict[str, str] = field(default_factory=dict)  # check, target, reason, value, agent...
    runbook_url: str | None = None
    created_at: float = 0.0  # unix seconds
    # The trigger's check, target, reason and agent, repeated on its reminders and its resolve: a
    # service that matches a resolve to its trigger by labels (Alertmanager) needs them unchanged,
    # even when the reason moved on or another check of a grouped incident recovered last.
    identity: dict[str, str] = field(default_factory=dict)


class Notifier(Protocol):
    """Sends one notification. Never raises for a service failure: returns a Delivery."""

    name: str

    async def send(self, notification: Notification) -> Delivery: ...

    async def aclose(self) -> None: ...
