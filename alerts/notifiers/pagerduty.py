"""PagerDuty Events API v2: one event per notification.

TRIGGER and REMIND send `trigger` (PagerDuty appends a trigger with an open incident's
`dedup_key` to that incident, so a reminder never opens a second one); RESOLVE sends `resolve`
with the same key. TEST sends a `trigger` and, once it is accepted, the `resolve` of the same key:
a test proves the route end to end and leaves no incident open. The routing key travels only in
the request body: it is never logged and never part of a `Delivery`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from agent.secrets import secrets_of
from alerts.model import Delivery, Event, Notification, Outcome
from alerts.notifiers.base import Answer, HttpNotifier, classify, one_line
from alerts.notifiers.config import PagerDutyConfig

MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dedup_key(notification: Notification) -> str:
    """The notification's dedup key, or — over PagerDuty's 255 — a stable shortened form (a prefix
    plus a hash of the whole key), so trigger and resolve still agree."""
    key = notification.dedup_key
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return key[: MAX_DEDUP_KEY - len(digest) - 1] + "~" + digest


def iso8601(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PagerDutyNotifier(HttpNotifier):
    """Sends to `config.url` (the Events API v2 enqueue endpoint). Never raises for a service
    failure. 202 → DELIVERED; 400 → REJECTED with PagerDuty's `errors`; 429 → RETRY with
    Retry-After when given; 5xx, timeout, connection failure → RETRY."""

    def __init__(self, config: PagerDutyConfig) -> None:
        super().__init__(config.name, config.timeout, secrets_of(config))
        self.config = config

    def event(self, notification: Notification) -> dict[str, Any]:
        """The Events v2 body for `notification` (it contains the routing key: do not log it)."""
        body: dict[str, Any] = {
            "routing_key": self.config.routing_key.get_secret_value(),
            "dedup_key": dedup_key(notification),
        }
        if notification.event is Event.RESOLVE:
            body["event_action"] = "resolve"  # PagerDuty ignores a payload on resolve
            return body
        details = notification.details
        payload: dict[str, Any] = {
            "summary": truncate(notification.summary or notification.alert, MAX_SUMMARY),
            "source": details.get("agent") or self.config.source,
            "severity": notification.severity.value,
        }
        if notification.created_at > 0:
            payload["timestamp"] = iso8601(notification.created_at)
        for key, field in (("component", "check"), ("group", "cluster"), ("class", "reason")):
            if details.get(field):
                payload[key] = details[field]
        payload["custom_details"] = {
            "alert": notification.alert,
            "event": notification.event.value,
            **details,
        }
        if notification.runbook_url:
            payload["custom_details"]["runbook_url"] = notification.runbook_url
        body.update(event_action="trigger", payload=payload, client="Mamori")
        if notification.runbook_url:
            body["links"] = [{"href": notification.runbook_url, "text": "Runbook"}]
        return body

    async def send(self, notification: Notification) -> Delivery:
        delivery = await self._send_one(notification)
        if notification.event is not Event.TEST or delivery.outcome is not Outcome.DELIVERED:
            return delivery
        resolve = replace(notification, event=Event.RESOLVE)
        closed = await self._send_one(resolve)
        if closed.outcome is Outcome.DELIVERED:
            return Delivery(Outcome.DELIVERED, f"{delivery.detail}, then resolved")
        detail = f"{delivery.detail}, but its resolve failed ({closed.detail}): resolve it by hand"
        return Delivery(closed.outcome, detail, closed.retry_after)

    async def _send_one(self, notification: Notification) -> Delivery:
        where = f"pagerduty {notification.event.value} {notification.alert}"
        answer = await self._post(self.config.url, self.event(notification), where)
        if isinstance(answer, Delivery):
            return self._finish(answer)
        if answer.status == 400:
            delivery = Delivery(Outcome.REJECTED, f"{where}: 400 invalid event: {_errors(answer)}")
        else:
            delivery = classify(answer.status, where, answer)
            if delivery.outcome is Outcome.DELIVERED:
                delivery = Delivery(
                    Outcome.DELIVERED, f"{where}: {answer.status} dedup_key={dedup_key(notification)}"
                )
        return self._finish(delivery)


def _errors(answer: Answer) -> str:
    """PagerDuty's `errors` list of a 400, joined; else the body."""
    try:
        data = json.loads(answer.body)
    except ValueError:
        return one_line(answer.body) or "(empty body)"
    if isinstance(data, dict) and isinstance(data.get("errors"), list):
        return one_line("; ".join(str(e) for e in data["errors"]))
    return one_line(answer.body)
