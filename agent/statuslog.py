"""One log line per status change of a check: what an operator reads in `docker logs`.

Never a line per run: a check that stays CRITICAL says so once, when it becomes CRITICAL. The
first result of a check is logged only when it is not OK (an agent that starts against a dead
target says so at once; a healthy start is the start line's summary, as with Gatus' alerting
and Telegraf's quiet gather). A reload keeps what each check last said (by name), so a changed
check does not repeat it; a removed check is forgotten, and says its status again if it comes
back.

Text, at INFO: `check web [http http://host/health]: OK -> CRITICAL (status): HTTP 503 ...`, or
`check db [tcp 10.0.0.5:5432]: first result CRITICAL (refused): ...`.
JSON (`--log-format json`) adds the fields of the change to the line's object
(agent/logs.py): check, check_type, target, previous_status (null for a first result), status,
reason, detail. The message is the result's, which the harness masked already
(agent/runner.py): a target echoing a password or a token shows `***`; the target is the
check's display form (no userinfo, no query).
"""

from __future__ import annotations

import logging

from agent.model import CheckResult, Status

log = logging.getLogger("mamori.status")

# A result's message may be long (a body excerpt, retries): the log line keeps the start of it.
MAX_DETAIL = 300


def _detail(message: str) -> str:
    one_line = " ".join(message.split())
    return one_line if len(one_line) <= MAX_DETAIL else one_line[: MAX_DETAIL - 3] + "..."


class StatusLog:
    """Remembers each check's last status; `observe()` logs a change. Never raises."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._last: dict[str, Status] = {}

    def observe(self, result: CheckResult) -> None:
        before = self._last.get(result.check)
        if before is result.status:
            return
        self._last[result.check] = result.status
        if before is None and result.status is Status.OK:
            return
        detail = _detail(result.message)
        status = result.status.name
        change = f"{before.name} -> {status}" if before is not None else f"first result {status}"
        self._log.info(
            "check %s [%s %s]: %s (%s)%s",
            result.check,
            result.check_type,
            result.target,
            change,
            result.reason.value,
            f": {detail}" if detail else "",
            extra={
                "fields": {
                    "check": result.check,
                    "check_type": result.check_type,
                    "target": result.target,
                    "previous_status": before.name if before is not None else None,
                    "status": status,
                    "reason": result.reason.value,
                    "detail": detail,
                }
            },
        )

    def forget(self, check: str) -> None:
        """The check was removed: its next result, if it comes back, is a first one again."""
        self._last.pop(check, None)
