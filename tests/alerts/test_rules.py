"""The Prometheus rules in alerts/rules/ and the Alertmanager config in deploy/alertmanager/.

promtool and amtool do the real checking (syntax, rule unit tests, config); the Python tests
hold the rule files to the house conventions: every alert fires in a test and stays quiet on a
near miss in another, links an existing runbook, and uses only metrics the agent emits.
The tools come from the Debian packages `prometheus` and `prometheus-alertmanager`
(`make test` installs them); a missing tool fails the test rather than skipping it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agent.catalog import all_metrics
from lab.alertmanager import alertmanager_argv, alertmanager_config
from lab.ports import HOST, accepts, free_port
from lab.process import Child
from lab.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "alerts" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
ALERTMANAGER_YML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK_URL = "https://github.com/mamori/mamori/blob/main/docs/runbooks/{}.md"
SECRETS_DIR = "/etc/mamori/secrets/"
SEVERITIES = {"critical", "warning", "info"}

# Always firing by design: there is no input under which it may stay quiet.
NEVER_QUIET = {"Watchdog"}

# Names in an expression that are not metrics: PromQL keywords, plus `up` (Prometheus's own).
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
PROMETHEUS_METRICS = {"up"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: install the Debian packages prometheus and prometheus-alertmanager "
            "(`bash .ci/ensure-debs prometheus prometheus-alertmanager`, or `make test`)"
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in _load(path)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', " ", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_KEYWORDS or name in {"group_left", "group_right"}:
            continue
        names.add(name)
    return names


def template_metric_names(annotation: str) -> set[str]:
    """Metric names queried from an annotation template (`printf "name{…}" … | query`)."""
    return set(re.findall(r'printf\s+"([A-Za-z_:][\w:]*)\{', annotation))


def _known_metric(name: str, recorded: set[str]) -> bool:
    catalog = all_metrics()
    if name in catalog or name in recorded or name in PROMETHEUS_METRICS:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and catalog.get(name.removesuffix(suffix), None) is not None:
            return catalog[name.removesuffix(suffix)].type == "histogram"
    return False


# --- the tools ----------------------------------------------------------------------------


def test_rule_files_exist() -> None:
    assert RULE_FILES, "no rule files in alerts/rules/"
    assert TEST_FILES, "no rule tests in alerts/rules/tests/"


def test_promtool_check_rules() -> None:
    result = _run(_tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = _run(_tool("promtool"), "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def alertmanager_copy(tmp_path: Path) -> Path:
    """The shipped config with its secret files pointed at placeholders under tmp_path."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    text = ALERTMANAGER_YML.read_text(encoding="utf-8")
    referenced = set(re.findall(re.escape(SECRETS_DIR) + r"([\w.-]+)", text))
    assert referenced, f"expected secret files under {SECRETS_DIR} in {ALERTMANAGER_YML}"
    for name in referenced:
        (secrets / name).write_text("https://placeholder.invalid/secret\n", encoding="utf-8")
    copy = tmp_path / "alertmanager.yml"
    copy.write_text(text.replace(SECRETS_DIR, f"{secrets}/"), encoding="utf-8")
    return copy


