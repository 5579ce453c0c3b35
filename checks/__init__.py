"""Check types, by the name used in `type:` in the config.

The registry maps a type name to "module:Class" so that a module is imported only when a config
uses it: `agentctl check URL` and a host-only agent never pay for Postgres or MQTT imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from checks.base import Check

REGISTRY: dict[str, str] = {
    "http": "checks.http.check:HttpCheck",
    "tcp": "checks.tcp:TcpCheck",
    "host": "checks.host.check:HostCheck",
    "lb": "checks.lb:LbCheck",
    "docker": "checks.docker:DockerCheck",
    "postgres": "checks.postgres.check:PostgresCheck",
    "pg_backup": "checks.pg_backup:PgBackupCheck",
    "fleet": "checks.fleet:FleetCheck",
}


def check_class(type_name: str) -> type[Check[Any]]:
    """The class for `type_name`. Raises KeyError for an unknown type."""
    module_name, _, class_name = REGISTRY[type_name].partition(":")
    cls: type[Check[Any]] = getattr(importlib.import_module(module_name), class_name)
    return cls
