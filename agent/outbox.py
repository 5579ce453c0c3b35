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

from agent.errors import StartupError
from agent.model import CheckResult, Reason, Sample, Status

log = logging.getLogger("mamori.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, size INTEGER NOT NULL,
    payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""
_LOW_WATER = 0.9  # after hitting the cap, delete down to this share of it


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


class Outbox:
    def __init__(self, path: Path, max_bytes: int, sinks: Collection[str]) -> None:
        self.path = path
        self.max_bytes = max_bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"cannot open the outbox {path}: {exc}") from None
        # dropped[(sink, reason)]: counted here, exported by the lead (mamori_outbox_dropped_total)
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.appended = 0
        row = self._db.execute("SELECT coalesce(sum(size), 0), coalesce(max(seq), 0) FROM results").fetchone()
        self._bytes, last = int(row[0]), int(row[1])
        if last == 0:  # empty: AUTOINCREMENT's own counter may still be ahead of the table
            seq_row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'results'").fetchone()
            last = int(seq_row[0]) if seq_row else 0
        known = {name: seq for name, seq in self._db.execute("SELECT sink, seq FROM cursors")}
        self._cursors: dict[str, int] = {}
        with self._tx():
            for sink in sinks:
                if sink in known:
                    self._cursors[sink] = known[sink]
                else:
                    self._cursors[sink] = last
                    self._db.execute("INSERT INTO cursors (sink, seq) VALUES (?, ?)", (sink, last))
            for sink in set(known) - set(sinks):
                self._db.execute("DELETE FROM cursors WHERE sink = ?", (sink,))
        self._collect()

    # --- writing -------------------------------------------------------------------------------
    def append(self, results: Sequence[CheckResult]) -> None:
        """Store results (one transaction), then enforce the size cap."""
        if not results:
            return
        rows = []
        for r in results:
            payload = encode(r)
            rows.append((r.started_at, len(payload), payload))
            self._bytes += len(payload)
        with self._tx():
            self._db.executemany("INSERT INTO results (started_at, size, payload) VALUES (?, ?, ?)", rows)
        self.appended += len(rows)
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
        with self._tx():
            for sink, cursor in self._cursors.items():
                if cursor < cut:
                    (lost,) = self._db.execute(
                        "SELECT count(*) FROM results WHERE seq > ? AND seq <= ?", (cursor, cut)
                    ).fetchone()
                    if lost:
                        self.dropped[(sink, "capacity")] += int(lost)
                        log.warning(
                            "outbox full (%d bytes): %d results dropped for sink %s before it sent them",
                            self.max_bytes,
                            lost,
                            sink,
                        )
                    self._set_cursor(sink, cut)
            self._db.execute("DELETE FROM results WHERE seq <= ?", (cut,))
        self._bytes -= freed

    # --- reading -------------------------------------------------------------------------------
    def read(self, sink: str, limit: int) -> list[Record]:
        """Up to `limit` results after `sink`'s cursor, oldest first."""
        rows = self._db.execute(
            "SELECT seq, payload FROM results WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._cursors[sink], limit),
        ).fetchall()
        return [Record(int(seq), decode(payload)) for seq, payload in rows]

    def ack(self, sink: str, seq: int) -> None:
        """Everything up to and including `seq` is handled by `sink`."""
        if seq <= self._cursors[sink]:
            return
        with self._tx():
            self._set_cursor(sink, seq)
        self._collect()

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
        """Safe to call twice."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    # --- internals -----------------------------------------------------------------------------
    def _set_cursor(self, sink: str, seq: int) -> None:
        self._db.execute("UPDATE cursors SET seq = ? WHERE sink = ?", (seq, sink))
        self._cursors[sink] = seq

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
        with self._tx():
            self._db.execute("DELETE FROM results WHERE seq <= ?", (floor,))
        self._bytes -= int(row[0])

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
