"""Prometheus in the lab stack: the shipped config (deploy/prometheus/prometheus.yml) rewritten
for the lab, and the command line that runs it.

Pure: text in, text out; tested on its own (tests/lab/test_stack.py) and used by lab/stack.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lab import REPO
from lab.errors import StackError
from lab.ports import HOST

PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = REPO / "alerts" / "rules"


def prometheus_config(
    shipped: str,
    *,
    targets_file: Path,
    rule_files: list[str],
    prometheus_address: str,
    alertmanager_address: str | None,
    interval: float,
) -> str:
    """deploy/prometheus/prometheus.yml rewritten for the lab, and only where it must be: the
    intervals (`interval` seconds), the file_sd path of job `mamori`, the rule files, the
    Alertmanager address (alerting and its scrape job dropped without one), the self-scrape
    address, and `environment: lab`. Raises StackError if the file has no `mamori` job with
    file_sd_configs (the rules select job="mamori")."""
    doc: dict[str, Any] = yaml.safe_load(shipped)
    every = f"{interval:g}s"
    glob = doc.setdefault("global", {})
    glob.update(scrape_interval=every, scrape_timeout=every, evaluation_interval=every)
    glob.setdefault("external_labels", {})["environment"] = "lab"
    doc["rule_files"] = list(rule_files)
    if alertmanager_address is None:
        doc.pop("alerting", None)
    else:
        for am in doc["alerting"]["alertmanagers"]:
            am["static_configs"] = [{"targets": [alertmanager_address]}]
    jobs = []
    found = False
    for job in doc.get("scrape_configs", []):
        name = job.get("job_name")
        for key in ("scrape_interval", "scrape_timeout"):  # a job's own (mamori: 5 s)
            if key in job:
                job[key] = every
        if name == "mamori" and job.get("file_sd_configs"):
            found = True
            for sd in job["file_sd_configs"]:
                sd["files"] = [str(targets_file)]
                sd["refresh_interval"] = every
        elif name == "prometheus":
            job["static_configs"] = [{"targets": [prometheus_address]}]
        elif name == "alertmanager":
            if alertmanager_address is None:
                continue
            job["static_configs"] = [{"targets": [alertmanager_address]}]
        else:
            continue  # a job the lab cannot serve
        jobs.append(job)
    if not found:
        raise StackError(f"{PROMETHEUS_YML}: no scrape job 'mamori' with file_sd_configs")
    doc["scrape_configs"] = jobs
    return yaml.safe_dump(doc, sort_keys=False)


def prometheus_argv(config_file: Path, data_dir: Path, port: int, *, interval: float) -> list[str]:
    """The lab's Prometheus command line: `config_file`, listening on 127.0.0.1:`port` only,
    alerts re-sent every `2 * interval` seconds (1 s at least)."""
    return [
        "prometheus",
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={HOST}:{port}",
        "--web.enable-lifecycle",
        # Alerts evaluated before Alertmanager's address is applied (discovery updates
        # are applied every 5 s) are dropped and, by default, re-sent only after 1 min.
        f"--rules.alert.resend-delay={max(1.0, 2 * interval):g}s",
    ]
