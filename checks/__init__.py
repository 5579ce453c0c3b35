"""Check types, by the name used in `type:` in the config.

The registry maps a type name to "module:Class" so that a module is imported only when a config
uses it: `agentctl check URL` and a host-only agent never pay for Postgres or MQTT imports.
"""

from __future__ import annotations

import functools
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
    return _load(REGISTRY[type_name])


@functools.cache
def _load(spec: str) -> type[Check[Any]]:
    # Cached: a config of thousands of checks asks once per check, and the import machinery's
    # lookup costs a config of 10 000 checks a quarter of a second.
    module_name, _, class_name = spec.partition(":")
    cls: type[Check[Any]] = getattr(importlib.import_module(module_name), class_name)
    return cls
