"""The config of the lab stack's agent, built as data and written with `yaml.safe_dump`.

Everything it watches runs on 127.0.0.1: the web lab (HAProxy in front of the apps), the
Postgres pair and its base backups when the stack has them, this machine, and — with a broker —
an MQTT exporter publishing the fleet's views and the `fleet` check. Its own notifier posts to
the stack's recorder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HOST = "127.0.0.1"


@dataclass(frozen=True)
class PgTarget:
    """What the agent needs of the Postgres pair."""

    primary_port: int
    standby_port: int
    password_file: Path
    backups: Path


@dataclass(frozen=True)
class AgentSetup:
    """Everything that varies between two lab agents (ports, paths, what runs)."""

    name: str
    site: str
    port: int
    interval: float
    directory: Path  # the agent's state files go under directory/agent/
    lb_url: str
    ca_file: Path
    backends: tuple[tuple[str, int], ...]  # (app name, port)
    haproxy_port: int
    notify_url: str
    cluster: str
    pg: PgTarget | None = None
    mqtt_port: int | None = None


def agent_config(s: AgentSetup) -> dict[str, Any]:
    """The config as a document (what `agentctl validate` reads back)."""
    every = f"{s.interval:g}s"
    checks: list[dict[str, Any]] = [
        # The load balancer, and each app behind it probed directly (2 of 3 must be healthy).
        {
            "name": "lb",
            "type": "lb",
            "url": s.lb_url,
            "tls": {"ca_file": str(s.ca_file)},
            "json": [{"path": "db.status", "equals": "up"}],
            "latency_warning": "300ms",
            "backends": [{"name": name, "address": f"{HOST}:{port}"} for name, port in s.backends],
            "verdict": {"quorum": 2},
            "tags": ["web"],
        },
        # What a user sees: the public URL through the load balancer.
        {
            "name": "http",
            "type": "http",
            "url": s.lb_url,
            "tls": {"ca_file": str(s.ca_file)},
            "json": [{"path": "db.status", "equals": "up"}],
            "latency_warning": "300ms",
            "tags": ["web"],
        },
        # The Postgres primary's port (HAProxy's without Postgres).
        {
            "name": "tcp",
            "type": "tcp",
            "host": HOST,
            "port": s.pg.primary_port if s.pg is not None else s.haproxy_port,
        },
        # This machine. Thresholds are loose: the lab shares it with whatever else runs.
        {
            "name": "host",
            "type": "host",
            "memory_warning": 0.97,
            "memory_critical": 0.99,
            "disk_warning": 0.95,
            "disk_critical": 0.98,
        },
    ]
    rules: list[dict[str, Any]] = [
        {
            "name": "web_down",
            "check": "lb",
            "status": "critical",
            "failure_threshold": 2,
            "severity": "critical",
        },
        {
            "name": "check_degraded",
            "check": "*",
            "status": "warning",
            "failure_threshold": 3,
            "severity": "warning",
        },
    ]
    if s.pg is not None:
        checks += [
            # The Postgres pair: replication, heartbeat, archiving, failover readiness.
            {
                "name": "postgres",
                "type": "postgres",
                "cluster": s.cluster,
                "nodes": [
                    # Zones (docs/failover.md): the primary with this agent in ad1, the standby
                    # in ad2 — so its WAL receiver is a second zone's witness of the primary.
                    {"name": "primary", "host": HOST, "port": s.pg.primary_port, "zone": "ad1"},
                    {
                        "name": "standby",
                        "host": HOST,
                        "port": s.pg.standby_port,
                        "application_name": "standby1",
                        "zone": "ad2",
                    },
                ],
                "user": "mamori",
                "password_file": str(s.pg.password_file),
                "sslmode": "disable",
                "expected_standbys": ["standby1"],
                "rpo": "15m",
                "tags": ["db"],
            },
            # The base backups the lab made with pg_basebackup.
            {
                "name": "pg_backup",
                "type": "pg_backup",
                "directory": str(s.pg.backups),
                "max_age": "26h",
                "tags": ["db"],
            },
        ]
        rules += [
            {
                "name": "pg_primary_down",
                "check": "postgres",
                "status": "critical",
                "reason": ["primary_down"],
                "failure_threshold": 2,
                "severity": "critical",
            },
            {
                "name": "fleet_primary_down",
                "check": "fleet:*",
                "status": "critical",
                "reason": ["primary_down_confirmed"],
                "severity": "critical",
            },
        ]
    doc: dict[str, Any] = {
        "agent": {
            "name": s.name,
            "labels": {"site": s.site, "zone": "ad1"},
            "listen": f"{HOST}:{s.port}",
            "interval": every,
            "timeout": every,
            "shutdown_timeout": "5s",
        },
        "outbox": {"path": str(s.directory / "agent" / "outbox.db")},
        "checks": checks,
        # The agent's own notifier (no Prometheus needed), to the lab's recorder.
        "notifiers": [{"name": "lab-webhook", "type": "webhook", "url": s.notify_url}],
        "alerts": {
            "state_file": str(s.directory / "agent" / "alerts.db"),
            "group_wait": "0s",
            "rules": rules,
            "routes": {"critical": ["lab-webhook"], "warning": ["lab-webhook"]},
        },
    }
    if s.mqtt_port is not None:
        # Every result to the lab's broker, retained, with this agent's views for the quorum.
        doc["exporters"] = [
            {"name": "bus", "type": "mqtt", "host": HOST, "port": s.mqtt_port, "fleet": {"enabled": True}}
        ]
        if s.pg is not None:
            # The verdict on the same broker. One agent, yet two witnesses in two zones: its own
            # path (ad1) and the standby's WAL receiver (ad2) — the defaults (min_votes 2,
            # min_zones 2) confirm a stopped primary.
            checks.append({"type": "fleet", "cluster": s.cluster, "host": HOST, "port": s.mqtt_port})
    return doc


def agent_yaml(s: AgentSetup, path: Path) -> str:
    """The config file's text: a header saying what it is, then the document."""
    mqtt = ""
    if s.mqtt_port is not None:
        topics = f"mamori/{s.site}/{s.name}/#"
        mqtt = f"# Its results on the broker: mosquitto_sub -h {HOST} -p {s.mqtt_port} -t '{topics}' -v\n"
    header = (
        "# Written by lab/agent_config.py: the agent of the Mamori lab (python -m lab.demo).\n"
        f"# Everything it watches runs on {HOST}. Check it: agentctl validate {path}\n" + mqtt
    )
    return header + "\n" + yaml.safe_dump(agent_config(s), sort_keys=False)
