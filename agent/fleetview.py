"""An agent's *view* of a Postgres cluster for the fleet quorum: the one fact agents of a site
tell each other over MQTT — does this agent reach the cluster's primary?

The mqtt exporter (exporters/mqtt.py) derives this agent's views from its own `postgres` results
(`OwnViews`) and publishes them, retained, QoS 1, to `view_topic()`; the `fleet` check
(checks/fleet.py) subscribes to every agent's views and statuses and judges. Both read the
format here, so neither imports the other. A view is derived from `postgres` results only, never
from anything else: the fleet's own results cannot feed back into it.

A view comes from `mamori_pg_up{node}` per node and `mamori_pg_failover_recommended{cluster,
reason}`, where `reason="primary_reachable"` means some primary answered and `primary_down_*`
means none did. It carries the run's timestamp and the check's interval (measured between its
runs), so a reader can tell a live agent from a silent one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.model import CheckResult

SOURCE_TYPE = "postgres"  # the only results views are derived from
PG_UP = "mamori_pg_up"
PG_RECOMMENDED = "mamori_pg_failover_recommended"
STATUS = "status"  # <prefix>/<site>/<agent>/status: online / offline (the exporter's last will)
OFFLINE = "offline"  # a status payload: the agent's last will, or its clean shutdown
FLEET_LEVEL = "fleet"  # <prefix>/<site>/<agent>/fleet/…: reserved for the views (and sync markers)
_MIN_INTERVAL = 0.05
_FORGET_WINDOWS = 10  # a view older than this many windows is forgotten


def view_topic(base: str, agent: str, cluster: str) -> str:
    """Where `agent` publishes its view of `cluster`; `base` is `<prefix>/<site>`."""
    return f"{base}/{agent}/{FLEET_LEVEL}/pg/{cluster}"


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

    def forgotten(self, now: float, window_intervals: int) -> bool:
        """Too old to ever count again."""
        return self.age(now) > _FORGET_WINDOWS * window_intervals * self.interval


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


class OwnViews:
    """This agent's newest view of each cluster, and which of them the broker has not yet
    acknowledged. Fed with the agent's own results by the mqtt exporter; no I/O. Not
    thread-safe; every call is made from the event loop."""

    def __init__(self, agent: str, site: str, prefix: str, default_interval: float) -> None:
        self.agent = agent
        self.site = site
        self.base = f"{prefix}/{site}"
        self.default_interval = default_interval
        self._own: dict[str, View] = {}  # cluster -> this agent's newest view
        self._unsent: dict[str, View] = {}  # cluster -> own view not yet acknowledged by the broker
        self._runs: dict[str, float] = {}  # postgres check -> started_at of its latest run
        self._intervals: dict[str, float] = {}  # postgres check -> measured spacing of its runs

    def topic(self, cluster: str) -> str:
        return view_topic(self.base, self.agent, cluster)

    def observe(self, results: Iterable[CheckResult]) -> bool:
        """Take this agent's own results (in order; replays are harmless; only postgres results
        count). True if a view newer than the one held changed (it is then in `unsent()`)."""
        changed = False
        for r in results:
            if r.check_type != SOURCE_TYPE:
                continue  # never from fleet results: no feedback loop
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
                changed = True
        return changed

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
        """Drop own views too old to ever count again (a postgres check removed or stopped)."""
        for cluster, view in list(self._own.items()):
            if view.forgotten(now, window_intervals):
                del self._own[cluster]
                self._unsent.pop(cluster, None)
