"""A result as the flat list of samples every metrics exporter sends, and the one place a result's
base series (probe_success, probe_duration_seconds, mamori_check_status, mamori_check_attempts)
are derived: `/metrics` renders these too (exporters/prometheus.py, which adds only the run's
timestamp as a series), so a query means the same in Prometheus, OCI Monitoring and an
OpenTelemetry backend. Units come from the name's suffix (Prometheus naming)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.catalog import DETAIL_METRICS, PER_CHECK_LABELS
from agent.model import CheckResult


@dataclass(frozen=True, slots=True)
class FlatSample:
    name: str
    labels: tuple[tuple[str, str], ...]  # check, target first, then the sample's own
    value: float
    timestamp: float  # unix seconds: when the run started


Series = tuple[str, tuple[tuple[str, str], ...], float]


def series(r: CheckResult) -> list[Series]:
    """The series of a result as (name, labels, value), its labels without the `check` and
    `target` every series carries (`PER_CHECK_LABELS`): what `flatten` adds them to, and what
    `/metrics` renders after a per-check prefix of them computed once."""
    out: list[Series] = [
        ("probe_success", (), 1.0 if r.success else 0.0),
        ("probe_duration_seconds", (), r.duration),
        ("mamori_check_status", (("type", r.check_type), ("reason", r.reason.value)), float(r.status)),
        ("mamori_check_attempts", (), float(r.attempts)),
    ]
    # A check with `series: basic` exports its result without the detailed series; the result
    # keeps them (the agent's alert rules and /api/v1/results see every sample).
    if r.series == "full":
        out.extend((s.name, s.labels, s.value) for s in r.samples)
    else:
        out.extend((s.name, s.labels, s.value) for s in r.samples if s.name not in DETAIL_METRICS)
    return out


def flatten(r: CheckResult) -> list[FlatSample]:
    base = tuple(zip(PER_CHECK_LABELS, (r.check, r.target), strict=True))
    ts = r.started_at
    return [FlatSample(name, base + labels, value, ts) for name, labels, value in series(r)]


_UNITS = (
    ("_seconds_total", "seconds"),
    ("_bytes_total", "bytes"),
    ("_seconds", "seconds"),
    ("_bytes", "bytes"),
    ("_ratio", "ratio"),
    ("_total", "count"),
    ("_celsius", "celsius"),
)


def unit(name: str) -> str | None:
    """The unit a metric name declares by its suffix, if any."""
    for suffix, u in _UNITS:
        if name.endswith(suffix):
            return u
    return None
