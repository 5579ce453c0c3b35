"""The one data model: every check produces a `CheckResult`; every sink reads only that.

Statuses use the Nagios numbers so the CLI's exit code is the status itself. Failure reasons form
one closed vocabulary shared by every check type, so "why did it fail?" has the same answer in
metrics, alerts and the CLI (see docs/reasons.md).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, replace
from typing import Any


class Status(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def label(self) -> str:
        # One string per status, not one per call: the scheduler keeps it per check (issue 16).
        return _STATUS_LABELS[self]


_STATUS_LABELS = {s: s.name.lower() for s in Status}


class Reason(enum.StrEnum):
    """Why a result is not OK. Closed list: a new reason is a code change and a docs change."""

    OK = "ok"
    # name resolution and connection
    DNS = "dns"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    CONNECTION_RESET = "connection_reset"
    TIMEOUT = "timeout"
    # TLS
    TLS_HANDSHAKE = "tls_handshake"
    TLS_VERIFY = "tls_verify"
    TLS_HOSTNAME = "tls_hostname"
    TLS_VERSION = "tls_version"
    CERT_EXPIRING = "cert_expiring"
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    # HTTP / TCP content
    STATUS_MISMATCH = "status_mismatch"
    BODY_MISMATCH = "body_mismatch"
    JSON_MISMATCH = "json_mismatch"
    HEADER_MISMATCH = "header_mismatch"
    EXPECT_MISMATCH = "expect_mismatch"
    BODY_TOO_LARGE = "body_too_large"
    REDIRECT_LIMIT = "redirect_limit"
    PROTOCOL_ERROR = "protocol_error"
    LATENCY = "latency"
    # host
    THRESHOLD = "threshold"
    # docker
    CONTAINER_UNHEALTHY = "container_unhealthy"
    CONTAINER_RESTARTING = "container_restarting"
    CONTAINER_OOM_KILLED = "container_oom_killed"
    CONTAINER_EXITED = "container_exited"
    CONTAINER_MISSING = "container_missing"
    # postgres (replication, WAL, archiving) and pg_backup
    PRIMARY_DOWN = "primary_down"
    SPLIT_BRAIN = "split_brain"
    SYSID_MISMATCH = "sysid_mismatch"
    TIMELINE_DIVERGENCE = "timeline_divergence"
    RPO_EXCEEDED = "rpo_exceeded"
    STANDBY_MISSING = "standby_missing"
    REPLAY_PAUSED = "replay_paused"
    REPLICATION_LAG = "replication_lag"
    ARCHIVE_FAILING = "archive_failing"
    SLOT_RETENTION = "slot_retention"
    WRAPAROUND = "wraparound"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    AUTH_FAILED = "auth_failed"
    BACKUP_STALE = "backup_stale"
    PITR_WINDOW_SHORT = "pitr_window_short"
    # fleet (the quorum of agents, checks/fleet.py)
    PRIMARY_DOWN_CONFIRMED = "primary_down_confirmed"
    PRIMARY_DOWN_INCONCLUSIVE = "primary_down_inconclusive"
    # load balancer and its backends (lb)
    LB_MISCONFIGURED = "lb_misconfigured"
    LB_ROUTES_TO_DOWN_BACKEND = "lb_routes_to_down_backend"
    LB_ADDRESS_DOWN = "lb_address_down"
    BACKEND_DOWN = "backend_down"
    APP_OUTAGE = "app_outage"
    LB_COOKIE_MISSING = "lb_cookie_missing"
    LB_SESSION_MOVED = "lb_session_moved"
    LB_BACKEND_UNKNOWN = "lb_backend_unknown"
    # the agent itself
    UNAVAILABLE = "unavailable"
    CHECK_ERROR = "check_error"


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured value. `labels` never carries the check/target: the exporter adds those."""

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: str
    check_type: str
    target: str
    status: Status
    started_at: float  # unix seconds (wall clock, for display and export timestamps)
    duration: float  # seconds, from the monotonic clock
    samples: tuple[Sample, ...] = ()
    message: str = ""
    reason: Reason = Reason.OK
    attempts: int = 1
    tags: tuple[str, ...] = ()  # the check's tags (set by the harness): what alert rules select on
    # The check's `series` (set by the harness): "basic" leaves the detailed series out of what is
    # exported (exporters/samples.py); the result itself keeps every sample, for alert rules.
    series: str = "full"

    @property
    def success(self) -> bool:
        """blackbox_exporter's `probe_success`: the target answered acceptably (OK or WARNING)."""
        return self.status in (Status.OK, Status.WARNING)

    def with_(self, **changes: Any) -> CheckResult:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The one encoding of a result: `/api/v1/results`, `agentctl check --json`, the MQTT
        payload and the outbox's rows. Exact (floats round-trip), so `result_from_json()` gives
        back an equal result."""
        return {
            "check": self.check,
            "type": self.check_type,
            "target": self.target,
            "status": self.status.label.upper(),
            "status_code": int(self.status),
            "reason": self.reason.value,
            "message": self.message,
            "started_at": self.started_at,
            "duration_seconds": self.duration,
            "attempts": self.attempts,
            "samples": [{"name": s.name, "value": s.value, "labels": dict(s.labels)} for s in self.samples],
            "tags": list(self.tags),
            "series": self.series,
        }


@dataclass(frozen=True, slots=True)
class CheckRemoved:
    """A reload removed check `check`. The scheduler publishes it into the pipeline after the
    check's task is cancelled, so every sink receives it after the check's last result (in its
    own queue's order) and can forget what it keeps of the check; a later result of that name is
    of a check configured again."""

    check: str


def result_from_json(data: dict[str, Any]) -> CheckResult:
    """The inverse of `CheckResult.to_json()`. A result encoded before results had tags has none;
    one encoded before they had `series` is "full"."""
    return CheckResult(
        check=str(data["check"]),
        check_type=str(data["type"]),
        target=str(data["target"]),
        status=Status(int(data["status_code"])),
        started_at=float(data["started_at"]),
        duration=float(data["duration_seconds"]),
        samples=tuple(
            Sample(str(s["name"]), float(s["value"]), tuple((str(k), str(v)) for k, v in s["labels"].items()))
            for s in data["samples"]
        ),
        message=str(data["message"]),
        reason=Reason(data["reason"]),
        attempts=int(data["attempts"]),
        tags=tuple(str(t) for t in data.get("tags", ())),
        series=str(data.get("series", "full")),
    )


def worst(statuses: list[Status]) -> Status:
    """The exit status of a run of several checks: CRITICAL beats UNKNOWN (it is the more
    actionable of the two, as Nagios and Icinga rank them), UNKNOWN beats WARNING, WARNING beats OK."""
    if Status.CRITICAL in statuses:
        return Status.CRITICAL
    return max(statuses, default=Status.OK)


def now() -> float:
    return time.time()
