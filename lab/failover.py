"""`FailoverLab`: the failover trigger's whole chain on the real Postgres pair, time-scaled, with
every single path cuttable — the ground of tests/alerts/test_failover_catalogue.py and of
bench/detect.py (at production speed, `chain_scale=1`).

    async with fake_pagerduty() as pd, fake_slack() as slack:
        async with failover_lab(directory, pd, slack, agents=3) as fl:
            await fl.baseline()                  # healthy, checked (see `baseline`)
            await fl.partition("agent3", "primary")   # only agent3's path to the primary is cut
            async with fl.watch() as seen:       # records what fires, when, on both paths
                await asyncio.sleep(fl.window)
            seen.fired()                         # {"prometheus:PostgresExpectedStandbyMissing", ...}

What runs, all on 127.0.0.1, every process ours and stopped by its PID:

- the real PostgreSQL 15 pair of lab/postgres.py (the standby's WAL link through its own
  `LinkProxy`, `fl.pg.proxy`);
- `agents` in-process agents (agent1, agent2, …), each reaching each node through its OWN
  `LinkProxy` (`fl.links[agent][node]`), so that any single agent→node path can be cut;
- a real Mosquitto: every agent publishes its view (the mqtt exporter's `fleet`) and runs the
  fleet check `fleet:<cluster>` on it;
- a real Prometheus from deploy/prometheus/prometheus.yml scraping the agents (file_sd), loading
  alerts/rules/*.yml, and a real Alertmanager from deploy/alertmanager/alertmanager.yml pointed at
  the strict PagerDuty and Slack fakes (lab/alertmanager.py rewrites both, as lab/stack.py does);
- each agent's own rules: the failover rules of deploy/examples/production.yml (every rule on the
  `db` check and on `fleet:*`), routed to the PagerDuty fake whatever their severity, so that the
  agent path is observed in one place.

Time scale: the failover chain — the postgres check's interval and timeout (2 s each in
production, never below MIN_PERIOD here), its `stall_grace` (17 s), the fleet check's interval
(1 s), the `mamori` job's scrape interval (5 s) and the failover rule group's evaluation interval
(2 s) — is divided by `chain_scale` (CHAIN_SCALE, 5; 1 runs it at production speed, as
bench/detect.py does): its margins (a 15 s stall against a 17 s grace) must stay wider than a
loaded machine's jitter. Every other period is divided by `SCALE` (15): every `for:` of the
Prometheus rules (5m → 20 s, 10m → 40 s) and of the agent's rules (30s → 2 s), the agent's
group_wait (10 s → 0.667 s) and flap window (10m → 40 s). Expressions, thresholds (rpo,
lag_warning, …) and labels are unchanged. Not scaled: PostgreSQL's own timeouts
(wal_receiver_timeout 5 s here, as lab/postgres.py sets it), Alertmanager's group_wait and
group_interval (1 s).

Zones (issue 15): the primary and agent1 stand in `ad1`, the standby and the other agents in
`ad2` (the agents' `labels.zone`, the nodes' `zone`), so that a site split leaves agent1 alone
with the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml

from lab import REPO
from lab.alertmanager import ALERTMANAGER_YML, alertmanager_argv, alertmanager_config
from lab.mosquitto import Mosquitto
from lab.ports import HOST, free_port
from lab.postgres import SLOT, PgLab
from lab.prometheus import PROMETHEUS_YML, RULES_DIR, prometheus_argv, prometheus_config
from lab.proxy import LinkProxy
from lab.stack import _Child
from lab.wait import wait_until

if TYPE_CHECKING:
    from agent.runtime import Agent
    from tests.fakes.pagerduty import FakePagerDuty
    from tests.fakes.slack import FakeSlack

log = logging.getLogger("mamori.lab.failover")

PRODUCTION_YML = REPO / "deploy" / "examples" / "production.yml"
SCALE = 15.0  # production periods / lab periods (see the module docstring)
CHAIN_SCALE = 5.0  # the failover chain's periods / lab periods (see the module docstring)
MIN_PERIOD = 0.5  # no check interval or timeout shorter than this on a loaded 2-core machine
CHECK = "db"  # production.yml's postgres check
SITE = "lab"
NODES = ("primary", "standby")
# The sites of the lab (issue 15): the primary and agent1 in ad1; the standby and every other
# agent in ad2 — so that a site split leaves one agent with the primary.
NODE_ZONES = {"primary": "ad1", "standby": "ad2"}
CHECK_TIMEOUT = 0.5
FLEET_INTERVAL = "1s"  # production.yml's fleet check (docs/checks/fleet.md)
PROMETHEUS_SCRAPE = "5s"  # deploy/prometheus/prometheus.yml's `mamori` job
AM_GROUP_WAIT, AM_GROUP_INTERVAL, AM_REPEAT_INTERVAL = "1s", "1s", "1h"
POLL = 0.2  # how often `watch()` looks at Prometheus and the PagerDuty fake

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(text: str | float) -> float:
    """A Prometheus or agent duration (`1m`, `1m30s`, `250ms`, a number) in seconds."""
    if isinstance(text, int | float):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def scaled(text: str | float) -> float:
    """A production period in lab seconds."""
    return seconds(text) / SCALE


def prom_duration(value: float) -> str:
    """Seconds as a Prometheus duration (whole milliseconds: Prometheus takes no fractions)."""
    return f"{max(1, round(value * 1000))}ms"


def scaled_rules(text: str, chain_scale: float = CHAIN_SCALE) -> str:
    """A rule file with every `for:` divided by SCALE — but in a group with its own evaluation
    `interval:` (the failover group: part of the chain), that interval and its rules' `for:` are
    divided by `chain_scale`. Nothing else changes."""
    doc = yaml.safe_load(text)
    for group in doc.get("groups") or []:
        chain = "interval" in group
        if chain:
            group["interval"] = prom_duration(seconds(group["interval"]) / chain_scale)
        for rule in group.get("rules") or []:
            if "for" in rule:
                lab = seconds(rule["for"]) / (chain_scale if chain else SCALE)
                rule["for"] = prom_duration(lab)
    return str(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000))


def production_rules(chain_scale: float = CHAIN_SCALE) -> list[dict[str, Any]]:
    """production.yml's alert rules on the postgres check and the fleet check, `for:` divided by
    SCALE — by `chain_scale` on the fleet verdict's rules, which are part of the chain."""
    doc = yaml.safe_load(PRODUCTION_YML.read_text())
    rules = []
    for rule in doc["alerts"]["rules"]:
        if rule.get("check") not in (CHECK, "fleet:*"):
            continue
        rule = dict(rule)
        if "for" in rule:
            by = chain_scale if rule.get("check") == "fleet:*" else SCALE
            rule["for"] = f"{seconds(rule['for']) / by:.3f}s"
        rules.append(rule)
    return rules


