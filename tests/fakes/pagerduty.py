"""A strict fake PagerDuty Events API v2 (`POST /v2/enqueue`) on 127.0.0.1, for tests.

    async with fake_pagerduty() as pd:
        config = PagerDutyConfig(type="pagerduty", name="pd", routing_key=pd.routing_key, url=pd.url)
        ...
        assert pd.state_changes == [("k1", "triggered"), ("k1", "resolved")]

It validates an event as the documented API does and answers in its shapes:
- 202 `{"status":"success","message":"Event processed","dedup_key":…}`;
- 400 `{"status":"invalid event","message":"Event object is invalid","errors":[…]}` for: a body
  that is not a JSON object; `routing_key` not 32 characters or not one this fake knows;
  `event_action` not trigger|acknowledge|resolve; `dedup_key` missing on acknowledge/resolve,
  not a string, or over 255; on trigger a missing `payload`, `summary` missing or over 1024,
  `source` missing, `severity` not critical|error|warning|info, `timestamp` not ISO 8601,
  `component`/`group`/`class` not strings; `links` not `[{href, text?}]`; `images` not
  `[{src (https), href?, alt?}]`. Unknown top-level keys are ignored, as the real API does.
- 404 for another path, 405 for another method.
It models incidents: a trigger with an open incident's dedup_key is appended to it (no new
incident); resolve closes it (resolving an unknown or closed key is accepted and changes
nothing). `state_changes` lists each real change once, so a test can assert "exactly once".
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

from aiohttp import web

from tests.fakes.http_faults import FakeHttpService, serve

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")


@dataclass
class Incident:
    dedup_key: str
    status: str  # triggered | acknowledged | resolved
    triggers: list[dict[str, Any]] = field(default_factory=list)  # every trigger event, in order


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _invalid(errors: list[str]) -> web.Response:
    return _json(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors})


def _is_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str)


def validate(event: Any, routing_keys: set[str]) -> list[str]:
    """The errors PagerDuty would report for `event`; empty when it is valid."""
    if not isinstance(event, dict):
        return ["Event object is not a JSON object"]
    errors: list[str] = []
    key = event.get("routing_key")
    if not _is_str(key) or not key:
        errors.append("'routing_key' is missing or blank")
    elif len(key) != 32:
        errors.append("'routing_key' must be 32 characters")
    elif key not in routing_keys:
        errors.append("Invalid routing key")
    action = event.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    dedup = event.get("dedup_key")
    if dedup is not None and (not _is_str(dedup) or len(dedup) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append("'dedup_key' is missing or blank")
    if action == "trigger":
        errors += _validate_payload(event.get("payload"))
    errors += _validate_list(event, "links", {"href": True, "text": False})
    errors += _validate_list(event, "images", {"src": True, "href": False, "alt": False})
    for i, image in enumerate(event.get("images") or []):
        if isinstance(image, dict) and _is_str(image.get("src")) and not image["src"].startswith("https://"):
            errors.append(f"'images[{i}].src' must be an https URL")
    for name in ("client", "client_url"):
        if name in event and not _is_str(event[name]):
            errors.append(f"'{name}' must be a string")
    return errors


def _validate_payload(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors: list[str] = []
    summary = payload.get("summary")
    if not _is_str(summary) or not summary.strip():
        errors.append("'payload.summary' is missing or blank")
    elif len(summary) > 1024:
        errors.append("'payload.summary' must be at most 1024 characters")
    if not _is_str(payload.get("source")) or not payload["source"].strip():
        errors.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' is invalid (must be one of: critical, error, warning, info)")
    if "timestamp" in payload:
        try:
            datetime.fromisoformat(str(payload["timestamp"]).replace("Z", "+00:00"))
        except ValueError:
            errors.append("'payload.timestamp' is not a valid ISO 8601 timestamp")
    for name in ("component", "group", "class"):
        if name in payload and not _is_str(payload[name]):
            errors.append(f"'payload.{name}' must be a string")
    return errors


def _validate_list(event: dict[str, Any], name: str, keys: dict[str, bool]) -> list[str]:
    if name not in event:
        return []
    items = event[name]
    if not isinstance(items, list):
        return [f"'{name}' must be an array"]
    errors = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(f"'{name}[{i}]' must be an object")
            continue
        for key, required in keys.items():
            if (required and key not in item) or (key in item and not _is_str(item[key])):
                errors.append(f"'{name}[{i}].{key}' is {'missing or ' if required else ''}not a string")
    return errors


class FakePagerDuty(FakeHttpService):
    def __init__(self) -> None:
        super().__init__()
        self.routing_key = secrets.token_hex(16)  # 32 characters, like an integration key
        self.routing_keys = {self.routing_key}
        self.events: list[dict[str, Any]] = []  # every accepted event, in order
        self.rejected: list[Any] = []  # every event answered 400
        self.incidents: list[Incident] = []
        self.state_changes: list[tuple[str, str]] = []  # (dedup_key, new status), once per change

    @property
    def url(self) -> str:
        return f"{self.base_url}/v2/enqueue"

    def open_incident(self, dedup_key: str) -> Incident | None:
        """The unresolved incident with `dedup_key`, if any."""
        for incident in reversed(self.incidents):
            if incident.dedup_key == dedup_key and incident.status != "resolved":
                return incident
        return None

    def fault_answer(self, status: int, retry_after: float | None) -> web.Response:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        if status == 429:
            body = {
                "status": "throttle event",
                "message": "Requests for this service are arriving too quickly.",
            }
            return _json(429, body, headers)
        return web.Response(status=status, text="Internal Server Error", headers=headers)

    async def serve(self, request: web.BaseRequest) -> web.Response:
        if request.path != "/v2/enqueue":
            return web.Response(status=404, text="Not Found")
        if request.method != "POST":
            return web.Response(status=405, text="Method Not Allowed")
        try:
            event = json.loads(await request.read())
        except ValueError:
            return _invalid(["Event object is not valid JSON"])
        errors = validate(event, self.routing_keys)
        if errors:
            self.rejected.append(event)
            return _invalid(errors)
        self.events.append(event)
        key = event.get("dedup_key") or uuid.uuid4().hex
        self._apply(event["event_action"], key, event)
        return _json(202, {"status": "success", "message": "Event processed", "dedup_key": key})

    def _apply(self, action: str, key: str, event: dict[str, Any]) -> None:
        incident = self.open_incident(key)
        if action == "trigger":
            if incident is None:
                incident = Incident(key, "triggered")
                self.incidents.append(incident)
                self.state_changes.append((key, "triggered"))
            incident.triggers.append(event)
        elif incident is not None and incident.status != {"acknowledge": "acknowledged"}.get(
            action, "resolved"
        ):
            incident.status = "acknowledged" if action == "acknowledge" else "resolved"
            self.state_changes.append((key, incident.status))


@asynccontextmanager
async def fake_pagerduty() -> AsyncIterator[FakePagerDuty]:
    """A FakePagerDuty listening on 127.0.0.1 (see tests/fakes/http_faults.py for the faults)."""
    async with serve(FakePagerDuty()) as fake:
        yield fake
