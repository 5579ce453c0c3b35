"""The Prometheus sink's store of latest results: what a reload removes stays removed.

A removal travels the pipeline as an event (`CheckRemoved`, published by the scheduler once the
check's task is cancelled), so it reaches the sink after every result of the check still queued
for it."""

from __future__ import annotations

from agent.model import CheckRemoved, CheckResult, Status
from agent.pipeline import FanOut
from agent.telemetry import AgentMetrics
from exporters.prometheus import LatestResults, PrometheusSink


def result(check: str) -> CheckResult:
    return CheckResult(check, "tcp", "127.0.0.1:1", Status.OK, 1_700_000_000.0, 0.01)


def checks(latest: LatestResults) -> list[str]:
    return [r.check for r in latest.all()]


async def test_a_result_of_a_removed_check_still_on_its_way_does_not_bring_it_back() -> None:
    latest = LatestResults()
    fan = FanOut([PrometheusSink(latest)], capacity=100, metrics=AgentMetrics())
    for name in ("a", "b", "fleet:db"):
        fan.publish(result(name))
    fan.publish(result("b"))  # b's last result is still queued for this sink when b is removed
    fan.publish(CheckRemoved("b"))  # a reload removes b
    fan.start()
    assert await fan.drain(timeout=5)
    assert checks(latest) == ["a", "fleet:db"]  # a result that is no configured check stays
    assert 'check="b"' not in latest.exposition()
    fan.publish(result("b"))  # configured again: its results count again
    assert await fan.drain(timeout=5)
    assert checks(latest) == ["a", "b", "fleet:db"]
    await fan.aclose()


async def test_a_removal_is_never_dropped_from_a_full_queue() -> None:
    latest = LatestResults()
    fan = FanOut([PrometheusSink(latest)], capacity=2, metrics=AgentMetrics())
    fan.publish(result("b"))
    fan.publish(CheckRemoved("b"))
    fan.publish(result("a"))
    fan.publish(result("a"))  # full: the oldest *result* goes, the removal stays
    fan.start()
    assert await fan.drain(timeout=5)
    assert checks(latest) == ["a"]
    await fan.aclose()
