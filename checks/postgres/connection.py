"""One connection per node: opening it, dropping it without a round trip, and the reason a
node could not be talked to (`failure`), from psycopg's errors and libpq's messages."""

from __future__ import annotations

import math
import re
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

from agent.fields import secret_value
from agent.model import Reason
from checks.postgres.config import PgNodeConfig, PostgresConfig

Conn = psycopg.AsyncConnection[dict[str, Any]]
APPLICATION_NAME = "mamori"


class NodeConnection:
    """One configured node and its single connection."""

    def __init__(self, config: PgNodeConfig) -> None:
        self.config = config
        self.conn: Conn | None = None
        self.archive_dir = True  # False once pg_ls_archive_statusdir() was refused
        self.previous_lsn: tuple[int, float] | None = None  # (lsn, loop time) of the last probe

    def usable(self) -> Conn | None:
        conn = self.conn
        if conn is not None and (conn.closed or conn.broken):
            self.abort()
            return None
        return conn

    def abort(self) -> None:
        """Drop the connection now, without a round trip: safe while a query is in flight (the
        waiting coroutine then fails instead of asking a possibly frozen server to cancel)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.pgconn.finish()


async def connect(cfg: PostgresConfig, node: PgNodeConfig) -> Conn:
    """A new connection to `node` (autocommit, dict rows, statement timeout, local commit)."""
    return await psycopg.AsyncConnection.connect(
        host=node.host,
        port=node.port,
        user=cfg.user,
        password=secret_value(cfg.password),
        dbname=cfg.dbname,
        sslmode=cfg.sslmode,
        # libpq counts whole seconds (at least 2); the caller's asyncio timeout is exact.
        connect_timeout=max(2, math.ceil(cfg.connect_timeout_s)),
        application_name=APPLICATION_NAME,
        # synchronous_commit=local: the heartbeat is flushed (and so sent to standbys) at
        # once, and never waits for a synchronous standby that may be the one down.
        options=(
            f"-c statement_timeout={max(1, round(cfg.statement_timeout_s * 1000))} "
            "-c synchronous_commit=local"
        ),
        autocommit=True,
        row_factory=dict_row,
    )


def release_frames(exc: BaseException | None) -> None:
    """Clear the tracebacks of `exc` and of every exception it was raised from or during."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__context__ or exc.__cause__


_MESSAGE_PREFIX = re.compile(
    r'^(?:connection failed: )?(?:connection to server at "[^"]*", port \d+ failed: )?'
)
_BY_TEXT: tuple[tuple[str, Reason], ...] = (
    ("password authentication failed", Reason.AUTH_FAILED),
    ("no pg_hba.conf entry", Reason.AUTH_FAILED),
    ("authentication failed", Reason.AUTH_FAILED),
    ("does not exist", Reason.AUTH_FAILED),  # FATAL: database/role "x" does not exist
    ("too many clients", Reason.TOO_MANY_CONNECTIONS),
    ("connection slots are reserved", Reason.TOO_MANY_CONNECTIONS),
    ("refused", Reason.REFUSED),
    ("no route to host", Reason.UNREACHABLE),
    ("network is unreachable", Reason.UNREACHABLE),
    ("failed to resolve host", Reason.DNS),
    ("could not translate host name", Reason.DNS),
    ("name or service not known", Reason.DNS),
    ("timeout", Reason.TIMEOUT),
    ("timed out", Reason.TIMEOUT),
    ("closed the connection", Reason.CONNECTION_RESET),
    ("connection reset", Reason.CONNECTION_RESET),
    ("broken pipe", Reason.CONNECTION_RESET),
    ("the connection is lost", Reason.CONNECTION_RESET),
    ("the connection is closed", Reason.CONNECTION_RESET),
    ("eof detected", Reason.CONNECTION_RESET),
    ("starting up", Reason.UNAVAILABLE),
    ("shutting down", Reason.UNAVAILABLE),
)


def failure(exc: BaseException) -> tuple[Reason, str]:
    """The reason and a one-line description of why talking to a node failed."""
    text = _MESSAGE_PREFIX.sub("", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    text = text.replace("FATAL:  ", "").strip() or type(exc).__name__
    if isinstance(exc, TimeoutError | errors.ConnectionTimeout | errors.QueryCanceled):
        return Reason.TIMEOUT, "timed out" if isinstance(exc, TimeoutError) else text
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate.startswith("28") or sqlstate == "3D000":
        return Reason.AUTH_FAILED, text
    if sqlstate == "53300":
        return Reason.TOO_MANY_CONNECTIONS, text
    if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02"):
        return Reason.CONNECTION_RESET, text
    if sqlstate == "57P03":
        return Reason.UNAVAILABLE, text
    if not sqlstate:
        lowered = text.lower()
        for needle, reason in _BY_TEXT:
            if needle in lowered:
                return reason, text
    return Reason.UNAVAILABLE, text
