"""The docs tables that must not drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from agent.catalog import render_markdown
from agent.model import Reason

DOCS = Path(__file__).parents[2] / "docs"


def test_metrics_md_is_generated_from_the_catalog() -> None:
    assert (DOCS / "metrics.md").read_text() == render_markdown(), "run `make docs`"


def test_reasons_md_lists_exactly_the_reason_enum() -> None:
    documented = re.findall(r"^\| `([a-z_]+)` \|", (DOCS / "reasons.md").read_text(), re.M)
    assert documented == [r.value for r in Reason]


def test_every_path_the_architecture_names_exists() -> None:
    """docs/architecture.md's "Where things are" must stay true as files move (issue 13): every
    path it names (`dir/file.py`, `dir/`) exists in the checkout."""
    repo = DOCS.parent
    text = (DOCS / "architecture.md").read_text()
    named = set(re.findall(r"`((?:[a-z_.-]+/)+(?:[a-z_.-]+\.(?:py|md|yml|yaml|sql|toml))?)`", text))
    assert len(named) > 40, sorted(named)
    missing = sorted(p for p in named if not (repo / p).exists())
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"
