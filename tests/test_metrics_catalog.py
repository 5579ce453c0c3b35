"""What the agent emits on /metrics equals agent/catalog.py (and so docs/metrics.md), both ways.

A real agent runs http (TLS, verified), tcp (TLS), host, lb (the web lab: HAProxy and app servers,
one backend discovered through the Docker engine fake), docker, postgres (a real primary and
standby), pg_backup (a pgBackRest stand-in) and fleet checks, and pushes to a real Mosquitto
through an mqtt exporter publishing the fleet's views (the `fleet:db` check's result carries
`mamori_fleet_*`), so every per-check metric in the catalog must show up with exactly its
documented labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent import config
from agent.catalog import AGENT_METRICS, CHECK_METRICS, CHECK_TYPES, PER_CHECK_LABELS
from agent.runtime import Agent
from checks import REGISTRY
from lab.certs import make_certs, server_context
from lab.mosquitto import Mosquitto
from lab.ports import free_port
from lab.postgres import PgLab
from lab.web import web_lab
from tests.checks.test_pg_backup import backup, fake_pgbackrest, stanza
from tests.fakes.docker_engine import fake_docker
from tests.pg import query
from tests.servers import banner, serve_http, serve_tcp


@contextlib.asynccontextmanager
async def pg_lab() -> AsyncIterator[PgLab]:
    """A Postgres pair of its own (the shared session cluster lives on another event loop)."""
    directory = Path(tempfile.mkdtemp(prefix="mamori-catalog-pg-"))
    lab = PgLab(directory)
    try:
        await lab.start()
        yield lab
    finally:
        await lab.stop()
        shutil.rmtree(directory, ignore_errors=True)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_the_closed_check_types_are_the_registry() -> None:
    """The catalog's `mamori_check_status{type}` values (what `agentctl oci-alarms` accepts) are
    exactly the registered check types (the fleet's among them)."""
    assert tuple(REGISTRY) == CHECK_TYPES


async def test_emitted_metrics_match_the_catalog(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    port = free_port()
    async with (
        serve_http(None, server_context(certs.valid)) as web,
        serve_tcp(banner(b"220 ready\r\n"), server_context(certs.valid)) as tcp,
        web_lab(tmp_path / "lab", apps=2) as lab,
        fake_docker(tmp_path) as engine,
        pg_lab() as pg,
        Mosquitto(tmp_path / "mqtt") as broker,  # the mqtt exporter's fleet emits mamori_fleet_*
    ):
        # A segment archived, so the archiver's ages are known; a fake pgBackRest that has backups.
        await query(pg.primary.superuser_dsn(), "SELECT pg_switch_wal()")
        now = time.time()
        pgbackrest = fake_pgbackrest(
            tmp_path,
            stanza(
                [
                    backup("F1", now - 8 * 86400, now - 8 * 86400 + 60, "000000010000000000000001"),
                    backup("F1_D1", now - 3600, now - 3500, "000000010000000000000009", "diff"),
                ],
                archive_min="000000010000000000000001",
            ),
        )
        engine.add("app-1", {"mamori.probe.port": str(lab.apps[0].port)}, network="host", health="healthy")
        cfg = config.parse(
            f"""
agent: {{listen: "127.0.0.1:{port}", labels: {{site: lab}}, interval: 1s, timeout: 1s}}
checks:
  - name: web
    type: http
    url: {web.url("/health")}
    tls: {{ca_file: {certs.ca_file}}}
    body_matches: ["ok"]
  - name: banner
    type: tcp
    host: 127.0.0.1
    port: {tcp.port}
    expect: "^220"
    tls: {{ca_file: {certs.ca_file}}}
  - name: host
    type: host
  - name: web-lb
    type: lb
    url: {lab.url}
    tls: {{ca_file: {lab.ca_file}}}
    backends: [{{name: app-2, address: "127.0.0.1:{lab.apps[1].port}"}}]
    docker: {{socket: {engine.socket}}}
    db_witness: {{cluster: db}}
  - name: containers
    type: docker
    socket: {engine.socket}
  - name: db
    type: postgres
    password: {pg.monitoring_password}
    expected_standbys: [standby1]
    nodes:
      - {{name: primary, host: 127.0.0.1, port: {pg.primary.port}}}
      - {{name: standby, host: 127.0.0.1, port: {pg.standby.port}, application_name: standby1}}
  - name: backups
    type: pg_backup
    pgbackrest: {{stanza: demo, command: "{pgbackrest}"}}
  - {{type: fleet, cluster: db, host: 127.0.0.1, port: {broker.port}}}
outbox: {{path: {tmp_path / "outbox.db"}}}
exporters:
  - {{name: bus, type: mqtt, host: 127.0.0.1, port: {broker.port}, fleet: {{enabled: true}}}}
notifiers:
  - {{name: hook, type: webhook, url: "{lab.apps[0].url}/hook"}}
alerts:
  state_file: {tmp_path / "alerts.db"}
  rules: [{{name: down, check: "*", status: critical, severity: critical}}]
  routes: {{critical: [hook]}}
""",
            "catalog.yml",
            env={},
        )
        agent = Agent(cfg, None)
        task = asyncio.create_task(agent.run())
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                try:
                    body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/api/v1/results")
                except OSError:
                    continue
                results = json.loads(body)["results"]
                # Two runs of `db`: the WAL rate needs a previous run.
                runs = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
                if len(results) == 8 and 'mamori_check_runs_total{check="db",status="ok"} 2.0' in runs:
                    break
            assert {r["check"]: r["status"] for r in results} == dict.fromkeys(
                ("backups", "banner", "containers", "db", "fleet:db", "host", "web", "web-lb"), "OK"
            ), results
            text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
        finally:
            agent.stop()
            await task

    emitted: dict[str, set[tuple[str, ...]]] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            emitted.setdefault(family.name, set()).add(tuple(sorted(s.labels)))

    def family_name(name: str) -> str:
        return name.removesuffix("_total")

    for name, spec in CHECK_METRICS.items():
        assert family_name(name) in emitted, f"{name} is in the catalog but was not emitted"
        assert types[family_name(name)] == spec.type, name
        assert emitted[family_name(name)] == {tuple(sorted((*PER_CHECK_LABELS, *spec.labels)))}, name
    for name, spec in AGENT_METRICS.items():
        assert family_name(name) in emitted, f"{name} is in the catalog but was not emitted"
        assert types[family_name(name)] == spec.type, name
        wanted = set(spec.labels) | ({"site"} if name == "mamori_agent_info" else set())
        for labels in emitted[family_name(name)]:
            assert set(labels) - {"le"} == wanted, name
    documented = {family_name(n) for n in (*CHECK_METRICS, *AGENT_METRICS)}
    assert set(emitted) - documented == set(), "emitted but not in agent/catalog.py"
