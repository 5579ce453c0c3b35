"""The README's config examples are valid configs (with their secret and host paths pointed at
files that exist here), so the first thing a reader copies works."""

from __future__ import annotations

import re
from pathlib import Path

from agent import config

REPO = Path(__file__).resolve().parents[1]


def test_readme_config_examples_are_one_valid_config(tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 3, "the README lost its config examples"
    merged = "\n".join(blocks)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in set(re.findall(r"/run/secrets/([\w.-]+)", merged)):
        if name.startswith("pd"):
            value = "0123456789abcdef0123456789abcdef"  # a PagerDuty routing key: 32 characters
        elif name.startswith("slack"):
            value = "https://hooks.slack.com/services/T0000/B0000/XXXXXXXX"
        else:
            value = "s3cret-value"
        (secrets / name).write_text(value + "\n")
    (tmp_path / "backups").mkdir()
    ca = tmp_path / "ca.pem"
    ca.write_text("")  # only its existence is checked at load
    merged = (
        merged.replace("/run/secrets/", f"{secrets}/")
        .replace("/etc/mamori/ca.pem", str(ca))
        .replace("/backups/orders", str(tmp_path / "backups"))
        .replace("procfs: /host/proc", "procfs: /proc")
        .replace("rootfs: /host", "rootfs: /")
        .replace("/var/lib/mamori/", f"{tmp_path}/")
    )
    cfg = config.parse(merged, "README.md", env={})
    assert {c.type for c in cfg.checks} >= {"http", "lb", "docker", "postgres", "pg_backup", "host"}
    assert [e.type for e in cfg.exporters] == ["oci", "mqtt", "otel"]
    assert {n.type for n in cfg.notifiers} == {"pagerduty", "slack"}
