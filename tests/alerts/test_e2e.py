"""End to end: a real PostgreSQL pair → two in-process agents → a real Prometheus loading
alerts/rules/*.yml → a real Alertmanager with a test copy of deploy/alertmanager/alertmanager.yml
→ the strict PagerDuty and Slack fakes; and, in parallel, each agent's own `alerts:` → the same
PagerDuty fake. Stopping the primary must page PostgresFailoverRecommended once (trigger) on both
paths; starting it again must resolve the same incidents.

Two agents in two zones (agent.labels.zone ad1 and ad2), because PostgresFailoverRecommended
needs down witnesses in two zones (cluster:mamori_pg_primary_down_zones:count >= 2): each agent's
`agent:<name>` witness is one. Everything listens on 127.0.0.1; every process is ours and
stopped by its PID.

`E2EStack` is also used by bench/detect.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent import config
from agent.runtime import Agent
from lab.alertmanager import alertmanager_config as stack_alertmanager_config
from lab.ports import free_port
from lab.postgres import PgLab
from lab.wait import wait_until
from tests.fakes.pagerduty import FakePagerDuty, fake_pagerduty
from tests.fakes.slack import FakeSlack, fake_slack

REPO = Path(__file__).resolve().parents[2]
FAILOVER_SUMMARY = "primary down, fail over now"  # PostgresFailoverRecommended's summary
CLUSTER = "db"

# Intervals of the whole chain (bench/detect.py reports them).
AGENT_INTERVAL = 1.0  # the postgres check's interval on each agent
FAILURE_THRESHOLD = 2  # the agents' own rule
SCRAPE_INTERVAL = 1.0
EVAL_INTERVAL = 1.0
# The real rules say `for: 1m` (and longer for the warnings). The test copy rewrites every
# `for:` to this, with a regex, only so that the test fits its ~90 s budget; expressions,
# labels and annotations are the real ones.
RULE_FOR = "5s"
GROUP_WAIT, GROUP_INTERVAL, REPEAT_INTERVAL = "1s", "1s", "1h"


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def fetch(url: str) -> str:
    return await asyncio.to_thread(_fetch, url)


def alertmanager_config(am_yml: str, directory: Path, pd: FakePagerDuty, slack: FakeSlack) -> str:
    """The deployed config, pointed at the fakes, with short group timings and secrets in `directory`
    (the rewrite itself is the lab stack's, lab/stack.py)."""
    return stack_alertmanager_config(
        am_yml,
        directory,
        pagerduty_url=pd.url,
        pagerduty_routing_key=pd.routing_key,
        slack_webhook_url=slack.add_webhook("#mamori-alerts"),
        # The dead-man's switch: a loopback path the PagerDuty fake answers 404 (never leaves).
        deadman_url=f"{pd.base_url}/deadmans-switch",
        group_wait=GROUP_WAIT,
        group_interval=GROUP_INTERVAL,
        repeat_interval=REPEAT_INTERVAL,
    )


def agent_yaml(name: str, port: int, lab: PgLab, pd: FakePagerDuty, state: Path, zone: str) -> str:
    return f"""
agent:
  name: {name}
  listen: "127.0.0.1:{port}"
  interval: {AGENT_INTERVAL:g}s
  timeout: 1s
  labels: {{zone: {zone}}}
checks:
  - name: {CLUSTER}
    type: postgres
    interval: {AGENT_INTERVAL:g}s
    user: mamori
    password: {lab.monitoring_password}
    nodes:
      - {{name: primary, host: 127.0.0.1, port: {lab.primary.port}}}
      - {{name: standby, host: 127.0.0.1, port: {lab.standby.port}}}
notifiers:
  - {{name: pd, type: pagerduty, routing_key: {pd.routing_key}, url: "{pd.url}"}}
alerts:
  state_file: {state}
  group_wait: 0s
  rules:
    - name: pg_primary_down
      check: {CLUSTER}
      status: critical
      reason: [primary_down]
      failure_threshold: {FAILURE_THRESHOLD}
      severity: critical
      summary: "{{check}} on {{agent}}: {{reason}} ({{message}})"
  routes: {{critical: [pd]}}
"""


@dataclass
class E2EStack:
    directory: Path
    lab: PgLab
    pd: FakePagerDuty
    slack: FakeSlack
    agent_names: tuple[str, ...]
    prometheus_url: str
    alertmanager_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def failover_events(self, action: str) -> list[dict[str, Any]]:
        """Alertmanager's PagerDuty events for PostgresFailoverRecommended with `action`."""
        out = []
        for event in self.pd.events:
            if event["event_action"] != action or str(event.get("dedup_key", "")).startswith("mamori:"):
                continue
            if action == "trigger" and FAILOVER_SUMMARY not in event["payload"]["summary"]:
                continue
            out.append(event)
        if action == "resolve":
            keys = {e["dedup_key"] for e in self.failover_events("trigger")}
            out = [e for e in out if e["dedup_key"] in keys]
        return out

    def agent_events(self, agent: str, action: str) -> list[dict[str, Any]]:
        """The agent's own PagerDuty events (its dedup keys are mamori:<agent>:<rule>:<check>)."""
        key = f"mamori:{agent}:pg_primary_down:{CLUSTER}"
        return [e for e in self.pd.events if e.get("dedup_key") == key and e["event_action"] == action]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": promql})
        body = json.loads(await fetch(f"{self.prometheus_url}/api/v1/query?{q}"))
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_healthy(self, timeout: float = 30.0, *, first: bool = True) -> float:
        """Both agents scraped, each reaching the primary; on the `first` baseline, no failover
        page anywhere (bench/detect.py repeats the cycle: first=False)."""

        async def healthy() -> bool:
            up = await self.query('up{job="mamori"} == 1')
            reachable = await self.query(
                'mamori_pg_failover_recommended{job="mamori", reason="primary_reachable"}'
            )
            return len(up) == len(self.agent_names) and len(reachable) == len(self.agent_names)

        took = await wait_until("a healthy baseline", healthy, timeout, interval=0.25)
        if not first:
            return took
        assert self.failover_events("trigger") == []
        assert all(self.agent_events(a, "trigger") == [] for a in self.agent_names)
        return took


def _start(cmd: list[str], log: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    with log.open("wb") as out:
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def e2e_stack(agents: int = 2) -> AsyncIterator[E2EStack]:
    """The whole chain, started; everything stopped (by PID / by handle) on exit."""
    directory = Path(tempfile.mkdtemp(prefix="mamori-e2e-"))
    lab_dir = Path(tempfile.mkdtemp(prefix="mamori-e2e-pg-"))  # /tmp, as tests/pg.py does
    lab = PgLab(lab_dir)
    procs: list[subprocess.Popen[bytes]] = []
    runs: list[tuple[Agent, asyncio.Task[int]]] = []
    try:
        async with fake_pagerduty() as pd, fake_slack() as slack:
            await lab.start()

            # Alertmanager: the deployed config, rewritten.
            am_port = free_port()
            am_cfg = directory / "alertmanager.yml"
            am_cfg.write_text(
                alertmanager_config(
                    (REPO / "deploy/alertmanager/alertmanager.yml").read_text(), directory, pd, slack
                )
            )
            _start(
                [
                    "prometheus-alertmanager",
                    f"--config.file={am_cfg}",
                    f"--storage.path={directory / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                directory / "alertmanager.log",
                procs,
            )

            # The agents.
            names = tuple(f"agent{i + 1}" for i in range(agents))
            ports = [free_port() for _ in names]
            for i, (name, port) in enumerate(zip(names, ports, strict=True)):
                text = agent_yaml(name, port, lab, pd, directory / f"{name}.db", zone=f"ad{i + 1}")
                cfg = config.parse(text, f"{name}.yml", env={})
                agent = Agent(cfg, None)
                runs.append((agent, asyncio.create_task(agent.run())))

            # Prometheus: the real rules, `for:` shortened (see RULE_FOR).
            rules_dir = directory / "rules"
            rules_dir.mkdir()
            for rules in sorted((REPO / "alerts/rules").glob("*.yml")):
                text = re.sub(r"(?m)^(\s+for:\s*)\S+", rf"\g<1>{RULE_FOR}", rules.read_text())
                (rules_dir / rules.name).write_text(text)
            prom_port = free_port()
            prom_cfg = directory / "prometheus.yml"
            prom_cfg.write_text(
                yaml.safe_dump(
                    {
                        "global": {
                            "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
                            "scrape_timeout": f"{SCRAPE_INTERVAL:g}s",
                            "evaluation_interval": f"{EVAL_INTERVAL:g}s",
                        },
                        "rule_files": [str(rules_dir / "*.yml")],
                        "alerting": {
                            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                        },
                        "scrape_configs": [
                            {
                                "job_name": "mamori",
                                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}],
                            }
                        ],
                    }
                )
            )
            _start(
                [
                    "prometheus",
                    f"--config.file={prom_cfg}",
                    f"--storage.tsdb.path={directory / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                directory / "prometheus.log",
                procs,
            )
            stack = E2EStack(
                directory,
                lab,
                pd,
                slack,
                names,
                f"http://127.0.0.1:{prom_port}",
                f"http://127.0.0.1:{am_port}",
                procs,
            )

            async def ready(url: str) -> bool:
                for proc in procs:
                    if proc.poll() is not None:
                        raise AssertionError(f"pid {proc.pid} exited: see {directory}/*.log")
                await fetch(url)  # raises OSError (retried) until it answers 200
                return True

            await wait_until("Alertmanager ready", lambda: ready(f"{stack.alertmanager_url}/-/ready"), 20)
            await wait_until("Prometheus ready", lambda: ready(f"{stack.prometheus_url}/-/ready"), 20)
            yield stack
    finally:
        for agent, _ in runs:
            agent.stop()
        for _, task in runs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        for proc in reversed(procs):
            await asyncio.to_thread(_stop, proc)
        try:
            await lab.stop()
        finally:
            shutil.rmtree(lab_dir, ignore_errors=True)
            shutil.rmtree(directory, ignore_errors=True)


async def test_primary_down_pages_failover_and_resolves_on_both_paths() -> None:
    # Bounds: Prometheus path = scrape 1 s + agents' view (~1 s) + `for` 5 s + eval 1 s +
    # group_wait 1 s ≈ 9 s, allowed 25 s; agent path = interval 1 s × threshold 2 (+ delivery),
    # allowed 10 s. Resolves: allowed 25 s after start_primary().
    trigger_bound, agent_bound, resolve_bound = 25.0, 10.0, 25.0
    async with e2e_stack() as stack:
        await stack.wait_healthy()
        await asyncio.sleep(2)  # a few evaluations of the healthy state: still no page
        assert stack.failover_events("trigger") == []

        await stack.lab.stop_primary()
        await wait_until(
            "each agent's own trigger",
            lambda: all(stack.agent_events(a, "trigger") for a in stack.agent_names),
            agent_bound,
        )
        await wait_until(
            "Alertmanager's failover trigger", lambda: stack.failover_events("trigger"), trigger_bound
        )
        trigger = stack.failover_events("trigger")[0]
        assert trigger["payload"]["severity"] == "critical"
        assert trigger["payload"]["summary"] == f"Postgres cluster {CLUSTER}: {FAILOVER_SUMMARY}"
        details = json.dumps(trigger["payload"].get("custom_details", {}))
        assert "PostgresFailoverRecommended" in details or FAILOVER_SUMMARY in details
        dedup = trigger["dedup_key"]
        for agent in stack.agent_names:
            (event,) = stack.agent_events(agent, "trigger")
            assert event["payload"]["severity"] == "critical"
            assert "primary_down" in event["payload"]["summary"]

        await stack.lab.start_primary()
        await wait_until(
            "Alertmanager's failover resolve",
            lambda: (dedup, "resolved") in stack.pd.state_changes,
            resolve_bound,
        )
        await wait_until(
            "each agent's own resolve",
            lambda: all(stack.agent_events(a, "resolve") for a in stack.agent_names),
            resolve_bound,
        )
        await asyncio.sleep(2)  # nothing more arrives: exactly once each
        assert [e["dedup_key"] for e in stack.failover_events("resolve")] == [dedup]
        assert stack.pd.state_changes.count((dedup, "triggered")) == 1
        for agent in stack.agent_names:
            assert len(stack.agent_events(agent, "trigger")) == 1, stack.pd.events
            assert len(stack.agent_events(agent, "resolve")) == 1, stack.pd.events
        assert stack.pd.rejected == []
