"""The `postgres` check's verdict: from what every node said in one run, the status, the reason,
the RPO exposure and the failover readiness.

Pure: no I/O and no clock. Everything it needs arrives in `NodeState`s (one per configured node,
built by `checks/postgres/queries.py`) and a `Policy` (the thresholds); what it remembers between runs
(the role each node had, the primary's timeline) arrives in `Memory`. So every rule is
unit-tested with hand-built states (tests/checks/test_postgres.py).

Guarantees:
- `judge()` never raises for any combination of states, NULLs included.
- The worst problem decides the status; among problems of that status the first in `PRECEDENCE`
  names the reason; every problem is in the message, worst first.
- A standby's problem is reported once, under its most causal reason: a standby that does not
  stream is `standby_missing` (not also lagging); a paused replay is `replay_paused` with the
  status its lag deserves.
- Failover readiness has exactly one reason from `READY_REASONS`; the recommendation exactly one
  from `RECOMMENDED_REASONS`.
- The witnesses (issue 15): every run says what this agent's own path to the primary shows
  (`agent:<agent>`) and what each standby's WAL receiver shows (`standby:<node>`), each one of
  reachable / down / unknown (`Witness`, `WITNESS_STATES`). A primary that does not answer in
  time is `unknown` until the streak of runs without a primary has lasted `stall_grace`
  (`Memory.no_primary_since` and `now` come in as arguments: no clock here); one that is not
  there (refused, unreachable, ...) is `down` at once; one whose postmaster answered at all
  (auth_failed, too many connections) is alive: `reachable`. The failover recommendation follows
  the agent witness: `primary_unknown` while unknown, `primary_down_*` only once down.
- What this agent cannot know is never judged (issue 15): with no primary reachable from here, a
  standby's delay is measured on its own clock (the time since a heartbeat last reached it, not
  its lag) and nobody here sees who the primary streams to, so there is no `standby_missing` for
  an expected standby, no `replication_lag` and no `rpo_exceeded`; the primary's own issue says
  when a standby still streams from it (it may be unreachable from here only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from agent.catalog import READY_REASONS
from agent.model import Reason, Status
from agent.text import seconds

Role = Literal["primary", "standby"]
Stage = Literal["write", "flush", "replay"]
WitnessState = Literal["reachable", "down", "unknown"]  # agent/catalog.py WITNESS_STATES

# Among problems of the same status, the first in this order names the result. Cluster-wide
# faults come first (they make every other figure suspect), then a missing primary, then what
# threatens the data (divergence, RPO), then the standbys (the cause before the symptom: a
# missing standby explains lag, a paused replay explains lag), then each node's own health.
PRECEDENCE: tuple[Reason, ...] = (
    Reason.SPLIT_BRAIN,
    Reason.SYSID_MISMATCH,
    Reason.PRIMARY_DOWN,
    Reason.TIMEOUT,
    Reason.AUTH_FAILED,
    Reason.REFUSED,
    Reason.UNREACHABLE,
    Reason.DNS,
    Reason.CONNECTION_RESET,
    Reason.UNAVAILABLE,
    Reason.TIMELINE_DIVERGENCE,
    Reason.RPO_EXCEEDED,
    Reason.STANDBY_MISSING,
    Reason.REPLAY_PAUSED,
    Reason.REPLICATION_LAG,
    Reason.ARCHIVE_FAILING,
    Reason.SLOT_RETENTION,
    Reason.WRAPAROUND,
    Reason.TOO_MANY_CONNECTIONS,
)

# `mamori_pg_failover_ready{reason}` (READY_REASONS, in the catalog): the cluster-wide reasons
# first, then a standby's own problems, from the furthest from ready to the closest.
_STANDBY_PROBLEMS = READY_REASONS[4:]  # worst first

# Connection failures that mean "the server is not there" (as opposed to: it did not answer in
# time, it refused our credentials, it is full). Only these become `primary_down`.
_GONE = {Reason.REFUSED, Reason.UNREACHABLE, Reason.DNS, Reason.CONNECTION_RESET, Reason.UNAVAILABLE}
# Failures that mean the postmaster answered, only not as usable: it is alive, and promoting a
# standby now would make a split brain. The agent witness says `reachable` on them.
_ANSWERED = {Reason.AUTH_FAILED, Reason.TOO_MANY_CONNECTIONS}

WRAPAROUND_LIMIT = 2**31  # transaction IDs: age(datfrozenxid) may not reach this


@dataclass(frozen=True, slots=True)
class Replica:
    """One row of a primary's pg_stat_replication (a connected standby, as the primary sees it).
    Byte lags are the primary's current LSN minus the standby's sent/write/flush/replay LSN."""

    name: str  # application_name: the `standby` label
    state: str | None = None
    sync_state: str | None = None
    sent_bytes: int | None = None
    write_bytes: int | None = None
    flush_bytes: int | None = None
    replay_bytes: int | None = None
    write_lag: float | None = None  # the raw *_lag columns in seconds; None is SQL NULL
    flush_lag: float | None = None
    replay_lag: float | None = None
    reply_age: float | None = None  # seconds since the standby's last feedback message

    @property
    def streaming(self) -> bool:
        return self.state == "streaming"

    def lag_seconds(self, stage: Stage) -> float | None:
        """The `*_lag` column read honestly. PostgreSQL sets it to NULL when the standby has sent
        no feedback about newly written WAL for a while, i.e. both when it is fully caught up on
        an idle primary and when the standby has stopped answering. NULL is therefore 0 only when
        the standby is streaming and its replay LSN has reached the primary's current LSN;
        otherwise the lag is unknown (None), never 0."""
        raw = {"write": self.write_lag, "flush": self.flush_lag, "replay": self.replay_lag}[stage]
        if raw is not None:
            return max(0.0, raw)
        if self.streaming and self.replay_bytes is not None and self.replay_bytes <= 0:
            return 0.0
        return None


@dataclass(frozen=True, slots=True)
class Receiver:
    """A standby's pg_stat_wal_receiver row (absent when no WAL receiver runs)."""

    status: str  # streaming, starting, waiting, restarting, stopping, stopped
    timeline: int | None = None
    last_msg_age: float | None = None  # seconds since the last message from the upstream

    @property
    def streaming(self) -> bool:
        return self.status == "streaming"


