"""The Grafana dashboards (grafana/dashboards/*.json) and their provisioning files.

Static: every dashboard is valid JSON with unique ids and uids, names only the provisioned
datasource, has the site/host (and, with Postgres panels, cluster) variables, filters every panel
by them, reads only metrics the agent emits, and every query parses (promtool).

On real data: the lab stack (lab/stack.py: HAProxy + app servers, a Postgres primary and
standby, Mosquitto, a real agent watching them all, and Prometheus running the shipped
deploy/prometheus/prometheus.yml with alerts/rules/) is started; every template variable is
resolved through Prometheus' label-values API as Grafana would, the lab's values are picked
(site=lab, host=lab-agent, cluster=db, All for the rest), and every target of every panel runs as
an instant query. None may come back empty or without a finite value — except the panels listed
in NEEDS_FAULT, which are empty on a healthy system by design and get their data from the fault
named there, and NO_NOTIFIER (see there).

The app-container panels are fed by a `docker` check added to the running agent through its real
reload path, on the lab's real Docker Engine (lab/docker.py): three busybox containers with a
passing HEALTHCHECK, labelled as the lab's three apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agent.catalog import AGENT_METRICS, CHECK_METRICS, all_metrics
from lab.docker import DockerEngine
from lab.stack import Stack, lab_stack
from lab.wait import wait_until
from tests.checks.test_pg_backup import backup, fake_pgbackrest, stanza
from tests.grafana.grafana import (
    DASHBOARDS,
    DATASOURCE_UID,
    DATASOURCES,
    PROVIDERS,
    REPO,
    Selection,
    interpolate,
    load_dashboards,
    metric_names,
    panels,
    parse_label_values,
    query_panels,
    referenced_variables,
    select,
    variable_query,
    variables,
)

DASHBOARD_FILES = load_dashboards()
EXPECTED = {
    "mamori-fleet-overview.json": "mamori-fleet",
    "mamori-load-balancer.json": "mamori-lb",
    "mamori-postgres.json": "mamori-postgres",
    "mamori-agent-self-health.json": "mamori-agent",
}
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}

# Series Prometheus itself makes for every agent it scrapes or every rule it evaluates.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}

# Panels that do not filter by site/host, and why.
UNFILTERED = {
    ("mamori-fleet", "Alerting pipeline"): "the Watchdog alert belongs to no agent",
}

# Empty on a healthy system by design (nothing fails, nothing is pending): the fault that gives
# them data in the real-data test.
NEEDS_FAULT = {
    ("mamori-fleet", "Failing checks"): "app-down",
    ("mamori-fleet", "Alerts firing or pending"): "app-down",
}

# The agent's own notifier exposes its metrics only when its config has `alerts:` (and that
# section takes effect at start, not on reload). The lab's agent pages through Prometheus and
# Alertmanager only; while it has no `alerts:`, these panels may be empty — the test requires
# them as soon as the stack's agent gets one.
NO_NOTIFIER = {
    ("mamori-agent", "Notifications"),
    ("mamori-agent", "Notifications waiting"),
    ("mamori-agent", "Own network down"),
}

# The lab's values of the variables (every other variable: All, as the dashboards default to).
LAB_VALUES = {"site": ["lab"], "host": ["lab-agent"], "cluster": ["db"]}

# What Grafana substitutes for its own variables: a 3 h dashboard at ~1,000 px has a step of
# ~10 s, and $__rate_interval = max($__interval + scrape interval, 4 x scrape interval); the lab
# scrapes every second.
BUILTINS = {"__rate_interval": "10s", "__interval": "10s", "__range": "3h"}


def _dashboards() -> list[tuple[str, dict[str, Any]]]:
    return sorted(DASHBOARD_FILES.items())


def _targets(panel: dict[str, Any]) -> list[dict[str, Any]]:
    return list(panel.get("targets", []))


def _panel_key(dashboard: dict[str, Any], panel: dict[str, Any]) -> tuple[str, str]:
    return str(dashboard["uid"]), str(panel["title"])


def _known_series() -> set[str]:
    names = set(PROMETHEUS_SERIES)
    for name, spec in all_metrics().items():
        names.add(name)
        if spec.type == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    for path in sorted((REPO / "alerts" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(r["record"] for r in group["rules"] if "record" in r)
    return names


# --- static ---------------------------------------------------------------------------------


def test_the_four_dashboards_ship_with_unique_uids_and_titles() -> None:
    assert {n: d["uid"] for n, d in DASHBOARD_FILES.items()} == EXPECTED
    titles = [d["title"] for d in DASHBOARD_FILES.values()]
    assert len(set(titles)) == len(titles), titles
    for name, d in _dashboards():
        assert d.get("id") is None, f"{name}: a provisioned dashboard has no id"
        assert 36 <= d["schemaVersion"] <= 41, name
        assert "mamori" in d["tags"], name
        assert d["description"], name


def test_every_file_is_formatted_json() -> None:
    for path in sorted(DASHBOARDS.glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", f"{path.name}: not 2-space JSON"


@pytest.mark.parametrize(("name", "dashboard"), _dashboards(), ids=[n for n, _ in _dashboards()])
def test_panel_ids_titles_and_layout(name: str, dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {Counter(ids).most_common(3)}"
    titles = [p["title"] for p in query_panels(dashboard)]
    assert len(titles) == len(set(titles)), f"{name}: duplicate panel titles"
    taken: dict[tuple[int, int], str] = {}
    for p in panels(dashboard):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, (name, p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{name}: {p['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = p["title"]
    for p in query_panels(dashboard):
        assert p["type"] in {"timeseries", "stat", "table", "state-timeline"}, (name, p["title"])
        assert p.get("description"), f"{name}: {p['title']!r} has no description"
        refs = [t["refId"] for t in _targets(p)]
        assert len(refs) == len(set(refs)), (name, p["title"])


def _datasource_refs(node: Any, path: str = "") -> list[tuple[str, Any]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append((path, value))
            found.extend(_datasource_refs(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_datasource_refs(value, f"{path}[{i}]"))
    return found


@pytest.mark.parametrize(("name", "dashboard"), _dashboards(), ids=[n for n, _ in _dashboards()])
def test_only_the_provisioned_datasource_is_named(name: str, dashboard: dict[str, Any]) -> None:
    refs = _datasource_refs(dashboard)
    assert refs, name
    for path, ref in refs:
        assert ref == DATASOURCE, f"{name}{path}: datasource {ref!r}"
    for p in query_panels(dashboard):
        assert p.get("datasource") == DATASOURCE, (name, p["title"])
        assert _targets(p), f"{name}: {p['title']!r} has no target"
        for t in _targets(p):
            assert t.get("expr", "").strip(), f"{name}: {p['title']!r} target {t.get('refId')} has no expr"
            assert t.get("datasource") == DATASOURCE, (name, p["title"])


def test_the_provisioning_files() -> None:
    ds = yaml.safe_load(DATASOURCES.read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert (source["uid"], source["type"], source["access"]) == (DATASOURCE_UID, "prometheus", "proxy")
    assert source["url"] == "${MAMORI_PROMETHEUS_URL}"
    # $__rate_interval is 4 x this: it must be the scrape interval of the shipped Prometheus.
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]
    prov = yaml.safe_load(PROVIDERS.read_text())
    (provider,) = prov["providers"]
    assert (provider["type"], provider["folder"]) == ("file", "Mamori")
    # The path the README tells to mount grafana/dashboards/ at.
    readme = (REPO / "grafana" / "README.md").read_text()
    assert f"grafana/dashboards:{provider['options']['path']}" in readme


@pytest.mark.parametrize(("name", "dashboard"), _dashboards(), ids=[n for n, _ in _dashboards()])
def test_variables(name: str, dashboard: dict[str, Any]) -> None:
    vs = variables(dashboard)
    names = [v["name"] for v in vs]
    assert names[:2] == ["site", "host"], name
    exprs = " ".join(t["expr"] for p in query_panels(dashboard) for t in _targets(p))
    if "mamori_pg_" in exprs:
        assert "cluster" in names, f"{name} has Postgres panels but no cluster variable"
    for i, v in enumerate(vs):
        assert v["type"] == "query" and v["datasource"] == DATASOURCE, (name, v["name"])
        selector, _ = parse_label_values(variable_query(v))
        assert v["definition"] == variable_query(v), (name, v["name"])
        # A variable may only use the ones before it (Grafana resolves them in order).
        assert referenced_variables(selector or "") <= set(names[:i]), (name, v["name"])
        for metric in metric_names(selector or ""):
            assert metric in _known_series(), (name, v["name"], metric)
    used = set()
    for p in query_panels(dashboard):
        for t in _targets(p):
            refs = referenced_variables(t["expr"]) - {"__rate_interval", "__interval", "__range"}
            assert refs <= set(names), (name, p["title"], refs - set(names))
            used |= refs
            if _panel_key(dashboard, p) not in UNFILTERED:
                assert {"site", "host"} <= refs, f"{name}: {p['title']!r} does not filter by site/host"
    assert set(names) <= used, f"{name}: unused variables {set(names) - used}"


def test_postgres_panels_follow_the_cluster_variable() -> None:
    """Per-node samples carry no `cluster` label: they must be selected through `$pgcheck`
    (the checks of the selected clusters), cluster-wide ones through `$cluster`."""
    dashboard = DASHBOARD_FILES["mamori-postgres.json"]
    backup = {"mamori_pg_backup_age_seconds", "mamori_pg_pitr_window_seconds", "mamori_pg_backups"}
    for p in query_panels(dashboard):
        for t in _targets(p):
            names = metric_names(t["expr"])
            if names & backup:  # pg_backup checks are not tied to a cluster
                continue
            refs = referenced_variables(t["expr"])
            for metric in names:
                cluster_wide = "cluster" in all_metrics()[metric].labels
                want = "cluster" if cluster_wide else "pgcheck"
                assert want in refs, f"{p['title']!r}: {metric} is not filtered by ${want}"


@pytest.mark.parametrize(("name", "dashboard"), _dashboards(), ids=[n for n, _ in _dashboards()])
def test_every_metric_is_one_the_agent_emits(name: str, dashboard: dict[str, Any]) -> None:
    known = _known_series()
    for p in query_panels(dashboard):
        for t in _targets(p):
            names = metric_names(t["expr"])
            assert names, f"{name}: {p['title']!r}: no metric found in {t['expr']!r}"
            unknown = names - known
            assert not unknown, f"{name}: {p['title']!r} reads {unknown}, not in agent/catalog.py"


def test_metric_names_are_read_robustly() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, host) (rate(mamori_scheduler_lateness_seconds_bucket{job="m", '
        'x=~"a{b}|(c)"}[$__rate_interval]))) > on (job) group_left (cluster) mamori_pg_rpo_seconds offset 5m '
        '- time() + 1e3 * count_values("code", up) unless sum(ALERTS) without (alertname)'
    )
    assert metric_names(expr) == {
        "mamori_scheduler_lateness_seconds_bucket",
        "mamori_pg_rpo_seconds",
        "up",
        "ALERTS",
    }
    assert metric_names('label_replace(probe_success, "a", "$1", "b", "(.*)")') == {"probe_success"}


def test_interpolation_matches_grafana() -> None:
    multi = {"name": "host", "multi": True, "includeAll": True}
    single = {"name": "site", "multi": False, "includeAll": False}
    sels = {
        "host": Selection(multi, ("a.b", "c"), ("a.b", "c"), False),
        "site": Selection(single, ("x",), ("x",), False),
        "any": Selection({**multi, "name": "any", "allValue": ".*"}, ("p",), ("p",), True),
    }
    got = interpolate(
        'm{h=~"$host", s="${site}", a=~"$any", r=~"${host:regex}"}[$__rate_interval]',
        sels,
        {"__rate_interval": "10s"},
    )
    assert got == 'm{h=~"(a\\\\.b|c)", s="x", a=~".*", r=~"(a\\.b|c)"}[10s]'
    with pytest.raises(ValueError, match="unknown variable"):
        interpolate("$nope", sels, {})
    with pytest.raises(ValueError, match="not modelled"):
        interpolate("${host:csv}", sels, {})


def test_links_point_at_shipped_dashboards() -> None:
    uids = {d["uid"] for d in DASHBOARD_FILES.values()}
    for name, d in _dashboards():
        assert any(link.get("tags") == ["mamori"] for link in d["links"]), name
        for p in query_panels(d):
            for link in p.get("links", []):
                uid = link["url"].split("/d/")[1].split("/")[0]
                assert uid in uids, (name, p["title"], link["url"])


def _lab_selections_offline(dashboard: dict[str, Any]) -> dict[str, Selection]:
    """Selections without Prometheus (for the syntax check): the lab's values, else one value."""
    out = {}
    for v in variables(dashboard):
        values = LAB_VALUES.get(v["name"], ["x"])
        out[v["name"]] = Selection(v, tuple(values), tuple(values), False)
    return out


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses every target and variable selector, interpolated, as a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package prometheus (`make test`)")
    rules: list[dict[str, str]] = []
    for _, d in _dashboards():
        sels = _lab_selections_offline(d)
        for p in query_panels(d):
            for t in _targets(p):
                rules.append(
                    {"record": f"dashboard:{len(rules)}", "expr": interpolate(t["expr"], sels, BUILTINS)}
                )
        for v in variables(d):
            selector, _ = parse_label_values(variable_query(v))
            if selector:
                rules.append({"record": f"variable:{len(rules)}", "expr": interpolate(selector, sels, {})})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules)} rules found" in run.stdout, run.stdout


