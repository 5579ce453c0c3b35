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

The log itself is the delivery engine's `DurableLog` (agent/delivery/log.py, a shared log: each
result for every exporter), the same implementation as the notifications of the alert state
file; this module adds the file, its schema versions and the results' encoding. Every call is a
short synchronous statement made from the event loop thread: ~0.1 ms per append on a local disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.delivery.log import DurableLog, Layout, NewEntry
from agent.delivery.outcome import PushResult
from agent.delivery.schema import add_column, migrate
from agent.model import CheckResult, Reason, Sample, Status, result_from_json
from agent.statefile import open_state_file
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
    """A result as a row: its one encoding (`CheckResult.to_json()`), compact."""
    return json.dumps(r.to_json(), separators=(",", ":"))


def decode(payload: str) -> CheckResult:
    """A row, in the encoding above or in the list this file held before (older agents)."""
    data = json.loads(payload)
    if isinstance(data, dict):
        return result_from_json(data)
    check, type_, target, status, started, duration, samples, message, reason, attempts = data
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


RESULTS = Layout(entries="results", time="started_at", cursors="cursors", key="sink", size=True)


class Outbox:
    """The outbox file: a shared `DurableLog` (agent/delivery/log.py) of check results, used from
    the event loop's thread; the delivery pump's `Log` for every exporter.

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
        self.log = DurableLog(self._db, RESULTS, self.health, sinks, max_bytes=max_bytes)
        # dropped[(sink, reason)]: counted here, exported by the lead (mamori_outbox_dropped_total)
        self.dropped = self.log.dropped

    @property
    def appended(self) -> int:
        return self.log.appended

    def append(self, results: Sequence[CheckResult]) -> None:
        """Store results (one transaction), then enforce the size cap. Never raises for the disk:
        results it cannot store (full, unwritable) are counted as dropped for every sink
        (`disk_full`/`write_error`), and the health of the file says so."""
        self.log.append([NewEntry(encode(r), r.started_at) for r in results])

    def read(self, sink: str, limit: int) -> list[Record]:
        """Up to `limit` results after `sink`'s cursor, oldest first."""
        return [Record(row.seq, decode(row.payload)) for row in self.log.read(sink, limit)]

    def ack(self, sink: str, seq: int) -> None:
        """Everything up to and including `seq` is handled by `sink`. Never raises for the disk:
        the cursor moves at once (what was sent is not offered again), and reaches the file with
        the next write that succeeds (a crash before that resends it: at-least-once)."""
        self.log.ack(sink, seq)

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
        return self.log.schedule(sink)

    def set_schedule(self, sink: str, next_attempt_at: float, streak: int, error: str = "") -> None:
        """Persist `sink`'s retry schedule (with its cursor; the error is not kept). Never raises
        for the disk."""
        self.log.set_schedule(sink, next_attempt_at, streak)

    def count_dropped(self, sink: str, reason: str, n: int = 1) -> None:
        """A sink gave up on `n` results itself (e.g. `expired`: older than its service accepts)."""
        self.log.count_dropped(sink, reason, n)

    def depth(self, sink: str) -> int:
        """Results stored and not yet acked by `sink`."""
        return self.log.depth(sink)

    def oldest_age(self, sink: str, now: float) -> float:
        """Seconds since the oldest result `sink` has not acked was started (0 when none)."""
        return self.log.oldest_age(sink, now)

    @property
    def bytes(self) -> int:
        return self.log.bytes

    @property
    def sinks(self) -> tuple[str, ...]:
        return self.log.consumers

    def close(self) -> None:
        """Safe to call twice. Cursors not saved yet (a full disk) get a last chance; if it fails
        too, a restart resends what they covered (at-least-once)."""
        self.log.close()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
