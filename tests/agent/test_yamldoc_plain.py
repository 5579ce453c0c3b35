"""The loader's fast path for plain documents (issue 16: 10 000 checks load in a fraction of the
time): whenever it answers, it answers exactly what the counting composer does — the same values
and the same line of every path —, and it declines everything else, errors included, so that
every refusal is still the composer's (tests/agent/test_config_fuzz.py, invalid_configs/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import yamldoc
from tests.agent.test_config_fuzz import ENV, FUZZ, TOKENS, structures, yaml_text

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    p
    for folder in ("tests", "deploy", "agent", "lab", "alerts", "docs")
    for p in (REPO / folder).rglob("*.y*ml")
    if p.stat().st_size <= yamldoc.MAX_BYTES
)


def composed(text: str) -> yamldoc.YamlDoc | yamldoc.DocumentError:
    """What the counting composer alone answers."""
    plain, yamldoc._load_plain = yamldoc._load_plain, _decline
    try:
        return yamldoc.load(text, ENV)
    except yamldoc.DocumentError as exc:
        return exc
    finally:
        yamldoc._load_plain = plain


def _decline(text: str, env: object) -> yamldoc.YamlDoc:
    raise yamldoc._NotPlain


def assert_same_or_declined(text: str) -> bool:
    """True when the fast path answered (and agreed with the composer)."""
    try:
        fast = yamldoc._load_plain(text, ENV)
    except yamldoc._NotPlain:
        return False
    slow = composed(text)
    assert isinstance(slow, yamldoc.YamlDoc), f"the fast path accepted what the composer refuses: {slow}"
    assert (fast.data, fast.lines, fast.empty) == (slow.data, slow.lines, slow.empty)
    return True


def test_a_generated_config_of_many_checks_takes_the_fast_path() -> None:
    text = "agent:\n  interval: 15s\nchecks:\n" + "".join(
        f"  - name: web-{i}\n    type: http\n    url: http://127.0.0.1:8080/${{PORT}}/{i}\n    retries: 1\n"
        f"    tags: [a, 'b', \"c\"]\n    expected_status: [200, 301]\n    follow_redirects: no\n"
        for i in range(200)
    )
    assert assert_same_or_declined(text)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_of_the_repository_loads_the_same(path: Path) -> None:
    assert_same_or_declined(path.read_text(errors="replace"))


@pytest.mark.parametrize(
    "text",
    ["", "# only a comment\n", "a: &x 1\nb: *x\n", "a: !!int 1\n", "<<: {a: 1}\n", "a: 1\na: 2\n",
     "[1, 2", "a: ${UNSET}\n", "--- 1\n--- 2\n", "1: a\n", "? [a]\n: b\n", "a: =\n", "- " * 70 + "x\n"],
)  # fmt: skip
def test_what_only_the_composer_handles_is_declined(text: str) -> None:
    assert not assert_same_or_declined(text)


@settings(FUZZ, max_examples=300)
@given(yaml_text)
def test_random_yaml_text_loads_the_same(text: str) -> None:
    assert_same_or_declined(text)


@settings(FUZZ, max_examples=300)
@given(structures)
def test_random_structures_load_the_same(data: object) -> None:
    assert_same_or_declined(yaml.safe_dump(data, sort_keys=False))
    assert_same_or_declined(yaml.safe_dump(data, sort_keys=False, default_flow_style=True))


@settings(FUZZ, max_examples=300)
@given(st.lists(st.sampled_from(TOKENS[:40]), max_size=60).map("".join))
def test_random_plain_tokens_load_the_same(text: str) -> None:
    assert_same_or_declined(text)