def test_amtool_check_config(alertmanager_copy: Path) -> None:
    result = _run(_tool("amtool"), "check-config", str(alertmanager_copy))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            ["alertname=PostgresFailoverRecommended", "severity=critical", "cluster=orders"],
            "pagerduty-critical",
        ),
        (
            ["alertname=PostgresPrimaryDownConfirmed", "severity=critical", "cluster=orders"],
            "pagerduty-critical",
        ),
        (
            ["alertname=PostgresPrimaryDownInconclusive", "severity=critical", "cluster=orders"],
            "pagerduty-critical",
        ),
        (["alertname=PostgresReplicationLagHigh", "severity=warning", "cluster=orders"], "slack-warning"),
        (["alertname=Something", "severity=info"], "null"),
        (["alertname=Watchdog", "severity=info"], "deadmans-switch"),
        (["alertname=Unlabelled"], "slack-warning"),
    ],
)
def test_alertmanager_routes(alertmanager_copy: Path, labels: list[str], receiver: str) -> None:
    result = _run(_tool("amtool"), "config", "routes", "test", f"--config.file={alertmanager_copy}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_failover_pages_wait_for_nothing() -> None:
    """Issue 15 item 3: the failover alerts have no `for:` and their route no group_wait; the
    inconclusive page keeps the critical route's, during which a confirmation inhibits it."""
    config = _load(ALERTMANAGER_YML)
    routes = config["route"]["routes"]
    failover = [r for r in routes if "PostgresFailoverRecommended" in str(r.get("matchers"))]
    assert len(failover) == 1 and failover[0]["group_wait"] == "0s", failover
    rules = {rule["alert"]: rule for rule in _alerts()}
    assert "for" not in rules["PostgresFailoverRecommended"]
    assert "for" not in rules["PostgresPrimaryDownConfirmed"]
    assert "for" in rules["PostgresPrimaryDownInconclusive"]


def test_shipped_alertmanager_config_keeps_secrets_out() -> None:
    config = _load(ALERTMANAGER_YML)
    for receiver in config["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            assert "routing_key" not in pd and "service_key" not in pd
            assert pd["routing_key_file"].startswith(SECRETS_DIR)
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack
            assert slack["api_url_file"].startswith(SECRETS_DIR)
    assert config["route"]["group_by"] == ["cluster", "alertname"]


def test_inhibitions_name_existing_alerts() -> None:
    alerts = {rule["alert"] for rule in _alerts()}
    config = _load(ALERTMANAGER_YML)
    for rule in config["inhibit_rules"]:
        for matcher in [*rule["source_matchers"], *rule["target_matchers"]]:
            m = re.fullmatch(r'alertname(=~|=)"([^"]+)"', matcher)
            assert m, f"inhibition matchers should name alerts: {matcher}"
            names = m.group(2).split("|") if m.group(1) == "=~" else [m.group(2)]
            assert set(names) <= alerts, f"unknown alerts in {matcher}: {set(names) - alerts}"


async def _alertmanager_alerts(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v2/alerts") as response:
        response.raise_for_status()
        alerts: list[dict[str, Any]] = await response.json()
        return alerts


CONFIRMED, RECOMMENDED = "PostgresPrimaryDownConfirmed", "PostgresFailoverRecommended"
INCONCLUSIVE = "PostgresPrimaryDownInconclusive"


@pytest.mark.parametrize(
    ("firing", "inhibited"),
    [
        # A confirmed death supersedes the inconclusive page; the trigger supersedes both.
        ([CONFIRMED, INCONCLUSIVE], {INCONCLUSIVE}),
        ([RECOMMENDED, CONFIRMED, INCONCLUSIVE], {CONFIRMED, INCONCLUSIVE}),
        # Inconclusive alone pages a person: nothing inhibits it.
        ([INCONCLUSIVE], set()),
    ],
)
async def test_alertmanager_inhibits_the_failover_family(
    tmp_path: Path, firing: list[str], inhibited: set[str]
) -> None:
    """The shipped inhibitions on a real Alertmanager (amtool tests routes, not inhibitions): the
    alerts are posted as Prometheus would, and Alertmanager says which it inhibits. The same
    cluster only: another cluster's inconclusive page stays."""
    _tool("amtool")
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(
        alertmanager_config(
            ALERTMANAGER_YML.read_text(encoding="utf-8"),
            tmp_path,
            pagerduty_url="http://127.0.0.1:9/pd",
            pagerduty_routing_key="k" * 32,
            slack_webhook_url="http://127.0.0.1:9/slack",
            deadman_url="http://127.0.0.1:9/dms",
        ),
        encoding="utf-8",
    )
    port = free_port()
    url = f"http://{HOST}:{port}"
    child = Child("alertmanager", log_file=tmp_path / "alertmanager.log")
    child.start(alertmanager_argv(am_config, tmp_path / "data", port))
    try:
        await child.wait_ready("Alertmanager ready", lambda: accepts(port), 20)
        posted = [(name, "orders") for name in firing] + [(INCONCLUSIVE, "billing")]
        alerts = [
            {"labels": {"alertname": name, "severity": "critical", "cluster": cluster}}
            for name, cluster in posted
        ]
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/api/v2/alerts", json=alerts) as response,
        ):
            assert response.status == 200, await response.text()

        async def states() -> dict[tuple[str, str], str] | None:
            got = {
                (a["labels"]["alertname"], a["labels"]["cluster"]): a["status"]["state"]
                for a in await _alertmanager_alerts(url)
            }
            return got if set(got) == set(posted) else None

        await wait_until("Alertmanager to hold the alerts", states, 20)
        expected = {
            (name, cluster): "suppressed" if name in inhibited and cluster == "orders" else "active"
            for name, cluster in posted
        }

        async def settled() -> bool:
            return await states() == expected

        try:
            await wait_until("the inhibitions", settled, 10)
        except TimeoutError:
            assert await states() == expected, child.log_since_start()
    finally:
        await child.stop()


# --- the conventions ------------------------------------------------------------------------


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fires: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in TEST_FILES:
        for case in _load(path)["tests"]:
            for art in case.get("alert_rule_test", []):
                if art.get("exp_alerts"):
                    fires[art["alertname"]] += 1
                else:
                    quiet[art["alertname"]] += 1
    alerts = {rule["alert"] for rule in _alerts()}
    assert not alerts - set(fires), f"never shown firing: {sorted(alerts - set(fires))}"
    missing_quiet = alerts - set(quiet) - NEVER_QUIET
    assert not missing_quiet, f"never shown quiet on a near miss: {sorted(missing_quiet)}"
    unknown = (set(fires) | set(quiet)) - alerts
    assert not unknown, f"tests name alerts no rule defines: {sorted(unknown)}"


# Alerts of postgres.yml that cannot carry `cluster`: the pg_backup check names a backup
# repository, not a cluster (said in the rule file's header).
WITHOUT_CLUSTER = {"PostgresBackupStale"}


def test_every_postgres_alert_carries_cluster() -> None:
    """Issue 15 item 5: Alertmanager groups and inhibits by `cluster`, and postgres.yml's header
    says every rule copies it. promtool compares a firing alert's labels exactly, so an alert
    whose every firing test expects `cluster` carries it; a new rule must be shown firing
    (test above) and so cannot forget it."""
    path = RULES_DIR / "postgres.yml"
    alerts = {rule["alert"] for group in _load(path)["groups"] for rule in group["rules"] if "alert" in rule}
    firing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for test_file in TEST_FILES:
        if path.name not in [Path(f).name for f in _load(test_file)["rule_files"]]:
            continue
        for case in _load(test_file)["tests"]:
            for art in case.get("alert_rule_test", []):
                firing[art["alertname"]].extend(a["exp_labels"] for a in art.get("exp_alerts") or [])
    assert alerts >= WITHOUT_CLUSTER
    for name in sorted(alerts - WITHOUT_CLUSTER):
        assert firing[name], f"{name} is never shown firing in a test of {path.name}"
        lacking = [labels for labels in firing[name] if not labels.get("cluster")]
        assert not lacking, f"{name} fires without a cluster label: {lacking}"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: str(rule["alert"]))
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(annotations)
    assert annotations["runbook_url"] == RUNBOOK_URL.format(rule["alert"])
    assert (RUNBOOKS / f"{rule['alert']}.md").is_file(), f"missing docs/runbooks/{rule['alert']}.md"


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: str(rule.get("alert") or rule["record"]))
def test_rules_use_only_emitted_metrics(rule: dict[str, Any]) -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    used = metric_names(str(rule["expr"]))
    for text in rule.get("annotations", {}).values():
        used |= template_metric_names(str(text))
    unknown = {name for name in used if not _known_metric(name, recorded)}
    assert not unknown, f"not in agent/catalog.py: {sorted(unknown)}"


def test_alerting_doc_lists_every_alert() -> None:
    doc = (ROOT / "docs" / "alerting.md").read_text(encoding="utf-8")
    missing = [rule["alert"] for rule in _alerts() if f"`{rule['alert']}`" not in doc]
    assert not missing, f"docs/alerting.md does not list {missing}"


def test_metric_names_parser() -> None:
    expr = (
        'count by (cluster) (label_replace(group by (cluster, instance) (a_b{reason=~"x.*"}), '
        '"vantage", "agent $1", "instance", "(.*)")) unless on (cluster) c:d:e '
        "and sum without (phase) (avg_over_time(f[5m])) > 1 * on (job) group_left (cluster) g"
    )
    assert metric_names(expr) == {"a_b", "c:d:e", "f", "g"}
    assert metric_names("vector(1)") == set()
    assert metric_names('absent(up{job="mamori"})') == {"up"}
