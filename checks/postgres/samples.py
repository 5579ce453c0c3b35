"""The samples of a `postgres` run: per node, per standby, per slot and per cluster."""

from __future__ import annotations

from collections.abc import Sequence

from agent.catalog import READY_REASONS, RECOMMENDED_REASONS
from agent.fleetview import witness_samples
from agent.model import Reason, Sample
from checks.postgres.cluster import (
    WRAPAROUND_LIMIT,
    ClusterVerdict,
    NodeState,
    Policy,
    Stage,
)

STAGES: tuple[Stage, ...] = ("write", "flush", "replay")

# Sample names (agent/catalog.py).
UP = "mamori_pg_up"
IN_RECOVERY = "mamori_pg_in_recovery"
TIMELINE = "mamori_pg_timeline"
CONNECTIONS = "mamori_pg_connections"
MAX_CONNECTIONS = "mamori_pg_max_connections"
XID_AGE = "mamori_pg_xid_age"
XID_AGE_RATIO = "mamori_pg_xid_age_ratio"
WAL_LSN = "mamori_pg_wal_lsn_bytes"
WAL_RATE = "mamori_pg_wal_rate_bytes_per_second"
STANDBY_STATE = "mamori_pg_standby_state"
STANDBY_LAG_BYTES = "mamori_pg_standby_lag_bytes"
STANDBY_LAG_SECONDS = "mamori_pg_standby_lag_seconds"
STANDBY_FEEDBACK_AGE = "mamori_pg_standby_feedback_age_seconds"
ARCHIVER_ENABLED = "mamori_pg_archiver_enabled"
ARCHIVER_FAILING = "mamori_pg_archiver_failing"
ARCHIVER_ARCHIVED = "mamori_pg_archiver_archived_total"
ARCHIVER_FAILED = "mamori_pg_archiver_failed_total"
ARCHIVER_LAST_AGE = "mamori_pg_archiver_last_archived_age_seconds"
ARCHIVER_READY = "mamori_pg_archiver_ready_files"
ARCHIVER_READY_AGE = "mamori_pg_archiver_ready_oldest_age_seconds"
ARCHIVER_READY_WARNING = "mamori_pg_archiver_ready_files_warning"
ARCHIVER_READY_AGE_WARNING = "mamori_pg_archiver_ready_oldest_age_warning_seconds"
SLOT_ACTIVE = "mamori_pg_slot_active"
SLOT_RETAINED = "mamori_pg_slot_retained_bytes"
SLOT_EXPECTED = "mamori_pg_slot_expected"
SLOT_WAL_STATUS = "mamori_pg_slot_wal_status"
SLOT_SAFE_WAL_SIZE = "mamori_pg_slot_safe_wal_size_bytes"
RECEIVE_LSN = "mamori_pg_wal_receive_lsn_bytes"
REPLAY_LSN = "mamori_pg_wal_replay_lsn_bytes"
APPLY_BACKLOG = "mamori_pg_apply_backlog_bytes"
REPLAY_PAUSED = "mamori_pg_replay_paused"
RECEIVER_STATUS = "mamori_pg_wal_receiver_status"
RECEIVER_MSG_AGE = "mamori_pg_wal_receiver_last_message_age_seconds"
LAST_REPLAY_AGE = "mamori_pg_last_xact_replay_age_seconds"
HEARTBEAT_DELAY = "mamori_pg_heartbeat_delay_seconds"
CLUSTER_PRIMARIES = "mamori_pg_cluster_primaries"
CLUSTER_SYSID_MISMATCH = "mamori_pg_cluster_sysid_mismatch"
CLUSTER_TIMELINE_DIVERGENCE = "mamori_pg_cluster_timeline_divergence"
EXPECTED_STANDBY = "mamori_pg_expected_standby_connected"
NODE_STREAMING = "mamori_pg_node_streaming"
RPO = "mamori_pg_rpo_seconds"
LAG_WARNING = "mamori_pg_lag_warning_seconds"
RPO_EXPOSURE = "mamori_pg_rpo_exposure_seconds"
RPO_STANDBY_GAP = "mamori_pg_rpo_standby_gap_seconds"
RPO_ARCHIVE_GAP = "mamori_pg_rpo_archive_gap_seconds"
FAILOVER_READY = "mamori_pg_failover_ready"
FAILOVER_RECOMMENDED = "mamori_pg_failover_recommended"
PRIMARY_WITNESS = "mamori_pg_primary_witness"


