"""An agent's *view* of a Postgres cluster for the fleet verdict: what this agent tells the
other agents of its site over MQTT — the *witnesses* of the cluster's primary it holds, each
`reachable`, `down` or `unknown`, and where each stands (its zone).

The mqtt exporter (exporters/mqtt.py) derives this agent's views from its own results
(`OwnViews`) and publishes them, retained, QoS 1, to `view_topic()`; the `fleet` check
(checks/fleet.py) subscribes to every agent's views and statuses and judges. Both read the
format here, so neither imports the other. A view is derived from the `mamori_pg_primary_witness`
samples of this agent's own results — the postgres check's (`agent:<agent>`, `standby:<node>`)
and the http/lb checks' with a `db_witness` (`app:<check>`) — never from the fleet's own results,
which cannot feed back into it.

A view also keeps what older agents read: `primary_down` and `reason` from
`mamori_pg_failover_recommended{cluster, reason}` (`primary_reachable`, `primary_unknown`,
`primary_down_*`) and `nodes` from `mamori_pg_up{node}`, so an older fleet check still parses it;
and a view from an older agent (no `witnesses`) counts as one witness `agent:<agent>`, zone "".
It carries the newest run's timestamp and an interval (measured between runs), so a reader can
tell a live agent from a silent one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from agent.catalog import WITNESS_STATES
from agent.model import CheckResult, Sample

SOURCE_TYPE = "postgres"  # the check whose results carry the legacy fields (primary_down, nodes)
FLEET_TYPE = "fleet"  # never a source: the fleet's own results cannot feed back into the views
PG_UP = "mamori_pg_up"
PG_RECOMMENDED = "mamori_pg_failover_recommended"
PG_WITNESS = "mamori_pg_primary_witness"
REACHABLE, DOWN, UNKNOWN = "reachable", "down", "unknown"
_STRENGTH = {UNKNOWN: 0, DOWN: 1, REACHABLE: 2}  # dedupe: the strongest state wins
STATUS = "status"  # <prefix>/<site>/<agent>/status: online / offline (the exporter's last will)
OFFLINE = "offline"  # a status payload: the agent's last will, or its clean shutdown
FLEET_LEVEL = "fleet"  # <prefix>/<site>/<agent>/fleet/…: reserved for the views (and sync markers)
AGENT_WITNESS = "agent:"  # the prefix of an agent's own witness: agent:<agent>
_MIN_INTERVAL = 0.05
_FORGET_WINDOWS = 10  # a view older than this many windows is forgotten


def view_topic(base: str, agent: str, cluster: str) -> str:
    """Where `agent` publishes its view of `cluster`; `base` is `<prefix>/<site>`."""
    return f"{base}/{agent}/{FLEET_LEVEL}/pg/{cluster}"


@dataclass(frozen=True)
class Witness:
    """What one witness says of a cluster's primary: `state` is reachable, down or unknown;
    `zone` where the witness stands ("" when not configured: never a zone of its own)."""

    name: str  # agent:<agent>, standby:<node>, app:<check>
    state: str
    zone: str = ""

    def stronger(self, other: Witness) -> Witness:
        """The one to keep when two report the same witness: reachable > down > unknown; on a
        tie, the one that knows its zone."""
        a, b = _STRENGTH[self.state], _STRENGTH[other.state]
        if a != b:
            return self if a > b else other
        return self if self.zone or not other.zone else other


def state_of_reason(primary_down: bool, reason: str) -> str:
    """An agent's own witness state from its postgres verdict (for views and results that carry
    no witness sample: older agents, and a postgres check that emits none)."""
    if primary_down:
        return DOWN
    return REACHABLE if reason == "primary_reachable" else UNKNOWN


def dedupe(witnesses: Iterable[Witness]) -> dict[str, Witness]:
    """Witnesses by name, the strongest report of each kept."""
    out: dict[str, Witness] = {}
    for w in witnesses:
        held = out.get(w.name)
        out[w.name] = w if held is None else held.stronger(w)
    return out


@dataclass(frozen=True)
class View:
    """One agent's view of one cluster: the witnesses of its latest results."""

    agent: str
    cluster: str
    check: str  # the postgres check it comes from ("" without one), else the newest check's
    timestamp: float  # unix seconds: when the newest run started (the agent's clock)
    interval: float  # seconds between the runs that feed it (the fastest such check's)
    primary_down: bool
    reason: str  # mamori_pg_failover_recommended's reason ("" without a postgres check)
    nodes: tuple[tuple[str, bool], ...]  # (node, answered)
    zone: str = ""  # the agent's zone
    witnesses: tuple[Witness, ...] | None = None  # None: a view from an older agent

    def counted(self) -> tuple[Witness, ...]:
        """The witnesses this view counts as: its own, or for an older agent's view one witness
        `agent:<agent>` from its verdict, zone ""."""
        if self.witnesses is not None:
            return self.witnesses
        return (Witness(AGENT_WITNESS + self.agent, state_of_reason(self.primary_down, self.reason)),)

    def own_state(self) -> str:
        """What the agent itself (its `agent:` witness) says; unknown without one."""
        own = [w for w in self.counted() if w.name.startswith(AGENT_WITNESS)]
        if not own:
            return UNKNOWN
        best = own[0]
        for w in own[1:]:
            best = best.stronger(w)
        return best.state

    def to_json(self, site: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "agent": self.agent,
            "site": site,
            "cluster": self.cluster,
            "check": self.check,
            "timestamp": self.timestamp,
            "interval": self.interval,
            "primary_down": self.primary_down,
            "reason": self.reason,
            "nodes": {name: up for name, up in self.nodes},
        }
        if self.witnesses is not None:
            data["zone"] = self.zone
            data["witnesses"] = {w.name: {"state": w.state, "zone": w.zone} for w in self.witnesses}
        return data

    def payload(self, site: str) -> bytes:
        return json.dumps(self.to_json(site), separators=(",", ":")).encode()

    @classmethod
    def parse(cls, agent: str, cluster: str, payload: bytes) -> View:
        """A view received for (agent, cluster) — both from the topic. Raises ValueError. A
        witness with a state that is not one of reachable/down/unknown counts as unknown."""
        try:
            data = json.loads(payload)
            timestamp, interval = float(data["timestamp"]), float(data["interval"])
            nodes = tuple((str(k), bool(v)) for k, v in dict(data.get("nodes") or {}).items())
            witnesses: tuple[Witness, ...] | None = None
            if data.get("witnesses") is not None:
                witnesses = tuple(_witness(str(k), v) for k, v in dict(data["witnesses"]).items())
            view = cls(
                agent=agent,
                cluster=cluster,
                check=str(data.get("check", "")),
                timestamp=timestamp,
                interval=interval,
                primary_down=bool(data["primary_down"]),
                reason=str(data.get("reason", "")),
                nodes=nodes,
                zone=str(data.get("zone") or ""),
                witnesses=witnesses,
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a fleet view: {type(exc).__name__}: {exc}") from None
        if not (math.isfinite(timestamp) and math.isfinite(interval) and interval > 0):
            raise ValueError("not a fleet view: timestamp and interval must be finite, interval > 0")
        return view

    def age(self, now: float) -> float:
        return max(0.0, now - self.timestamp)  # a clock ahead of ours counts as fresh

    def fresh(self, now: float, window_intervals: int) -> bool:
        return self.age(now) <= window_intervals * self.interval

    def forgotten(self, now: float, window_intervals: int) -> bool:
        """Too old to ever count again."""
        return self.age(now) > _FORGET_WINDOWS * window_intervals * self.interval


def _witness(name: str, entry: Any) -> Witness:
    entry = dict(entry)
    state = str(entry.get("state", ""))
    return Witness(name, state if state in WITNESS_STATES else UNKNOWN, str(entry.get("zone") or ""))


def witnesses_of(result: CheckResult) -> dict[str, dict[str, Witness]]:
    """The `mamori_pg_primary_witness` samples of one result: cluster -> witness name ->
    witness. A witness whose StateSet has no state at 1 (or garbage) is unknown."""
    out: dict[str, dict[str, Witness]] = {}
    for s in result.samples:
        if s.name != PG_WITNESS:
            continue
        labels = dict(s.labels)
        cluster, name = labels.get("cluster", ""), labels.get("witness", "")
        if not cluster or not name:
            continue
        state, zone = labels.get("state", ""), labels.get("zone", "")
        held = out.setdefault(cluster, {}).get(name)
        if s.value == 1.0 and state in WITNESS_STATES:
            out[cluster][name] = Witness(name, state, zone)
        elif held is None:
            out[cluster][name] = Witness(name, UNKNOWN, zone)
    return out


def views_of(result: CheckResult, agent: str, interval: float, zone: str = "") -> list[View]:
    """What one result says about each cluster (one view per cluster it names, none from the
    fleet's own results). A postgres result's view also carries the legacy fields, and the
    agent's own witness `agent:<agent>` — from its verdict when the result has no such sample —
    in the agent's `zone` when the sample gives none."""
    if result.check_type == FLEET_TYPE:
        return []
    found = witnesses_of(result)
    legacy: dict[str, tuple[bool, str]] = {}
    nodes: tuple[tuple[str, bool], ...] = ()
    if result.check_type == SOURCE_TYPE:
        nodes = tuple(
            (dict(s.labels).get("node", ""), s.value == 1.0) for s in result.samples if s.name == PG_UP
        )
        for s in result.samples:
            if s.name != PG_RECOMMENDED:
                continue
            labels = dict(s.labels)
            cluster, reason = labels.get("cluster"), labels.get("reason", "")
            if cluster:
                legacy[cluster] = (reason.startswith("primary_down"), reason)
    out = []
    for cluster in sorted(set(found) | set(legacy)):
        witnesses = dict(found.get(cluster, {}))
        primary_down, reason = legacy.get(cluster, (False, ""))
        if cluster in legacy:
            own = [n for n in witnesses if n.startswith(AGENT_WITNESS)]
            if not own:
                name = AGENT_WITNESS + agent
                witnesses[name] = Witness(name, state_of_reason(primary_down, reason), zone)
            for n in own:
                if not witnesses[n].zone:
                    witnesses[n] = replace(witnesses[n], zone=zone)
        out.append(
            View(
                agent=agent,
                cluster=cluster,
                check=result.check,
                timestamp=result.started_at,
                interval=interval,
                primary_down=primary_down,
                reason=reason,
                nodes=nodes if cluster in legacy else (),
                zone=zone,
                witnesses=tuple(witnesses[n] for n in sorted(witnesses)),
            )
        )
    return out


def merge(parts: Iterable[View], window_intervals: int) -> View | None:
    """One agent's view of a cluster from the latest view of each of its checks: the witnesses of
    those not stale (their run within `window_intervals` of their interval before the newest
    run), the legacy fields of the newest postgres one; the newest run's timestamp and the
    fastest interval among them. None without parts."""
    parts = sorted(parts, key=lambda v: v.timestamp)
    if not parts:
        return None
    newest = parts[-1]
    live = [v for v in parts if newest.timestamp - v.timestamp <= window_intervals * v.interval]
    witnesses = dedupe(w for v in live for w in v.witnesses or ())
    pg = [v for v in live if v.reason]
    base = pg[-1] if pg else newest
    return replace(
        base,
        timestamp=newest.timestamp,
        interval=min(v.interval for v in live),
        witnesses=tuple(witnesses[n] for n in sorted(witnesses)),
    )


class OwnViews:
    """This agent's newest view of each cluster, and which of them the broker has not yet
    acknowledged. Fed with the agent's own results by the mqtt exporter; no I/O. Not
    thread-safe; every call is made from the event loop."""

    def __init__(
        self,
        agent: str,
        site: str,
        prefix: str,
        default_interval: float,
        zone: str = "",
        window_intervals: int = 3,
    ) -> None:
        self.agent = agent
        self.site = site
        self.zone = zone
        self.base = f"{prefix}/{site}"
        self.default_interval = default_interval
        self.window_intervals = window_intervals
        self._own: dict[str, View] = {}  # cluster -> this agent's newest view
        self._unsent: dict[str, View] = {}  # cluster -> own view not yet acknowledged by the broker
        self._parts: dict[str, dict[str, View]] = {}  # cluster -> check -> its latest view
        self._runs: dict[str, float] = {}  # check -> started_at of its latest run
        self._intervals: dict[str, float] = {}  # check -> measured spacing of its runs

    def topic(self, cluster: str) -> str:
        return view_topic(self.base, self.agent, cluster)

    def observe(self, results: Iterable[CheckResult]) -> bool:
        """Take this agent's own results (in order; replays are harmless; results that name no
        cluster change nothing). True if a view changed (it is then in `unsent()`)."""
        changed = False
        for r in results:
            if r.check_type == FLEET_TYPE:
                continue  # never from fleet results: no feedback loop
            last = self._runs.get(r.check)
            if last is not None and r.started_at <= last:
                continue  # a replay or an older run
            views = views_of(r, self.agent, self._intervals.get(r.check, self.default_interval), self.zone)
            held_by = [c for c, parts in self._parts.items() if r.check in parts]
            if not views and not held_by:
                continue  # a check that says nothing of any cluster: not tracked
            if last is not None:
                interval = max(_MIN_INTERVAL, r.started_at - last)
                self._intervals[r.check] = interval
                views = [replace(v, interval=interval) for v in views]
            self._runs[r.check] = r.started_at
            touched = set(held_by)
            for cluster in held_by:  # it may no longer speak of a cluster it did
                del self._parts[cluster][r.check]
            for v in views:
                self._parts.setdefault(v.cluster, {})[r.check] = v
                touched.add(v.cluster)
            for cluster in sorted(touched):
                changed |= self._rebuild(cluster)
        return changed

    def _rebuild(self, cluster: str) -> bool:
        parts = self._parts.get(cluster) or {}
        if not parts:
            self._parts.pop(cluster, None)
            return False  # its last view stays retained until forgotten, like a stopped check's
        view = merge(parts.values(), self.window_intervals)
        held = self._own.get(cluster)
        if view is None or (held is not None and held == view):
            return False
        self._own[cluster] = view
        self._unsent[cluster] = view
        return True

    def clusters(self) -> list[str]:
        return sorted(self._own)

    def unsent(self) -> list[tuple[str, bytes, View]]:
        """Own views to publish (topic, payload, view), newest per cluster."""
        return [(self.topic(c), v.payload(self.site), v) for c, v in sorted(self._unsent.items())]

    def sent(self, view: View) -> None:
        """The broker acknowledged `view` (a newer one may be waiting already)."""
        if self._unsent.get(view.cluster) is view:
            del self._unsent[view.cluster]

    def reconnected(self) -> None:
        """A new connection: republish every own view (a broker without persistence forgot them)."""
        self._unsent.update(self._own)

    def forget(self, now: float, window_intervals: int) -> None:
        """Drop own views, and checks' parts of them, too old to ever count again (a check
        removed or stopped)."""
        for cluster, view in list(self._own.items()):
            if view.forgotten(now, window_intervals):
                del self._own[cluster]
                self._unsent.pop(cluster, None)
        for cluster, parts in list(self._parts.items()):
            for check, part in list(parts.items()):
                if part.forgotten(now, window_intervals):
                    del parts[check]
            if not parts:
                del self._parts[cluster]


def witness_samples(cluster: str, witness: str, zone: str, state: str) -> list[Sample]:
    """`mamori_pg_primary_witness` of one witness, StateSet style: one sample per state of
    `WITNESS_STATES`, 1 for `state` and 0 for the others, so that no series vanishes when the
    state changes. The one builder of every check that emits a witness (postgres; http and lb
    with `db_witness`); `witnesses_of` reads them back."""
    if state not in WITNESS_STATES:
        raise ValueError(f"not a witness state: {state!r}")
    return [
        Sample(
            PG_WITNESS,
            float(s == state),
            (("cluster", cluster), ("witness", witness), ("zone", zone), ("state", s)),
        )
        for s in WITNESS_STATES
    ]
