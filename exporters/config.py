"""The `outbox:` and `exporters:` config sections, validated at load (agent/config.py).

Exporter types are looked up in `EXPORTERS` and their modules imported only when a config names
them, so an agent without push exporters never imports aiomqtt, oci or opentelemetry. Each module
defines its config model (a pydantic model with `type: Literal[...]`, extending `ExporterBase`,
named in `EXPORTERS`), `require(config)` and `build(config, context) -> PushExporter`. `require`
raises a one-line `ExtraMissing` when the module's optional dependency is not installed; `build()`
calls it (`agentctl run` refuses to start) and so does `agentctl validate` (`missing_extra`), so
both say the same. Config validation itself never needs the dependency.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.errors import ExtraMissing as ExtraMissing  # its home was here: importers keep working
from agent.fields import ByteSize, Model

# type -> "module:ConfigModel". Each module: its config model, `build(config, context)`.
EXPORTERS: dict[str, str] = {
    "oci": "exporters.oci:OciConfig",
    "mqtt": "exporters.mqtt:MqttConfig",
    "otel": "exporters.otel:OtelConfig",
}


class OutboxConfig(Model):
    """Where push exporters' results wait until sent, and how much disk that may take."""

    path: Path = Path("/var/lib/mamori/outbox.db")
    max_size: ByteSize = 256 * 2**20


def missing_extra(config: Any) -> ExtraMissing | None:
    """Why the exporter `config` could not be built here (its dependency is not installed), or
    None. The very check `build()` makes; imports the exporter's dependency when installed."""
    try:
        exporter_module(config.type).require(config)
    except ExtraMissing as exc:
        return exc
    return None


def exporter_module(type_name: str) -> ModuleType:
    """The module implementing `type_name`. Raises KeyError for an unknown type."""
    return importlib.import_module(EXPORTERS[type_name].partition(":")[0])


def validate_exporter(raw: Any, context: Mapping[str, Any] | None = None) -> Any:
    """Validate one `exporters:` entry with its type's model. `context` (pydantic validation
    context) carries `agent_name` and `agent_labels` for rules that depend on them. Raises KeyError
    (unknown type) or pydantic's ValidationError."""
    type_name = raw.get("type") if isinstance(raw, dict) else None
    module_name, _, model_name = EXPORTERS[str(type_name)].partition(":")
    model = getattr(importlib.import_module(module_name), model_name)
    return model.model_validate(raw, context=context)