def samples_of(states: Sequence[NodeState], verdict: ClusterVerdict, policy: Policy) -> tuple[Sample, ...]:
    """The samples of one run (names: agent/catalog.py)."""
    out: list[Sample] = []
    add = out.append
    for s in states:
        node = (("node", s.name),)
        add(Sample(UP, 1.0 if s.up else 0.0, node))
        if not s.up:
            continue
        _opt(out, IN_RECOVERY, None if s.in_recovery is None else float(s.in_recovery), node)
        _opt(out, TIMELINE, s.timeline, node)
        _opt(out, CONNECTIONS, s.connections, node)
        _opt(out, MAX_CONNECTIONS, s.max_connections, node)
        _opt(out, XID_AGE, s.xid_age, node)
        _opt(out, XID_AGE_RATIO, None if s.xid_age is None else s.xid_age / WRAPAROUND_LIMIT, node)
        if s.role == "primary":
            _primary_samples(out, s, node, policy)
        else:
            _standby_samples(out, s, node)
        for slot in s.slots:
            labels = (*node, ("slot", slot.name))
            add(Sample(SLOT_ACTIVE, float(slot.active), labels))
            add(Sample(SLOT_EXPECTED, float(slot.name in policy.expected_slots), labels))
            _opt(out, SLOT_RETAINED, slot.retained_bytes, labels)
            add(Sample(SLOT_WAL_STATUS, 1.0, (*labels, ("wal_status", slot.wal_status or "none"))))
            _opt(out, SLOT_SAFE_WAL_SIZE, slot.safe_wal_size, labels)
    if policy.cluster_view:
        _cluster_samples(out, states, verdict, policy)
    return tuple(out)


def _primary_samples(
    out: list[Sample], s: NodeState, node: tuple[tuple[str, str], ...], policy: Policy
) -> None:
    _opt(out, WAL_LSN, s.lsn, node)
    _opt(out, WAL_RATE, s.wal_rate, node)
    for r in s.replicas:
        labels = (*node, ("standby", r.name))
        out.append(Sample(STANDBY_STATE, 1.0, (*labels, ("state", r.state or "unknown"))))
        for stage, value in (
            ("sent", r.sent_bytes),
            ("write", r.write_bytes),
            ("flush", r.flush_bytes),
            ("replay", r.replay_bytes),
        ):
            _opt(out, STANDBY_LAG_BYTES, value, (*labels, ("stage", stage)))
        for lag_stage in STAGES:
            _opt(out, STANDBY_LAG_SECONDS, r.lag_seconds(lag_stage), (*labels, ("stage", lag_stage)))
        _opt(out, STANDBY_FEEDBACK_AGE, r.reply_age, labels)
    a = s.archiver
    if a is not None:
        out.append(Sample(ARCHIVER_ENABLED, float(a.enabled), node))
        if a.enabled:
            out.append(Sample(ARCHIVER_FAILING, float(a.failing), node))
            out.append(Sample(ARCHIVER_ARCHIVED, float(a.archived_count), node))
            out.append(Sample(ARCHIVER_FAILED, float(a.failed_count), node))
            _opt(out, ARCHIVER_LAST_AGE, a.last_archived_age, node)
            _opt(out, ARCHIVER_READY, a.ready_count, node)
            ready_age = None if a.ready_count is None else (a.ready_oldest_age or 0.0)
            _opt(out, ARCHIVER_READY_AGE, ready_age, node)
            # The thresholds of `archive_failing`, so that PostgresArchivingFailing judges
            # the backlog exactly as this check does (as mamori_pg_lag_warning_seconds does
            # for lag).
            out.append(Sample(ARCHIVER_READY_WARNING, float(policy.ready_backlog_warning), node))
            out.append(Sample(ARCHIVER_READY_AGE_WARNING, policy.archive_age_warning, node))


