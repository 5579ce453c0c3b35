"""Durable alerting state in one sqlite file (WAL): alert states, silences, the outbox, the dead letters.

Guarantees:
- `commit()` writes alert states and the notifications they caused in ONE transaction, before any
  send is attempted. After a crash either both are there or neither, so a restart neither re-pages
  an alert already paged nor loses a resolve.
- An outbox row leaves only when delivered (`delivered`) or rejected (`reject`, which moves it to
  `dead` with the reason; `dead` keeps the newest `dead_limit` rows).
- Reads are paged (`head(route, limit)`), so memory stays bounded however long an outage lasts.
- A write that fails (disk full, unwritable) raises, after rolling back and reporting to the
  file's `health` (agent/statefile.py: durability degraded, `/ready` 503). The callers keep what
  they could not store and retry it (alerts/sink.py, alerts/delivery.py).
- Opening decides what to do with a damaged, empty or unwritable file (agent/statefile.py), and
  migrates the schema of a file an older release wrote (`_STEPS`, PRAGMA user_version).

Every call is a short synchronous statement (well under a millisecond on a local disk with
`synchronous=NORMAL`), made from the event loop thread; there is no background thread to stop.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.delivery.schema import migrate
from agent.statefile import is_environmental, open_state_file
from agent.statehealth import StateFileHealth
from alerts.engine import AlertRecord, Silence
from alerts.model import Event, Notification, Severity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    rule TEXT NOT NULL, "check" TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (rule, "check"));
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY, matchers TEXT NOT NULL, starts_at REAL NOT NULL, ends_at REAL NOT NULL,
    comment TEXT NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, route TEXT NOT NULL,
    dedup_key TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_route ON outbox (route, seq);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, route TEXT NOT NULL, payload TEXT NOT NULL,
    reason TEXT NOT NULL, attempts INTEGER NOT NULL, created_at REAL NOT NULL, died_at REAL NOT NULL);
"""


def notification_to_json(n: Notification) -> str:
    return json.dumps(
        {
            "id": n.id,
            "route": n.route,
            "event": n.event.value,
            "dedup_key": n.dedup_key,
            "alert": n.alert,
            "severity": n.severity.value,
            "summary": n.summary,
            "details": n.details,
            "runbook_url": n.runbook_url,
            "created_at": n.created_at,
            "identity": n.identity,
        },
        sort_keys=True,
    )


def notification_from_json(text: str) -> Notification:
    d: dict[str, Any] = json.loads(text)
    return Notification(
        id=d["id"],
        route=d["route"],
        event=Event(d["event"]),
        dedup_key=d["dedup_key"],
        alert=d["alert"],
        severity=Severity(d["severity"]),
        summary=d["summary"],
        details=dict(d["details"]),
        runbook_url=d["runbook_url"],
        created_at=float(d["created_at"]),
        identity=dict(d.get("identity") or {}),  # rows written before identity existed have none
    )


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int
    notification: Notification
    attempts: int
    next_attempt_at: float
    last_error: str
    created_at: float

    @property
    def id(self) -> str:
        return self.notification.id


def _v1(db: sqlite3.Connection) -> None:
    """Version 1: the file has a version (the tables are those of the files written before it)."""


# Schema versions (PRAGMA user_version, agent/delivery/schema.py), one step each: a file written
# before versions existed (0) is migrated in place when opened, and still opens in that release.
_STEPS = (_v1,)


def _setup(db: sqlite3.Connection) -> None:
    """The schema, created or migrated (see `_STEPS`)."""
    migrate(db, _SCHEMA, _STEPS)


def store_health(path: Path | str) -> StateFileHealth:
    """The health of an alert state file (one per file and process: the agent keeps it across
    reloads of alerting)."""
    return StateFileHealth(
        Path(path),
        "alert state file",
        "alert changes and their notifications are kept in memory (up to 1000) and stored, then "
        "sent, once it can be written",
    )


