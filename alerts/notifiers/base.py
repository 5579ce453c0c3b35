"""What every HTTP notifier shares: a lazy aiohttp session, one POST that never raises for a
service failure, and the classification of an HTTP answer into an `Outcome`.

Secrets never reach a `Delivery.detail` or a log line through here: a failure is described by
`where` (a caller-chosen safe description of the destination, never a secret URL) and by the
exception's class and OS error text — never `str(exc)`, which in aiohttp can contain the URL. A
service may still quote what it was sent in its answer (a proxy echoing the webhook URL), so
`_finish` masks every secret of the notifier's config in the detail (agent/secrets.py) before it
is logged, stored (`alerts.db`: retries' last error, dead letters) or printed (`notify-test`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent.backoff import parse_retry_after
from agent.secrets import Secrets
from alerts.model import Delivery, Outcome

log = logging.getLogger("mamori.notifiers")

_MAX_BODY = 64 * 1024  # of an answer read for its error text; the rest is not needed
_MAX_DETAIL = 300


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str
    retry_after: float | None


def one_line(text: str, limit: int = _MAX_DETAIL) -> str:
    """Whitespace collapsed to one line, cut to `limit` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify(status: int, what: str, answer: Answer, *, reason: str = "") -> Delivery:
    """The common rule: 2xx DELIVERED; 429 RETRY (with Retry-After); other 4xx REJECTED, never
    retried; anything else (5xx, an unexpected 1xx/3xx) RETRY. `reason` overrides the body text in
    the detail."""
    text = reason or one_line(answer.body) or "(empty body)"
    if 200 <= status < 300:
        return Delivery(Outcome.DELIVERED, f"{what}: {status}")
    if status == 429:
        wait = "" if answer.retry_after is None else f", retry after {answer.retry_after:g}s"
        return Delivery(Outcome.RETRY, f"{what}: 429 throttled{wait}: {text}", answer.retry_after)
    if 400 <= status < 500:
        return Delivery(Outcome.REJECTED, f"{what}: {status} rejected: {text}")
    return Delivery(Outcome.RETRY, f"{what}: {status}: {text}", answer.retry_after)


class HttpNotifier:
    """Base of the notifiers: owns one `aiohttp.ClientSession`, created on the first send.

    `aclose()` is safe to call twice and before any send; a send after `aclose()` opens a new
    session (which a further `aclose()` closes)."""

    name: str

    def __init__(self, name: str, timeout: float, secrets: Secrets | None = None) -> None:
        self.name = name
        self._timeout = timeout
        self.secrets = secrets or Secrets()
        """What `_finish` masks: every secret of the notifier's config (`secrets_of(config)`)."""
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": "mamori-notifier/0.1"},
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session. Safe to call twice; never raises."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def _post(
        self, url: str, body: Any, where: str, headers: dict[str, str] | None = None
    ) -> Answer | Delivery:
        """POST `body` as JSON. A transport failure (timeout, refused, reset, TLS) is a RETRY
        Delivery; any HTTP answer is returned for the caller to classify. Never raises for a
        service failure."""
        try:
            async with self._client().post(url, json=body, headers=headers, allow_redirects=False) as resp:
                raw = await resp.content.read(_MAX_BODY)
                return Answer(
                    resp.status,
                    raw.decode("utf-8", errors="replace"),
                    parse_retry_after(resp.headers.get("Retry-After")),
                )
        except TimeoutError:
            return Delivery(Outcome.RETRY, f"{where}: no answer within {self._timeout:g}s (timeout)")
        except aiohttp.ClientConnectorError as exc:
            reason = os.strerror(exc.errno) if exc.errno else "connection failed"
            return Delivery(Outcome.RETRY, f"{where}: cannot connect: {reason}")
        except aiohttp.ClientError as exc:
            # Not str(exc): e.g. ClientResponseError and InvalidURL include the (secret) URL.
            return Delivery(Outcome.RETRY, f"{where}: {type(exc).__name__}")
        except OSError as exc:
            return Delivery(Outcome.RETRY, f"{where}: {exc.strerror or type(exc).__name__}")

    def _finish(self, delivery: Delivery) -> Delivery:
        """`delivery` with the notifier's secrets masked in its detail (a service may echo what it
        was sent); a non-delivery is logged (REJECTED as a warning: it is dropped)."""
        detail = self.secrets.mask(delivery.detail)
        if detail != delivery.detail:
            delivery = Delivery(delivery.outcome, detail, delivery.retry_after)
        if delivery.outcome is Outcome.REJECTED:
            log.warning("notifier %s: %s (dropped, not retried)", self.name, delivery.detail)
        elif delivery.outcome is Outcome.RETRY:
            log.info("notifier %s: %s (will retry)", self.name, delivery.detail)
        return delivery