def test_the_lists_of_exceptions_name_real_panels() -> None:
    keys = {_panel_key(d, p) for d in DASHBOARD_FILES.values() for p in query_panels(d)}
    for listed in (set(UNFILTERED), set(NEEDS_FAULT), NO_NOTIFIER):
        assert listed <= keys, listed - keys
    assert set(NEEDS_FAULT.values()) <= set(Stack.FAULTS)


def test_every_catalog_metric_is_on_a_dashboard() -> None:
    """Nothing the agent measures is left off every dashboard, bar the ones listed here."""
    not_shown = {
        # Detail better read in /api/v1/results or the CLI than on a graph.
        "mamori_check_last_run_timestamp_seconds", "mamori_check_attempts", "probe_http_version",
        "probe_http_redirects", "probe_http_ssl", "probe_http_content_length", "probe_failed_due_to_regex",
        "probe_dns_lookup_time_seconds", "probe_ip_protocol", "probe_ssl_last_chain_expiry_timestamp_seconds",
        "mamori_tcp_duration_seconds", "mamori_host_cpus", "mamori_host_load1", "mamori_host_load5",
        "mamori_host_load15", "mamori_host_memory_total_bytes", "mamori_host_memory_available_bytes",
        "mamori_host_swap_total_bytes", "mamori_host_swap_used_bytes", "mamori_host_swap_usage_ratio",
        "mamori_host_filesystem_size_bytes", "mamori_host_filesystem_avail_bytes",
        "mamori_host_disk_read_bytes_total", "mamori_host_disk_written_bytes_total",
        "mamori_host_network_received_bytes_total", "mamori_host_network_transmitted_bytes_total",
        "mamori_host_network_errors_total", "mamori_host_processes", "mamori_host_boot_time_seconds",
        "mamori_host_uptime_seconds", "mamori_pg_xid_age", "mamori_pg_wal_lsn_bytes",
        "mamori_pg_wal_receive_lsn_bytes", "mamori_pg_wal_replay_lsn_bytes",
        "mamori_pg_backup_last_timestamp_seconds",
        # Joins for the rules (an unexpected slot; a node unreachable from here only): seen
        # through the alerts they raise or quiet.
        "mamori_pg_slot_expected", "mamori_pg_node_streaming",
        # The agent path's verdict in numbers: read in the fleet check's message (it names every
        # witness), and on the Prometheus path as the witnesses panel.
        "mamori_fleet_primary_down_zones", "mamori_fleet_lost_witnesses", "mamori_fleet_witnesses",
        "mamori_fleet_verdict",
    }  # fmt: skip
    shown = {
        m
        for d in DASHBOARD_FILES.values()
        for p in query_panels(d)
        for t in _targets(p)
        for m in metric_names(t["expr"])
    }
    catalog = set(CHECK_METRICS) | set(AGENT_METRICS)
    histograms = {n for n, s in all_metrics().items() if s.type == "histogram"}
    shown |= {n for n in histograms if f"{n}_bucket" in shown}
    assert not_shown <= catalog, not_shown - catalog
    assert catalog - shown == not_shown, sorted(catalog - shown ^ not_shown)


