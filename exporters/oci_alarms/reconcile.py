"""Plan and apply by display name: what differs between the file and the compartment, and the
writes that make the compartment hold exactly the file's alarms."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TextIO

from pydantic.alias_generators import to_camel

from exporters.oci_alarms.client import AlarmsApi, AlarmsError, ApiError
from exporters.oci_alarms.model import MANAGED_TAG, AlarmsFile, AlarmSpec, iso_seconds
from exporters.oci_alarms.mql import normalize_query

# The fields compared with an existing alarm: everything we send but the compartment (the alarm
# was found in it) and the display name (it was found by it).
COMPARED = (
    "metric_compartment_id",
    "namespace",
    "resource_group",
    "query",
    "resolution",
    "pending_duration",
    "severity",
    "body",
    "is_notifications_per_metric_dimension_enabled",
    "message_format",
    "destinations",
    "repeat_notification_duration",
    "is_enabled",
    "freeform_tags",
)


def _same(name: str, want: Any, have: Any) -> bool:
    if want is None:
        return True  # an optional field the file leaves out: whatever the alarm has
    if name == "query":
        return normalize_query(want) == normalize_query(str(have or ""))
    if name in ("pending_duration", "repeat_notification_duration"):
        return have is not None and iso_seconds(want) == iso_seconds(str(have))
    if name == "destinations":
        return sorted(want) == sorted(have or [])
    if name == "freeform_tags":
        return all((have or {}).get(k) == v for k, v in want.items())
    if name == "body":
        return str(want).strip() == str(have or "").strip()
    return bool(want == have)


def differences(desired: Mapping[str, Any], current: Any) -> list[tuple[str, Any, Any]]:
    """(field, current value, desired value) of every managed field that differs."""
    out = []
    for name in COMPARED:
        want, have = desired.get(name), getattr(current, name, None)
        if not _same(name, want, have):
            out.append((name, have, want))
    return out


def _short(value: Any, width: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Summary:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # in the compartment, not in the file
    deleted: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)


_DRY_RUN_VERBS = {"created": "would create", "updated": "would update", "deleted": "would delete"}


class Reconciler:
    """Makes the compartments hold the file's alarms (see the module doc); writes one line per
    alarm to `out`, then a summary."""

    def __init__(self, api: AlarmsApi, out: TextIO, *, dry_run: bool = False, prune: bool = False) -> None:
        self.api = api
        self.out = out
        self.dry_run = dry_run
        self.prune = prune
        self.show_diff = False

    def line(self, action: str, name: str, detail: str = "") -> None:
        verb = _DRY_RUN_VERBS.get(action, action) if self.dry_run else action
        self.out.write(f"{verb:<14} {name}{'  ' + detail if detail else ''}\n")

    def apply(self, spec: AlarmsFile) -> Summary:
        summary = Summary()
        existing = {c: self.api.list(c) for c in spec.compartments}
        wanted: dict[str, set[str]] = {c: set() for c in existing}
        for alarm in spec.alarms:
            wanted[alarm.compartment_id].add(alarm.display_name)
        by_name: dict[str, dict[str, list[Any]]] = {}
        problems = []
        for compartment, summaries in existing.items():
            index: dict[str, list[Any]] = {}
            for s in summaries:
                index.setdefault(s.display_name, []).append(s)
            by_name[compartment] = index
            for name in sorted(wanted[compartment]):
                if len(index.get(name, [])) > 1:
                    ids = ", ".join(s.id for s in index[name])
                    problems.append(
                        f"compartment {compartment} has {len(index[name])} alarms named {name!r} ({ids}): "
                        "delete or rename all but one; nothing was changed"
                    )
        if problems:
            raise AlarmsError("\n".join(problems))
        for alarm in spec.alarms:
            matches = by_name[alarm.compartment_id].get(alarm.display_name, [])
            self._guarded(alarm.display_name, summary, partial(self._one, alarm, matches, summary))
        for compartment, summaries in existing.items():
            for s in summaries:
                if s.display_name not in wanted[compartment]:
                    self._guarded(s.display_name, summary, partial(self._extra, s, summary))
        return summary

    def _guarded(self, name: str, summary: Summary, work: Callable[[], None]) -> None:
        """Run one alarm's work; a refusal for that alarm only (400, 404, 409, 412) is reported
        and the run goes on. A fatal error (401, retries exhausted, unreachable) propagates."""
        try:
            work()
        except ApiError as exc:
            if exc.fatal:
                raise
            summary.failed.append(name)
            self.line("failed", name, str(exc).split(": ", 1)[-1])

    def _one(self, alarm: AlarmSpec, matches: list[Any], summary: Summary) -> None:
        desired = alarm.details()
        if not matches:
            if self.dry_run:
                self.line("created", alarm.display_name)
            else:
                created = self.api.create(desired)
                self.line("created", alarm.display_name, created.id)
            summary.created.append(alarm.display_name)
            return
        current, etag = self.api.get(matches[0].id, alarm.display_name)
        changes = differences(desired, current)
        if not changes:
            self.line("unchanged", alarm.display_name)
            summary.unchanged.append(alarm.display_name)
            return
        names = ", ".join(to_camel(name) for name, _, _ in changes)
        if not self.dry_run:
            update = {k: v for k, v in desired.items() if k != "compartment_id"}
            update["freeform_tags"] = {**(current.freeform_tags or {}), **desired["freeform_tags"]}
            self.api.update(current.id, update, etag)
        self.line("updated", alarm.display_name, f"({names})")
        if self.show_diff:
            for name, have, want in changes:
                self.out.write(f"    {to_camel(name)}: {_short(have)} -> {_short(want)}\n")
        summary.updated.append(alarm.display_name)

    def _extra(self, s: Any, summary: Summary) -> None:
        managed = (s.freeform_tags or {}).get(MANAGED_TAG[0]) == MANAGED_TAG[1]
        if self.prune and managed:
            if not self.dry_run:
                self.api.delete(s.id, s.display_name)
            self.line("deleted", s.display_name, f"{s.id} (not in the file, tagged {'='.join(MANAGED_TAG)})")
            summary.deleted.append(s.display_name)
            return
        why = "not in the file; kept" + (
            f" (--prune deletes it: tagged {'='.join(MANAGED_TAG)})"
            if managed and not self.prune
            else ("" if managed else f" (not tagged {'='.join(MANAGED_TAG)}: never deleted)")
        )
        self.line("kept", s.display_name, f"{s.id} {why}")
        summary.kept.append(s.display_name)


def summary_line(spec: AlarmsFile, summary: Summary, dry_run: bool) -> str:
    n = len(spec.alarms)
    parts = [
        f"{len(summary.created)} {'to create' if dry_run else 'created'}",
        f"{len(summary.updated)} {'to update' if dry_run else 'updated'}",
        f"{len(summary.unchanged)} unchanged",
    ]
    if summary.failed:
        parts.append(f"{len(summary.failed)} failed")
    text = f"{spec.source}: {n} alarm{'s' if n != 1 else ''}: " + ", ".join(parts)
    if summary.deleted:
        text += f"; {len(summary.deleted)} not in the file {'to delete' if dry_run else 'deleted'}"
    if summary.kept:
        kept = len(summary.kept)
        text += f"; {kept} other alarm{'s' if kept != 1 else ''} in the compartment kept"
    if dry_run:
        text += " (dry run: nothing was changed)"
    return text
