"""Notifier types, by the name used in `type:` in the config, and `build(config)`.

Like checks/, the registry maps a type name to "module:Class" so a module is imported only when
a config uses it. Every class takes its config model and satisfies `alerts.model.Notifier`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alerts.model import Notifier
    from alerts.notifiers.config import NotifierConfig

REGISTRY: dict[str, str] = {
    "pagerduty": "alerts.notifiers.pagerduty:PagerDutyNotifier",
    "slack": "alerts.notifiers.slack:SlackNotifier",
    "alertmanager": "alerts.notifiers.alertmanager:AlertmanagerNotifier",
    "webhook": "alerts.notifiers.webhook:WebhookNotifier",
}


def notifier_class(type_name: str) -> type[Notifier]:
    """The class for `type_name`. Raises KeyError for an unknown type."""
    module_name, _, class_name = REGISTRY[type_name].partition(":")
    cls: type[Notifier] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build(config: NotifierConfig) -> Notifier:
    """A notifier for a validated config. Does no I/O: the HTTP session opens on the first send."""
    return notifier_class(config.type)(config)  # type: ignore[call-arg]