@dataclass(frozen=True, slots=True)
class Archiver:
    """pg_stat_archiver and the archive_status directory of a primary."""

    enabled: bool  # archive_mode is on/always
    archived_count: int = 0
    failed_count: int = 0
    failing: bool = False  # last_failed_time > last_archived_time
    last_archived_age: float | None = None  # None: never archived
    ready_count: int | None = None  # None: not readable (the role lacks pg_monitor)
    ready_oldest_age: float | None = None  # None when there is no .ready file

    @property
    def waiting_age(self) -> float | None:
        """The age of the oldest WAL segment waiting to be archived (`.ready`), in seconds; None
        when none waits or the backlog is not readable. What `archive_age_*` is judged on."""
        if not self.enabled or not self.ready_count:
            return None
        return self.ready_oldest_age

    @property
    def gap(self) -> float | None:
        """The archive's share of the RPO exposure, in seconds: how far back the commits the
        archive lacks may reach. The age of the oldest segment waiting to be archived; when none
        waits, the time since the last segment was archived, because the segment being written
        reaches the archive only when it is switched (by size or `archive_timeout`) — an archive
        that got nothing for an hour lacks up to an hour of commits. None when unknown (archiving
        off, backlog not readable, never archived).

        Never a sign of failing archiving on its own: with `archive_timeout = 0` (PostgreSQL's
        default) it grows without bound on an idle primary whose archiver is healthy. Only the
        RPO exposure uses it, where a streaming standby's small delay wins (`judge()`)."""
        if not self.enabled or self.ready_count is None:
            return None
        if self.ready_count:
            return self.ready_oldest_age or 0.0
        return self.last_archived_age


