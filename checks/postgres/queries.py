"""The SQL of the `postgres` check, and the reading of its answers into `NodeState`s.

One round trip reads everything about a node, whatever its role: the query branches on
pg_is_in_recovery() inside SQL (CASE is evaluated lazily, so pg_current_wal_lsn() and
pg_get_wal_replay_pause_state(), which fail on the wrong role, are never called there). The
heartbeat takes one more round trip: an upsert on the primary, a read on each standby.

Every query runs as the least-privileged `mamori` role of deploy/postgres/monitoring-role.sql
(pg_monitor). Without pg_monitor, `pg_ls_archive_statusdir()` is refused: the check then runs
`PROBE_WITHOUT_ARCHIVE_DIR` and reports the archive backlog as unknown.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

from checks.postgres.cluster import Archiver, Receiver, Replica, Slot

# The reference position: the current WAL insert LSN on a primary, the replayed LSN on a
# standby (what a cascading standby or a slot there is measured against).
_PROBE = """
WITH r AS MATERIALIZED (SELECT pg_is_in_recovery() AS rec),
pos AS MATERIALIZED (
    SELECT rec, CASE WHEN rec THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn FROM r
)
SELECT
    pos.rec AS in_recovery,
    extract(epoch FROM now())::float8 AS now,
    (SELECT system_identifier FROM pg_control_system()) AS sysid,
    CASE WHEN pos.rec
        THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                      (SELECT timeline_id FROM pg_control_checkpoint()))
        -- The insert timeline, from the WAL file name: pg_control_checkpoint() keeps the old
        -- timeline after a promotion until the next checkpoint completes.
        ELSE ('x' || substr(pg_walfile_name(pos.lsn), 1, 8))::bit(32)::int
    END AS timeline,
    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections,
    current_setting('max_connections')::int AS max_connections,
    (SELECT max(age(datfrozenxid)) FROM pg_database WHERE datallowconn) AS xid_age,
    CASE WHEN NOT pos.rec THEN (pos.lsn - '0/0')::bigint END AS lsn,
    (pg_last_wal_receive_lsn() - '0/0')::bigint AS receive_lsn,
    (pg_last_wal_replay_lsn() - '0/0')::bigint AS replay_lsn,
    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS last_replay_age,
    CASE WHEN pos.rec THEN pg_get_wal_replay_pause_state() END AS pause_state,
    (SELECT json_build_object(
        'status', status, 'tli', received_tli,
        'age', extract(epoch FROM now() - last_msg_receipt_time)::float8)
     FROM pg_stat_wal_receiver) AS receiver,
    (SELECT json_agg(json_build_object(
        'name', application_name, 'state', state, 'sync', sync_state,
        'sent', (pos.lsn - sent_lsn)::bigint, 'write', (pos.lsn - write_lsn)::bigint,
        'flush', (pos.lsn - flush_lsn)::bigint, 'replay', (pos.lsn - replay_lsn)::bigint,
        'write_lag', extract(epoch FROM write_lag)::float8,
        'flush_lag', extract(epoch FROM flush_lag)::float8,
        'replay_lag', extract(epoch FROM replay_lag)::float8,
        'reply_age', extract(epoch FROM now() - reply_time)::float8) ORDER BY backend_start, pid)
     FROM pg_stat_replication WHERE state IS DISTINCT FROM 'backup') AS replicas,
    current_setting('archive_mode') AS archive_mode,
    (SELECT json_build_object(
        'archived', archived_count, 'failed', failed_count,
        'age', extract(epoch FROM now() - last_archived_time)::float8,
        'failing', coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false))
     FROM pg_stat_archiver) AS archiver,
    {archive_dir} AS ready,
    (SELECT json_agg(json_build_object(
        'name', slot_name, 'type', slot_type, 'active', active, 'wal_status', wal_status,
        'safe', safe_wal_size, 'retained', (pos.lsn - restart_lsn)::bigint) ORDER BY slot_name)
     FROM pg_replication_slots) AS slots
