"""Durable alerting state in one sqlite file (WAL): alert states, silences, the outbox, the dead letters.

Guarantees:
- `commit()` writes alert states and the notifications they caused in ONE transaction, before any
  send is attempted. After a crash either both are there or neither, so a restart neither re-pages
  an alert already paged nor loses a resolve.
- The outbox is the delivery engine's log (`log`, agent/delivery/log.py: addressed, strict): a
  row leaves only when delivered (`delivered`) or rejected (`reject`, which moves it to `dead`
  with the reason; `dead` keeps the newest `dead_limit` rows), in the transaction that moves its
  route's cursor past it; the route's retry schedule is saved with that cursor. An outcome that
  cannot be written is kept in memory, and the route held until it is (never raises).
- Reads are paged (`head(route, limit)`), so memory stays bounded however long an outage lasts.
- A write of alert state or silences that fails (disk full, unwritable) raises, after rolling
  back and reporting to the file's `health` (agent/statefile.py: durability degraded, `/ready`
  503). The sink keeps what it could not store and retries it (alerts/sink.py).
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

from agent.delivery.log import DurableLog, Layout, NewEntry, Row
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
CREATE TABLE IF NOT EXISTS cursors (
    route TEXT PRIMARY KEY, seq INTEGER NOT NULL, next_attempt_at REAL NOT NULL DEFAULT 0,
    streak INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '');
"""

# The notifications are the delivery engine's log (agent/delivery/log.py), addressed: each row is
# for its route, and goes in the transaction that moves the route's cursor past it. The rows'
# own attempts/next_attempt_at/last_error columns are those of version 1 (kept for it to read).
NOTIFICATIONS = Layout(
    entries="outbox",
    time="created_at",
    cursors="cursors",
    key="route",
    consumer="route",
    errors=True,
    extra=("id", "dedup_key", "next_attempt_at"),
    dead="dead",
    dead_extra=("id",),
)


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


def _v2(db: sqlite3.Connection) -> None:
    """Version 2: a route's retry schedule is its cursor's (`cursors`), no longer its head
    notification's: moved there."""
    db.execute(
        "INSERT OR IGNORE INTO cursors (route, seq, next_attempt_at, streak, last_error)"
        " SELECT route, 0, next_attempt_at, attempts, last_error FROM outbox AS o"
        " WHERE attempts > 0 AND seq = (SELECT min(seq) FROM outbox WHERE route = o.route)"
    )


# Schema versions (PRAGMA user_version, agent/delivery/schema.py), one step each: a file written
# by an older release is migrated in place when opened, and still opens in it (it then sees each
# route's head with the attempts it had when it was migrated).
_STEPS = (_v1, _v2)


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
        self.log = DurableLog(self._db, NOTIFICATIONS, self.health, strict=True, dead_limit=dead_limit)

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
        """Checkpoint and close. Safe to call twice. Deliveries not recorded yet (a full disk) get
        a last chance; if that fails too, a restart sends them again (at-least-once)."""
        if self._db is not None:
            self.log.close()
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
            self.log.insert(
                [
                    NewEntry(
                        notification_to_json(n), n.created_at, n.route, (n.id, n.dedup_key, n.created_at)
                    )
                    for n in notifications
                ]
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

    # -- the outbox: the delivery engine's log (agent/delivery/log.py) --------------------------

    def head(self, route: str, limit: int = 50) -> list[OutboxItem]:
        """The oldest `limit` undelivered notifications of `route`, in the order they were made;
        the first carries the route's retry schedule (attempts, next attempt, last error)."""
        rows = self.log.read(route, limit)
        next_attempt_at, attempts = self.log.schedule(route)
        error = self.log.last_error(route)
        items = []
        for i, row in enumerate(rows):
            head = i == 0 and attempts > 0
            items.append(
                OutboxItem(
                    row.seq,
                    notification_from_json(row.payload),
                    attempts if head else 0,
                    next_attempt_at if head else row.at,
                    error if head else "",
                    row.at,
                )
            )
        return items

    def _row(self, notification_id: str) -> tuple[str, Row]:
        route, seq, payload, at = self.db.execute(
            "SELECT route, seq, payload, created_at FROM outbox WHERE id = ?", (notification_id,)
        ).fetchone()
        return str(route), Row(int(seq), str(payload), float(at))

    def delivered(self, notification_id: str) -> None:
        """Never raises for the disk (see agent/delivery/log.py)."""
        route, row = self._row(notification_id)
        self.log.ack(route, row.seq)

    def retry(self, notification_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        """The route's schedule, its head being `notification_id`. Never raises for the disk."""
        route, _ = self._row(notification_id)
        self.log.set_schedule(route, next_attempt_at, attempts, error)

    def reject(self, item: OutboxItem, reason: str, now: float) -> None:
        """Move a permanently refused notification to `dead` (keeping the newest `dead_limit`).
        Never raises for the disk."""
        row = Row(item.seq, notification_to_json(item.notification), item.created_at)
        self.log.reject(item.notification.route, row, reason, item.attempts + 1, now)

    def dead(self, limit: int = 100) -> list[tuple[Notification, str]]:
        """The newest dead letters with their reasons, newest first."""
        return [(notification_from_json(p), reason) for p, reason in self.log.dead(limit)]

    def pending(self, route: str | None = None) -> int:
        if route is None:
            return sum(self.log.depth(r) for r in self.log.consumers_waiting())
        return self.log.depth(route)

    def routes(self) -> list[str]:
        """Routes that have undelivered notifications (a route removed from the config may too)."""
        return self.log.consumers_waiting()
