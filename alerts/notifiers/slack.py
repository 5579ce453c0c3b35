"""Slack incoming webhook: one Block Kit message per notification, at most one per `min_interval`.

The webhook URL is the secret: it is never logged nor put in a `Delivery` — a failure names only
"slack <notifier name>".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent.secrets import secrets_of
from alerts.model import Delivery, Event, Notification, Outcome
from alerts.notifiers.base import HttpNotifier, classify, one_line
from alerts.notifiers.config import SlackConfig

_FIELDS = (
    ("check", "Check"),
    ("target", "Target"),
    ("reason", "Reason"),
    ("value", "Value"),
    ("agent", "Agent"),
)
_HEADER_MAX = 150  # Block Kit limits
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_COLOURS = {"critical": "danger", "error": "danger", "warning": "warning", "info": "#439FE0"}


def marker(notification: Notification) -> str:
    """`[CRITICAL] FIRING`, `[CRITICAL] STILL FIRING`, `[RESOLVED]` or `[TEST]`: a text marker that
    reads the same in a notification preview, a log or a screen reader (no emoji)."""
    severity = notification.severity.value.upper()
    return {
        Event.TRIGGER: f"[{severity}] FIRING",
        Event.REMIND: f"[{severity}] STILL FIRING",
        Event.RESOLVE: "[RESOLVED]",
        Event.TEST: "[TEST]",
    }[notification.event]


def escape(text: str) -> str:
    """Slack mrkdwn escaping: `&`, `<` and `>` are control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message(notification: Notification) -> dict[str, Any]:
    """The webhook body: `text` (one line, the fallback shown in notifications), `blocks` (header,
    summary, the check/target/reason/value/agent fields, a runbook link) and a coloured attachment."""
    head = marker(notification)
    summary = one_line(notification.summary or notification.alert, 1000)
    text = f"{head}: {summary}"
    details = notification.details
    fields = [
        {"type": "mrkdwn", "text": _cut(f"*{title}*\n{escape(details[key])}", _FIELD_MAX)}
        for key, title in _FIELDS
        if details.get(key)
    ]
    section: dict[str, Any] = {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _cut(escape(summary), _SECTION_MAX)},
    }
    if fields:
        section["fields"] = fields
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(f"{head}: {notification.alert}", _HEADER_MAX)},
        },
        section,
    ]
    context = [
        {
            "type": "mrkdwn",
            "text": f"severity *{notification.severity.value}* · alert `{escape(notification.alert)}`",
        }
    ]
    if notification.runbook_url:
        context.insert(0, {"type": "mrkdwn", "text": f"<{notification.runbook_url}|Runbook>"})
    blocks.append({"type": "context", "elements": context})
    colour = "good" if notification.event is Event.RESOLVE else _COLOURS[notification.severity.value]
    return {"text": text, "blocks": blocks, "attachments": [{"color": colour, "fallback": text}]}


class SlackNotifier(HttpNotifier):
    """Posts to one incoming webhook. Never raises for a service failure.

    Rate limit: sends are serialised and each starts at least `min_interval` after the previous one
    *finished* — measured from the end, so the webhook sees them ≥ `min_interval` apart whatever the
    network jitter. A 429 also pushes the next start past its Retry-After."""

    def __init__(self, config: SlackConfig) -> None:
        super().__init__(config.name, config.timeout, secrets_of(config))
        self.config = config
        self._lock = asyncio.Lock()
        self._next_start = 0.0  # time.monotonic()

    async def send(self, notification: Notification) -> Delivery:
        where = f"slack {self.name} {notification.event.value} {notification.alert}"
        url = self.config.webhook_url.get_secret_value()
        async with self._lock:
            wait = self._next_start - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                answer = await self._post(url, message(notification), where)
            finally:
                self._next_start = time.monotonic() + self.config.min_interval
            if not isinstance(answer, Delivery) and answer.status == 429 and answer.retry_after:
                self._next_start = max(self._next_start, time.monotonic() + answer.retry_after)
        if isinstance(answer, Delivery):
            return self._finish(answer)
        if answer.status == 200 and answer.body.strip() not in ("ok", '{"ok":true}'):
            # Slack's webhooks answer exactly "ok"; anything else means the URL is not a webhook.
            detail = f"{where}: 200 but not a Slack webhook answer: {one_line(answer.body, 80)}"
            return self._finish(Delivery(Outcome.REJECTED, detail))
        return self._finish(classify(answer.status, where, answer))
