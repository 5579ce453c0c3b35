"""The durable log of the delivery engine: entries on disk, a cursor and a retry schedule per
consumer, dead letters, a size cap — tables inside a state file, sharing its connection.

    DurableLog(db, RESULTS, health, ["oci", "mqtt"], max_bytes=…)  # each entry for every consumer
    DurableLog(db, NOTIFICATIONS, health, strict=True)             # each entry for one (a route)

Two kinds of logs, one implementation:
- A *shared* log (the exporters' outbox, `Layout.consumer` None): every entry is for every
  consumer. A consumer added starts at the current end, one removed stops holding rows; an entry
  goes when every consumer's cursor is past it.
- An *addressed* log (the notifications of alerts.db): each entry names its consumer; a cursor
  starts before the consumer's first entry, and an entry goes in the transaction that moves its
  consumer's cursor past it (delivered) or moves it to the dead letters (rejected).

Guarantees:
- An entry is on disk before any consumer sees it: `append` (its own transaction) or `insert`
  (inside the caller's, e.g. with the alert states that caused the notifications).
- Never raises for the disk after opening: a cursor, schedule or dead letter that cannot be
  written is kept in memory (the cursor moves at once: what was settled is not offered again)
  and written with the next write that succeeds; `append` counts what it could not store as
  dropped. A *strict* log (a notifier route: strict FIFO) also holds its consumer (`hold`) while
  a settled entry is not recorded, so nothing overtakes it and a crash cannot resend it after
  what follows it.
- Each consumer's retry schedule (earliest next attempt, failed pushes in a row, last error where
  the layout keeps it) is saved with its cursor, so a restart waits out a Retry-After given before.
- With `max_bytes` (shared logs): past it, the oldest entries go, down to 90 % of it, counted as
  dropped (`capacity`) for every consumer that had not settled them.

Used from the event loop's thread: short synchronous statements (~0.1 ms on a local disk).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

from agent.statefile import is_environmental
from agent.statehealth import StateFileHealth

log = logging.getLogger("mamori.outbox")

UNSAVED_RETRY = 5.0  # seconds a strict log holds its consumer between attempts to record
_LOW_WATER = 0.9  # after hitting the cap, delete down to this share of it


@dataclass(frozen=True)
class Layout:
    """Where a log's tables are in its file (the names the files had before the engine)."""

    entries: str  # table: seq INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT, <time> REAL, …
    time: str  # the entries' time column (when the entry was made)
    cursors: str  # table: <key> TEXT PRIMARY KEY, seq, next_attempt_at, streak[, last_error]
    key: str  # the cursors' consumer column
    consumer: str | None = None  # the entries' consumer column; None: a shared log
    size: bool = False  # the entries have a `size` column (needed for `max_bytes`)
    errors: bool = False  # the cursors keep the last error (`last_error`)
    extra: tuple[str, ...] = ()  # more entry columns, given by `insert`
    dead: str | None = None  # dead letters: <consumer>, payload, reason, attempts, created_at, died_at
    dead_extra: tuple[str, ...] = ()  # entry columns copied to the dead letters too


@dataclass(frozen=True, slots=True)
class NewEntry:
    payload: str
    at: float  # when it was made (its original timestamp)
    consumer: str | None = None  # an addressed log's consumer
    extra: tuple[object, ...] = ()  # values of `Layout.extra`


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    payload: str
    at: float