FROM pos
"""

_ARCHIVE_DIR = """(SELECT json_build_object(
        'count', count(*), 'age', extract(epoch FROM now() - min(modification))::float8)
     FROM pg_ls_archive_statusdir() WHERE name ~ '^[0-9A-F]{24}\\.ready$')"""

PROBE = _PROBE.replace("{archive_dir}", _ARCHIVE_DIR)
PROBE_WITHOUT_ARCHIVE_DIR = _PROBE.replace("{archive_dir}", "NULL::json")


def heartbeat_write(table: tuple[str, ...]) -> sql.Composed:
    """Upsert this cluster's heartbeat row on the primary; returns the written ts (primary's
    clock, unix seconds). The write itself makes WAL, so the standby's copy moves every run even
    when nothing else is written."""
    return sql.SQL(
        "INSERT INTO {} AS h (source, ts, lsn) VALUES (%s, now(), pg_current_wal_lsn()) "
        "ON CONFLICT (source) DO UPDATE SET ts = excluded.ts, lsn = excluded.lsn "
        "RETURNING extract(epoch FROM h.ts)::float8 AS ts"
    ).format(sql.Identifier(*table))


def heartbeat_read(table: tuple[str, ...]) -> sql.Composed:
    """The heartbeat row as replayed on a standby, and the standby's own now() (the fallback
    clock when the primary cannot be reached), both in unix seconds."""
    return sql.SQL(
        "SELECT extract(epoch FROM now())::float8 AS now, "
        "(SELECT extract(epoch FROM ts)::float8 FROM {} WHERE source = %s) AS ts"
    ).format(sql.Identifier(*table))


class Probe:
    """One node's answer to `PROBE`, read into typed fields. Tolerates NULLs everywhere."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.in_recovery: bool = bool(row["in_recovery"])
        self.now = _float(row["now"])
        self.sysid = _int(row["sysid"])
        self.timeline = _int(row["timeline"])
        self.connections = _int(row["connections"])
        self.max_connections = _int(row["max_connections"])
        self.xid_age = _int(row["xid_age"])
        self.lsn = _int(row["lsn"])
        self.receive_lsn = _int(row["receive_lsn"])
        self.replay_lsn = _int(row["replay_lsn"])
        self.last_replay_age = _age(row["last_replay_age"])
        pause = row["pause_state"]
        self.replay_paused: bool | None = None if pause is None else pause != "not paused"
        self.receiver = _receiver(_json(row["receiver"]))
        self.replicas = _replicas(_json(row["replicas"]))
        self.archiver = _archiver(row["archive_mode"], _json(row["archiver"]), _json(row["ready"]))
        self.slots = tuple(_slot(s) for s in _json(row["slots"]) or () if isinstance(s, dict))


def _json(value: Any) -> Any:
    """psycopg loads json columns already; a text answer (another loader) is parsed here."""
    if isinstance(value, str):
        return json.loads(value)
    return value


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _age(value: Any) -> float | None:
    """now() minus a server timestamp: never negative (both come from clocks read a moment apart)."""
    n = _float(value)
    return None if n is None else max(0.0, n)


def _bytes(value: Any) -> int | None:
    """An LSN difference: never negative (the reference LSN is read a moment before the row)."""
    n = _int(value)
    return None if n is None else max(0, n)


def _receiver(doc: Any) -> Receiver | None:
    if not isinstance(doc, dict) or not doc.get("status"):
        return None
    return Receiver(str(doc["status"]), _int(doc.get("tli")), _age(doc.get("age")))


def _replicas(docs: Any) -> tuple[Replica, ...]:
    out: list[Replica] = []
    seen: dict[str, int] = {}
    for d in docs or ():
        if not isinstance(d, dict):
            continue
        name = str(d.get("name") or "unnamed")
        # Two walsenders with one application_name would make two series with one label set:
        # the second is told apart by a suffix (give every standby its own application_name).
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        out.append(
            Replica(
                name=name,
                state=d.get("state"),
                sync_state=d.get("sync"),
                sent_bytes=_bytes(d.get("sent")),
                write_bytes=_bytes(d.get("write")),
                flush_bytes=_bytes(d.get("flush")),
                replay_bytes=_bytes(d.get("replay")),
                write_lag=_float(d.get("write_lag")),
                flush_lag=_float(d.get("flush_lag")),
                replay_lag=_float(d.get("replay_lag")),
                reply_age=_age(d.get("reply_age")),
            )
        )
    return tuple(out)


def _archiver(mode: Any, doc: Any, ready: Any) -> Archiver:
    enabled = mode in ("on", "always")
    if not isinstance(doc, dict):
        return Archiver(enabled=enabled)
    count = _int(ready.get("count")) if isinstance(ready, dict) else None
    return Archiver(
        enabled=enabled,
        archived_count=_int(doc.get("archived")) or 0,
        failed_count=_int(doc.get("failed")) or 0,
        failing=bool(doc.get("failing")),
        last_archived_age=_age(doc.get("age")),
        ready_count=count,
        ready_oldest_age=_age(ready.get("age")) if count else None,
    )


def _slot(d: dict[str, Any]) -> Slot:
    return Slot(
        name=str(d.get("name")),
        slot_type=str(d.get("type") or "physical"),
        active=bool(d.get("active")),
        wal_status=d.get("wal_status"),
        safe_wal_size=_int(d.get("safe")),
        retained_bytes=_bytes(d.get("retained")),
    )
