"""The durable outbox: one on-disk log of check results shared by every push sink, a cursor each.

    outbox = Outbox(path, max_bytes, sinks=["oci", "mqtt"])
    outbox.append([result, ...])           # the fan-out's OutboxSink does this
    records = outbox.read("oci", 500)      # oldest first, after the sink's cursor
    outbox.ack("oci", records[-1].seq)     # everything up to seq is handled (sent or dropped)

Guarantees:
- A result is on disk (sqlite, WAL, `synchronous=NORMAL`) before any sink sees it, and leaves a
  sink's view only when that sink acks it. After a crash or restart each sink resumes after its
  last ack, so results are replayed with their original timestamps; a crash between a send and
  its ack resends that batch (at-least-once; the sinks make duplicates harmless where the service
  allows it).
- Disk use is capped at `max_bytes` of stored results: past it, the oldest rows are deleted (down
  to 90 % of the cap) and each sink that had not yet sent them counts them as dropped
  (`mamori_outbox_dropped_total{sink,reason="capacity"}`). A sink that is down therefore costs a
  bounded amount of disk and no memory: reads are paged.
- Rows every sink has acked are deleted. A sink added to the config starts at the current end;
  a sink removed from it stops holding rows back.
- Each sink's retry schedule (earliest next attempt, failed pushes in a row) is saved with its
  cursor, so a restart, even after kill -9, waits out a Retry-After or backoff given before.
- A full or unwritable disk never raises out of `append`/`ack`: results that cannot be stored
  are counted as dropped for every sink (`reason="disk_full"` or `"write_error"`), `bytes`
  counts only what was stored, cursors move in memory and reach the file with the next write
  that succeeds, and the file's `health` (agent/statefile.py) reports durability degraded
  (one ERROR naming the file, one INFO when writes succeed again; `/ready` answers 503).
- Opening it decides what to do with a damaged, empty or unwritable file (agent/statefile.py):
  move it aside and start empty, or refuse to start in one line.

Every call is a short synchronous statement made from the event loop thread, like the alert
store's (alerts/store.py): ~0.1 ms per append on a local disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.delivery.outcome import PushResult
from agent.delivery.schema import add_column, migrate
from agent.model import CheckResult, Reason, Sample, Status
from agent.statefile import is_environmental, open_state_file
from agent.statehealth import StateFileHealth

log = logging.getLogger("mamori.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, size INTEGER NOT NULL,
    payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT PRIMARY KEY, seq INTEGER NOT NULL, next_attempt_at REAL NOT NULL DEFAULT 0,
    streak INTEGER NOT NULL DEFAULT 0);
"""
_LOW_WATER = 0.9  # after hitting the cap, delete down to this share of it


def _v1(db: sqlite3.Connection) -> None:
    """Version 1: cursors carry the retry schedule (next_attempt_at, streak)."""
    add_column(db, "cursors", "next_attempt_at", "REAL NOT NULL DEFAULT 0")
    add_column(db, "cursors", "streak", "INTEGER NOT NULL DEFAULT 0")


# Schema versions (PRAGMA user_version, agent/delivery/schema.py), one step each. A version 0
# file (written before) is migrated in place when opened; an older agent still reads and writes a
# version 1 file (the new columns have defaults).
_STEPS = (_v1,)


def _setup(db: sqlite3.Connection) -> None:
    """The schema, created or migrated (see `_STEPS`)."""
    migrate(db, _SCHEMA, _STEPS)


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    result: CheckResult


def encode(r: CheckResult) -> str:
    """A result as compact JSON, exactly (floats round-trip; `to_json()` rounds for display)."""
    samples = [[s.name, s.value, [list(kv) for kv in s.labels]] for s in r.samples]
    row = [r.check, r.check_type, r.target, int(r.status), r.started_at, r.duration, samples]
    row += [r.message, r.reason.value, r.attempts]
    return json.dumps(row, separators=(",", ":"))


def decode(payload: str) -> CheckResult:
    check, type_, target, status, started, duration, samples, message, reason, attempts = json.loads(payload)
    return CheckResult(
        check,
        type_,
        target,
        Status(status),
        started,
        duration,
        tuple(Sample(n, v, tuple((k, x) for k, x in labels)) for n, v, labels in samples),
        message,
        Reason(reason),
        attempts,
    )


def outbox_health(path: Path) -> StateFileHealth:
    """The health of an outbox file (see agent/statefile.py)."""
    return StateFileHealth(
        path,
        "outbox",
        'new results are dropped and counted (mamori_outbox_dropped_total{reason="disk_full"})',
    )


