"""The `postgres` check's config: its nodes, credentials, timeouts and thresholds."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from agent.fields import ByteSize, Duration, Model, Port
from agent.text import seconds
from checks.base import CheckConfig
from checks.postgres.cluster import (
    Policy,
    size,
)

_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"  # a label value: node, cluster, zone
_SLOT = re.compile(r"^[a-z0-9_]{1,63}$")  # what pg_create_physical_replication_slot accepts
_TABLE = re.compile(r"^(?:([a-z_][a-z0-9_$]{0,62})\.)?([a-z_][a-z0-9_$]{0,62})$")


class PgNodeConfig(Model):
    name: str = Field(pattern=_NAME)
    host: str = Field(min_length=1)
    port: Port = 5432
    # How the primary's pg_stat_replication names this node when it is a standby (the
    # application_name in its primary_conninfo); default: the node's name.
    application_name: str | None = Field(default=None, min_length=1, max_length=63)
    # Where the node stands (an availability domain, a site): the `zone` of its standby witness.
    zone: str | None = Field(default=None, pattern=_NAME)

    @property
    def standby_name(self) -> str:
        return self.application_name or self.name


class PostgresConfig(CheckConfig):
    type: Literal["postgres"] = "postgres"
    nodes: tuple[PgNodeConfig, ...]
    user: str = Field(default="mamori", min_length=1)
    password: SecretStr | None = None
    dbname: str = Field(default="postgres", min_length=1)
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout: Duration | None = None  # default: 3s, or half of timeout if that is less
    statement_timeout: Duration | None = None  # default: 2s, or half of timeout if that is less
    cluster: str | None = Field(default=None, pattern=_NAME)
    expected_standbys: tuple[str, ...] = ()
    rpo: Duration = 900.0
    lag_warning: Duration | None = None  # default: 60s, or half of lag_critical if that is less
    lag_critical: Duration | None = None  # default: rpo
    heartbeat: bool = True
    heartbeat_table: str = "mamori.heartbeat"
    heartbeat_wait: Duration = 1.0
    # Write the heartbeat at most this often (default: every run). On an idle primary each write
    # makes archive_timeout switch a 16 MiB segment: see docs/checks/postgres.md, "What the
    # heartbeat costs".
    heartbeat_interval: Duration | None = None
    archive_age_warning: Duration | None = None  # default: 5m, or half of archive_age_critical
    archive_age_critical: Duration | None = None  # default: rpo
    ready_backlog_warning: int = Field(default=10, ge=1)
    ready_backlog_critical: int = Field(default=100, ge=1)
    slot_retained_warning: ByteSize | None = 2**30
    slot_retained_critical: ByteSize | None = None
    # Slots that may sit inactive besides the standbys' (a backup tool's, a standby being built).
    expected_slots: tuple[str, ...] = ()
    slot_inactive_warning: Duration | None = 300.0  # an inactive slot nobody expects: WARNING
    wraparound_warning: float = Field(default=0.5, gt=0, lt=1)
    wraparound_critical: float = Field(default=0.75, gt=0, lt=1)
    connections_warning: float = Field(default=0.8, gt=0, le=1)
    connections_critical: float = Field(default=0.95, gt=0, le=1)
    # How long runs in a row may find no primary answering (timeouts) before this agent's witness
    # calls it down; refused and the like are down at once (docs/checks/postgres.md, "Witnesses").
    stall_grace: Duration = 17.0
    # Who this agent is and where it stands: the agent witness's `witness` and `zone` labels.
    # Filled in from the agent's `name` and `labels.zone` by agent/config.py; not set by hand.
    agent: str = Field(default_factory=socket.gethostname, min_length=1, max_length=1024)
    agent_zone: str = ""

    @field_validator("agent_zone")
    @classmethod
    def _agent_zone(cls, value: str) -> str:
        if value and not re.match(_NAME, value):
            raise ValueError(
                f"invalid zone {value!r} (the agent's `zone` label): use 1 to 64 letters, digits and _.:-"
            )
        return value

    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, nodes: tuple[PgNodeConfig, ...]) -> tuple[PgNodeConfig, ...]:
        if not nodes:
            raise ValueError("at least one node is needed")
        for what, values in (
            ("node names", [n.name for n in nodes]),
            ("application names", [n.standby_name for n in nodes]),
        ):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"{what} must be unique: {', '.join(dupes)}")
        return nodes

    @field_validator("expected_standbys")
    @classmethod
    def _unique_standbys(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expected standbys must be unique: {', '.join(dupes)}")
        if any(not n or len(n) > 63 for n in names):
            raise ValueError("an expected standby is an application_name of 1 to 63 characters")
        return names

    @field_validator("expected_slots")
    @classmethod
    def _slot_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expected slots must be unique: {', '.join(dupes)}")
        bad = [n for n in names if not _SLOT.match(n)]
        if bad:
            raise ValueError(
                f"invalid slot name {bad[0]!r}: a slot name is 1 to 63 lower-case letters, digits or _"
            )
        return names

    @field_validator("heartbeat_table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not _TABLE.match(value):
            raise ValueError(f"invalid table name {value!r}: expected e.g. mamori.heartbeat (lower case)")
        return value

    @model_validator(mode="after")
    def _orders(self) -> PostgresConfig:
        for key in ("connect_timeout", "statement_timeout"):
            value = getattr(self, key)
            if value is not None and value >= self.timeout:
                raise ValueError(f"{key} ({value:g}s) must be less than timeout ({self.timeout:g}s)")
        if self.stall_grace < self.timeout:
            # Shorter, the second timeout in a row would already be `down`: no grace at all.
            raise ValueError(
                f"stall_grace ({seconds(self.stall_grace)}) must be at least timeout "
                f"({seconds(self.timeout)}): a shorter grace calls every stall a dead primary"
            )
        if self.heartbeat_interval is not None:
            hb = self.heartbeat_interval
            if hb < self.interval:
                raise ValueError(
                    f"heartbeat_interval ({seconds(hb)}) must be at least interval "
                    f"({seconds(self.interval)}): the heartbeat is written by a run"
                )
            if hb >= self.lag_critical_s:
                raise ValueError(
                    f"heartbeat_interval ({seconds(hb)}) must be less than lag_critical "
                    f"({seconds(self.lag_critical_s)}): a delay is measured once per heartbeat"
                )
        pairs: list[tuple[str, str, Callable[[Any], str]]] = [
            ("lag_warning", "lag_critical", seconds),
            ("archive_age_warning", "archive_age_critical", seconds),
            ("ready_backlog_warning", "ready_backlog_critical", str),
            ("slot_retained_warning", "slot_retained_critical", size),
            ("wraparound_warning", "wraparound_critical", str),
            ("connections_warning", "connections_critical", str),
        ]
        policy = self.policy()
        for warn_key, crit_key, show in pairs:
            warn, crit = getattr(policy, warn_key), getattr(policy, crit_key)
            if warn is None or crit is None or warn < crit:
                continue
            # Name the key that was given first, so the error points at its line.
            warn_text, crit_text = show(warn), show(crit)
            if warn_key not in self.model_fields_set:
                raise ValueError(f"{crit_key} ({crit_text}) must be more than {warn_key} ({warn_text})")
            if crit_key not in self.model_fields_set and crit_key in ("lag_critical", "archive_age_critical"):
                crit_text += ", the rpo"
            raise ValueError(f"{warn_key} ({warn_text}) must be less than {crit_key} ({crit_text})")
        return self

    @property
    def connect_timeout_s(self) -> float:
        return self.connect_timeout if self.connect_timeout is not None else min(3.0, self.timeout / 2)

    @property
    def statement_timeout_s(self) -> float:
        return self.statement_timeout if self.statement_timeout is not None else min(2.0, self.timeout / 2)

    @property
    def cluster_name(self) -> str:
        return self.cluster or self.name

    @property
    def lag_critical_s(self) -> float:
        return self.lag_critical if self.lag_critical is not None else self.rpo

    @property
    def archive_critical_s(self) -> float:
        return self.archive_age_critical if self.archive_age_critical is not None else self.rpo

    def policy(self) -> Policy:
        lag_critical, archive_critical = self.lag_critical_s, self.archive_critical_s
        return Policy(
            cluster=self.cluster_name,
            cluster_view=len(self.nodes) > 1 or bool(self.expected_standbys),
            rpo=self.rpo,
            lag_warning=self.lag_warning if self.lag_warning is not None else min(60.0, lag_critical / 2),
            lag_critical=lag_critical,
            expected_standbys=self.expected_standbys,
            archive_age_warning=(
                self.archive_age_warning
                if self.archive_age_warning is not None
                else min(300.0, archive_critical / 2)
            ),
            archive_age_critical=archive_critical,
            ready_backlog_warning=self.ready_backlog_warning,
            ready_backlog_critical=self.ready_backlog_critical,
            slot_retained_warning=self.slot_retained_warning,
            slot_retained_critical=self.slot_retained_critical,
            expected_slots=self.slot_names(),
            slot_inactive_warning=self.slot_inactive_warning,
            wraparound_warning=self.wraparound_warning,
            wraparound_critical=self.wraparound_critical,
            connections_warning=self.connections_warning,
            connections_critical=self.connections_critical,
            stall_grace=self.stall_grace,
            agent=self.agent,
            agent_zone=self.agent_zone,
            zones=tuple((n.name, n.zone) for n in self.nodes if n.zone),
        )

    def slot_names(self) -> tuple[str, ...]:
        """The slots this check expects: `expected_slots`, the expected standbys and every
        configured node's application name (a standby's slot is usually named after it)."""
        names = (*self.expected_slots, *self.expected_standbys, *(n.standby_name for n in self.nodes))
        return tuple(dict.fromkeys(names))

    def table(self) -> tuple[str, ...]:
        m = _TABLE.match(self.heartbeat_table)
        assert m is not None  # validated
        return tuple(part for part in m.groups() if part)
