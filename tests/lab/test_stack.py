"""The lab stack (lab/stack.py) and the shipped deploy/prometheus/prometheus.yml it runs.

One real stack: the web lab, the Postgres pair, Mosquitto, the in-process agent, Prometheus and
Alertmanager from the shipped files. It must start, be healthy, be scraped with the file_sd
labels, carry alerts from Prometheus through Alertmanager to the loopback receivers, react to
faults, and leave no process behind — also when its start fails half-way.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from agent import cli
from agent.model import Status
from lab import REPO
from lab.prometheus import PROMETHEUS_YML, RULES_DIR, prometheus_config
from lab.stack import Stack, StackError, lab_stack

TARGETS_EXAMPLE = REPO / "deploy" / "prometheus" / "targets" / "mamori.example.yml"
BASELINE_CHECKS = {"lb", "http", "tcp", "host", "postgres", "pg_backup", "fleet:db"}
LAB_BINARIES = {"postgres", "haproxy", "mosquitto", "prometheus", "prometheus-alertmanager", "setpriv"}


def test_shipped_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    # The documented layout: prometheus.yml, rules/mamori/*.yml, targets/mamori*.yml side by side.
    shutil.copy(PROMETHEUS_YML, tmp_path / "prometheus.yml")
    (tmp_path / "rules" / "mamori").mkdir(parents=True)
    for rules in RULES_DIR.glob("*.yml"):
        shutil.copy(rules, tmp_path / "rules" / "mamori" / rules.name)
    (tmp_path / "targets").mkdir()
    shutil.copy(TARGETS_EXAMPLE, tmp_path / "targets" / "mamori.yml")
    out = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    n_rule_files = len(list(RULES_DIR.glob("*.yml")))
    assert f"SUCCESS: {n_rule_files} rule files found" in out.stdout, out.stdout

    doc = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "mamori"]
    assert job["file_sd_configs"][0]["files"] == ["targets/mamori*.yml"]
    assert doc["rule_files"] == ["rules/mamori/*.yml"]


def test_targets_example_is_file_sd_with_site_and_host() -> None:
    groups = yaml.safe_load(TARGETS_EXAMPLE.read_text())
    assert isinstance(groups, list) and groups
    for group in groups:
        assert set(group) == {"targets", "labels"}
        assert {"site", "host"} <= set(group["labels"])
        for target in group["targets"]:
            host, _, port = target.rpartition(":")
            assert host and port.isdigit(), target


def test_prometheus_rewrite_without_alertmanager(tmp_path: Path) -> None:
    doc = yaml.safe_load(
        prometheus_config(
            PROMETHEUS_YML.read_text(),
            targets_file=tmp_path / "t.yml",
            rule_files=["/r/*.yml"],
            prometheus_address="127.0.0.1:1",
            alertmanager_address=None,
            interval=2.0,
        )
    )
    assert "alerting" not in doc
    assert [j["job_name"] for j in doc["scrape_configs"]] == ["mamori", "prometheus"]
    assert doc["global"]["scrape_interval"] == doc["global"]["evaluation_interval"] == "2s"
    assert doc["scrape_configs"][0]["scrape_interval"] == doc["scrape_configs"][0]["scrape_timeout"] == "2s"
    assert doc["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path / "t.yml")]
    with pytest.raises(StackError, match="no scrape job 'mamori'"):
        prometheus_config(
            "scrape_configs: [{job_name: other, static_configs: [{targets: ['x:1']}]}]",
            targets_file=tmp_path / "t.yml",
            rule_files=[],
            prometheus_address="127.0.0.1:1",
            alertmanager_address=None,
            interval=1.0,
        )


async def _wait_status(stack: Stack, check: str, status: Status, reason: str, timeout: float = 8.0) -> None:
    """Until `check`'s latest result has `status` and `reason`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = stack.results().get(check)
        if result is not None and result.status == status and result.reason.value == reason:
            return
        if loop.time() > deadline:
            seen = (
                "nothing"
                if result is None
                else f"{result.status.label} {result.reason.value}: {result.message}"
            )
            raise AssertionError(f"{check}: wanted {status.label} {reason}, last saw {seen}")
        await asyncio.sleep(0.1)


def _alive(pids: dict[str, int]) -> dict[str, int]:
    return {
        name: pid
        for name, pid in pids.items()
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    }