# --- what happened ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One observation, first time seen: `path` is `prometheus` (an alert's state in Prometheus),
    `alertmanager` (a PagerDuty event Alertmanager sent) or `agent` (a PagerDuty event an agent's
    own notifier sent); `name` the alert or agent rule; `state` pending|firing|trigger|resolve;
    `at` seconds since the watch began; `who` the agent, node or standby it is about."""

    path: str
    name: str
    state: str
    at: float
    who: str = ""

    def __str__(self) -> str:
        who = f" ({self.who})" if self.who else ""
        return f"{self.at:5.1f} s {self.path}:{self.name}{who} {self.state}"


@dataclass
class Observed:
    """Everything seen during one `watch()`, in order of arrival."""

    began: float
    items: list[Seen] = field(default_factory=list)
    _keys: set[tuple[str, str, str, str]] = field(default_factory=set)

    def add(self, path: str, name: str, state: str, who: str = "") -> None:
        key = (path, name, state, who)
        if key not in self._keys:
            self._keys.add(key)
            self.items.append(Seen(path, name, state, round(time.monotonic() - self.began, 2), who))

    def fired(self) -> set[str]:
        """`path:name` of everything that fired (Prometheus) or paged (Alertmanager, agents)."""
        return {f"{s.path}:{s.name}" for s in self.items if s.state in ("firing", "trigger")}

    def pending(self) -> set[str]:
        """`prometheus:name` of every alert that was at least pending."""
        return {f"{s.path}:{s.name}" for s in self.items if s.path == "prometheus"}

    def first(self, key: str, state: str | None = None) -> Seen | None:
        """The first observation of `path:name` (in `state` if given)."""
        for s in self.items:
            if f"{s.path}:{s.name}" == key and (state is None or s.state == state):
                return s
        return None

    def who(self, key: str) -> set[str]:
        return {s.who for s in self.items if f"{s.path}:{s.name}" == key}

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.items) or "(nothing)"


def _am_name(event: dict[str, Any]) -> str:
    """The alert an Alertmanager PagerDuty event is about (from its custom details or summary)."""
    details = event.get("payload", {}).get("custom_details") or {}
    text = json.dumps(details)
    m = re.search(r"alertname\W+(\w+)", text)
    if m:
        return m.group(1)
    return str(event.get("payload", {}).get("summary", "?"))


# --- the lab --------------------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    port: int
    config_text: str
    agent: Agent | None = None
    task: asyncio.Task[int] | None = None


class FailoverLab:
    """The stack of the module docstring. Methods are not safe for concurrent use, except that
    `watch()` observes while a fault runs."""

    def __init__(
        self,
        directory: Path,
        pg: PgLab,
        pd: FakePagerDuty,
        slack: FakeSlack,
        agents: int,
        chain_scale: float = CHAIN_SCALE,
        extra_jobs: list[dict[str, Any]] | None = None,
        extra_rules: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.chain_scale = chain_scale
        # More for Prometheus to scrape and evaluate beside the shipped config (a benchmark's
        # anchor): scrape jobs, and rule files by name (written as given, not scaled).
        self.extra_jobs = list(extra_jobs or [])
        self.extra_rules = dict(extra_rules or {})
        self.pg = pg
        self.pd = pd
        self.slack = slack
        self.cluster = str(self._production_check().get("cluster") or CHECK)
        self.broker = Mosquitto(directory / "mosquitto", persistence=False)
        self.names = tuple(f"agent{i + 1}" for i in range(agents))
        self.links: dict[str, dict[str, LinkProxy]] = {}
        self.members: dict[str, _Member] = {}
        self.prometheus: _Child | None = None
        self.alertmanager: _Child | None = None
        self._session: aiohttp.ClientSession | None = None
        # Agent-path PagerDuty keys left open by a rule that does not resolve (`revert()`).
        self.stuck: set[str] = set()
        self._events_seen = 0
        self._am_names: dict[str, str] = {}  # every Alertmanager dedup key seen -> its alert

    # --- configuration -----------------------------------------------------------------------------

    def chain(self, text: str | float) -> float:
        """A production period of the failover chain in lab seconds."""
        return seconds(text) / self.chain_scale

    def zone_of(self, agent: str) -> str:
        """agent1 stands with the primary (ad1), every other agent with the standby (ad2)."""
        return NODE_ZONES["primary"] if agent == self.names[0] else NODE_ZONES["standby"]

    @property
    def check_interval(self) -> float:
        return max(MIN_PERIOD, self.chain(self._production_check()["interval"]))

    @property
    def check_timeout(self) -> float:
        return max(MIN_PERIOD, self.chain(self._production_check()["timeout"]))

    @property
    def fleet_interval(self) -> float:
        return max(MIN_PERIOD, self.chain(FLEET_INTERVAL))

    @property
    def stall_grace(self) -> float:
        return self.chain(self._production_check().get("stall_grace", "17s"))

    @property
    def scrape_interval(self) -> float:
        return self.chain(PROMETHEUS_SCRAPE)

    @property
    def window(self) -> float:
        """The slowest a frozen primary may take to page on the Prometheus path, by the chain's
        arithmetic (docs/alerting.md): the first run to fail ends within one interval of the
        freeze; the agent says `down` at the first failed run ending a stall grace after that
        (within one more interval); then a scrape, an evaluation of the failover group and
        Alertmanager's group wait (its failover route's 0 s; the lab's AM_GROUP_WAIT floor).
        A stopped primary (refused) skips the grace."""
        return (
            2 * self.check_interval
            + self.stall_grace
            + self.scrape_interval
            + self.chain("2s")
            + seconds(AM_GROUP_WAIT)
        )

    @staticmethod
    def _production_check() -> dict[str, Any]:
        doc = yaml.safe_load(PRODUCTION_YML.read_text())
        check: dict[str, Any] = next(c for c in doc["checks"] if c.get("name") == CHECK)
        return check

    def agent_yaml(self, name: str, port: int) -> str:
        """production.yml's postgres check (nodes through this agent's links, the lab's password,
        interval scaled, the standby expected by its application_name), the fleet check and the
        bus exporter on the lab's broker, the failover rules, PagerDuty only."""
        prod = self._production_check()
        links = self.links[name]
        check = {k: v for k, v in prod.items() if k not in ("password_file", "sslmode")}
        check.update(
            interval=f"{self.check_interval:g}s",
            timeout=f"{self.check_timeout:g}s",
            stall_grace=f"{self.stall_grace:g}s",
            password=self.pg.monitoring_password,
            sslmode="disable",
            nodes=[
                {
                    "name": "primary",
                    "host": HOST,
                    "port": links["primary"].port,
                    "zone": NODE_ZONES["primary"],
                },
                {
                    "name": "standby",
                    "host": HOST,
                    "port": links["standby"].port,
                    "application_name": SLOT,
                    "zone": NODE_ZONES["standby"],
                },
            ],
            # What PostgresExpectedStandbyMissing watches (issue 15 item 1).
            expected_standbys=[SLOT],
        )
        broker = {
            "host": HOST,
            "port": self.broker.port,
            "reconnect_delay": "0.1s",
            "reconnect_max": "0.5s",
        }
        doc = {
            "agent": {
                "name": name,
                "listen": f"{HOST}:{port}",
                "labels": {"site": SITE, "zone": self.zone_of(name)},
                "interval": f"{scaled('30s'):g}s",
                "timeout": f"{CHECK_TIMEOUT:g}s",
            },
            "checks": [
                check,
                {
                    "type": "fleet",
                    "cluster": self.cluster,
                    "interval": f"{self.fleet_interval:g}s",
                    "timeout": f"{self.fleet_interval:g}s",
                    "lost_window": f"{self.chain('30s'):g}s",
                    **broker,
                },
            ],
            "outbox": {"path": str(self.directory / f"{name}-outbox.db")},
            "exporters": [{"name": "bus", "type": "mqtt", "fleet": {"enabled": True}, **broker}],
            "notifiers": [
                {"name": "pd", "type": "pagerduty", "routing_key": self.pd.routing_key, "url": self.pd.url}
            ],
            "alerts": {
                "state_file": str(self.directory / f"{name}-alerts.db"),
                "group_wait": f"{scaled('10s'):.3f}s",
                "flap": {"window": f"{scaled('10m'):g}s"},  # the default 10m, scaled
                "routes": {"critical": ["pd"], "warning": ["pd"]},
                "rules": production_rules(self.chain_scale),
            },
        }
        return yaml.safe_dump(doc, sort_keys=False)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        await self.pg.start()
        for name in self.names:
            self.links[name] = {
                "primary": LinkProxy(self.pg.primary.port),
                "standby": LinkProxy(self.pg.standby.port),
            }
        await self.broker.start()
        await self._start_alertmanager()
        ports = [free_port() for _ in self.names]
        for name, port in zip(self.names, ports, strict=True):
            self.members[name] = _Member(name, port, self.agent_yaml(name, port))
            await self.start_agent(name)
        await self._start_prometheus(ports)

    async def _start_alertmanager(self) -> None:
        d = self.directory / "alertmanager"
        d.mkdir()
        cfg = d / "alertmanager.yml"
        cfg.write_text(
            alertmanager_config(
                ALERTMANAGER_YML.read_text(),
                d,
                pagerduty_url=self.pd.url,
                pagerduty_routing_key=self.pd.routing_key,
                slack_webhook_url=self.slack.add_webhook("#mamori-alerts"),
                deadman_url=f"{self.pd.base_url}/deadmans-switch",  # answered 404, never leaves
                group_wait=AM_GROUP_WAIT,
                group_interval=AM_GROUP_INTERVAL,
                repeat_interval=AM_REPEAT_INTERVAL,
            )
        )
        am = self.alertmanager = _Child(
            "alertmanager", lambda port: alertmanager_argv(cfg, d / "data", port), d / "am.log", "/-/ready"
        )
        await am.start(None)
        await am.wait_ready()

    async def _start_prometheus(self, ports: list[int]) -> None:
        d = self.directory / "prometheus"
        rules = d / "rules"
        rules.mkdir(parents=True)
        for path in sorted(RULES_DIR.glob("*.yml")):
            (rules / path.name).write_text(scaled_rules(path.read_text(), self.chain_scale))
        for name, text in self.extra_rules.items():
            (rules / name).write_text(text)
        targets = d / "targets.yml"
        targets.write_text(yaml.safe_dump([{"targets": [f"{HOST}:{p}" for p in ports]}]))
        interval = self.scrape_interval
        cfg = d / "prometheus.yml"
        assert self.alertmanager is not None
        am = self.alertmanager.url.removeprefix("http://")

        def argv(port: int) -> list[str]:
            text = prometheus_config(
                PROMETHEUS_YML.read_text(),
                targets_file=targets,
                rule_files=[str(rules / "*.yml")],
                prometheus_address=f"{HOST}:{port}",
                alertmanager_address=am,
                interval=interval,
            )
            if self.extra_jobs:
                doc = yaml.safe_load(text)
                doc["scrape_configs"].extend(self.extra_jobs)
                text = yaml.safe_dump(doc, sort_keys=False)
            cfg.write_text(text)
            return prometheus_argv(cfg, d / "data", port, interval=interval)

        prom = self.prometheus = _Child("prometheus", argv, d / "prometheus.log", "/-/ready")
        await prom.start(None)
        await prom.wait_ready()

    async def restart_prometheus(self) -> None:
        """Stop Prometheus (SIGTERM, by PID) and start it again on the same port and data."""
        assert self.prometheus is not None
        port = self.prometheus.port
        await self.prometheus.stop()
        await self.prometheus.start(port)
        await self.prometheus.wait_ready()

    async def start_agent(self, name: str) -> None:
        """Start (again) agent `name` with its config, port and state files; returns once it
        listens. No-op if it runs."""
        from agent import config
        from agent.runtime import Agent

        m = self.members[name]
        if m.task is not None and not m.task.done():
            return
        agent = Agent(config.parse(m.config_text, f"{name}.yml", env={}), None)
        m.agent, m.task = agent, asyncio.create_task(agent.run(), name=f"failover-{name}")
        assert self._session is not None
        session = self._session

        async def listening() -> bool:
            if m.task is not None and m.task.done():
                raise RuntimeError(f"{name} stopped while starting")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"http://{HOST}:{m.port}/ready") as r:
                    return r.status < 500
            return False

        await wait_until(f"{name} to listen", listening, 15, interval=0.05)

    async def stop_agent(self, name: str) -> None:
        """Stop agent `name` cleanly (as SIGTERM does: its last will says `offline`)."""
        m = self.members[name]
        if m.agent is not None and m.task is not None and not m.task.done():
            m.agent.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(m.task, 15)
        m.agent = m.task = None

    def sees_primary_down(self, name: str) -> bool:
        """Whether agent `name`'s latest postgres result says the primary is down from there."""
        agent = self.members[name].agent
        result = agent.latest.get(CHECK) if agent is not None else None
        return result is not None and any(
            s.name == "mamori_pg_failover_recommended"
            and dict(s.labels).get("reason", "").startswith("primary_down")
            for s in result.samples
        )

    def sees_primary_unknown(self, name: str) -> bool:
        """Whether agent `name`'s latest postgres result says no primary answers but it is not yet
        down from there (a timeout within the stall grace: reason `primary_unknown`)."""
        agent = self.members[name].agent
        result = agent.latest.get(CHECK) if agent is not None else None
        return result is not None and any(
            s.name == "mamori_pg_failover_recommended" and dict(s.labels).get("reason") == "primary_unknown"
            for s in result.samples
        )

    def running(self, name: str) -> bool:
        task = self.members[name].task
        return task is not None and not task.done()

    async def aclose(self) -> None:
        """Stop everything: Prometheus first (no alert on the teardown), then the agents, the
        links, Alertmanager, the broker, the pair. Each step in its own try."""
        errors: list[BaseException] = []

        async def step(what: Any) -> None:
            try:
                await what()
            except BaseException as exc:  # keep stopping the rest
                errors.append(exc)

        if self.prometheus is not None:
            await step(self.prometheus.stop)
        for name in list(self.members):
            await step(lambda name=name: self.stop_agent(name))
        for links in self.links.values():
            for link in links.values():
                await step(lambda link=link: asyncio.to_thread(link.close))
        if self.alertmanager is not None:
            await step(self.alertmanager.stop)
        await step(self.broker.aclose)
        await step(self.pg.stop)
        if self._session is not None:
            await step(self._session.close)
        for exc in errors:
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("while stopping the failover lab: %s", exc)

    # --- faults ------------------------------------------------------------------------------------

    async def partition(self, agent: str, node: str) -> None:
        """Cut agent `agent`'s path to `node` (bytes stop both ways, nothing is closed)."""
        await asyncio.to_thread(self.links[agent][node].cut)

    async def heal(self) -> None:
        """Every agent→node path up again."""
        for links in self.links.values():
            for link in links.values():
                await asyncio.to_thread(link.restore)

    async def revert(self) -> None:
        """Back to the healthy baseline from any fault: paths healed, stopped agents started,
        Prometheus running, the pair reset (lab/postgres.py `reset()`); every agent that paged
        since the last revert restarted with a fresh alert state (so that no fault inherits
        another's streaks or flap history: in production faults are hours apart); then
        `baseline()`."""
        await self.heal()
        for name in self.names:
            await self.start_agent(name)
        assert self.prometheus is not None
        if self.prometheus.pid is None:
            await self.prometheus.start(self.prometheus.port)
            await self.prometheus.wait_ready()
        await self.pg.reset()
        await self.baseline(incidents=False)
        await self._fresh_alert_state()
        await self.baseline()

    async def _fresh_alert_state(self, grace: float = 3.0) -> None:
        """Restart afresh every agent that paged since the last call, once its pages resolved or
        `grace` s passed; the pages still open then belong to a rule that does not resolve (see
        test_failover_catalogue.py): they are logged and kept in `stuck`."""
        events, self._events_seen = self.pd.events[self._events_seen :], len(self.pd.events)
        paged = {
            str(e["dedup_key"]).split(":")[1]
            for e in events
            if str(e.get("dedup_key", "")).startswith("mamori:")
        }
        if not paged:
            return
        with contextlib.suppress(TimeoutError):
            await wait_until("the agents' pages resolved", lambda: not self._open_agent_incidents(), grace)
        still = self._open_agent_incidents()
        if still:
            log.warning("agent pages that did not resolve (now in `stuck`): %s", sorted(still))
            self.stuck.update(still)

        async def afresh(name: str) -> None:
            await self.stop_agent(name)
            for suffix in ("", "-wal", "-shm"):
                (self.directory / f"{name}-alerts.db{suffix}").unlink(missing_ok=True)
            await self.start_agent(name)

        await asyncio.gather(*(afresh(name) for name in sorted(paged)))
        self._events_seen = len(self.pd.events)

    def _open_agent_incidents(self) -> set[str]:
        return {k for k in self.open_incidents() if k.startswith("mamori:") and k not in self.stuck}

    # --- observing -----------------------------------------------------------------------------------

    async def query(self, promql: str) -> list[dict[str, Any]]:
        assert self.prometheus is not None and self._session is not None
        q = urllib.parse.urlencode({"query": promql})
        async with self._session.get(f"{self.prometheus.url}/api/v1/query?{q}") as r:
            body = await r.json()
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's active alerts (pending and firing)."""
        assert self.prometheus is not None and self._session is not None
        async with self._session.get(f"{self.prometheus.url}/api/v1/alerts") as r:
            body = await r.json()
        result: list[dict[str, Any]] = body["data"]["alerts"]
        return result

    def open_incidents(self) -> list[str]:
        """PagerDuty dedup keys triggered and not resolved (both paths), but those in `stuck`."""
        return [
            i.dedup_key for i in self.pd.incidents if i.status != "resolved" and i.dedup_key not in self.stuck
        ]

    async def baseline(self, timeout: float = 60.0, *, incidents: bool = True) -> float:
        """Wait until the chain is healthy and quiet, and return the seconds waited: every agent
        scraped, reaching the primary, seeing the standby stream and connected to the primary;
        every fleet verdict OK with no down vote; no Postgres alert pending or firing in
        Prometheus; no PagerDuty incident left open. TimeoutError names what was still wrong."""
        n = len(self.names)
        wants = {
            "agents scraped": 'up{job="mamori"} == 1',
            "agents reaching the primary": (
                f'mamori_pg_failover_recommended{{job="mamori", cluster="{self.cluster}", '
                'reason="primary_reachable"}'
            ),
            "standby streaming (as each agent sees it)": (
                'mamori_pg_wal_receiver_status{job="mamori", node="standby", status="streaming"} == 1'
            ),
            "standby connected to the primary (as each agent sees it)": (
                'mamori_pg_expected_standby_connected{job="mamori"} == 1'
            ),
            "fleet verdicts without a down vote": 'mamori_fleet_primary_down_votes{job="mamori"} == 0',
        }
        last = ""

        async def healthy() -> bool:
            nonlocal last
            for what, promql in wants.items():
                got = len(await self.query(promql))
                if got != n:
                    last = f"{what}: {got} of {n}"
                    return False
            noisy = [
                f"{a['labels']['alertname']} {a['state']}"
                for a in await self.alerts()
                if a["labels"]["alertname"].startswith("Postgres")
            ]
            if noisy:
                last = f"alerts still active: {', '.join(sorted(set(noisy)))}"
                return False
            if incidents and self.open_incidents():
                last = f"PagerDuty incidents still open: {self.open_incidents()}"
                return False
            return True

        try:
            return await wait_until("a healthy, quiet baseline", healthy, timeout, interval=0.25)
        except TimeoutError:
            raise TimeoutError(f"no healthy, quiet baseline after {timeout:g} s: {last}") from None

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Observed]:
        """Record, every POLL s until exit, Prometheus's alert states and every PagerDuty event
        (Alertmanager's and the agents'), each the first time it is seen."""
        seen = Observed(time.monotonic())
        done = asyncio.Event()
        pd_from = len(self.pd.events)
        names: dict[str, str] = {}  # Alertmanager's dedup key -> the alert it triggered

        def look_at_pagerduty() -> None:
            nonlocal pd_from
            events = self.pd.events[pd_from:]
            pd_from += len(events)
            for e in events:
                key = str(e.get("dedup_key", ""))
                action = str(e["event_action"])
                if key.startswith("mamori:"):  # mamori:<agent>:<rule>:<check>
                    _, agent, rule, _check = key.split(":", 3)
                    seen.add("agent", rule, action, agent)
                elif action == "trigger":
                    names[key] = _am_name(e)
                    seen.add("alertmanager", names[key], action)
                elif action == "resolve":
                    seen.add("alertmanager", names.get(key) or self._am_names.get(key, "?"), action)
                if key and action == "trigger" and not key.startswith("mamori:"):
                    self._am_names[key] = names[key]

        async def loop() -> None:
            while not done.is_set():
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, KeyError):
                    for a in await self.alerts():
                        labels = a["labels"]
                        who = labels.get("node") or labels.get("standby") or ""
                        if not who and labels.get("alertname", "").startswith("Mamori"):
                            who = labels.get("instance", "")
                        seen.add("prometheus", labels["alertname"], a["state"], who)
                look_at_pagerduty()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), POLL)

        task = asyncio.create_task(loop(), name="failover-watch")
        try:
            yield seen
        finally:
            done.set()
            await task
            look_at_pagerduty()


