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


def flatten(r: CheckResult) -> list[FlatSample]:
    base = tuple(zip(PER_CHECK_LABELS, (r.check, r.target), strict=True))
    ts = r.started_at
    out = [
        FlatSample("probe_success", base, 1.0 if r.success else 0.0, ts),
        FlatSample("probe_duration_seconds", base, r.duration, ts),
        FlatSample(
            "mamori_check_status",
            base + (("type", r.check_type), ("reason", r.reason.value)),
            float(r.status),
            ts,
        ),
        FlatSample("mamori_check_attempts", base, float(r.attempts), ts),
    ]
    # A check with `series: basic` exports its result without the detailed series; the result
    # keeps them (the agent's alert rules and /api/v1/results see every sample).
    samples = r.samples if r.series == "full" else [s for s in r.samples if s.name not in DETAIL_METRICS]
    out.extend(FlatSample(s.name, base + s.labels, s.value, ts) for s in samples)
    return out


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
