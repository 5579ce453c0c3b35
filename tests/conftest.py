"""Shared fixtures. Everything a test starts listens on 127.0.0.1 only."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from checks import REGISTRY


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_checks() -> Iterator[None]:
    """Register the test-only check types of tests/agent/fakes.py for the duration of a test."""
    extra = {
        "sleep": "tests.agent.fakes:SleepCheck",
        "boom": "tests.agent.fakes:BoomCheck",
        "flaky": "tests.agent.fakes:FlakyCheck",
    }
    REGISTRY.update(extra)
    try:
        yield
    finally:
        for key in extra:
            REGISTRY.pop(key, None)
