"""Whether writes to one of the agent's state files succeed, while it runs (`StateFileHealth`),
and the vocabulary of what a failed write costs.

Every write to a state file (the alert state file, the outbox) reports success or failure under
an operation name. While any operation is failing, durability is degraded: one ERROR line when
that starts (naming the file and the OS/sqlite error), one INFO line when every failing operation
has succeeded again, `mamori_durability_degraded{file}` is 1 and `/ready` answers 503 naming the
file. What is lost meanwhile is each writer's to count (agent/outbox.py, alerts/sink.py).

Opening a state file at start-up is agent/statefile.py's job; this module does not import
sqlite3, so an agent whose config has no state file never loads it.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from pathlib import Path

log = logging.getLogger("mamori.statefile")

RECOVERY_REASONS = ("damaged", "empty")  # mamori_state_file_recovered_total{reason}
LOSS_REASONS = ("disk_full", "write_error")  # what a failed write costs is counted under these
SQLITE_FULL = 13  # sqlite's primary result code for "database or disk is full"


def loss_reason(exc: BaseException) -> str:
    """`disk_full` for no space left (sqlite's SQLITE_FULL, ENOSPC, EDQUOT), else `write_error`."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == SQLITE_FULL:
        return "disk_full"
    return "write_error"


def describe(exc: BaseException) -> str:
    """One line: the OS's or sqlite's own words."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class StateFileHealth:
    """Whether writes to one state file succeed; shared by every writer of that file (and kept
    across a reload of alerting, so the counters are per process). Never raises."""

    def __init__(self, path: Path, what: str, consequence: str = "") -> None:
        self.path = Path(path)
        self.what = what  # "alert state file", "outbox"
        self.consequence = consequence  # appended to the ERROR line: what happens meanwhile
        self.recovered: Counter[str] = Counter()  # moved aside at start-up, by reason
        self._failing: dict[str, str] = {}  # operation -> the error, while it fails
        self._since = 0.0

    @property
    def degraded(self) -> bool:
        return bool(self._failing)

    @property
    def error(self) -> str:
        """Why durability is degraded (empty when it is not)."""
        return next(iter(self._failing.values()), "")

    def failed(self, operation: str, exc: BaseException) -> str:
        """A write failed; returns the loss reason (`disk_full` or `write_error`)."""
        text = describe(exc)
        if not self._failing:
            self._since = time.monotonic()
            log.error(
                "cannot write the %s %s: %s%s",
                self.what,
                self.path,
                text,
                f"; {self.consequence}" if self.consequence else "",
            )
        self._failing[operation] = text
        return loss_reason(exc)

    def succeeded(self, operation: str) -> None:
        if self._failing.pop(operation, None) is not None and not self._failing:
            log.info(
                "the %s %s is writable again (after %.0fs)",
                self.what,
                self.path,
                time.monotonic() - self._since,
            )
