"""Alertmanager API v2: each notification becomes one alert POSTed to `/api/v2/alerts`.

Labels are the alert's identity in Alertmanager (`alertname`, `severity` and the detail keys in
`label_keys`); every other detail, the summary and the runbook are annotations, so a changing
measured value never forks the alert. RESOLVE sets `endsAt` = now with the same labels, which
resolves it. A firing alert without `endsAt` is resolved by Alertmanager itself after its
`resolve_timeout` (5 m by default) unless re-sent: reminders re-send it. TEST fires with an `endsAt`
`TEST_LIFETIME` ahead, so Alertmanager routes it like a real alert and then resolves it itself.
"""

from __future__ import annotations

import time
from typing import Any

from agent.secrets import secrets_of
from alerts.model import Delivery, Event, Notification
from alerts.notifiers.base import HttpNotifier, classify
from alerts.notifiers.config import AlertmanagerConfig
from alerts.notifiers.pagerduty import iso8601

TEST_LIFETIME = 300.0  # seconds a test alert stays active (longer than a usual group_wait)


class AlertmanagerNotifier(HttpNotifier):
    """Never raises for a service failure. 200 → DELIVERED; 400 → REJECTED with Alertmanager's
    error text; 429 → RETRY; 5xx, timeout, connection failure → RETRY."""

    def __init__(self, config: AlertmanagerConfig) -> None:
        super().__init__(config.name, config.timeout, secrets_of(config))
        self.config = config
        self.endpoint = f"{config.url}/api/v2/alerts"

    def alerts(self, notification: Notification, now: float | None = None) -> list[dict[str, Any]]:
        """The request body: a list of one postable alert."""
        details = notification.details
        # The trigger's identity, so its reminders and its resolve carry exactly its labels.
        identity = {**details, **notification.identity}
        labels = {"alertname": notification.alert, "severity": notification.severity.value}
        labels.update({key: identity[key] for key in self.config.label_keys if identity.get(key)})
        annotations = {"summary": notification.summary or notification.alert}
        description = [f"{key}: {value}" for key, value in details.items() if key not in labels]
        description += [f"{key}: {labels[key]}" for key in self.config.label_keys if key in labels]
        if description:
            annotations["description"] = "\n".join(description)
        annotations.update({key: value for key, value in details.items() if key not in labels})
        if notification.runbook_url:
            annotations["runbook_url"] = notification.runbook_url
        alert: dict[str, Any] = {"labels": labels, "annotations": annotations}
        when = time.time() if now is None else now
        if notification.event is Event.RESOLVE:
            # No startsAt: Alertmanager keeps the firing alert's start and takes endsAt as the end.
            alert["endsAt"] = iso8601(when)
        else:
            alert["startsAt"] = iso8601(notification.created_at or when)
        if notification.event is Event.TEST:
            alert["endsAt"] = iso8601(when + TEST_LIFETIME)
        if self.config.generator_url:
            alert["generatorURL"] = self.config.generator_url
        return [alert]

    async def send(self, notification: Notification) -> Delivery:
        where = f"alertmanager {self.config.url} {notification.event.value} {notification.alert}"
        answer = await self._post(self.endpoint, self.alerts(notification), where)
        if isinstance(answer, Delivery):
            return self._finish(answer)
        return self._finish(classify(answer.status, where, answer))
