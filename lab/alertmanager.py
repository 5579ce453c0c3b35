"""Alertmanager in the lab: the shipped config (deploy/alertmanager/alertmanager.yml) rewritten
for the lab, and the command line that runs it.

Every receiver is pointed at loopback URLs (the stack's recorder, lab/recorder.py, or a test's
fakes: lab/failover.py); its secret files are written next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lab import REPO
from lab.ports import HOST

ALERTMANAGER_YML = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def alertmanager_config(
    shipped: str,
    directory: Path,
    *,
    pagerduty_url: str,
    pagerduty_routing_key: str,
    slack_webhook_url: str,
    deadman_url: str,
    group_wait: str | None = None,
    group_interval: str | None = None,
    repeat_interval: str | None = None,
) -> str:
    """deploy/alertmanager/alertmanager.yml with every receiver pointed at the given (loopback)
    URLs, its secret files written into `directory`, and, when given, the group timings of the
    root route and every child route replaced (the real ones otherwise)."""
    doc: dict[str, Any] = yaml.safe_load(shipped)
    (directory / "pd-key").write_text(pagerduty_routing_key)
    (directory / "slack-url").write_text(slack_webhook_url)
    (directory / "dms-token").write_text("lab-token")
    timings = {"group_wait": group_wait, "group_interval": group_interval, "repeat_interval": repeat_interval}

    def shorten(route: dict[str, Any]) -> None:
        for key, value in timings.items():
            if value is not None and (key in route or route is doc["route"]):
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(doc["route"])
    for receiver in doc["receivers"]:
        for pdc in receiver.get("pagerduty_configs", []):
            pdc["routing_key_file"] = str(directory / "pd-key")
            pdc["url"] = pagerduty_url
        for sc in receiver.get("slack_configs", []):
            sc["api_url_file"] = str(directory / "slack-url")
        for wh in receiver.get("webhook_configs", []):
            wh["url"] = deadman_url
            wh["http_config"]["authorization"]["credentials_file"] = str(directory / "dms-token")
    return yaml.safe_dump(doc, sort_keys=False)


def alertmanager_argv(config_file: Path, data_dir: Path, port: int) -> list[str]:
    """The lab's Alertmanager command line: `config_file`, listening on 127.0.0.1:`port` only."""
    return [
        "prometheus-alertmanager",
        f"--config.file={config_file}",
        f"--storage.path={data_dir}",
        f"--web.listen-address={HOST}:{port}",
        "--cluster.listen-address=",  # no gossip (it would listen on 0.0.0.0:9094)
    ]
