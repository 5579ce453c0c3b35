"""Config models of the notifiers, one per `type:`, validated completely at load.

Secrets (`routing_key`, `webhook_url`, `bearer_token`) are `SecretStr`: they print as `**********`,
may be given as `<field>_file: PATH` instead (see agent.fields.Model), and are never echoed in a
validation error (`hide_input_in_errors`), so a typo in a secret cannot leak it into a log.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator

from agent.fields import Duration, Model
from agent.headers import check_headers, token_problem

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "authorization"})


def is_loopback(host: str | None) -> bool:
    """True for `localhost` and any loopback address (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http_url(value: str, what: str, *, https_only: bool = False) -> str:
    """An absolute http(s) URL with a host; with `https_only`, plain http only for loopback (tests).
    The message never contains the URL itself: it may be a secret."""
    if not all(" " < c < "\x7f" for c in value):
        # urlsplit would silently drop a tab or a line break, and aiohttp refuse the rest later.
        raise ValueError(f"{what} must be printable ASCII without spaces (percent-encode other characters)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials in the URL")
    if https_only and parts.scheme != "https" and not is_loopback(parts.hostname):
        raise ValueError(f"{what} must use https:// (plain http is allowed only for a loopback host)")
    return value


class _NotifierConfig(Model):
    model_config = ConfigDict(hide_input_in_errors=True)

    name: str = Field(pattern=_NAME)
    """The route name that `Notification.route` refers to; unique across notifiers."""
    timeout: Duration = 10.0
    """Per request, connecting included. A request over it is classified RETRY."""


class PagerDutyConfig(_NotifierConfig):
    type: Literal["pagerduty"]
    routing_key: SecretStr
    """The 32-character integration key of an Events API v2 integration."""
    _offline_secrets = {"routing_key": "0" * 32}
    url: str = "https://events.pagerduty.com/v2/enqueue"
    source: str = "mamori"
    """`payload.source` when a notification's details carry no `agent`."""

    @field_validator("routing_key")
    @classmethod
    def _routing_key(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value()
        if len(key) != 32 or not key.isascii() or not key.isalnum():
            raise ValueError(f"routing_key must be 32 letters or digits (got {len(key)} characters)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value, "url")


class SlackConfig(_NotifierConfig):
    type: Literal["slack"]
    webhook_url: SecretStr
    """`https://hooks.slack.com/services/T…/B…/…`; the whole URL is the secret."""
    _offline_secrets = {"webhook_url": "https://hooks.slack.com/services/offline"}
    min_interval: Duration = 1.0
    """Least time between the end of one message to this webhook and the start of the next."""

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr) -> SecretStr:
        _check_http_url(value.get_secret_value(), "webhook_url", https_only=True)
        return value


class AlertmanagerConfig(_NotifierConfig):
    type: Literal["alertmanager"]
    url: str
    """The Alertmanager base URL, e.g. `http://alertmanager:9093`; alerts go to `<url>/api/v2/alerts`."""
    label_keys: tuple[str, ...] = ("check", "target", "reason", "agent", "cluster")
    """Detail keys copied into labels (the alert's identity); every other detail is an annotation."""
    generator_url: str | None = None
    """Sent as `generatorURL`, e.g. the agent's status page."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value, "url").rstrip("/")

    @field_validator("generator_url")
    @classmethod
    def _generator_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value, "generator_url")

    @field_validator("label_keys")
    @classmethod
    def _label_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key) or key in ("alertname", "severity"):
                raise ValueError(f"label_keys: {key!r} is not a usable Prometheus label name")
        return value


class WebhookConfig(_NotifierConfig):
    type: Literal["webhook"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (not secret: they may be logged). Put a token in `bearer_token`."""
    bearer_token: SecretStr | None = None
    """Sent as `Authorization: Bearer …`."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value, "url")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        check_headers(value, "headers")
        for key in value:
            if key.lower() in _RESERVED_HEADERS:
                raise ValueError(
                    f"headers: {key} is set by the notifier (use bearer_token for Authorization)"
                )
        return value

    @field_validator("bearer_token")
    @classmethod
    def _bearer_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := token_problem(value.get_secret_value())) is not None:
            raise ValueError(f"the token {problem}")
        return value


NotifierConfig = Annotated[
    PagerDutyConfig | SlackConfig | AlertmanagerConfig | WebhookConfig, Field(discriminator="type")
]
"""Any notifier's config; `type:` selects the model."""
