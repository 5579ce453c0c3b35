"""The schema version of a durable log's file, and its migration (PRAGMA user_version).

Each log file (the exporters' outbox, the alert state file with its notifications) declares its
tables (`CREATE … IF NOT EXISTS`, as of the newest version) and one migration step per version
after the first. Opening a file runs the steps it lacks, in one transaction with the new version,
so a crash leaves either the old schema or the new one. Steps only add (columns with defaults,
tables), so a file written by this release still opens in the release before it; a file from a
newer release (a higher version) is opened as it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

Step = Callable[[sqlite3.Connection], None]


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, schema: str, steps: Sequence[Step]) -> None:
    """Create what is missing of `schema`, then bring the file to version `len(steps)`: step `i`
    takes a version `i` file to version `i + 1`. On an autocommit connection (the state files')."""
    db.executescript(schema)
    current = version(db)
    if current >= len(steps):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in steps[current:]:
            step(db)
        db.execute(f"PRAGMA user_version = {len(steps)}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def add_column(db: sqlite3.Connection, table: str, column: str, definition: str) -> None:
    """A step's usual work: add `column` unless the table has it (a file created by `schema`)."""
    if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
