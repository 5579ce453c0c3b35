"""A strict fake of Slack incoming webhooks on 127.0.0.1, for tests.

    async with fake_slack() as slack:
        url = slack.add_webhook("#ops")      # http://127.0.0.1:PORT/services/T…/B…/<secret>
        ...
        assert [m.body["text"] for m in slack.messages] == [...]

Answers as Slack does, with plain-text bodies:
- 200 `ok` for an accepted message (recorded in `messages` with its arrival time, monotonic clock);
- 400 `invalid_payload` for a body that is not a JSON object; 400 `no_text` when neither `text`
  nor `blocks` is given; 400 `invalid_blocks` when `blocks` is not a list of at most 50 objects
  with a string `type`, or breaks the Block Kit limits Mamori relies on (header: plain_text ≤ 150;
  section: text ≤ 3000 and/or 1–10 fields ≤ 2000 each; context: 1–10 elements; text objects are
  `{type: plain_text|mrkdwn, text: str}`);
- 404 `no_service` for a path that is not a known webhook; 405 for another method;
- 410 `channel_is_archived` once `archive(url)` was called;
- 429 `rate_limited` with `Retry-After: 1` when a message arrives less than `min_interval` (1 s)
  after the previous accepted message of the same webhook.
Faults (`fail_for`, `throttle`, `hang`, `down`) come from tests/fakes/http_faults.py. One more,
`echo_url(status)`: from then on every request is answered `status` by what a misbehaving proxy in
front of Slack would send, a body quoting the request line with the full webhook URL (its secret).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from tests.fakes.http_faults import FakeHttpService, serve

_TEXT_TYPES = ("plain_text", "mrkdwn")
_FAULT_TEXT = {400: "invalid_payload", 403: "invalid_token", 404: "channel_not_found", 429: "rate_limited"}


@dataclass(frozen=True)
class SlackMessage:
    path: str
    channel: str
    at: float  # time.monotonic() at arrival
    body: dict[str, Any]


def _text_object(obj: Any, limit: int, types: tuple[str, ...] = _TEXT_TYPES) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("type") in types
        and isinstance(obj.get("text"), str)
        and 0 < len(obj["text"]) <= limit
    )


def blocks_valid(blocks: Any) -> bool:
    """Whether `blocks` passes the checks listed in the module docstring."""
    if not isinstance(blocks, list) or len(blocks) > 50:
        return False
    for block in blocks:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return False
        kind = block["type"]
        if kind == "header" and not _text_object(block.get("text"), 150, ("plain_text",)):
            return False
        if kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and fields is None:
                return False
            if text is not None and not _text_object(text, 3000):
                return False
            if fields is not None and not (
                isinstance(fields, list)
                and 0 < len(fields) <= 10
                and all(_text_object(f, 2000) for f in fields)
            ):
                return False
        if kind == "context":
            elements = block.get("elements")
            if not (isinstance(elements, list) and 0 < len(elements) <= 10):
                return False
    return True


class FakeSlack(FakeHttpService):
    min_interval = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.webhooks: dict[str, str] = {}  # path -> channel
        self.archived: set[str] = set()
        self.messages: list[SlackMessage] = []
        self.answers: list[tuple[int, str]] = []  # every (status, body) served by serve()
        self._last: dict[str, float] = {}  # path -> arrival of the last accepted message
        self._echo_status: int | None = None

    def echo_url(self, status: int | None) -> None:
        """Answer every request `status` with a body quoting its URL (None: stop)."""
        self._echo_status = status

    def add_webhook(self, channel: str = "#alerts") -> str:
        """A new webhook URL posting to `channel`; its path carries a random secret, as Slack's do."""
        team, bot = secrets.token_hex(4).upper(), secrets.token_hex(4).upper()
        path = f"/services/T{team}/B{bot}/{secrets.token_urlsafe(18)}"
        self.webhooks[path] = channel
        return self.base_url + path

    def archive(self, url: str) -> None:
        """From now on the webhook's channel is archived (410 `channel_is_archived`)."""
        self.archived.add(urlsplit(url).path)

    def fault_answer(self, status: int, retry_after: float | None) -> web.Response:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        text = _FAULT_TEXT.get(status, "rollup_error")
        return web.Response(status=status, text=text, headers=headers)

    async def serve(self, request: web.BaseRequest) -> web.Response:
        status, text, headers = await self._answer(request)
        self.answers.append((status, text))
        return web.Response(status=status, text=text, headers=headers)

    async def _answer(self, request: web.BaseRequest) -> tuple[int, str, dict[str, str]]:
        now = time.monotonic()
        path = request.path
        if self._echo_status is not None:
            return self._echo_status, f"upstream error: {request.method} {request.url} failed", {}
        if path not in self.webhooks:
            return 404, "no_service", {}
        if request.method != "POST":
            return 405, "invalid_method", {}
        if path in self.archived:
            return 410, "channel_is_archived", {}
        try:
            body = json.loads(await request.read())
        except ValueError:
            return 400, "invalid_payload", {}
        if not isinstance(body, dict):
            return 400, "invalid_payload", {}
        if not body.get("text") and not body.get("blocks"):
            return 400, "no_text", {}
        if "blocks" in body and not blocks_valid(body["blocks"]):
            return 400, "invalid_blocks", {}
        last = self._last.get(path)
        if last is not None and now - last < self.min_interval:
            return 429, "rate_limited", {"Retry-After": "1"}
        self._last[path] = now
        self.messages.append(SlackMessage(path, self.webhooks[path], now, body))
        return 200, "ok", {}


@asynccontextmanager
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A FakeSlack listening on 127.0.0.1."""
    async with serve(FakeSlack()) as fake:
        yield fake
