"""The alerting commands of `agentctl`: `alerts`, `silence add|list|expire` and `notify-test`.

They work on the alerting state file (`alerts.state_file`, see alerts/store.py) while the agent
may be running: sqlite (WAL, busy timeout) lets both use it at once. The running agent re-reads
silences from the file every `alerts.sink.SILENCE_REFRESH` seconds (10 s).

Imported only by these commands (agent/cli.py imports it lazily), so `agentctl check` stays fast.
Every user error raises this module's `AlertctlUsageError`; agent/cli.py turns it into its own (one line
on stderr, exit 1). A separate class because `python -m agent.cli` runs cli.py as `__main__`,
whose `UsageError` is not `agent.cli.UsageError`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import logging
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from alerts.config import AlertsConfig
    from alerts.engine import AlertRecord, Silence
    from alerts.store import AlertStore


class AlertctlUsageError(Exception):
    """A user error with a one-line explanation (agent/cli.py reports it, exit 1)."""


def _load_config(path: str | None) -> AgentConfig:
    from agent import config

    return config.load(Path(path) if path else None)


def _alerts_config(cfg: AgentConfig) -> AlertsConfig:
    if cfg.alerts is None:
        raise AlertctlUsageError(f"no alerts section in {cfg.source}")
    alerts: AlertsConfig = cfg.alerts
    return alerts


def _open_store(alerts: AlertsConfig) -> AlertStore:
    from agent.errors import StartupError
    from alerts.store import AlertStore

    try:
        # Never move the file aside (the agent may be running on it): a damaged or empty file is
        # reported in one line, and the agent deals with it when it starts (agent/statefile.py).
        return AlertStore(alerts.state_file, alerts.dead_letter_limit, recover=False, probe=False)
    except StartupError as exc:
        raise AlertctlUsageError(str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise AlertctlUsageError(f"cannot open the alert state file {alerts.state_file}: {exc}") from None


def _out(text: str) -> None:
    """One line (or block) on stdout: `print`, which the lint rules keep to agent/cli.py."""
    sys.stdout.write(text + "\n")


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- alerts ----------------------------------------------------------------------------------


def _why(record: AlertRecord, view: _View) -> tuple[str, float | None]:
    """Why the alert is where it is when that is not obvious — held open by flap detection, or
    firing but not paged (silence, maintenance, the connectivity guard) — and until when."""
    from agent.text import seconds as duration
    from alerts.config import NETWORK_DOWN_RULE
    from alerts.model import AlertState

    alerts, now = view.alerts, view.now
    flips = sorted(t for t in record.flips if t > now - alerts.flap.window)
    if record.flapping and flips:
        until = flips[-1] + alerts.flap.window
        changes = f"{len(flips)} state changes in {duration(alerts.flap.window)}"
        if record.state != AlertState.FIRING:
            return f"flapping ({changes}): kept open; resolves at {_iso(until)} if no change before", until
        return f"flapping ({changes}): stable again at {_iso(until)} at the earliest", until
    if record.state != AlertState.FIRING or record.told or record.rule == NETWORK_DOWN_RULE:
        return "", None
    if view.network_down:
        return "not paged: the agent's network is down (connectivity guard)", None
    for window in alerts.maintenance:
        if window.applies_to(record.rule, record.check) and window.active(now):
            return f"not paged: maintenance window {window.name or '(unnamed)'}", None
    labels = {"rule": record.rule, "check": record.check, "target": record.target}
    rule = view.rules.get(record.rule)
    labels["severity"] = rule.severity.value if rule is not None else ""
    tags = view.tags.get(record.check, ())
    for silence in view.silences:
        if silence.active(now) and silence.matches(labels, tags):
            return f"not paged: silence {silence.id} until {_iso(silence.ends_at)}", silence.ends_at
    return "not paged yet (grouping)", None


class _View:
    """What explaining an alert needs besides the alert itself."""

    def __init__(
        self, cfg: AgentConfig, alerts: AlertsConfig, records: list[AlertRecord], silences: list[Silence]
    ):
        from alerts.config import NETWORK_DOWN_RULE
        from alerts.engine import GUARD_CHECK
        from alerts.model import AlertState

        self.alerts = alerts
        self.now = time.time()
        self.rules = {r.name: r for r in alerts.rules}
        self.tags = {c.name: tuple(c.tags) for c in cfg.checks}
        self.silences = silences
        self.network_down = any(
            r.key == (NETWORK_DOWN_RULE, GUARD_CHECK) and r.state == AlertState.FIRING for r in records
        )


def _shown(record: AlertRecord) -> bool:
    """Firing and pending alerts, and incidents flap detection keeps open after a recovery."""
    return record.state.value in ("firing", "pending") or (record.flapping and record.told)


def _alert_row(record: AlertRecord, alerts: AlertsConfig, agent: str, view: _View) -> dict[str, Any]:
    from alerts.config import NETWORK_DOWN_RULE

    rules = {r.name: r for r in alerts.rules}
    rule = rules.get(record.rule)
    severity = "-"
    summary = f"{record.reason} {record.message}".strip()
    if record.rule == NETWORK_DOWN_RULE:
        severity = alerts.connectivity_guard.severity.value
        summary = f"agent {agent} lost its network: {record.message} ({record.reason})"
    elif rule is not None:
        severity = rule.severity.value
        fields = {
            "check": record.check,
            "target": record.target,
            "reason": record.reason,
            "message": record.message,
            "value": record.value,
            "agent": agent,
        }
        summary = rule.summary.format(**fields).strip()
    since = record.pending_since if record.state == "pending" else record.changed_at
    note, until = _why(record, view)
    held = record.flapping and record.told and record.state.value != "firing"
    return {
        "rule": record.rule,
        "check": record.check,
        "state": "held" if held else record.state.value,
        "since": _iso(since),
        "severity": severity,
        "summary": summary,
        "notified": record.told,
        "note": note,
        "until": _iso(until) if until is not None else None,
    }


def cmd_alerts(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    alerts = _alerts_config(cfg)
    rows: list[dict[str, Any]] = []
    outbox: dict[str, int] = {}
    dead = 0
    configured = sorted({name for names in alerts.routes.values() for name in names})
    if Path(alerts.state_file).exists():  # never create the file just to report it is empty
        store = _open_store(alerts)
        try:
            records = store.load_states()
            silences = store.silences()
            outbox = {route: store.pending(route) for route in sorted(set(configured) | set(store.routes()))}
            dead = int(store.db.execute("SELECT COUNT(*) FROM dead").fetchone()[0])
        except sqlite3.Error as exc:
            raise AlertctlUsageError(f"cannot read the alert state file {alerts.state_file}: {exc}") from None
        finally:
            store.close()
        view = _View(cfg, alerts, records, silences)
        rows = [_alert_row(r, alerts, cfg.agent.name, view) for r in records if _shown(r)]
        order = {"firing": 0, "held": 1, "pending": 2}
        rows.sort(key=lambda r: (order.get(r["state"], 3), r["rule"], r["check"]))
    else:
        outbox = dict.fromkeys(configured, 0)
    if args.json:
        _out(json.dumps({"alerts": rows, "outbox": outbox, "dead_letters": dead}, indent=1))
        return 0
    if rows:
        header = ("RULE", "CHECK", "STATE", "SINCE", "SEVERITY", "SUMMARY")
        keys = ("rule", "check", "state", "since", "severity", "summary")
        _out(_table([header, *[tuple(str(r[k]) for k in keys) for r in rows]]))
        for r in rows:  # the why, under the table: a summary can be long
            if r["note"]:
                _out(f"  {r['rule']}/{r['check']}: {r['note']}")
    else:
        _out("no firing, held or pending alerts")
    depth = ", ".join(f"{route}={n}" for route, n in outbox.items()) or "no routes"
    _out(f"\noutbox: {depth}")
    _out(f"dead letters: {dead}")
    return 0


# --- silence ---------------------------------------------------------------------------------


def _matchers(specs: list[str]) -> tuple[tuple[str, str], ...]:
    from alerts.engine import SILENCE_KEYS

    out = []
    for spec in specs:
        key, sep, glob = spec.partition("=")
        key = key.strip()
        if not sep or not key or not glob:
            raise AlertctlUsageError(f"invalid --match {spec!r}: expected KEY=GLOB, e.g. check=web-*")
        if key not in SILENCE_KEYS:
            raise AlertctlUsageError(f"unknown --match key {key!r}: use {', '.join(sorted(SILENCE_KEYS))}")
        out.append((key, glob))
    return tuple(out)


def _parse_start(text: str | None, now: float) -> float:
    if text is None:
        return now
    try:
        start = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AlertctlUsageError(
            f"invalid --start {text!r}: expected ISO 8601, e.g. 2025-03-01T22:00:00+09:00"
        ) from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)  # as for maintenance windows: naive means UTC
    return start.timestamp()


def _user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _silence_json(s: Silence, now: float) -> dict[str, Any]:
    return {
        "id": s.id,
        "matchers": [f"{k}={v}" for k, v in s.matchers],
        "starts_at": _iso(s.starts_at),
        "ends_at": _iso(s.ends_at),
        "state": "active" if s.active(now) else "pending",
        "comment": s.comment,
        "created_by": s.created_by,
    }


def cmd_silence_add(args: argparse.Namespace) -> int:
    from alerts.engine import Silence

    alerts = _alerts_config(_load_config(args.config))
    matchers = _matchers(args.match)
    now = time.time()
    start = _parse_start(args.start, now)
    try:
        silence = Silence(
            id=uuid.uuid4().hex[:12],
            matchers=matchers,
            starts_at=start,
            ends_at=start + args.duration,
            comment=args.comment,
            created_by=_user(),
        )
    except ValueError as exc:
        raise AlertctlUsageError(str(exc)) from None
    if silence.ends_at <= now:
        raise AlertctlUsageError(f"the silence would end in the past ({_iso(silence.ends_at)})")
    store = _open_store(alerts)
    try:
        store.add_silence(silence)
    except sqlite3.Error as exc:
        raise AlertctlUsageError(f"cannot write the alert state file {alerts.state_file}: {exc}") from None
    finally:
        store.close()
    _out(silence.id)
    return 0


def cmd_silence_list(args: argparse.Namespace) -> int:
    alerts = _alerts_config(_load_config(args.config))
    now = time.time()
    silences: list[Silence] = []
    if Path(alerts.state_file).exists():
        store = _open_store(alerts)
        try:
            silences = [s for s in store.silences() if s.ends_at > now]
        except sqlite3.Error as exc:
            raise AlertctlUsageError(f"cannot read the alert state file {alerts.state_file}: {exc}") from None
        finally:
            store.close()
    items = [_silence_json(s, now) for s in silences]
    if args.json:
        _out(json.dumps(items, indent=1))
        return 0
    if not silences:
        _out("no active or future silences")
        return 0
    rows: list[tuple[str, ...]] = [("ID", "STATE", "STARTS", "ENDS", "CREATED_BY", "MATCHERS", "COMMENT")]
    for s, item in zip(silences, items, strict=True):
        matchers = ",".join(f"{k}={v}" for k, v in s.matchers)
        rows.append(
            (s.id, item["state"], item["starts_at"], item["ends_at"], s.created_by, matchers, s.comment)
        )
    _out(_table(rows))
    return 0


def cmd_silence_expire(args: argparse.Namespace) -> int:
    alerts = _alerts_config(_load_config(args.config))
    if not Path(alerts.state_file).exists():
        raise AlertctlUsageError(f"no silence {args.id!r} (no alert state file {alerts.state_file} yet)")
    store = _open_store(alerts)
    try:
        removed = store.remove_silence(args.id)
    except sqlite3.Error as exc:
        raise AlertctlUsageError(f"cannot write the alert state file {alerts.state_file}: {exc}") from None
    finally:
        store.close()
    if not removed:
        raise AlertctlUsageError(f"no silence {args.id!r} in {alerts.state_file}")
    _out(f"expired {args.id}")
    return 0


# --- notify-test -----------------------------------------------------------------------------


async def _send_test(notifier_config: Any, agent: str) -> Any:
    from alerts.model import Event, Notification, Severity
    from alerts.notifiers import build

    route = notifier_config.name
    notifier = build(notifier_config)
    now = time.time()
    notification = Notification(
        id=uuid.uuid4().hex,
        route=route,
        event=Event.TEST,
        # A key of its own per test: a test never appends to another test's (or a real) incident.
        dedup_key=f"mamori:{agent}:notify_test:{route}:{uuid.uuid4().hex[:8]}",
        alert="notify_test",
        severity=Severity.INFO,
        summary=f"Mamori test notification from {agent} via {route}",
        details={"agent": agent, "check": "notify_test"},
        created_at=now,
    )
    try:
        return await notifier.send(notification)
    finally:
        await notifier.aclose()


def cmd_notify_test(args: argparse.Namespace) -> int:
    from alerts.model import Outcome

    cfg = _load_config(args.config)
    known = {n.name: n for n in cfg.notifiers}
    if args.route not in known:
        names = ", ".join(sorted(known)) or "none configured"
        raise AlertctlUsageError(f"no notifier {args.route!r} in {cfg.source} (known: {names})")
    # The notifier logs a failed send; the outcome is printed here instead.
    logging.getLogger("mamori.notifiers").addHandler(logging.NullHandler())
    delivery = asyncio.run(_send_test(known[args.route], cfg.agent.name))
    _out(f"{args.route}: {delivery.outcome.value}: {delivery.detail}")
    return 0 if delivery.outcome is Outcome.DELIVERED else 1
