"""A rolling deploy of real app containers behind the real HAProxy, watched by an agent with the
shipped config's app checks, rules and notifiers (deploy/examples/production.yml), and gated by
the real `agentctl check --tag app --wait-healthy` (issue 14, item 3).

The agent runs in this process (as lab/failover.py runs its agents) and discovers the
containers through the lab engine's socket; its PagerDuty and Slack are the strict fakes. Its
config is production.yml's, with what this machine has no use for taken out (the host, Postgres
and backup checks and their rules, the OCI exporter) and every interval, `for:` and the group
wait divided by TIME_SCALE, only so that the tests fit their budget: the rules' conditions,
thresholds and routes are the shipped ones.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from agent import config
from agent.fields import parse_duration
from agent.model import Status
from agent.runtime import Agent
from lab import REPO
from lab.docker import DockerEngine
from lab.docker_apps import app_image
from lab.ports import free_port
from lab.rollout import AppFleet, RolloutError, Traffic
from lab.wait import wait_until
from tests.fakes.pagerduty import FakePagerDuty, fake_pagerduty
from tests.fakes.slack import FakeSlack, fake_slack

PRODUCTION = REPO / "deploy/examples/production.yml"
APP_CHECKS = ("web", "web-containers")  # production.yml's checks of the app containers
TIME_SCALE = 15.0  # production's web check runs every 15 s; here every 1 s
GATE_TIMEOUT = 6.0  # the bad rollouts' gate: production's 120 s would only make them slower


def _scaled(value: Any) -> str:
    return f"{float(parse_duration(value)) / TIME_SCALE:g}s"


def watcher_config(fleet: AppFleet, engine: DockerEngine, pagerduty_url: str) -> dict[str, Any]:
    """production.yml for the fleet: its app checks pointed at the lab, every rule on them."""
    doc: dict[str, Any] = yaml.safe_load(PRODUCTION.read_text(encoding="utf-8"))
    checks = {c["name"]: c for c in doc["checks"] if c["name"] in APP_CHECKS}
    assert sorted(checks) == sorted(APP_CHECKS), "production.yml's app checks were renamed"
    web, containers = checks["web"], checks["web-containers"]
    web["url"] = fleet.url
    web["tls"] = {**web.get("tls", {}), "ca_file": str(fleet.ca_file)}
    web["docker"] = {**web["docker"], "socket": str(engine.socket)}
    containers["socket"] = str(engine.socket)
    for check in checks.values():
        # Scaled, but never below the 1 s timeout a probe through HAProxy needs under load.
        interval = float(parse_duration(check.get("interval", doc["agent"]["interval"]))) / TIME_SCALE
        check["interval"] = f"{max(1.0, interval):g}s"
        check["timeout"] = "1s"
    alerts = doc["alerts"]
    alerts["rules"] = [rule for rule in alerts["rules"] if rule["check"] in APP_CHECKS]
    for rule in alerts["rules"]:
        if "for" in rule:
            rule["for"] = _scaled(rule["for"])
    alerts["group_wait"] = _scaled(alerts["group_wait"])
    for notifier in doc["notifiers"]:
        if notifier["type"] == "pagerduty":
            notifier["url"] = pagerduty_url
    doc["agent"] |= {"name": "rollout-agent", "interval": "1s", "timeout": "1s"}
    doc["checks"] = list(checks.values())
    del doc["outbox"], doc["exporters"]
    return doc


@dataclass
class Watched:
    """The fleet, the agent watching it (its config file and environment) and its receivers."""

    fleet: AppFleet
    agent: Agent
    config_file: Path
    env: dict[str, str]
    pd: FakePagerDuty
    slack: FakeSlack

    def result(self, check: str) -> Any:
        return self.agent.latest.get(check)

    async def gate(self, timeout: str) -> tuple[int, str, str, float]:
        """`agentctl check --tag app --wait-healthy` on the agent's config, as CI runs it after a
        deploy: exit code, stdout, stderr, seconds."""
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "check", "-c", str(self.config_file), "--tag", "app",
            "--wait-healthy", "--timeout", timeout, "--poll", "500ms",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), parse_duration(timeout) + 30)
        return proc.returncode or 0, out.decode(), err.decode(), time.monotonic() - began


# One fleet and one agent for the module: creating a container from the python image costs
# seconds on vfs (one copy of its root filesystem each), so the tests share them, in this order:
# the healthy rollout (v1 → v2), then each bad one, which stops at app-1 and is rolled back.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def watched(
    docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Watched]:
    """Two v1 app containers behind HAProxy, healthy, and an agent whose every app check is OK."""
    engine, directory = docker_engine, tmp_path_factory.mktemp("rollout")
    fleet = AppFleet(engine, directory / "fleet", apps=2)
    async with fake_pagerduty() as pd, fake_slack() as slack, fleet:
        await fleet.start(await app_image(engine, "1"))
        secrets = directory / "secrets"
        secrets.mkdir()
        (secrets / "pagerduty_routing_key").write_text(pd.routing_key + "\n")
        (secrets / "slack_webhook_url").write_text(slack.add_webhook("#ops") + "\n")
        env = {
            **os.environ,
            "CREDENTIALS_DIRECTORY": str(secrets),
            "STATE_DIRECTORY": str(directory),
            "MAMORI_LISTEN": f"127.0.0.1:{free_port()}",
        }
        config_file = directory / "agent.yml"
        config_file.write_text(yaml.safe_dump(watcher_config(fleet, engine, pd.url), sort_keys=False))
        agent = Agent(config.load(config_file, env), config_file)
        run = asyncio.create_task(agent.run())
        watched = Watched(fleet, agent, config_file, env, pd, slack)
        try:

            def all_ok() -> bool:
                results = [watched.result(name) for name in APP_CHECKS]
                return all(r is not None and r.status is Status.OK for r in results)

            try:
                await wait_until("the agent to see every app check OK", all_ok, 15, interval=0.1)
            except TimeoutError:
                seen = [watched.result(name) for name in APP_CHECKS]
                raise AssertionError(f"app checks not OK: {[r and r.to_json() for r in seen]}") from None
            yield watched
        finally:
            agent.stop()
            await asyncio.wait_for(run, 15)


async def test_a_healthy_rollout_pages_nobody_drops_no_request_and_opens_the_gate(
    watched: Watched, docker_engine: DockerEngine
) -> None:
    v2 = await app_image(docker_engine, "2")
    pages, messages = len(watched.pd.events), len(watched.slack.messages)
    async with Traffic(watched.fleet.url, watched.fleet.ca_file) as traffic:
        steps = await watched.fleet.rolling_deploy(v2)
        code, out, err, took = await watched.gate("120s")
    assert [s.name for s in steps] == ["app-1", "app-2"]
    assert traffic.failures == []  # zero downtime
    assert traffic.versions["1"] and traffic.versions["2"], traffic
    assert code == 0, err + out
    assert took < 10, err
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert rows == {"web": "OK", "web-containers": "OK"}
    # The agent has seen the new containers, and no alert of the shipped rules opened on the way.
    await wait_until(
        "the agent to see the v2 containers",
        lambda: "2 running (2 healthy)" in watched.result("web-containers").message,
        10,
        interval=0.1,
    )
    assert watched.pd.events[pages:] == []
    assert watched.slack.messages[messages:] == []


@pytest.mark.parametrize(
    ("mode", "seen"), [("error:500", "unhealthy"), ("hang", "starting")], ids=["answers-500", "never-healthy"]
)
async def test_a_bad_rollout_stops_and_the_gate_names_the_bad_container(
    watched: Watched, docker_engine: DockerEngine, mode: str, seen: str
) -> None:
    bad = await app_image(docker_engine, f"3-{mode.replace(':', '-')}", mode=mode)
    before = watched.fleet.containers["app-2"].image
    pages, messages = len(watched.pd.events), len(watched.slack.messages)
    async with Traffic(watched.fleet.url, watched.fleet.ca_file) as traffic:
        with pytest.raises(RolloutError, match=rf"^app-1 \(mamori-lab/app:3-.*\) is not healthy .*{seen}"):
            await watched.fleet.rolling_deploy(bad, health_timeout=6)
        code, out, err, took = await watched.gate(f"{GATE_TIMEOUT:g}s")
    assert traffic.failures == []  # the bad container never went back into rotation
    assert watched.fleet.containers["app-2"].image == before  # not replaced
    assert code == 2, err + out
    # The gate gives up once its next poll (500 ms) would end past the timeout (agent/gate.py).
    assert GATE_TIMEOUT - 0.5 <= took < GATE_TIMEOUT + 5, err
    assert re.search(rf"gave up after {GATE_TIMEOUT:g}s: .*web CRITICAL \(backend_down\)", err), err
    (web,) = [line for line in out.splitlines() if line.startswith("web ")]
    assert "app-1: " in web and "app-2: " not in web, out
    # One bad container is `backend_down`: a warning to Slack (web_degraded), not a page.
    await wait_until(
        "web_degraded on Slack",
        lambda: any("web_degraded" in str(m.body) for m in watched.slack.messages[messages:]),
        20,
    )
    assert watched.pd.events[pages:] == []
    # The operator rolls app-1 back: the warning resolves, so the next bad release warns anew.
    await watched.fleet.replace("app-1", before)
    await wait_until(
        "web_degraded resolved on Slack",
        lambda: any(
            "web_degraded" in str(m.body) and "[RESOLVED]" in str(m.body)
            for m in watched.slack.messages[messages:]
        ),
        20,
    )
    assert watched.pd.events[pages:] == []


async def test_a_container_that_dies_at_start_is_named_with_its_exit_code_and_last_words(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    """A CI run once said only `app-1 … is not healthy after 0.9 s: exited`: the reason (here its
    port, taken by somebody else) must be in the one line."""
    fleet = AppFleet(docker_engine, tmp_path / "fleet", apps=1, prefix="doomed")  # beside the module's
    image = await app_image(docker_engine, "1")
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", fleet.ports["doomed-1"]))
        taken.listen()
        with pytest.raises(RolloutError) as raised:
            await fleet.start(image, health_timeout=30)
    said = r"^doomed-1 \(mamori-lab/app:1\) is not healthy after .*: exited 1 \(.*address already in use"
    assert re.search(said, str(raised.value), re.I), raised.value
    assert "\n" not in str(raised.value)
    assert fleet.containers == {}  # start() cleaned up after itself