async def test_stack_runs_shipped_configs_and_faults_work(tmp_path: Path) -> None:
    # tmp_path is private to root: the stack must put the Postgres pair where `postgres` can go.
    async with lab_stack(tmp_path / "stack") as stack:
        assert stack.skipped == {}, stack.skipped
        pids = stack.pids()
        assert set(pids) == {
            "haproxy",
            "postgres-primary",
            "postgres-standby",
            "mosquitto",
            "prometheus",
            "alertmanager",
        }
        assert cli.main(["validate", str(stack.agent_config)]) == 0

        # Baseline: every check OK.
        assert set(stack.expected_checks()) == BASELINE_CHECKS
        await stack.wait_healthy(timeout=15)
        assert set(stack.results()) == BASELINE_CHECKS

        # Prometheus scrapes the agent through file_sd, with its labels.
        await stack.wait_scraped(timeout=20)
        (up,) = await stack.query('up{job="mamori"}')
        assert up["metric"]["site"] == "lab" and up["metric"]["host"] == "lab-agent", up
        assert up["value"][1] == "1"
        assert await stack.query('mamori_pg_up{job="mamori", host="lab-agent", node="standby"} == 1')

        # Prometheus loaded the shipped rules and reaches Alertmanager, whose receivers are ours:
        # the always-firing Watchdog goes to the dead-man's switch (group_wait 0s).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not any(n.receiver == "deadmans-switch" for n in stack.notifications):
            assert loop.time() < deadline, f"no Watchdog notification: {stack.notifications}"
            await asyncio.sleep(0.2)

        with pytest.raises(ValueError, match="unknown fault 'nope'; known: primary-down"):
            await stack.fault("nope")

        assert (await stack.fault("primary-down")).startswith("primary-down: primary stopped")
        await _wait_status(stack, "postgres", Status.CRITICAL, "primary_down")
        await _wait_status(stack, "tcp", Status.CRITICAL, "refused")

        await stack.fault("app-down")
        await _wait_status(stack, "lb", Status.WARNING, "backend_down")

        await stack.fault("backend-route-break")
        await _wait_status(stack, "http", Status.CRITICAL, "status_mismatch")

        await stack.fault("reset")
        await stack.wait_healthy(timeout=15)
        pids = stack.pids()
        pg_directory = stack.pg_directory
        assert pg_directory is not None and not pg_directory.is_relative_to(tmp_path)

    assert _alive(pids) == {}
    assert not pg_directory.exists()
    assert (tmp_path / "stack" / "agent" / "agent.yml").is_file()  # a given directory is kept


def _lab_descendants() -> set[int]:
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() in LAB_BINARIES and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


async def test_failed_start_stops_everything_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _lab_descendants()
    entered: list[Stack] = []
    # The agent is the last part to start: with a config it refuses, everything else is running.
    monkeypatch.setattr(Stack, "_agent_yaml", lambda self, port: "agent: {bogus: 1}\n")
    with pytest.raises(StackError, match=r"the lab's agent config .* is invalid"):
        async with lab_stack(tmp_path / "s", postgres=False) as stack:
            entered.append(stack)
    assert entered == []
    assert _lab_descendants() - before == set()
    for log in ("prometheus/prometheus.log", "alertmanager/alertmanager.log", "web/haproxy/haproxy.cfg"):
        assert (tmp_path / "s" / log).is_file(), log  # they had started


async def test_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            async with lab_stack(tmp_path / "s", listen_port=port):
                pass


async def test_without_postgres_binaries_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lab.stack.PG_BIN", tmp_path / "no-postgresql")
    async with lab_stack(tmp_path / "s", prometheus=False, mqtt=False) as stack:
        assert stack.skipped == {
            "postgres": "PostgreSQL 15 not installed (apt install postgresql)",
            "prometheus": "disabled",
            "alertmanager": "needs Prometheus",
            "mosquitto": "disabled",
        }
        assert not stack.has_postgres and stack.prometheus_url is None
        assert set(stack.expected_checks()) == {"lb", "http", "tcp", "host"}
        await stack.wait_healthy(timeout=10)
        with pytest.raises(StackError, match="without Postgres: PostgreSQL 15 not installed"):
            await stack.fault("primary-down")
        assert (await stack.fault("lb-down")).startswith("lb-down: HAProxy stopped")
        await _wait_status(stack, "tcp", Status.CRITICAL, "refused")  # the tcp check is on HAProxy's port
        await stack.fault("reset")
        await stack.wait_healthy(timeout=10)


async def test_refuses_a_directory_holding_anything_else(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()  # the stack would replace it
    with pytest.raises(StackError, match="is not empty and not a lab directory"):
        async with lab_stack(tmp_path):
            pass
    assert (tmp_path / "web").is_dir()
