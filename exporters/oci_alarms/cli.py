"""`agentctl oci-alarms ACTION`: the sub-command's arguments, and what each action does."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

from exporters.oci_alarms.client import AlarmsApi, Connection, make_client
from exporters.oci_alarms.model import MANAGED_TAG, OCID_COMPARTMENT, AlarmsFile, load
from exporters.oci_alarms.reconcile import Reconciler, summary_line

REGION = re.compile(r"^[a-z]+(-[a-z]+)+-[0-9]+$")


class AlarmsUsageError(Exception):
    """Bad arguments: agent/cli.py prints the line and exits 3. (Not agent.cli.UsageError:
    `python -m agent.cli` runs cli.py as `__main__`.)"""


def variables(args: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment, then --var K=V, then --compartment / --topic."""
    env = dict(os.environ if environ is None else environ)
    for item in getattr(args, "var", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise AlarmsUsageError(f"--var {item!r}: expected NAME=VALUE")
        env[key] = value
    if getattr(args, "compartment", None):
        env["OCI_COMPARTMENT_ID"] = args.compartment
    if getattr(args, "topic", None):
        env["OCI_TOPIC_ID"] = args.topic
    return env


def connection(args: Any) -> Connection:
    auth: Literal["config_file", "instance_principal", "resource_principal"] = args.auth or "config_file"
    if auth != "config_file" and (args.config_file or args.profile):
        raise AlarmsUsageError(f"--config-file and --profile are for --auth config_file, not {auth}")
    if args.region and not REGION.match(args.region):
        raise AlarmsUsageError(f"--region {args.region!r}: expected a region identifier like ap-tokyo-1")
    endpoint = args.endpoint
    if endpoint is not None:
        parts = urlsplit(endpoint)
        loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
        if (
            parts.scheme not in ("https", "http")
            or not parts.netloc
            or (parts.scheme == "http" and not loopback)
        ):
            raise AlarmsUsageError(
                f"--endpoint {endpoint!r}: expected https://host[:port] (http only for loopback)"
            )
    return Connection(
        auth=auth,
        config_file=args.config_file or "~/.oci/config",
        profile=args.profile or "DEFAULT",
        region=args.region,
        endpoint=endpoint,
    )


def command(args: Any, out: TextIO) -> int:
    """`agentctl oci-alarms ACTION`. Raises AlarmsUsageError, ConfigError or AlarmsError."""
    action = args.oci_alarms_action
    env = variables(args)
    spec = load(args.file, env) if getattr(args, "file", None) else None
    if action == "validate":
        assert spec is not None
        names = ", ".join(sorted({c for c in spec.compartments}))
        out.write(f"{spec.source}: OK ({len(spec.alarms)} alarms, compartment {names})\n")
        return 0
    conn = connection(args)
    if action == "list":
        compartments = [args.compartment] if args.compartment else (spec.compartments if spec else [])
        if not compartments:
            raise AlarmsUsageError("list needs --compartment OCID or -f FILE")
        for c in compartments:
            _compartment_arg(c)
        client, endpoint = make_client(conn)
        api = AlarmsApi(client, endpoint, max_tps=args.max_tps)
        return list_alarms(api, compartments, spec, out)
    assert spec is not None
    client, endpoint = make_client(conn)
    api = AlarmsApi(client, endpoint, max_tps=args.max_tps)
    dry_run = action in ("plan", "diff") or bool(getattr(args, "dry_run", False))
    reconciler = Reconciler(api, out, dry_run=dry_run, prune=bool(getattr(args, "prune", False)))
    reconciler.show_diff = action in ("plan", "diff")
    summary = reconciler.apply(spec)
    out.write(summary_line(spec, summary, dry_run) + "\n")
    return 1 if summary.failed else 0


def _compartment_arg(value: str) -> None:
    if not OCID_COMPARTMENT.match(value):
        raise AlarmsUsageError(f"--compartment {value!r}: not a compartment or tenancy OCID")


def list_alarms(api: AlarmsApi, compartments: Sequence[str], spec: AlarmsFile | None, out: TextIO) -> int:
    names = {a.display_name for a in spec.alarms} if spec else set()
    rows = [("DISPLAY NAME", "SEVERITY", "ENABLED", "MANAGED", "IN FILE", "ID")]
    for compartment in compartments:
        for s in sorted(api.list(compartment), key=lambda s: str(s.display_name)):
            managed = (s.freeform_tags or {}).get(MANAGED_TAG[0]) == MANAGED_TAG[1]
            in_file = "yes" if s.display_name in names else ("no" if spec else "-")
            rows.append(
                (
                    s.display_name,
                    s.severity,
                    "yes" if s.is_enabled else "no",
                    "yes" if managed else "no",
                    in_file,
                    s.id,
                )
            )
    if len(rows) == 1:
        out.write(f"no alarms in {', '.join(compartments)}\n")
        return 0
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row[:5], widths, strict=True)]
        out.write("  ".join([*cells, str(row[5])]).rstrip() + "\n")
    return 0
