"""Small pieces of text shared by checks, alerts and the CLI."""

from __future__ import annotations


def seconds(value: float | None) -> str:
    """A duration for messages: 0.012s, 42s, 5m10s, 2h03m ("unknown" for None)."""
    if value is None:
        return "unknown"
    if value < 10:
        return f"{value:.3g}s"
    if value < 60:
        return f"{value:.0f}s"
    minutes = int(value // 60)
    if minutes < 120:
        return f"{minutes}m{int(value % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
