"""The readable report of one `postgres` run, for `agentctl check -c FILE NAME`."""

from __future__ import annotations

from collections.abc import Sequence

from agent.model import CheckResult
from agent.text import seconds
from checks.postgres.cluster import (
    WRAPAROUND_LIMIT,
    ClusterVerdict,
    NodeState,
    Policy,
    size,
)
from checks.postgres.samples import STAGES


def _lsn(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def render_summary(
    name: str, result: CheckResult, states: Sequence[NodeState], verdict: ClusterVerdict, policy: Policy
) -> str:
    """A readable multi-line report of one run, for `agentctl check -c FILE NAME`."""
    lines = [f"{name}: {result.status.name} ({result.reason.value}) — cluster {policy.cluster}"]
    lines.append("nodes:")
    for s in states:
        if not s.up:
            lines.append(f"  {s.name:<12} DOWN      {s.failure.value}: {s.error}")
            continue
        head = f"  {s.name:<12} {s.role or '?':<9} timeline {s.timeline}"
        conns = f"connections {s.connections}/{s.max_connections}"
        xid = "" if s.xid_age is None else f", xid age {s.xid_age:,} ({s.xid_age / WRAPAROUND_LIMIT:.1%})"
        if s.role == "primary":
            rate = "" if s.wal_rate is None else f", WAL {size(s.wal_rate)}/s"
            lines.append(f"{head}  lsn {_lsn(s.lsn)}{rate}; {conns}{xid}")
        else:
            receiver = s.receiver.status if s.receiver is not None else "not running"
            msg = (
                ""
                if s.receiver is None or s.receiver.last_msg_age is None
                else f" (last message {seconds(s.receiver.last_msg_age)} ago)"
            )
            paused = "paused" if s.replay_paused else "running"
            lines.append(
                f"{head}  receive {_lsn(s.receive_lsn)} replay {_lsn(s.replay_lsn)} "
                f"(backlog {size(s.apply_backlog)}); {conns}{xid}"
            )
            lines.append(
                f"  {'':<12} WAL receiver {receiver}{msg}; replay {paused}; last replayed commit "
                f"{seconds(s.last_replay_age)} old (grows when the primary is idle: not lag)"
            )
    if verdict.standbys:
        if verdict.primary is not None:
            lines.append(f"standbys (as {verdict.primary.name} sees them, and their heartbeat):")
        else:
            lines.append("standbys (no primary reachable: delays on the standbys' own clocks):")
        for v in verdict.standbys:
            r = v.replica
            if r is None:
                where = "not connected to the primary" if verdict.primary is not None else "-"
            else:
                lag_b = " ".join(
                    f"{k} {size(b)}"
                    for k, b in (
                        ("sent", r.sent_bytes),
                        ("write", r.write_bytes),
                        ("flush", r.flush_bytes),
                        ("replay", r.replay_bytes),
                    )
                )
                lag_s = " ".join(f"{k} {seconds(r.lag_seconds(k))}" for k in STAGES)
                where = f"{r.state} {r.sync_state or ''}; behind by {lag_b}; lag {lag_s}".replace("  ", " ")
            delay = f"delay {seconds(v.delay)}" + (f" ({v.delay_source})" if v.delay_source else "")
            mark = "expected, " if v.expected else ""
            lines.append(f"  {v.name:<12} {mark}{where}; {delay}; failover: {v.problem or 'ready'}")
    for s in states:
        a = s.archiver
        if a is None:
            continue
        if not a.enabled:
            lines.append(f"archiver ({s.name}): archive_mode off")
            continue
        waiting = a.waiting_age or 0.0
        behind = (a.ready_count or 0) >= policy.ready_backlog_warning or waiting >= policy.archive_age_warning
        state = "FAILING" if a.failing else "BEHIND" if behind else "ok"
        if a.ready_count is None:
            ready = "unknown .ready (no pg_monitor)"
        elif a.ready_count:
            ready = f"{a.ready_count} .ready (oldest {seconds(a.ready_oldest_age)})"
        else:
            ready = "0 .ready"
        lines.append(
            f"archiver ({s.name}): {state}; {a.archived_count} archived, {a.failed_count} failed, "
            f"last {seconds(a.last_archived_age)} ago; {ready}"
        )
    for s in states:
        for slot in s.slots:
            safe = "unlimited" if slot.safe_wal_size is None else size(slot.safe_wal_size)
            lines.append(
                f"slot {slot.name} ({s.name}): {slot.slot_type}, {'active' if slot.active else 'inactive'}, "
                f"wal_status {slot.wal_status or '-'}, retains {size(slot.retained_bytes)}, safe size {safe}"
            )
    if policy.cluster_view:
        lines.append(
            f"RPO: exposure {seconds(verdict.exposure)} of {seconds(policy.rpo)} "
            f"(standby gap {seconds(verdict.standby_gap)}, archive gap {seconds(verdict.archive_gap)})"
        )
        recommended = "yes" if verdict.recommended else "no"
        lines.append(
            f"failover: {'ready' if verdict.ready else 'NOT ready'} ({verdict.ready_reason}); "
            f"recommended from here: {recommended} ({verdict.recommended_reason})"
        )
        for w in verdict.witnesses:
            where = f" (zone {w.zone})" if w.zone else ""
            lines.append(f"witness {w.name}{where}: {w.state} — {w.why}")
    if verdict.issues:
        lines.append("problems:")
        lines.extend(f"  {i.status.name:<8} {i.reason.value}: {i.text}" for i in verdict.issues)
    if verdict.notes:
        lines.append("notes:")
        lines.extend(f"  {n}" for n in verdict.notes)
    return "\n".join(lines)