class AlertStore:
    """The alerting sqlite file. Not thread-safe: use it from one thread (the event loop's)."""

    def __init__(
        self,
        path: Path | str,
        dead_limit: int = 1000,
        health: StateFileHealth | None = None,
        *,
        recover: bool = True,
        probe: bool = True,
    ) -> None:
        """Open (or create) the file; raises only `StartupError`. A damaged or empty (0-byte)
        file is moved aside and started empty (`recover`, the agent), or refused (the CLI, which
        must not move the running agent's file away); an unwritable one is refused (`probe`: a
        write at opening; the CLI's read-only commands skip it). See agent/statefile.py."""
        self.path = Path(path)
        self.dead_limit = dead_limit
        self.health = health or store_health(self.path)
        self._db: sqlite3.Connection | None = open_state_file(
            self.path,
            "alert state file",
            _setup,
            recover=recover,
            probe=probe,
            health=self.health,
        )

    @contextlib.contextmanager
    def _writing(self, operation: str) -> Iterator[sqlite3.Connection]:
        """A write: its failure (disk full, unwritable) is reported to `health`, then raised."""
        db = self.db
        try:
            yield db
        except BaseException as exc:
            if db.in_transaction:  # a failed COMMIT may leave it open (sqlite rolls back some)
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if is_environmental(exc):
                self.health.failed(operation, exc)
            raise
        self.health.succeeded(operation)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("alert store is closed")
        return self._db

    def close(self) -> None:
        """Checkpoint and close. Safe to call twice."""
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- alert states and the outbox, together --------------------------------------------------

    def commit(self, records: Iterable[AlertRecord], notifications: Iterable[Notification]) -> None:
        """Persist alert states and enqueue notifications atomically (one transaction)."""
        with self._writing("commit") as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                'INSERT OR REPLACE INTO alerts (rule, "check", data) VALUES (?, ?, ?)',
                [(r.rule, r.check, json.dumps(r.to_json(), sort_keys=True)) for r in records],
            )
            db.executemany(
                "INSERT INTO outbox (id, route, dedup_key, payload, next_attempt_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (n.id, n.route, n.dedup_key, notification_to_json(n), n.created_at, n.created_at)
                    for n in notifications
                ],
            )
            db.execute("COMMIT")

    def load_states(self) -> list[AlertRecord]:
        rows = self.db.execute('SELECT data FROM alerts ORDER BY rule, "check"').fetchall()
        return [AlertRecord.from_json(json.loads(row[0])) for row in rows]

    # -- silences -------------------------------------------------------------------------------

    def add_silence(self, silence: Silence) -> None:
        with self._writing("silences") as db:
            db.execute(
                "INSERT OR REPLACE INTO silences VALUES (?, ?, ?, ?, ?, ?)",
                (
                    silence.id,
                    json.dumps([list(m) for m in silence.matchers]),
                    silence.starts_at,
                    silence.ends_at,
                    silence.comment,
                    silence.created_by,
                ),
            )

    def remove_silence(self, silence_id: str) -> bool:
        with self._writing("silences") as db:
            return db.execute("DELETE FROM silences WHERE id = ?", (silence_id,)).rowcount > 0

    def silences(self) -> list[Silence]:
        rows = self.db.execute("SELECT * FROM silences ORDER BY starts_at, id").fetchall()
        return [
            Silence(
                id=row[0],
                matchers=tuple((str(k), str(v)) for k, v in json.loads(row[1])),
                starts_at=row[2],
                ends_at=row[3],
                comment=row[4],
                created_by=row[5],
            )
            for row in rows
        ]

    def purge_silences(self, now: float) -> int:
        """Delete silences that have ended. Returns how many."""
        with self._writing("silences") as db:
            return db.execute("DELETE FROM silences WHERE ends_at <= ?", (now,)).rowcount

    # -- the outbox -----------------------------------------------------------------------------

    def head(self, route: str, limit: int = 50) -> list[OutboxItem]:
        """The oldest `limit` undelivered notifications of `route`, in the order they were made."""
        rows = self.db.execute(
            "SELECT seq, payload, attempts, next_attempt_at, last_error, created_at FROM outbox"
            " WHERE route = ? ORDER BY seq LIMIT ?",
            (route, limit),
        ).fetchall()
        return [OutboxItem(r[0], notification_from_json(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def delivered(self, notification_id: str) -> None:
        with self._writing("deliveries") as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (notification_id,))

    def retry(self, notification_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        with self._writing("deliveries") as db:
            db.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (attempts, next_attempt_at, error[:500], notification_id),
            )

    def reject(self, item: OutboxItem, reason: str, now: float) -> None:
        """Move a permanently refused notification to `dead` (keeping the newest `dead_limit`)."""
        with self._writing("deliveries") as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
            db.execute(
                "INSERT INTO dead (id, route, payload, reason, attempts, created_at, died_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    item.id,
                    item.notification.route,
                    notification_to_json(item.notification),
                    reason[:500],
                    item.attempts + 1,
                    item.created_at,
                    now,
                ),
            )
            db.execute(
                "DELETE FROM dead WHERE seq <= (SELECT MAX(seq) FROM dead) - ?",
                (self.dead_limit,),
            )
            db.execute("COMMIT")

    def dead(self, limit: int = 100) -> list[tuple[Notification, str]]:
        """The newest dead letters with their reasons, newest first."""
        rows = self.db.execute(
            "SELECT payload, reason FROM dead ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(notification_from_json(r[0]), r[1]) for r in rows]

    def pending(self, route: str | None = None) -> int:
        if route is None:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE route = ?", (route,)).fetchone()[0])

    def routes(self) -> list[str]:
        """Routes that have undelivered notifications (a route removed from the config may too)."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT route FROM outbox ORDER BY route")]
