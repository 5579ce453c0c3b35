"""The fleet quorum: agents of one site tell each other over MQTT whether they reach each Postgres
primary, and each agent confirms "primary down" only when a quorum of the live agents says so.

One agent that cannot reach the primary may be the one that is partitioned; a majority of
independent vantage points seeing it down is a fact worth paging on. Every agent:

1. derives its *view* of each cluster from its own `postgres` check results (never from anything
   else, so the fleet's own results cannot feed back into it): `mamori_pg_up{node}` per node and
   `mamori_pg_failover_recommended{cluster,reason}`, where `reason="primary_reachable"` means some
   primary answered and `primary_down_*` means none did;
2. publishes it, retained, QoS 1, to `<prefix>/<site>/<host>/fleet/pg/<cluster>` with the run's
   timestamp and the check's interval (measured between its runs);
3. subscribes to `<prefix>/<site>/+/fleet/pg/+` and `<prefix>/<site>/+/status`, and judges each
   cluster from the views of the *live* agents: those whose view is younger than
   `window_intervals` × their interval and whose status is not `offline` (their last will, or a
   clean shutdown). The primary is down, confirmed, when at least `quorum` of them (default: a
   majority) and at least `min_votes` (default 2) see it down;
4. hands the verdict to the agent as the result of a check `fleet:<cluster>` (type `fleet`):
   CRITICAL with reason `primary_down_confirmed`, else OK. Alert rules match it like any check
   (`check: "fleet:*"`, `reason: [primary_down_confirmed]`). While this agent is not connected
   to the broker it cannot know what the others see: it hands over nothing (the last verdict
   stands; an UNKNOWN would resolve a confirmed page), and its outbox age grows. After each
   (re)connect it judges only once the retained views have all arrived (`sync_topic`).

`Fleet` holds the state and the arithmetic and does no I/O; the MQTT exporter (exporters/mqtt.py)
feeds it what it sends and receives and publishes what it returns.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.fields import Model
from agent.model import CheckResult, Reason, Sample, Status

log = logging.getLogger("mamori.exporters.fleet")

CHECK_TYPE = "fleet"
CHECK_PREFIX = "fleet:"
SOURCE_TYPE = "postgres"  # the only results views are derived from
PG_UP = "mamori_pg_up"
PG_RECOMMENDED = "mamori_pg_failover_recommended"

AGENTS = "mamori_fleet_agents"
VOTES = "mamori_fleet_primary_down_votes"
QUORUM = "mamori_fleet_quorum"
CONFIRMED = "mamori_fleet_primary_down_confirmed"

OFFLINE = "offline"  # a status payload: the agent's last will, or its clean shutdown
_FORGET_WINDOWS = 10  # a view older than this many windows is forgotten (its cluster too, if last)
_MIN_INTERVAL = 0.05


class FleetConfig(Model):
    """The `fleet:` key of an mqtt exporter."""

    enabled: bool = False
    # Live agents that must see the primary down: a majority of them, all of them, or a number.
    quorum: Literal["majority", "all"] | Annotated[int, Field(ge=1, le=1000)] = "majority"
    # Never fewer down votes than this, however few agents are live: one agent alone is never a
    # confirmation (set 1 for a site with a single agent).
    min_votes: int = Field(default=2, ge=1, le=1000)
    # An agent is live while its latest view is younger than this many of its check intervals.
    window_intervals: int = Field(default=3, ge=1, le=100)

    @field_validator("quorum", mode="before")
    @classmethod
    def _quorum(cls, value: Any) -> Any:
        if value in ("majority", "all") or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ValueError(f"invalid quorum {value!r}: expected majority, all or a number of agents")

    @model_validator(mode="after")
    def _quorum_vs_min_votes(self) -> FleetConfig:
        if isinstance(self.quorum, int) and self.quorum < self.min_votes:
            raise ValueError(
                f"quorum ({self.quorum}) is less than min_votes ({self.min_votes}): "
                f"lower min_votes too if {self.quorum} votes should confirm"
            )
        return self

    def needed(self, live: int) -> int:
        """Down votes needed among `live` agents."""
        if self.quorum == "majority":
            base = live // 2 + 1
        elif self.quorum == "all":
            base = live
        else:
            base = int(self.quorum)
        return max(base, self.min_votes)


@dataclass(frozen=True)
class View:
    """One agent's view of one cluster, from one run of its postgres check."""

    agent: str
    cluster: str
    check: str
    timestamp: float  # unix seconds: when the run started (the agent's clock)
    interval: float  # seconds between the check's runs
    primary_down: bool
    reason: str  # mamori_pg_failover_recommended's reason
    nodes: tuple[tuple[str, bool], ...]  # (node, answered)

    def to_json(self, site: str) -> dict[str, Any]:
        return {
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

    def payload(self, site: str) -> bytes:
        return json.dumps(self.to_json(site), separators=(",", ":")).encode()

    @classmethod
    def parse(cls, agent: str, cluster: str, payload: bytes) -> View:
        """A view received for (agent, cluster) — both from the topic. Raises ValueError."""
        try:
            data = json.loads(payload)
            timestamp, interval = float(data["timestamp"]), float(data["interval"])
            nodes = tuple((str(k), bool(v)) for k, v in dict(data.get("nodes") or {}).items())
            view = cls(
                agent=agent,
                cluster=cluster,
                check=str(data.get("check", "")),
                timestamp=timestamp,
                interval=interval,
                primary_down=bool(data["primary_down"]),
                reason=str(data.get("reason", "")),
                nodes=nodes,
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


def views_of(result: CheckResult, agent: str, interval: float) -> list[View]:
    """The views in one postgres result (one per cluster it judged; none without a cluster view,
    i.e. a single-node check without expected standbys, and none from any other check type)."""
    if result.check_type != SOURCE_TYPE:
        return []
    nodes = tuple((dict(s.labels).get("node", ""), s.value == 1.0) for s in result.samples if s.name == PG_UP)
    out = []
    for s in result.samples:
        if s.name != PG_RECOMMENDED:
            continue
        labels = dict(s.labels)
        cluster, reason = labels.get("cluster"), labels.get("reason", "")
        if not cluster:
            continue
        out.append(
            View(
                agent=agent,
                cluster=cluster,
                check=result.check,
                timestamp=result.started_at,
                interval=interval,
                primary_down=reason.startswith("primary_down"),
                reason=reason,
                nodes=nodes,
            )
        )
    return out


@dataclass(frozen=True)
class FleetVerdict:
    cluster: str
    live: tuple[str, ...]  # agents counted, sorted
    down: tuple[str, ...]  # those of them that see the primary down
    needed: int
    confirmed: bool

    @property
    def key(self) -> tuple[object, ...]:
        return (self.live, self.down, self.needed, self.confirmed)


class Fleet:
    """The quorum state of one agent. Not thread-safe; every call is made from the event loop.

    Times are unix seconds from the caller (views carry wall-clock timestamps, so agents' clocks
    should be NTP-synchronised; a skew small against the check interval does not matter).
    """

    def __init__(self, config: FleetConfig, agent: str, site: str, prefix: str, default_interval: float):
        self.config = config
        self.agent = agent
        self.site = site
        self.base = f"{prefix}/{site}"
        self.default_interval = default_interval
        self._views: dict[tuple[str, str], View] = {}  # (agent, cluster) -> latest view received
        self._status: dict[str, str] = {}  # agent -> its status topic's payload
        self._own: dict[str, View] = {}  # cluster -> this agent's newest view
        self._unsent: dict[str, View] = {}  # cluster -> own view not yet acknowledged by the broker
        self._runs: dict[str, float] = {}  # postgres check -> started_at of its latest run
        self._intervals: dict[str, float] = {}  # postgres check -> measured spacing of its runs
        self._published: dict[str, tuple[object, ...]] = {}  # cluster -> key of the last result
        self._bad_senders: set[str] = set()

    # --- topics ------------------------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        return [f"{self.base}/+/fleet/pg/+", f"{self.base}/+/status", self.sync_topic()]

    def sync_topic(self) -> str:
        """Where the exporter sends itself a marker after subscribing: once it is back, every
        retained view and status the subscription brought has arrived before it (the broker
        sends them in order), so no verdict is judged on half of them."""
        return f"{self.base}/{self.agent}/fleet/sync"

    def view_topic(self, cluster: str) -> str:
        return f"{self.base}/{self.agent}/fleet/pg/{cluster}"

    def target(self, cluster: str) -> str:
        return f"{self.base}/+/fleet/pg/{cluster}"

    # --- what this agent sees ----------------------------------------------------------------------

    def observe(self, results: Iterable[CheckResult]) -> bool:
        """Take this agent's own postgres results (in order; replays are harmless). True if a view
        newer than the one held changed the state (it is then waiting in `unsent()`)."""
        changed = False
        for r in results:
            if r.check_type != SOURCE_TYPE:
                continue  # never from fleet results (our own synthetic ones): no feedback loop
            last = self._runs.get(r.check)
            if last is not None and r.started_at <= last:
                continue  # a replay or an older run
            if last is not None:
                self._intervals[r.check] = max(_MIN_INTERVAL, r.started_at - last)
            self._runs[r.check] = r.started_at
            interval = self._intervals.get(r.check, self.default_interval)
            for view in views_of(r, self.agent, interval):
                held = self._own.get(view.cluster)
                if held is not None and held.timestamp >= view.timestamp:
                    continue
                self._own[view.cluster] = view
                self._unsent[view.cluster] = view
                self._views[(self.agent, view.cluster)] = view
                changed = True
        return changed

    def unsent(self) -> list[tuple[str, bytes, View]]:
        """Own views to publish (topic, payload, view), newest per cluster."""
        return [(self.view_topic(c), v.payload(self.site), v) for c, v in sorted(self._unsent.items())]

    def sent(self, view: View) -> None:
        """The broker acknowledged `view` (a newer one may be waiting already)."""
        if self._unsent.get(view.cluster) is view:
            del self._unsent[view.cluster]

    def reconnected(self) -> None:
        """A new connection: republish every own view (a broker without persistence forgot them)."""
        self._unsent.update(self._own)

    # --- what the others say -----------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes) -> bool:
        """A message on one of `subscriptions()`. True if it changed the state."""
        if not topic.startswith(self.base + "/"):
            return False
        parts = topic[len(self.base) + 1 :].split("/")
        if len(parts) == 2 and parts[1] == "status":
            return self._receive_status(parts[0], payload)
        if len(parts) == 4 and parts[1:3] == ["fleet", "pg"]:
            return self._receive_view(parts[0], parts[3], payload)
        return False

    def _receive_status(self, agent: str, payload: bytes) -> bool:
        text = payload.decode(errors="replace").strip()
        if not text:  # a retained status cleared: the agent is decommissioned
            return self._status.pop(agent, None) is not None
        before = self._status.get(agent)
        self._status[agent] = text
        return before != text

    def _receive_view(self, agent: str, cluster: str, payload: bytes) -> bool:
        key = (agent, cluster)
        if not payload:  # a retained view cleared
            return self._views.pop(key, None) is not None
        try:
            view = View.parse(agent, cluster, payload)
        except ValueError as exc:
            if agent not in self._bad_senders:  # once per sender: a broken peer must not flood the log
                self._bad_senders.add(agent)
                log.warning(
                    "fleet: ignoring a malformed view from %s for cluster %s: %s", agent, cluster, exc
                )
            return False
        if agent == self.agent:
            own = self._own.get(cluster)
            if own is not None and own.timestamp > view.timestamp:
                return False  # our own older view echoed back (e.g. retained from before a restart)
        held = self._views.get(key)
        if held is not None and held.timestamp > view.timestamp:
            return False
        self._views[key] = view
        return held != view

    # --- the verdicts ------------------------------------------------------------------------------

    def clusters(self) -> list[str]:
        return sorted({c for _, c in self._views} | set(self._own))

    def verdict(self, cluster: str, now: float) -> FleetVerdict:
        live: list[str] = []
        down: list[str] = []
        for (agent, c), view in sorted(self._views.items()):
            if c != cluster or self._status.get(agent) == OFFLINE:
                continue
            if not view.fresh(now, self.config.window_intervals):
                continue
            live.append(agent)
            if view.primary_down:
                down.append(agent)
        needed = self.config.needed(len(live))
        return FleetVerdict(cluster, tuple(live), tuple(down), needed, bool(live) and len(down) >= needed)

    def forget(self, now: float) -> None:
        """Drop views too old to ever count again, and clusters nobody reports any more."""
        for key, view in list(self._views.items()):
            if view.age(now) > _FORGET_WINDOWS * self.config.window_intervals * view.interval:
                del self._views[key]
        for cluster, view in list(self._own.items()):
            if view.age(now) > _FORGET_WINDOWS * self.config.window_intervals * view.interval:
                del self._own[cluster]
                self._unsent.pop(cluster, None)
        known = set(self.clusters())
        for cluster in list(self._published):
            if cluster not in known:
                del self._published[cluster]

    def results(self, now: float, *, only_changed: bool = False) -> list[CheckResult]:
        """One `fleet:<cluster>` result per known cluster (only those whose verdict changed since
        the last call, with `only_changed`). Call only while connected to the broker: without it
        the agent cannot know what the others see, and says nothing rather than a guess (an
        UNKNOWN would resolve a confirmed page)."""
        out = []
        for cluster in self.clusters():
            v = self.verdict(cluster, now)
            if only_changed and self._published.get(cluster) == v.key:
                continue
            self._published[cluster] = v.key
            out.append(self._result(v, now))
        return out

    def _result(self, v: FleetVerdict, now: float) -> CheckResult:
        labels = (("cluster", v.cluster),)
        samples = (
            Sample(AGENTS, float(len(v.live)), labels),
            Sample(VOTES, float(len(v.down)), labels),
            Sample(QUORUM, float(v.needed), labels),
            Sample(CONFIRMED, 1.0 if v.confirmed else 0.0, labels),
        )
        down = f" ({', '.join(v.down)})" if v.down else ""
        counts = f"{len(v.down)} of {len(v.live)} live agents see it down{down}, {v.needed} needed"
        if v.confirmed:
            status, reason = Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED
            message = f"primary of cluster {v.cluster} down, confirmed: {counts}"
        else:
            status, reason = Status.OK, Reason.OK
            message = f"primary of cluster {v.cluster} not confirmed down: {counts}"
        return CheckResult(
            check=CHECK_PREFIX + v.cluster,
            check_type=CHECK_TYPE,
            target=self.target(v.cluster),
            status=status,
            started_at=now,
            duration=0.0,
            samples=samples,
            message=message,
            reason=reason,
        )
