"""The Prometheus sink's store of latest results: what a reload removes stays removed."""

from __future__ import annotations

from agent.model import CheckResult, Status
from exporters.prometheus import LatestResults


def result(check: str) -> CheckResult:
    return CheckResult(check, "tcp", "127.0.0.1:1", Status.OK, 1_700_000_000.0, 0.01)


def checks(latest: LatestResults) -> list[str]:
    return [r.check for r in latest.all()]


def test_a_result_of_a_removed_check_still_on_its_way_does_not_bring_it_back() -> None:
    latest = LatestResults()
    latest.retain(["a", "b"])
    for name in ("a", "b", "fleet:db"):
        latest.put(result(name))
    latest.retain(["a"])  # a reload removes b
    assert checks(latest) == ["a", "fleet:db"]  # a result that is no configured check stays
    latest.put(result("b"))  # b's last result was still queued for this sink
    assert checks(latest) == ["a", "fleet:db"]
    assert 'check="b"' not in latest.exposition()
    latest.retain(["a", "b"])  # configured again: its results count again
    latest.put(result("b"))
    assert checks(latest) == ["a", "b", "fleet:db"]


def test_the_first_reload_removes_checks_of_the_start_config() -> None:
    latest = LatestResults()
    latest.retain(["a", "b"])  # what the agent does at start
    latest.put(result("b"))
    latest.retain(["a"])
    assert checks(latest) == []