class Outbox:
    """The outbox file, used from the event loop's thread.

    `health` reports write failures (agent/statefile.py); the agent passes one per file so that
    `/ready` and `mamori_durability_degraded` see them. Raises only `StartupError` when opening."""

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        sinks: Collection[str],
        health: StateFileHealth | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.health = health or outbox_health(path)
        self._db = open_state_file(path, "outbox", _setup, health=self.health, check_same_thread=False)
        # dropped[(sink, reason)]: counted here, exported by the lead (mamori_outbox_dropped_total)
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.appended = 0
        row = self._db.execute("SELECT coalesce(sum(size), 0), coalesce(max(seq), 0) FROM results").fetchone()
        self._bytes, last = int(row[0]), int(row[1])
        if last == 0:  # empty: AUTOINCREMENT's own counter may still be ahead of the table
            seq_row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'results'").fetchone()
            last = int(seq_row[0]) if seq_row else 0
        known = {
            name: (int(seq), float(at), int(streak))
            for name, seq, at, streak in self._db.execute(
                "SELECT sink, seq, next_attempt_at, streak FROM cursors"
            )
        }
        self._cursors: dict[str, int] = {}
        self._schedules: dict[str, tuple[float, int]] = {}  # sink -> (next attempt at, streak)
        self._unsaved: set[str] = set()  # sinks whose cursor or schedule the file does not have yet
        for sink in sinks:  # a new sink starts at the current end
            seq, next_attempt_at, streak = known.get(sink, (last, 0.0, 0))
            self._cursors[sink] = seq
            self._schedules[sink] = (next_attempt_at, streak)
        try:
            with self._tx():
                for sink in set(sinks) - set(known):
                    self._db.execute("INSERT INTO cursors (sink, seq) VALUES (?, ?)", (sink, last))
                for sink in set(known) - set(sinks):
                    self._db.execute("DELETE FROM cursors WHERE sink = ?", (sink,))
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            self.health.failed("cursors", exc)  # a full disk: saved with the next write that succeeds
            self._unsaved.update(set(sinks) - set(known))
            return
        self._collect()

    # --- writing -------------------------------------------------------------------------------
    def append(self, results: Sequence[CheckResult]) -> None:
        """Store results (one transaction), then enforce the size cap. Never raises for the disk:
        results it cannot store (full, unwritable) are counted as dropped for every sink
        (`disk_full`/`write_error`), and the health of the file says so."""
        if not results:
            return
        rows = []
        for r in results:
            payload = encode(r)
            rows.append((r.started_at, len(payload), payload))
        try:
            with self._tx():
                self._db.executemany("INSERT INTO results (started_at, size, payload) VALUES (?, ?, ?)", rows)
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            reason = self.health.failed("append", exc)
            for sink in self._cursors:
                self.dropped[(sink, reason)] += len(rows)
            return
        self.health.succeeded("append")
        self._bytes += sum(size for _, size, _ in rows)  # only once stored: a failed INSERT added none
        self.appended += len(rows)
        if self._unsaved:
            self._save_cursors()
        if self._bytes > self.max_bytes:
            self._shrink()

    def _shrink(self) -> None:
        """Delete the oldest rows down to the low-water mark; count them for the sinks behind."""
        target = self.max_bytes * _LOW_WATER
        excess = self._bytes - target
        cut, freed = 0, 0
        for seq, size in self._db.execute("SELECT seq, size FROM results ORDER BY seq"):
            cut, freed = int(seq), freed + int(size)
            if freed >= excess:
                break
        if cut == 0:
            return
        lost: dict[str, int] = {}
        try:
            with self._tx():
                for sink, cursor in self._cursors.items():
                    if cursor < cut:
                        (n,) = self._db.execute(
                            "SELECT count(*) FROM results WHERE seq > ? AND seq <= ?", (cursor, cut)
                        ).fetchone()
                        lost[sink] = int(n)
                        self._write_cursor(sink, cut, *self._schedules[sink])
                self._db.execute("DELETE FROM results WHERE seq <= ?", (cut,))
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            self.health.failed("shrink", exc)  # over the cap until a later append can delete
            return
        self.health.succeeded("shrink")
        self._bytes -= freed
        for sink, n in lost.items():
            self._cursors[sink] = cut
            self._unsaved.discard(sink)
            if n:
                self.dropped[(sink, "capacity")] += n
                log.warning(
                    "outbox full (%d bytes): %d results dropped for sink %s before it sent them",
                    self.max_bytes,
                    n,
                    sink,
                )

    # --- reading -------------------------------------------------------------------------------
    def read(self, sink: str, limit: int) -> list[Record]:
        """Up to `limit` results after `sink`'s cursor, oldest first."""
        rows = self._db.execute(
            "SELECT seq, payload FROM results WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._cursors[sink], limit),
        ).fetchall()
        return [Record(int(seq), decode(payload)) for seq, payload in rows]

    def ack(self, sink: str, seq: int) -> None:
        """Everything up to and including `seq` is handled by `sink`. Never raises for the disk:
        the cursor moves at once (what was sent is not offered again), and reaches the file with
        the next write that succeeds (a crash before that resends it: at-least-once)."""
        if seq <= self._cursors[sink]:
            return
        self._cursors[sink] = seq
        self._unsaved.add(sink)
        if self._save_cursors():
            self._collect()

    def settle(self, sink: str, records: Sequence[Record], result: PushResult) -> None:
        """The delivery log's settle (agent/delivery/pump.py): ack the handled prefix, count what
        the exporter gave up on (`result.dropped`). Never raises for the disk."""
        if result.handled:
            self.ack(sink, records[result.handled - 1].seq)
        for reason, n in result.dropped.items():
            self.count_dropped(sink, reason, n)

    def hold(self, sink: str) -> float:
        """Never: an ack the file does not have yet moves the cursor in memory (at-least-once)."""
        return 0.0

    def schedule(self, sink: str) -> tuple[float, int]:
        """`sink`'s (earliest next attempt as a unix time, failed pushes in a row), as last saved:
        a restarted agent waits out a Retry-After or backoff given before it stopped."""
        return self._schedules[sink]

    def set_schedule(self, sink: str, next_attempt_at: float, streak: int, error: str = "") -> None:
        """Persist `sink`'s retry schedule (with its cursor; the error is not kept). Never raises
        for the disk."""
        if self._schedules[sink] == (next_attempt_at, streak):
            return
        self._schedules[sink] = (next_attempt_at, streak)
        self._unsaved.add(sink)
        self._save_cursors()

    def count_dropped(self, sink: str, reason: str, n: int = 1) -> None:
        """A sink gave up on `n` results itself (e.g. `expired`: older than its service accepts)."""
        if n > 0:
            self.dropped[(sink, reason)] += n

    def depth(self, sink: str) -> int:
        """Results stored and not yet acked by `sink`."""
        (n,) = self._db.execute(
            "SELECT count(*) FROM results WHERE seq > ?", (self._cursors[sink],)
        ).fetchone()
        return int(n)

    def oldest_age(self, sink: str, now: float) -> float:
        """Seconds since the oldest result `sink` has not acked was started (0 when none)."""
        row = self._db.execute(
            "SELECT started_at FROM results WHERE seq > ? ORDER BY seq LIMIT 1", (self._cursors[sink],)
        ).fetchone()
        return 0.0 if row is None else max(0.0, now - float(row[0]))

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(self._cursors)

    def close(self) -> None:
        """Safe to call twice. Cursors not saved yet (a full disk) get a last chance; if it fails
        too, a restart resends what they covered (at-least-once)."""
        with contextlib.suppress(sqlite3.Error):
            if self._unsaved:
                self._save_cursors()
            self._db.close()

    # --- internals -----------------------------------------------------------------------------
    def _write_cursor(self, sink: str, seq: int, next_attempt_at: float, streak: int) -> None:
        self._db.execute(
            "UPDATE cursors SET seq = ?, next_attempt_at = ?, streak = ? WHERE sink = ?",
            (seq, next_attempt_at, streak, sink),
        )

    def _save_cursors(self) -> bool:
        """Write the cursors and schedules the file does not have yet. False if it cannot."""
        try:
            with self._tx():
                for sink in sorted(self._unsaved):
                    self._write_cursor(sink, self._cursors[sink], *self._schedules[sink])
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            self.health.failed("cursors", exc)
            return False
        self._unsaved.clear()
        self.health.succeeded("cursors")
        return True

    def _collect(self) -> None:
        """Delete the rows every sink has acked."""
        floor = min(self._cursors.values(), default=None)
        if floor is None:
            floor = int(self._db.execute("SELECT coalesce(max(seq), 0) FROM results").fetchone()[0])
        row = self._db.execute(
            "SELECT coalesce(sum(size), 0) FROM results WHERE seq <= ?", (floor,)
        ).fetchone()
        if int(row[0]) == 0:
            return
        try:
            with self._tx():
                self._db.execute("DELETE FROM results WHERE seq <= ?", (floor,))
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            self.health.failed("collect", exc)  # the rows stay (and count) until a later ack
            return
        self.health.succeeded("collect")
        self._bytes -= int(row[0])

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:  # sqlite rolls a failed COMMIT back itself, for some errors
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
