"""`agentctl check`'s Nagios plugin output (Nagios plugin guidelines, Icinga's check plugin API).

One check: `TYPE STATUS - message | perfdata`, the check's own perfdata (`Check.perfdata`), then
the check's report (`Check.summary`, e.g. postgres replication) as long output lines. Several
checks: one line for all (the worst status and the count per status) with every check's perfdata,
labels prefixed `check::` as check_multi does, then one long output line per check, worst first.

A `|` starts perfdata for Nagios, so one in a message (a body regex, a target's text) is shown as
`¦`; a message is one line. The exit code (the worst status) is the caller's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent.model import Status, worst

if TYPE_CHECKING:
    from agent.model import CheckResult
    from checks.base import Check


# Nagios' and Icinga's ranking (agent.model.worst): CRITICAL is the more actionable than UNKNOWN.
_WORST_FIRST = (Status.CRITICAL, Status.UNKNOWN, Status.WARNING, Status.OK)


def _text(text: str) -> str:
    """One line of plugin output: no `|` (it starts perfdata), no line break."""
    return " ".join(text.replace("|", "¦").split())


def _status_text(result: CheckResult) -> str:
    return f"{result.status.name} - {_text(result.message or result.reason.value)}"


def nagios_output(checks: list[Check[Any]], results: list[CheckResult]) -> str:
    """The plugin output for `results` (one per check, in order). Never raises on any message."""
    if not results:
        return "MAMORI UNKNOWN - no check ran"
    if len(results) == 1:
        check, result = checks[0], results[0]
        perf = " ".join(p.render() for p in check.perfdata(result))
        line = f"{check.type_name.upper()} {_status_text(result)}"
        lines = [f"{line} | {perf}" if perf else line]
        summary = check.summary(result)
        if summary:
            lines.extend(row.replace("|", "¦").rstrip() for row in summary.splitlines())
        return "\n".join(lines)
    counts = Counter(r.status for r in results)
    status = worst([r.status for r in results])
    tally = ", ".join(f"{counts[s]} {s.name}" for s in _WORST_FIRST if counts[s])
    perf = " ".join(
        p.render()
        for check, result in zip(checks, results, strict=True)
        for p in (replace(d, label=f"{check.name}::{d.label}") for d in check.perfdata(result))
    )
    first = f"MAMORI {status.name} - {len(results)} checks: {tally}"
    order = sorted(range(len(results)), key=lambda i: _WORST_FIRST.index(results[i].status))
    rest = [f"{results[i].check}: {_status_text(results[i])}" for i in order]
    return "\n".join([f"{first} | {perf}" if perf else first, *rest])