async def until_paged(
    fl: FailoverLab, limit: float, pages: tuple[str, ...], agent_pages: tuple[str, ...]
) -> Observed:
    """Watch until every key of `pages` (e.g. `alertmanager:PostgresFailoverRecommended`) was
    seen firing or paged and every agent paged each of `agent_pages` (e.g.
    `agent:pg_primary_down_confirmed`), or `limit` s; then one poll more. What a time-to-page
    measurement starts right after injecting the fault (`Seen.at` is from the call)."""
    async with fl.watch() as seen:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            fired = seen.fired()
            if all(p in fired for p in pages) and all(
                agent in seen.who(key) for agent in fl.names for key in agent_pages
            ):
                break
            await asyncio.sleep(POLL)
        await asyncio.sleep(POLL)
    return seen


@contextlib.asynccontextmanager
async def failover_lab(
    pd: FakePagerDuty,
    slack: FakeSlack,
    *,
    agents: int = 3,
    chain_scale: float = CHAIN_SCALE,
    extra_jobs: list[dict[str, Any]] | None = None,
    extra_rules: dict[str, str] | None = None,
) -> AsyncIterator[FailoverLab]:
    """The started `FailoverLab` (~10 s), everything stopped by PID and the directories removed at
    exit, even on error."""
    directory = Path(tempfile.mkdtemp(prefix="mamori-failover-"))
    pg_dir = Path(tempfile.mkdtemp(prefix="mamori-failover-pg-"))  # the postgres user can enter it
    lab = FailoverLab(directory, PgLab(pg_dir), pd, slack, agents, chain_scale, extra_jobs, extra_rules)
    try:
        await lab._start()
        yield lab
    finally:
        try:
            await lab.aclose()
        finally:
            shutil.rmtree(pg_dir, ignore_errors=True)
            shutil.rmtree(directory, ignore_errors=True)