# --- on real data ----------------------------------------------------------------------------

Key = tuple[str, str, str]  # dashboard uid, panel title, refId


async def _api(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> Any:
    async with session.get(url, params=params) as response:
        body = await response.json()
    if body.get("status") != "success":
        raise AssertionError(f"{url} {params}: {body.get('error')}")
    return body["data"]


async def _resolve(
    session: aiohttp.ClientSession, prometheus: str, dashboard: dict[str, Any]
) -> dict[str, Selection]:
    """Every variable in order, through the label-values API with `match[]` as Grafana asks it,
    over the dashboard's default range (3 h); then the lab's value, or All."""
    selections: dict[str, Selection] = {}
    now = time.time()
    for v in variables(dashboard):
        selector, label = parse_label_values(variable_query(v))
        params = {"start": f"{now - 3 * 3600:.0f}", "end": f"{now:.0f}"}
        if selector is not None:
            params["match[]"] = interpolate(selector, selections, {})
        options = sorted(await _api(session, f"{prometheus}/api/v1/label/{label}/values", params))
        if not options:
            raise LookupError(f"{dashboard['uid']}: variable {v['name']} has no values yet")
        selections[v["name"]] = select(v, options, LAB_VALUES.get(v["name"]))
    return selections


async def _evaluate(session: aiohttp.ClientSession, prometheus: str) -> tuple[dict[Key, str], dict[Key, str]]:
    """Run every target of every panel once: (the query sent, what came back) by key. What came
    back is "" when it has a finite value, else a short description of the problem."""
    queries: dict[Key, str] = {}
    for d in DASHBOARD_FILES.values():
        try:
            selections = await _resolve(session, prometheus, d)
        except (LookupError, ValueError) as exc:  # not scraped enough yet
            for p in query_panels(d):
                for t in _targets(p):
                    queries[(d["uid"], p["title"], t["refId"])] = f"(variables: {exc})"
            continue
        for p in query_panels(d):
            for t in _targets(p):
                queries[(d["uid"], p["title"], t["refId"])] = interpolate(t["expr"], selections, BUILTINS)

    async def run(query: str) -> str:
        if query.startswith("(variables:"):
            return query
        result = await _api(session, f"{prometheus}/api/v1/query", {"query": query})
        values = [float(s["value"][1]) for s in result["result"]]
        if not values:
            return "empty"
        return "" if any(math.isfinite(v) for v in values) else f"no finite value in {values}"

    keys = list(queries)
    answers = await asyncio.gather(*(run(queries[k]) for k in keys))
    return queries, dict(zip(keys, answers, strict=True))


async def _until_answered(
    session: aiohttp.ClientSession, prometheus: str, wanted: set[tuple[str, str]], timeout: float
) -> tuple[float, dict[Key, str]]:
    """Evaluate until every target of the `wanted` panels has data; the seconds it took, and
    the failures left (empty when all answered)."""
    # Until one evaluation succeeds (wait_until takes an OSError for "not yet"), nothing answered.
    failing: dict[Key, str] = {("", "", ""): f"no evaluation finished against {prometheus}"}

    async def answered() -> bool:
        nonlocal failing
        queries, answers = await _evaluate(session, prometheus)
        failing = {k: f"{answers[k]}: {queries[k]}" for k in answers if k[:2] in wanted and answers[k]}
        return not failing

    began = time.monotonic()
    with contextlib.suppress(TimeoutError):  # the caller asserts on what is still failing
        await wait_until("every wanted panel to have data", answered, timeout, interval=0.5)
    return time.monotonic() - began, failing


async def _add_checks(stack: Stack, docker_socket: Path, pgbackrest: Path) -> None:
    """Two checks added to the running agent through its real reload path (SIGHUP's): `docker`
    on the real engine, and `pg_backup` on the pgBackRest stand-in (the lab's own
    pg_backup check reads a directory of base backups, which cannot say how far back a restore
    can go: the PITR window needs pgBackRest's archive range)."""
    doc = yaml.safe_load(stack.agent_config.read_text())
    doc["checks"] += [
        {"name": "containers", "type": "docker", "socket": str(docker_socket), "service": "web"},
        {
            "name": "pgbackrest",
            "type": "pg_backup",
            "pgbackrest": {"stanza": "demo", "command": str(pgbackrest)},
        },
    ]
    stack.agent_config.write_text(yaml.safe_dump(doc, sort_keys=False))
    reload = stack.agent.reload()
    assert reload is not None
    await reload
    assert {"containers", "pgbackrest"} <= {c.name for c in stack.agent.config.checks}, "reload refused"


def _pgbackrest(directory: Path) -> Path:
    """pgBackRest's `info` of a stanza with a full backup 8 days old and a differential 1 h old."""
    now = time.time()
    backups = [
        backup("F1", now - 8 * 86400, now - 8 * 86400 + 60, "000000010000000000000001"),
        backup("F1_D1", now - 3600, now - 3500, "000000010000000000000009", "diff"),
    ]
    return fake_pgbackrest(directory, stanza(backups, archive_min="000000010000000000000001"))


async def test_every_panel_has_data_on_the_lab(tmp_path: Path, engine: DockerEngine) -> None:
    all_panels = {_panel_key(d, p) for d in DASHBOARD_FILES.values() for p in query_panels(d)}
    async with lab_stack() as stack:
        assert stack.prometheus_url is not None, stack.skipped
        assert stack.has_postgres and stack.mqtt is not None, stack.skipped
        image = await engine.image("busybox")
        for app in stack.web.apps:
            labels = engine.labels(**{"mamori.service": "web", "mamori.probe.port": str(app.port)})
            await engine.docker(
                "run", "-d", "--name", app.name, "--network", "host", *labels,
                "--health-cmd", "true", "--health-interval", "1s", image, "sleep", "3600",
            )  # fmt: skip
        for app in stack.web.apps:

            async def container_healthy(name: str = app.name) -> bool:
                state = (await engine.inspect(name))["State"]
                return isinstance(state, dict) and state.get("Health", {}).get("Status") == "healthy"

            await wait_until(f"{app.name} to be healthy", container_healthy, 20)
        await _add_checks(stack, engine.socket, _pgbackrest(tmp_path))
        optional = set(NO_NOTIFIER) if stack.agent.config.alerts is None else set()
        await stack.wait_scraped()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            healthy = all_panels - set(NEEDS_FAULT) - optional
            took, failing = await _until_answered(session, stack.prometheus_url, healthy, 30)
            assert not failing, "panels without data on the healthy lab:\n" + "\n".join(
                f"  {k}: {v}" for k, v in sorted(failing.items())
            )
            _, before = await _evaluate(session, stack.prometheus_url)
            for fault in sorted(set(NEEDS_FAULT.values())):
                await stack.fault(fault)
                wanted = {k for k, f in NEEDS_FAULT.items() if f == fault}
                took_fault, failing = await _until_answered(session, stack.prometheus_url, wanted, 20)
                assert not failing, f"panels still without data after {fault}:\n" + "\n".join(
                    f"  {k}: {v}" for k, v in sorted(failing.items())
                )
            # What the optional panels showed, for the record (they are not asserted).
            _, answers = await _evaluate(session, stack.prometheus_url)
    healthy_state = {k[:2]: v or "data" for k, v in before.items() if k[:2] in NEEDS_FAULT}
    print(  # shown with -s: how long the data took, which panels needed which fault
        f"healthy panels answered {took:.1f} s after two scrapes; before any fault: {healthy_state}; "
        f"{sorted(NEEDS_FAULT.items())} answered {took_fault:.1f} s after the fault; "
        f"optional: { {k: v or 'data' for k, v in answers.items() if k[:2] in optional} }"
    )