class DurableLog:
    """See the module docstring. `health` reports write failures (agent/statefile.py)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        layout: Layout,
        health: StateFileHealth,
        consumers: Collection[str] | None = None,
        *,
        max_bytes: int | None = None,
        strict: bool = False,
        dead_limit: int = 1000,
    ) -> None:
        """`consumers`: a shared log's (required); an addressed log learns them from its entries."""
        self.db = db
        self.layout = layout
        self.health = health
        self.max_bytes = max_bytes
        self.strict = strict
        self.dead_limit = dead_limit
        # dropped[(consumer, reason)]: counted here, exported by the owner's collector
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.appended = 0
        self._bytes = 0
        if layout.size:
            self._bytes = int(
                db.execute(f"SELECT coalesce(sum(size), 0) FROM {layout.entries}").fetchone()[0]
            )
        error = "last_error" if layout.errors else "''"
        known = {
            str(name): (int(seq), float(at), int(streak), str(err))
            for name, seq, at, streak, err in db.execute(
                f"SELECT {layout.key}, seq, next_attempt_at, streak, {error} FROM {layout.cursors}"
            )
        }
        self._cursors: dict[str, int] = {}
        self._schedules: dict[str, tuple[float, int, str]] = {}  # (next attempt at, streak, error)
        self._unsaved: set[str] = set()  # consumers whose cursor or schedule the file lacks
        self._moved: set[str] = set()  # … whose cursor the file lacks (a strict log holds them)
        self._dead: list[tuple[int, str, int, float]] = []  # dead letters not written yet
        if consumers is None:  # addressed: every consumer the file knows
            for name, (seq, at, streak, err) in known.items():
                self._cursors[name] = seq
                self._schedules[name] = (at, streak, err)
            return
        last = self._last_seq()
        for name in consumers:  # a new consumer of a shared log starts at the current end
            seq, at, streak, err = known.get(name, (last, 0.0, 0, ""))
            self._cursors[name] = seq
            self._schedules[name] = (at, streak, err)
        try:
            with self._tx():
                for name in set(consumers) - set(known):
                    self._write_cursor(name)
                for name in set(known) - set(consumers):
                    db.execute(f"DELETE FROM {layout.cursors} WHERE {layout.key} = ?", (name,))
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            self.health.failed("cursors", exc)  # a full disk: saved with the next write that succeeds
            self._unsaved.update(set(consumers) - set(known))
            return
        self._collect()

    # --- writing -------------------------------------------------------------------------------
    def insert(self, entries: Sequence[NewEntry]) -> None:
        """Insert entries inside the caller's transaction (raises like any statement; the caller
        rolls back). For an addressed log whose entries are made with other state."""
        layout = self.layout
        columns = [layout.time, "payload"]
        columns += ["size"] if layout.size else []
        columns += [layout.consumer] if layout.consumer else []
        columns += layout.extra
        rows = []
        for e in entries:
            values: list[object] = [e.at, e.payload]
            values += [len(e.payload)] if layout.size else []
            values += [e.consumer] if layout.consumer else []
            values += e.extra
            rows.append(values)
        marks = ", ".join("?" * len(columns))
        self.db.executemany(f"INSERT INTO {layout.entries} ({', '.join(columns)}) VALUES ({marks})", rows)

    def append(self, entries: Sequence[NewEntry]) -> None:
        """Store entries (one transaction), then enforce the size cap. Never raises for the disk:
        entries it cannot store (full, unwritable) are counted as dropped for every consumer
        (`disk_full`/`write_error`), and the health of the file says so."""
        if not entries:
            return
        try:
            with self._tx():
                self.insert(entries)
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            reason = self.health.failed("append", exc)
            for name in self._cursors:
                self.dropped[(name, reason)] += len(entries)
            return
        self.health.succeeded("append")
        self._bytes += sum(len(e.payload) for e in entries)  # only once stored
        self.appended += len(entries)
        if self._unsaved:
            self._save_cursors()
        if self.max_bytes is not None and self._bytes > self.max_bytes:
            self._shrink(self.max_bytes)

    def _shrink(self, max_bytes: int) -> None:
        """Delete the oldest rows down to the low-water mark; count them for the consumers behind."""
        entries = self.layout.entries
        excess = self._bytes - max_bytes * _LOW_WATER
        cut, freed = 0, 0
        for seq, size in self.db.execute(f"SELECT seq, size FROM {entries} ORDER BY seq"):
            cut, freed = int(seq), freed + int(size)
            if freed >= excess:
                break
        if cut == 0:
            return
        lost: dict[str, int] = {}
        try:
            with self._tx():
                for name, cursor in self._cursors.items():
                    if cursor < cut:
                        (n,) = self.db.execute(
                            f"SELECT count(*) FROM {entries} WHERE seq > ? AND seq <= ?", (cursor, cut)
                        ).fetchone()
                        lost[name] = int(n)
                        self._write_cursor(name, cut)
                self.db.execute(f"DELETE FROM {entries} WHERE seq <= ?", (cut,))
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            self.health.failed("shrink", exc)  # over the cap until a later append can delete
            return
        self.health.succeeded("shrink")
        self._bytes -= freed
        for name, n in lost.items():
            self._cursors[name] = cut
            self._unsaved.discard(name)
            if n:
                self.dropped[(name, "capacity")] += n
                log.warning(
                    "outbox full (%d bytes): %d results dropped for sink %s before it sent them",
                    max_bytes,
                    n,
                    name,
                )

    # --- reading -------------------------------------------------------------------------------
    def read(self, consumer: str, limit: int) -> list[Row]:
        """Up to `limit` entries after `consumer`'s cursor, oldest first."""
        where, args = self._after(consumer)
        rows = self.db.execute(
            f"SELECT seq, payload, {self.layout.time} FROM {self.layout.entries} WHERE {where}"
            " ORDER BY seq LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [Row(int(seq), str(payload), float(at)) for seq, payload, at in rows]

    def depth(self, consumer: str) -> int:
        """Entries not settled yet by `consumer`."""
        where, args = self._after(consumer)
        (n,) = self.db.execute(f"SELECT count(*) FROM {self.layout.entries} WHERE {where}", args).fetchone()
        return int(n)

    def oldest_age(self, consumer: str, now: float) -> float:
        """Seconds since the oldest entry `consumer` has not settled was made (0 when none)."""
        where, args = self._after(consumer)
        row = self.db.execute(
            f"SELECT {self.layout.time} FROM {self.layout.entries} WHERE {where} ORDER BY seq LIMIT 1", args
        ).fetchone()
        return 0.0 if row is None else max(0.0, now - float(row[0]))

    def consumers_waiting(self) -> list[str]:
        """An addressed log's consumers with entries not settled (one removed from the config too)."""
        column = self.layout.consumer
        assert column is not None, "a shared log's consumers are given"
        names = [str(r[0]) for r in self.db.execute(f"SELECT DISTINCT {column} FROM {self.layout.entries}")]
        return sorted(name for name in names if self.depth(name))

    def dead(self, limit: int = 100) -> list[tuple[str, str]]:
        """The newest dead letters (payload, reason), newest first."""
        assert self.layout.dead is not None
        rows = self.db.execute(
            f"SELECT payload, reason FROM {self.layout.dead} ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(str(p), str(r)) for p, r in rows]

    # --- settling ------------------------------------------------------------------------------
    def ack(self, consumer: str, seq: int) -> None:
        """Everything of `consumer` up to and including `seq` is settled. Never raises for the
        disk: the cursor moves at once, and reaches the file with the next write that succeeds."""
        if seq <= self._cursor(consumer):
            return
        self._cursors[consumer] = seq
        self._unsaved.add(consumer)
        self._moved.add(consumer)
        if self._save_cursors():
            self._collect()

    def reject(self, consumer: str, row: Row, reason: str, attempts: int, now: float) -> None:
        """`row` is refused for good: it moves to the dead letters (the newest `dead_limit` kept)
        with `reason`, in the transaction that moves the cursor past it."""
        if self.layout.dead is not None:
            self._dead.append((row.seq, reason[:500], attempts, now))
        self.ack(consumer, row.seq)

    def hold(self, consumer: str) -> float:
        """Seconds `consumer` must wait before anything is read: a strict log's settled entry that
        is not recorded yet (tried again now). 0 otherwise."""
        if self._unsaved and not self._save_cursors() and self.strict and consumer in self._moved:
            return UNSAVED_RETRY
        return 0.0

    def schedule(self, consumer: str) -> tuple[float, int]:
        """`consumer`'s (earliest next attempt as a unix time, failed pushes in a row), as last
        saved: a restarted agent waits out a Retry-After or backoff given before it stopped."""
        self._cursor(consumer)
        at, streak, _ = self._schedules[consumer]
        return at, streak

    def last_error(self, consumer: str) -> str:
        self._cursor(consumer)
        return self._schedules[consumer][2]

    def set_schedule(self, consumer: str, next_attempt_at: float, streak: int, error: str = "") -> None:
        """Persist `consumer`'s retry schedule (with its cursor). Never raises for the disk."""
        self._cursor(consumer)
        schedule = (next_attempt_at, streak, error[:500] if self.layout.errors else "")
        if self._schedules[consumer] == schedule:
            return
        self._schedules[consumer] = schedule
        self._unsaved.add(consumer)
        self._save_cursors()

    def count_dropped(self, consumer: str, reason: str, n: int = 1) -> None:
        """A consumer gave up on `n` entries itself (e.g. `expired`: older than its service accepts)."""
        if n > 0:
            self.dropped[(consumer, reason)] += n

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def consumers(self) -> tuple[str, ...]:
        return tuple(self._cursors)

    def close(self) -> None:
        """Cursors not saved yet (a full disk) get a last chance; if it fails too, a restart
        offers again what they covered (at-least-once). Never raises; the owner closes the file."""
        with contextlib.suppress(sqlite3.Error):
            if self._unsaved:
                self._save_cursors()

    # --- internals -----------------------------------------------------------------------------
    def _cursor(self, consumer: str) -> int:
        if consumer not in self._cursors:
            if self.layout.consumer is None:
                raise KeyError(consumer)  # a shared log's consumers are given when opening
            self._cursors[consumer] = 0  # an addressed log: before the consumer's first entry
            self._schedules[consumer] = (0.0, 0, "")
        return self._cursors[consumer]

    def _after(self, consumer: str) -> tuple[str, tuple[object, ...]]:
        cursor = self._cursor(consumer)
        if self.layout.consumer is None:
            return "seq > ?", (cursor,)
        return f"{self.layout.consumer} = ? AND seq > ?", (consumer, cursor)

    def _last_seq(self) -> int:
        entries = self.layout.entries
        last = int(self.db.execute(f"SELECT coalesce(max(seq), 0) FROM {entries}").fetchone()[0])
        if last == 0:  # empty: AUTOINCREMENT's own counter may still be ahead of the table
            row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (entries,)).fetchone()
            last = int(row[0]) if row else 0
        return last

    def _write_cursor(self, consumer: str, seq: int | None = None) -> None:
        layout = self.layout
        at, streak, error = self._schedules[consumer]
        columns, values = [layout.key, "seq", "next_attempt_at", "streak"], [consumer, seq, at, streak]
        if seq is None:
            values[1] = self._cursors[consumer]
        if layout.errors:
            columns.append("last_error")
            values.append(error)
        marks = ", ".join("?" * len(columns))
        self.db.execute(
            f"INSERT OR REPLACE INTO {layout.cursors} ({', '.join(columns)}) VALUES ({marks})", values
        )

    def _save_cursors(self) -> bool:
        """Write what the file lacks: cursors and schedules, the dead letters, and (an addressed
        log) the deletion of the entries settled. False if it cannot."""
        layout = self.layout
        try:
            with self._tx():
                for seq, reason, attempts, now in self._dead:
                    self._write_dead(seq, reason, attempts, now)
                for consumer in sorted(self._unsaved):
                    self._write_cursor(consumer)
                    if layout.consumer is not None:
                        self.db.execute(
                            f"DELETE FROM {layout.entries} WHERE {layout.consumer} = ? AND seq <= ?",
                            (consumer, self._cursors[consumer]),
                        )
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            self.health.failed("cursors" if layout.consumer is None else "deliveries", exc)
            return False
        self._unsaved.clear()
        self._moved.clear()
        self._dead.clear()
        self.health.succeeded("cursors" if layout.consumer is None else "deliveries")
        return True

    def _write_dead(self, seq: int, reason: str, attempts: int, now: float) -> None:
        layout = self.layout
        assert layout.dead is not None and layout.consumer is not None
        copied = "".join(f", {c}" for c in layout.dead_extra)
        self.db.execute(
            f"INSERT INTO {layout.dead} ({layout.consumer}, payload, reason, attempts, created_at, died_at"
            f"{copied}) SELECT {layout.consumer}, payload, ?, ?, {layout.time}, ?{copied}"
            f" FROM {layout.entries} WHERE seq = ?",
            (reason, attempts, now, seq),
        )
        self.db.execute(
            f"DELETE FROM {layout.dead} WHERE seq <= (SELECT MAX(seq) FROM {layout.dead}) - ?",
            (self.dead_limit,),
        )

    def _collect(self) -> None:
        """A shared log: delete the rows every consumer has settled."""
        layout = self.layout
        if layout.consumer is not None:
            return  # an addressed log deletes them with the cursor
        floor = min(self._cursors.values(), default=None)
        if floor is None:
            floor = int(self.db.execute(f"SELECT coalesce(max(seq), 0) FROM {layout.entries}").fetchone()[0])
        size = "sum(size)" if layout.size else "count(*)"
        row = self.db.execute(
            f"SELECT coalesce({size}, 0) FROM {layout.entries} WHERE seq <= ?", (floor,)
        ).fetchone()
        if int(row[0]) == 0:
            return
        try:
            with self._tx():
                self.db.execute(f"DELETE FROM {layout.entries} WHERE seq <= ?", (floor,))
        except sqlite3.Error as exc:
            if not is_environmental(exc):
                raise
            self.health.failed("collect", exc)  # the rows stay (and count) until a later ack
            return
        self.health.succeeded("collect")
        if layout.size:
            self._bytes -= int(row[0])

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction; rolled back (if sqlite has not already) when it fails."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # sqlite rolls a failed COMMIT back itself, for some errors
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise
