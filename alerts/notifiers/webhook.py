"""Generic webhook: the notification itself as JSON (shape in `body()` and docs/notifiers.md).

The receiver should treat `id` as an idempotency key: a RETRY after a timeout may deliver a
notification that had in fact arrived.
"""

from __future__ import annotations

from typing import Any

from agent.secrets import secrets_of
from alerts.model import Delivery, Notification
from alerts.notifiers.base import HttpNotifier, classify
from alerts.notifiers.config import WebhookConfig
from alerts.notifiers.pagerduty import iso8601

SCHEMA_VERSION = "1"


def body(notification: Notification) -> dict[str, Any]:
    """`{"version": "1", "id", "route", "event", "dedup_key", "alert", "severity", "summary",
    "details", "runbook_url", "created_at" (unix seconds), "created_at_iso"}`."""
    return {
        "version": SCHEMA_VERSION,
        "id": notification.id,
        "route": notification.route,
        "event": notification.event.value,
        "dedup_key": notification.dedup_key,
        "alert": notification.alert,
        "severity": notification.severity.value,
        "summary": notification.summary,
        "details": dict(notification.details),
        "runbook_url": notification.runbook_url,
        "created_at": notification.created_at,
        "created_at_iso": iso8601(notification.created_at),
    }


class WebhookNotifier(HttpNotifier):
    """Never raises for a service failure. 2xx → DELIVERED; 4xx other than 429 → REJECTED;
    429, 5xx, anything else, timeout, connection failure → RETRY."""

    def __init__(self, config: WebhookConfig) -> None:
        super().__init__(config.name, config.timeout, secrets_of(config))
        self.config = config
        self._headers = dict(config.headers)
        if config.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"

    async def send(self, notification: Notification) -> Delivery:
        where = f"webhook {self.name} {notification.event.value} {notification.alert}"
        answer = await self._post(self.config.url, body(notification), where, self._headers)
        if isinstance(answer, Delivery):
            return self._finish(answer)
        return self._finish(classify(answer.status, where, answer))