def _standby_samples(out: list[Sample], s: NodeState, node: tuple[tuple[str, str], ...]) -> None:
    _opt(out, RECEIVE_LSN, s.receive_lsn, node)
    _opt(out, REPLAY_LSN, s.replay_lsn, node)
    _opt(out, APPLY_BACKLOG, s.apply_backlog, node)
    _opt(out, REPLAY_PAUSED, None if s.replay_paused is None else float(s.replay_paused), node)
    status = s.receiver.status if s.receiver is not None else "none"
    out.append(Sample(RECEIVER_STATUS, 1.0, (*node, ("status", status))))
    if s.receiver is not None:
        _opt(out, RECEIVER_MSG_AGE, s.receiver.last_msg_age, node)
    _opt(out, LAST_REPLAY_AGE, s.last_replay_age, node)
    if s.heartbeat is not None:
        _opt(out, HEARTBEAT_DELAY, s.heartbeat.delay, node)


def _cluster_samples(
    out: list[Sample], states: Sequence[NodeState], verdict: ClusterVerdict, policy: Policy
) -> None:
    cluster = (("cluster", policy.cluster),)
    reasons = {i.reason for i in verdict.issues}
    out.append(Sample(CLUSTER_PRIMARIES, float(sum(s.role == "primary" for s in states)), cluster))
    out.append(Sample(CLUSTER_SYSID_MISMATCH, float(Reason.SYSID_MISMATCH in reasons), cluster))
    out.append(Sample(CLUSTER_TIMELINE_DIVERGENCE, float(Reason.TIMELINE_DIVERGENCE in reasons), cluster))
    # Who the primary streams to is known only from the primary's pg_stat_replication: with no
    # primary reachable from here (mamori_pg_cluster_primaries 0, its mamori_pg_up 0) it is
    # unknown from here, and absent — never 0, which would say "missing" (issue 15).
    if verdict.primary is not None:
        for v in verdict.standbys:
            connected = v.replica is not None and v.replica.streaming
            if v.expected:
                out.append(Sample(EXPECTED_STANDBY, float(connected), (*cluster, ("standby", v.name))))
            if v.node is not None:
                # Per configured node, so a rule can tell "this agent cannot reach the standby"
                # (mamori_pg_up 0) from "the standby is down" (and the primary no longer streams).
                out.append(Sample(NODE_STREAMING, float(connected), (*cluster, ("node", v.node.name))))
    out.append(Sample(RPO, policy.rpo, cluster))
    out.append(Sample(LAG_WARNING, policy.lag_warning, cluster))
    _opt(out, RPO_EXPOSURE, verdict.exposure, cluster)
    _opt(out, RPO_STANDBY_GAP, verdict.standby_gap, cluster)
    _opt(out, RPO_ARCHIVE_GAP, verdict.archive_gap, cluster)
    assert verdict.ready_reason in READY_REASONS
    assert verdict.recommended_reason in RECOMMENDED_REASONS
    out.append(Sample(FAILOVER_READY, float(verdict.ready), (*cluster, ("reason", verdict.ready_reason))))
    out.append(
        Sample(
            FAILOVER_RECOMMENDED,
            float(verdict.recommended),
            (*cluster, ("reason", verdict.recommended_reason)),
        )
    )
    for w in verdict.witnesses:
        out.extend(witness_samples(policy.cluster, w.name, w.zone, w.state))


def _opt(out: list[Sample], name: str, value: float | None, labels: tuple[tuple[str, str], ...]) -> None:
    if value is not None:
        out.append(Sample(name, float(value), labels))