@dataclass(frozen=True, slots=True)
class Slot:
    name: str  # the `slot` label
    slot_type: str = "physical"
    active: bool = False
    wal_status: str | None = None  # reserved, extended, unreserved, lost (NULL: never reserved)
    safe_wal_size: int | None = None  # NULL while max_slot_wal_keep_size = -1
    retained_bytes: int | None = None
    inactive_for: float | None = None  # seconds this check has seen it inactive; None: active/unknown


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The heartbeat as read on a standby in this run."""

    delay: float | None  # seconds of replication delay; None: unknown (see `note`)
    clock: Literal["primary", "standby"] = "primary"  # whose clock measured it
    note: str = ""


@dataclass(frozen=True, slots=True)
class NodeState:
    """What one configured node said in one run. `up` false: every other field is None/empty."""

    name: str  # the `node` label
    application_name: str  # how a primary's pg_stat_replication names it
    up: bool
    failure: Reason = Reason.OK  # why it is not up (refused, timeout, auth_failed, ...)
    error: str = ""  # one line, for messages only (never a label)
    in_recovery: bool | None = None
    sysid: int | None = None
    timeline: int | None = None
    connections: int | None = None
    max_connections: int | None = None
    xid_age: int | None = None
    # primary
    lsn: int | None = None  # current WAL LSN, bytes
    wal_rate: float | None = None  # bytes/s since the previous run
    replicas: tuple[Replica, ...] = ()
    archiver: Archiver | None = None
    # standby
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    last_replay_age: float | None = None  # now() - pg_last_xact_replay_timestamp(): not lag
    replay_paused: bool | None = None
    receiver: Receiver | None = None
    heartbeat: Heartbeat | None = None
    # both
    slots: tuple[Slot, ...] = ()

    @property
    def role(self) -> Role | None:
        if not self.up or self.in_recovery is None:
            return None
        return "standby" if self.in_recovery else "primary"

    @property
    def apply_backlog(self) -> int | None:
        """WAL received but not yet replayed, in bytes."""
        if self.receive_lsn is None or self.replay_lsn is None:
            return None
        return max(0, self.receive_lsn - self.replay_lsn)


@dataclass(frozen=True, slots=True)
class Policy:
    """The thresholds of one `postgres` check (seconds, bytes, ratios)."""

    cluster: str
    cluster_view: bool  # >= 2 nodes or expected standbys
    rpo: float = 900.0
    lag_warning: float = 60.0
    lag_critical: float = 900.0
    expected_standbys: tuple[str, ...] = ()
    archive_age_warning: float = 300.0  # the oldest .ready segment's age (never the last success's)
    archive_age_critical: float = 900.0
    ready_backlog_warning: int = 10  # .ready segments
    ready_backlog_critical: int = 100
    slot_retained_warning: int | None = 2**30
    slot_retained_critical: int | None = None
    expected_slots: tuple[str, ...] = ()  # slots that may be inactive (standbys', expected_slots)
    slot_inactive_warning: float | None = None  # seconds an unexpected slot may stay inactive
    wraparound_warning: float = 0.5
    wraparound_critical: float = 0.75
    connections_warning: float = 0.8
    connections_critical: float = 0.95
    # The witnesses (issue 15): how long a streak of runs without an answering primary may last
    # before this agent calls it down (a stall shorter than this is never a failover), who this
    # agent is and where it stands, and where each node stands (node -> zone; "" or absent: not
    # configured).
    stall_grace: float = 17.0
    agent: str = ""
    agent_zone: str = ""
    zones: tuple[tuple[str, str], ...] = ()

    def zone_of(self, node: str) -> str:
        return dict(self.zones).get(node, "")


@dataclass(frozen=True, slots=True)
class Memory:
    """What the check remembers from earlier runs."""

    roles: Mapping[str, Role] = field(default_factory=dict)  # node -> role when last reachable
    primary_timeline: int | None = None  # the primary's timeline when last reachable
    # The END (loop time, monotonic) of the first run of the current streak of runs in which no
    # primary answered; None while a primary answers. `ClusterVerdict.no_primary_since` is its
    # next value.
    no_primary_since: float | None = None
    # The same for each standby whose WAL receiver does not stream: node -> the END of the first
    # run of its streak. `ClusterVerdict.receiver_lost_since` is its next value.
    receiver_lost_since: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Witness:
    """What one witness says of the cluster's primary in this run
    (`mamori_pg_primary_witness{cluster, witness, zone, state}`)."""

    name: str  # agent:<agent> | standby:<node>
    zone: str  # where the witness stands; "" when not configured
    state: WitnessState
    why: str  # for messages and the summary only (never a label)


@dataclass(frozen=True, slots=True)
class Issue:
    status: Status
    reason: Reason
    text: str


@dataclass(frozen=True, slots=True)
class StandbyView:
    """One standby of the cluster, joined from its own node (if configured) and the primary's
    pg_stat_replication row (if connected)."""

    name: str  # application_name: the `standby` label
    node: NodeState | None
    replica: Replica | None
    expected: bool
    delay: float | None  # replication delay in seconds; None: unknown
    delay_source: str  # heartbeat | heartbeat (standby clock) | replay_lag | ""
    problem: str | None  # why it could not take over (a READY_REASONS value), None: it could


@dataclass(frozen=True, slots=True)
class ClusterVerdict:
    status: Status
    reason: Reason
    message: str
    issues: tuple[Issue, ...]
    primary: NodeState | None
    standbys: tuple[StandbyView, ...]
    standby_gap: float | None
    archive_gap: float | None
    exposure: float | None
    ready: bool
    ready_reason: str
    recommended: bool
    recommended_reason: str
    notes: tuple[str, ...] = ()
    # The agent witness first, then one per standby (configured node that is, or was last seen
    # as, a standby). Empty without a cluster view.
    witnesses: tuple[Witness, ...] = ()
    # What `Memory.no_primary_since` becomes after this run.
    no_primary_since: float | None = None
    # What `Memory.receiver_lost_since` becomes after this run.
    receiver_lost_since: Mapping[str, float] = field(default_factory=dict)


def lag_status(delay: float | None, policy: Policy) -> Status:
    if delay is None:
        return Status.OK
    if delay >= policy.lag_critical:
        return Status.CRITICAL
    if delay >= policy.lag_warning:
        return Status.WARNING
    return Status.OK


def size(value: float | None) -> str:
    if value is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def judge(
    nodes: Sequence[NodeState],
    policy: Policy,
    memory: Memory = Memory(),
    notes: Sequence[str] = (),
    *,
    now: float = 0.0,
) -> ClusterVerdict:
    """The verdict of one run. `notes` (e.g. "no heartbeat table") end the message. `now` is the
    end of this run on the clock of `Memory.no_primary_since` (the check's loop time). Never
    raises."""
    up = [n for n in nodes if n.up]
    down = [n for n in nodes if not n.up]
    primaries = [n for n in up if n.role == "primary"]
    # In a split brain the standbys are compared with the primary on the newest timeline: the
    # one that was promoted, which is the one a failover tool would keep.
    primary = max(primaries, key=lambda n: n.timeline or 0) if primaries else None
    presumed: NodeState | None = None  # the unreachable node that should be the primary
    if primary is None and down:
        was_primary = [n for n in down if memory.roles.get(n.name) == "primary"]
        presumed = (was_primary or down)[0]
    issues: list[Issue] = []

    if policy.cluster_view and len(primaries) > 1:
        shown = ", ".join(f"{n.name} (timeline {n.timeline})" for n in primaries)
        issues.append(Issue(Status.CRITICAL, Reason.SPLIT_BRAIN, f"{len(primaries)} primaries: {shown}"))
    sysid_text = _sysid_mismatch(up, primary) if policy.cluster_view else None
    if sysid_text:
        issues.append(Issue(Status.CRITICAL, Reason.SYSID_MISMATCH, sysid_text))
    agent = _agent_witness(primary, presumed, policy, memory, now)
    standby_witnesses, receiver_lost_since = _standby_witnesses(nodes, presumed, policy, memory, now)
    no_primary_since = None if agent.state == "reachable" else _streak_start(memory, now)
    if primary is None and (policy.cluster_view or not up):
        issues.append(_no_primary(presumed, up, policy, nodes, _grace_text(presumed, policy, memory, now)))

    reference_tli = primary.timeline if primary is not None else memory.primary_timeline
    standbys = _standby_views(nodes, primary, presumed, policy, reference_tli)
    if policy.cluster_view:
        issues.extend(_timeline_issues(up, primary, reference_tli))
    for view in standbys:
        issue = _standby_issue(view, primary, policy)
        if issue is not None:
            issues.append(issue)

    standby_gap = min((v.delay for v in standbys if v.delay is not None), default=None)
    archive_gap = _archive_gap(primaries)
    gaps = [g for g in (standby_gap, archive_gap) if g is not None]
    exposure = min(gaps) if gaps else None
    # Without a primary reachable from here the standby gap is on the standby's clock: how long
    # ago a heartbeat last reached it, which grows while the primary is merely unreachable from
    # here (or dead: PostgresPrimaryDownConfirmed's business), so it is no data at risk we know of.
    known_exposure = primary is not None or not policy.cluster_view
    if policy.cluster_view and known_exposure and exposure is not None and exposure > policy.rpo:
        issues.append(
            Issue(
                Status.CRITICAL,
                Reason.RPO_EXCEEDED,
                f"RPO exposure {seconds(exposure)} exceeds the RPO of {seconds(policy.rpo)} "
                f"(standby gap {seconds(standby_gap)}, archive gap {seconds(archive_gap)})",
            )
        )
    for node in primaries:
        issues.extend(_archive_issues(node, policy))
        issues.extend(_wraparound_issues(node, policy))
    for node in up:
        issues.extend(_slot_issues(node, policy))
        issues.extend(_connection_issues(node, policy))

    ready, ready_reason = _readiness(primaries, sysid_text, standbys)
    if primaries or agent.state == "reachable":
        recommended, recommended_reason = False, "primary_reachable"
    elif agent.state == "unknown":
        recommended, recommended_reason = False, "primary_unknown"
    elif ready:
        recommended, recommended_reason = True, "primary_down_standby_ready"
    else:
        recommended, recommended_reason = False, "primary_down_standby_not_ready"

    notes = [*notes, *(n for n in _heartbeat_notes(standbys) if n not in notes)]
    status, reason = _worst(issues)
    issues.sort(key=_order)
    if issues:
        message = "; ".join(i.text for i in issues)
    else:
        message = _healthy_message(primary, standbys, exposure, policy, ready, ready_reason, up)
    if notes:
        message = f"{message} ({'; '.join(notes)})"
    return ClusterVerdict(
        status=status,
        reason=reason,
        message=message,
        issues=tuple(issues),
        primary=primary,
        standbys=tuple(standbys),
        standby_gap=standby_gap,
        archive_gap=archive_gap,
        exposure=exposure,
        ready=ready,
        ready_reason=ready_reason,
        recommended=recommended,
        recommended_reason=recommended_reason,
        notes=tuple(notes),
        witnesses=(agent, *standby_witnesses) if policy.cluster_view else (),
        no_primary_since=no_primary_since,
        receiver_lost_since=receiver_lost_since,
    )


def _streak_start(memory: Memory, now: float) -> float:
    return memory.no_primary_since if memory.no_primary_since is not None else now


def _silent_for(memory: Memory, now: float) -> float:
    """How long the current streak without a primary has lasted: from the end of its first run
    to the end of this one (0 in its first run). A stall of D seconds never measures more than
    about D: the runs pending when it ends are answered."""
    return max(0.0, now - _streak_start(memory, now))


def _agent_witness(
    primary: NodeState | None, presumed: NodeState | None, policy: Policy, memory: Memory, now: float
) -> Witness:
    """What this agent's own path says of the primary (see the module's guarantees)."""
    name, zone = f"agent:{policy.agent}", policy.agent_zone
    if primary is not None:
        return Witness(name, zone, "reachable", f"primary {primary.name} answered")
    if presumed is None:
        return Witness(name, zone, "down", "every node answered and none is a primary")
    why = presumed.error or presumed.failure.value
    if presumed.failure in _ANSWERED:
        return Witness(name, zone, "reachable", f"{presumed.name}'s postmaster answered ({why}): it is alive")
    if presumed.failure in _GONE:
        return Witness(name, zone, "down", f"{presumed.name} is not there ({why})")
    silent = _silent_for(memory, now)
    if silent >= policy.stall_grace:
        return Witness(name, zone, "down", f"{presumed.name}: {_silence(silent, policy)}")
    return Witness(name, zone, "unknown", f"{presumed.name}: {_silence(silent, policy)}")


def _silence(silent: float, policy: Policy) -> str:
    return _against_grace(silent, policy, "no answer in this run", "no answer for")


def _against_grace(silent: float, policy: Policy, first: str, lasting: str) -> str:
    """How long a streak has lasted, against the stall grace: `first` in its first run, else
    `lasting <duration>`; and whether it is past the grace (then: down)."""
    grace = seconds(policy.stall_grace)
    if silent >= policy.stall_grace:
        return f"{lasting} {seconds(silent)}, past the {grace} stall grace: down"
    if silent <= 0:
        return f"{first}, within the {grace} stall grace"
    return f"{lasting} {seconds(silent)}, within the {grace} stall grace"


def _grace_text(presumed: NodeState | None, policy: Policy, memory: Memory, now: float) -> str:
    """What the message adds about the stall grace: only for a primary that does not answer
    (not for one that is not there, nor for one whose postmaster answered), in a cluster view."""
    if (
        not policy.cluster_view
        or presumed is None
        or presumed.failure in _GONE
        or presumed.failure in _ANSWERED
    ):
        return ""
    return f"; {_silence(_silent_for(memory, now), policy)}"


def _standby_witnesses(
    nodes: Sequence[NodeState], presumed: NodeState | None, policy: Policy, memory: Memory, now: float
) -> tuple[list[Witness], dict[str, float]]:
    """One per configured node that answers as a standby, or that this agent last saw as one
    (unknown now: no series vanishes while it is unreachable from here); and the next
    `Memory.receiver_lost_since`.

    A receiver that does not stream is `down` only once that has lasted `stall_grace` (measured
    as the agent's own silence is): it stops streaming after `wal_receiver_timeout` when the
    primary merely stalls, exactly as when it is gone, so a 15 s stall with a short
    `wal_receiver_timeout` must not make it a down vote (and a standby's own restart is no vote
    either). A stopped primary is told at once by the agents' refused connections."""
    out = []
    lost: dict[str, float] = {}
    for n in nodes:
        if n is presumed or n.role == "primary":
            continue
        name, zone = f"standby:{n.name}", policy.zone_of(n.name)
        if n.role != "standby":
            if memory.roles.get(n.name) == "standby":
                why = (
                    f"not reachable from this agent ({n.error or n.failure.value})"
                    if not n.up
                    else "its role is unknown"
                )
                out.append(Witness(name, zone, "unknown", why))
            continue
        r = n.receiver
        if r is None or not r.streaming:
            since = lost[n.name] = memory.receiver_lost_since.get(n.name, now)
            what = "in recovery without a WAL receiver" if r is None else f"its WAL receiver is {r.status}"
            silent = max(0.0, now - since)
            state: WitnessState = "down" if silent >= policy.stall_grace else "unknown"
            out.append(
                Witness(
                    name, zone, state, f"{what}: {_against_grace(silent, policy, 'since this run', 'for')}"
                )
            )
        elif r.last_msg_age is None:
            out.append(
                Witness(name, zone, "unknown", "streaming, but the age of its last message is unknown")
            )
        elif r.last_msg_age > policy.stall_grace:
            out.append(
                Witness(
                    name,
                    zone,
                    "unknown",
                    f"streaming, but its last message is {seconds(r.last_msg_age)} old "
                    f"(over the {seconds(policy.stall_grace)} stall grace)",
                )
            )
        else:
            out.append(
                Witness(
                    name,
                    zone,
                    "reachable",
                    f"streams from the primary (last message {seconds(r.last_msg_age)} ago)",
                )
            )
    return out, lost


def _rank(reason: Reason) -> int:
    return PRECEDENCE.index(reason) if reason in PRECEDENCE else len(PRECEDENCE)


_SEVERITY = {Status.CRITICAL: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.OK: 3}


def _order(issue: Issue) -> tuple[int, int]:
    """Worst first: CRITICAL beats UNKNOWN beats WARNING (as `agent.model.worst`), then precedence."""
    return _SEVERITY[issue.status], _rank(issue.reason)


def _worst(issues: Sequence[Issue]) -> tuple[Status, Reason]:
    if not issues:
        return Status.OK, Reason.OK
    best = min(issues, key=_order)
    return best.status, best.reason


def _sysid_mismatch(up: Sequence[NodeState], primary: NodeState | None) -> str | None:
    known = [n for n in up if n.sysid is not None]
    if len({n.sysid for n in known}) < 2:
        return None
    # The primary's identifier is the cluster's; without one, the most common one is.
    ids = [n.sysid for n in known]
    expected = primary.sysid if primary is not None and primary.sysid is not None else max(ids, key=ids.count)
    odd = ", ".join(f"{n.name} has {n.sysid}" for n in known if n.sysid != expected)
    return f"system identifier mismatch: {odd}, expected {expected} — not the same cluster"


def _no_primary(
    presumed: NodeState | None,
    up: Sequence[NodeState],
    policy: Policy,
    nodes: Sequence[NodeState],
    grace: str = "",
) -> Issue:
    if presumed is None:
        return Issue(Status.CRITICAL, Reason.PRIMARY_DOWN, "no primary: every reachable node is a standby")
    why = presumed.error or presumed.failure.value
    if not up and not policy.cluster_view:
        return Issue(Status.CRITICAL, presumed.failure, f"{presumed.name}: {why}{grace}")
    reason = Reason.PRIMARY_DOWN if presumed.failure in _GONE else presumed.failure
    if reason is Reason.OK:
        reason = Reason.PRIMARY_DOWN
    if up:
        text = f"no primary: {presumed.name} {_down_text(presumed)}{grace}"
        return Issue(Status.CRITICAL, reason, text + _still_streamed(nodes, presumed))
    return Issue(Status.CRITICAL, reason, f"no node answers; primary {presumed.name}: {why}{grace}")


def _still_streamed(nodes: Sequence[NodeState], presumed: NodeState) -> str:
    """What the standbys say about a primary this agent cannot reach: a WAL receiver that still
    streams has an upstream, so the primary may be unreachable from here only. Not proof of life
    (a frozen primary's standby streams until wal_receiver_timeout), hence "may"."""
    streaming = [n for n in nodes if n.role == "standby" and n.receiver is not None and n.receiver.streaming]
    if not streaming:
        return ""
    shown = ", ".join(
        n.name
        if n.receiver is None or n.receiver.last_msg_age is None
        else f"{n.name} (last message {seconds(n.receiver.last_msg_age)} ago)"
        for n in streaming
    )
    return (
        f"; yet standby {shown} still streams from a primary: "
        f"{presumed.name} may only be unreachable from this agent"
    )


def _down_text(node: NodeState) -> str:
    if node.failure is Reason.TIMEOUT:
        return f"does not answer ({node.error or 'timeout'}: frozen, overloaded or cut off?)"
    return f"is down ({node.error or node.failure.value})"


def _standby_views(
    nodes: Sequence[NodeState],
    primary: NodeState | None,
    presumed: NodeState | None,
    policy: Policy,
    reference_tli: int | None,
) -> list[StandbyView]:
    replicas: dict[str, Replica] = {r.name: r for r in primary.replicas} if primary is not None else {}
    standby_nodes: dict[str, NodeState] = {}
    for n in nodes:
        if n.role == "primary" or n is presumed:
            continue
        standby_nodes.setdefault(n.application_name, n)
    names = list(standby_nodes)
    for name in (*policy.expected_standbys, *replicas):
        if name not in names:
            names.append(name)
    # A node configured under that application_name is a primary now (promoted): as a standby
    # it is gone, whatever the primary's pg_stat_replication says.
    promoted = {n.application_name for n in nodes if n.role == "primary" and n is not primary}
    views = []
    for name in names:
        node = standby_nodes.get(name)
        replica = replicas.get(name) if name not in promoted else None
        delay, source = _delay(node, replica)
        view = StandbyView(
            name=name,
            node=node,
            replica=replica,
            expected=name in policy.expected_standbys,
            delay=delay,
            delay_source=source,
            problem=None,
        )
        views.append(_with_problem(view, primary is not None, reference_tli, policy))
    return views


def _delay(node: NodeState | None, replica: Replica | None) -> tuple[float | None, str]:
    hb = node.heartbeat if node is not None and node.up else None
    if hb is not None and hb.delay is not None:
        return max(0.0, hb.delay), "heartbeat" if hb.clock == "primary" else "heartbeat (standby clock)"
    if replica is not None:
        lag = replica.lag_seconds("replay")
        if lag is not None:
            return lag, "replay_lag"
    return None, ""


def _with_problem(
    view: StandbyView, primary_up: bool, reference_tli: int | None, policy: Policy
) -> StandbyView:
    return replace(view, problem=_problem(view, primary_up, reference_tli, policy))


def _problem(view: StandbyView, primary_up: bool, reference_tli: int | None, policy: Policy) -> str | None:
    node, replica = view.node, view.replica
    if node is not None:
        if not node.up:
            return "standby_down"
        # With the primary gone, a WAL receiver that cannot stream is the expected consequence.
        if primary_up and not (node.receiver is not None and node.receiver.streaming):
            return "receiver_down"
    elif replica is None:
        return "standby_down"
    elif primary_up and not replica.streaming:
        return "receiver_down"
    if node is not None and None not in (reference_tli, node.timeline) and node.timeline != reference_tli:
        return "timeline_mismatch"
    if node is not None and node.replay_paused:
        return "replay_paused"
    if view.delay is not None and view.delay > policy.rpo:
        return "lag_exceeds_rpo"
    return None


def _standby_issue(view: StandbyView, primary: NodeState | None, policy: Policy) -> Issue | None:
    node, replica = view.node, view.replica
    name = view.name if node is None or node.name == view.name else f"{node.name} ({view.name})"
    if node is not None and not node.up:
        if primary is not None and replica is not None and replica.streaming:
            # The primary streams to it: it is up, only this agent's path to it is cut. Unknown
            # from here (the node's own failure, a warning), never `standby_missing` (issue 15).
            failure = node.failure if node.failure is not Reason.OK else Reason.UNREACHABLE
            return Issue(
                Status.WARNING,
                failure,
                f"standby {name} {_down_text(node)} from this agent, yet {primary.name} streams to it: "
                "unreachable from here, not down",
            )
        return Issue(Status.CRITICAL, Reason.STANDBY_MISSING, f"standby {name} {_down_text(node)}")
    # With the primary gone, a WAL receiver that cannot stream is the expected consequence; with
    # no primary configured (a lone standby), it is the only sign of a broken link.
    if primary is not None or not policy.cluster_view:
        streaming_here = node is not None and node.receiver is not None and node.receiver.streaming
        if node is not None and not streaming_here:
            status = node.receiver.status if node.receiver is not None else "not running"
            return Issue(
                Status.CRITICAL,
                Reason.STANDBY_MISSING,
                f"standby {name} does not stream from the primary (WAL receiver {status}; "
                f"delay {seconds(view.delay)})",
            )
        if primary is not None and view.expected and replica is None:
            return Issue(
                Status.CRITICAL,
                Reason.STANDBY_MISSING,
                f"expected standby {name} is not connected to {primary.name}",
            )
    # With no primary reachable from here the delay is on the standby's clock: the time since a
    # heartbeat last reached it, not a lag this agent can measure (see the module's guarantees).
    lag = lag_status(view.delay, policy) if primary is not None or not policy.cluster_view else Status.OK
    lag_text = f"delay {seconds(view.delay)}" + (f" ({view.delay_source})" if view.delay_source else "")
    if node is not None and node.replay_paused:
        return Issue(
            max(Status.WARNING, lag), Reason.REPLAY_PAUSED, f"replay is paused on standby {name}; {lag_text}"
        )
    if lag is not Status.OK:
        limit = policy.lag_critical if lag is Status.CRITICAL else policy.lag_warning
        return Issue(lag, Reason.REPLICATION_LAG, f"standby {name} {lag_text} >= {seconds(limit)}")
    return None


def _timeline_issues(
    up: Sequence[NodeState], primary: NodeState | None, reference_tli: int | None
) -> list[Issue]:
    standbys = [n for n in up if n.role == "standby" and n.timeline is not None]
    if reference_tli is None:
        if len({n.timeline for n in standbys}) < 2:
            return []
        shown = ", ".join(f"{n.name} on {n.timeline}" for n in standbys)
        return [
            Issue(Status.CRITICAL, Reason.TIMELINE_DIVERGENCE, f"standbys on different timelines: {shown}")
        ]
    odd = [n for n in standbys if n.timeline != reference_tli]
    if not odd:
        return []
    where = f"primary {primary.name}'s" if primary is not None else "the last primary's"
    shown = ", ".join(f"{n.name} is on timeline {n.timeline}" for n in odd)
    return [Issue(Status.CRITICAL, Reason.TIMELINE_DIVERGENCE, f"{shown}, not {where} {reference_tli}")]


def _archive_gap(primaries: Sequence[NodeState]) -> float | None:
    gaps = [n.archiver.gap for n in primaries if n.archiver is not None]
    known = [g for g in gaps if g is not None]
    return max(known) if known else None


def _archive_issues(node: NodeState, policy: Policy) -> list[Issue]:
    """`archive_failing` means the archiver fails or WAL waits for it, nothing else:
    - the last attempt failed and none has succeeded since (WARNING);
    - the `.ready` backlog reached `ready_backlog_warning` / `_critical`;
    - the oldest `.ready` segment is `archive_age_warning` / `_critical` old.
    The time since the last archived segment is not judged here: on an idle primary (PostgreSQL's
    default `archive_timeout = 0`) it grows while nothing waits and nothing fails. It enters the
    RPO exposure only (`Archiver.gap`). The Prometheus rule `PostgresArchivingFailing` tests the
    same three conditions on the exported samples and thresholds."""
    a = node.archiver
    if a is None or not a.enabled:
        return []
    problems: list[str] = []
    status = Status.OK
    if a.failing:
        status = Status.WARNING
        problems.append(f"archiving is failing ({a.failed_count} failures)")
    count, age = a.ready_count or 0, a.waiting_age
    many = count >= policy.ready_backlog_warning
    old = age is not None and age >= policy.archive_age_warning
    if many:
        critical = count >= policy.ready_backlog_critical
        status = max(status, Status.CRITICAL if critical else Status.WARNING)
    if old:
        critical = age is not None and age >= policy.archive_age_critical
        status = max(status, Status.CRITICAL if critical else Status.WARNING)
    if many or old:
        segments = "1 WAL segment waits" if count == 1 else f"{count} WAL segments wait"
        problems.append(f"{segments} to be archived" + (f", the oldest for {seconds(age)}" if old else ""))
    if not problems:
        return []
    return [Issue(status, Reason.ARCHIVE_FAILING, f"{node.name}: {', '.join(problems)}")]


def _slot_issues(node: NodeState, policy: Policy) -> list[Issue]:
    out = []
    for s in node.slots:
        status, why = Status.OK, []
        if s.wal_status == "lost":
            status = Status.CRITICAL
            why.append("its WAL is lost (the standby must be rebuilt)")
        elif s.wal_status == "unreserved":
            status = Status.WARNING
            why.append("its WAL is unreserved (about to be removed)")
        retained = s.retained_bytes
        if retained is not None:
            if policy.slot_retained_critical is not None and retained >= policy.slot_retained_critical:
                status = Status.CRITICAL
                why.append(f"retains {size(retained)}")
            elif policy.slot_retained_warning is not None and retained >= policy.slot_retained_warning:
                status = max(status, Status.WARNING)
                why.append(f"retains {size(retained)}")
        if _unexpected_inactive(s, policy):
            # Not a standby's nor an expected slot: nobody will come back for its WAL, which
            # grows by a segment per archive_timeout even on an idle primary (the heartbeat).
            status = max(status, Status.WARNING)
            held = "" if any(w.startswith("retains") for w in why) else f"retains {size(retained)} and "
            why.append(
                f"is not expected (no configured standby or expected_slots names it) and has been "
                f"inactive for {seconds(s.inactive_for)}: it {held}keeps all WAL from now on until "
                "it is dropped"
            )
        if why:
            state = "active" if s.active else "inactive"
            out.append(
                Issue(status, Reason.SLOT_RETENTION, f"{node.name}: {state} slot {s.name} {', '.join(why)}")
            )
    return out


def _unexpected_inactive(slot: Slot, policy: Policy) -> bool:
    limit = policy.slot_inactive_warning
    return (
        limit is not None
        and not slot.active
        and slot.inactive_for is not None
        and slot.inactive_for >= limit
        and slot.name not in policy.expected_slots
    )


def _wraparound_issues(node: NodeState, policy: Policy) -> list[Issue]:
    if node.xid_age is None:
        return []
    ratio = node.xid_age / WRAPAROUND_LIMIT
    if ratio < policy.wraparound_warning:
        return []
    status = Status.CRITICAL if ratio >= policy.wraparound_critical else Status.WARNING
    return [
        Issue(
            status,
            Reason.WRAPAROUND,
            f"{node.name}: oldest unfrozen transaction ID is {node.xid_age:,} old, "
            f"{ratio:.0%} of the way to wraparound",
        )
    ]


def _connection_issues(node: NodeState, policy: Policy) -> list[Issue]:
    if node.connections is None or not node.max_connections:
        return []
    ratio = node.connections / node.max_connections
    if ratio < policy.connections_warning:
        return []
    status = Status.CRITICAL if ratio >= policy.connections_critical else Status.WARNING
    text = f"{node.name}: {node.connections}/{node.max_connections} connections in use"
    return [Issue(status, Reason.TOO_MANY_CONNECTIONS, text)]


def _readiness(
    primaries: Sequence[NodeState], sysid_text: str | None, standbys: Sequence[StandbyView]
) -> tuple[bool, str]:
    if len(primaries) > 1:
        return False, "split_brain"
    if sysid_text:
        return False, "sysid_mismatch"
    if not standbys:
        return False, "no_standby"
    if any(v.problem is None for v in standbys):
        return True, "ready"
    # The best standby's problem: the one closest to ready.
    return False, max((v.problem or "ready" for v in standbys), key=_STANDBY_PROBLEMS.index)


def _heartbeat_notes(standbys: Sequence[StandbyView]) -> list[str]:
    notes = []
    seen: set[str] = set()
    for v in standbys:
        hb = v.node.heartbeat if v.node is not None else None
        if hb is None:
            continue
        if hb.clock == "standby" and hb.delay is not None:
            notes.append(f"{v.name}: delay measured with the standby's clock (no primary)")
        elif hb.delay is None and hb.note and hb.note not in seen:
            seen.add(hb.note)
            notes.append(hb.note)
    return notes


def _healthy_message(
    primary: NodeState | None,
    standbys: Sequence[StandbyView],
    exposure: float | None,
    policy: Policy,
    ready: bool,
    ready_reason: str,
    up: Sequence[NodeState],
) -> str:
    parts = []
    if primary is not None:
        parts.append(f"primary {primary.name} (timeline {primary.timeline})")
    elif up:
        parts.append(", ".join(f"{n.role or 'node'} {n.name}" for n in up))
    for v in standbys:
        state = "streaming" if v.problem in (None, "lag_exceeds_rpo") else (v.problem or "")
        parts.append(f"standby {v.name} {state}, delay {seconds(v.delay)}")
    if policy.cluster_view:
        if exposure is not None:
            parts.append(f"RPO exposure {seconds(exposure)} of {seconds(policy.rpo)}")
        parts.append("failover ready" if ready else f"failover not ready ({ready_reason})")
    return "; ".join(parts)
