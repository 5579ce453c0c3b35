"""Fixtures for tests that need the real PostgreSQL pair of lab/postgres.py.

    from tests.pg import fixture_pg_cluster, fixture_pg_pair  # noqa: F401  (pytest finds them)

    pytestmark = pytest.mark.asyncio(loop_scope="session")

    async def test_something(pg_pair: PgLab) -> None:
        await pg_pair.cut_link()                 # any fault; the next test starts healthy again

Import both (`pg_pair` asks for `pg_cluster`).

- `pg_cluster` (session): the started lab. One cluster serves the whole run, however many
  modules import the fixture: pytest makes one fixture per importing module, so they share one
  lab here, started by the first and stopped after the last (at the end of the session).
- `pg_pair` (function): the same lab after `reset()` — streaming, caught up (and the primary's
  pg_stat_replication says so), no fault left over by an earlier test, mamori.heartbeat empty,
  pg_stat_archiver zeroed, nothing due for autovacuum (an idle primary commits nothing).

Both run on the session's event loop; mark the tests `@pytest.mark.asyncio(loop_scope="session")`
(the lab itself works from any loop, so a function-loop test could drive it too).

If the PostgreSQL 15 binaries are missing the fixture fails — never skips: `make test` installs
the `postgresql` package when it is missing. The cluster lives in a short directory under /tmp
(the `postgres` user cannot enter pytest's tmp_path), removed at teardown.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest_asyncio

from lab.postgres import PgLab


class _Shared:
    lab: PgLab | None = None
    directory: Path | None = None
    users = 0


async def _acquire() -> PgLab:
    _Shared.users += 1
    if _Shared.lab is None:
        directory = Path(tempfile.mkdtemp(prefix="mamori-pg-"))
        lab = PgLab(directory)
        try:
            await lab.start()  # stops what it started on failure
        except BaseException:
            _Shared.users -= 1
            shutil.rmtree(directory, ignore_errors=True)
            raise
        _Shared.lab, _Shared.directory = lab, directory
    return _Shared.lab


async def _release() -> None:
    _Shared.users -= 1
    if _Shared.users > 0 or _Shared.lab is None:
        return
    lab, directory = _Shared.lab, _Shared.directory
    _Shared.lab = _Shared.directory = None
    try:
        await lab.stop()
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


# Registered under `name`: a test module imports `fixture_pg_pair` and asks for `pg_pair`, so the
# test's parameter does not shadow the import (ruff F811).
@pytest_asyncio.fixture(name="pg_cluster", scope="session", loop_scope="session")
async def fixture_pg_cluster() -> AsyncIterator[PgLab]:
    """The started Postgres lab, shared by the whole session (stopped and removed at its end)."""
    lab = await _acquire()
    try:
        yield lab
    finally:
        await _release()


@pytest_asyncio.fixture(name="pg_pair", loop_scope="session")
async def fixture_pg_pair(pg_cluster: PgLab) -> PgLab:
    """The session's lab, reset to the healthy baseline before the test."""
    await pg_cluster.reset()
    return pg_cluster


async def query(dsn: str, sql: Any, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh autocommit connection; return its rows (or [])."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall() if cursor.description is not None else []


async def one(dsn: str, sql: Any, params: tuple[Any, ...] | None = None) -> Any:
    """The single value of a one-row, one-column query."""
    rows = await query(dsn, sql, params)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]
