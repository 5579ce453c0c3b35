"""The Prometheus sink's store of latest results: what a reload removes stays removed.

A removal travels the pipeline as an event (`CheckRemoved`, published by the scheduler once the
check's task is cancelled), so it reaches the sink after every result of the check still queued
for it."""

from __future__ import annotations

from agent.catalog import CHECK_METRICS
from agent.model import CheckRemoved, CheckResult, Sample, Status
from agent.pipeline import FanOut
from agent.telemetry import AgentMetrics
from exporters.prometheus import LatestResults, PrometheusSink, render_result


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


# --- the exposition: a snapshot, grouped by family ----------------------------------------------


def http_result(check: str, started_at: float) -> CheckResult:
    samples = tuple(
        Sample("probe_http_duration_seconds", 0.001 * i, (("phase", phase),))
        for i, phase in enumerate(("resolve", "connect", "tls", "processing", "transfer"))
    ) + (Sample("probe_http_status_code", 200.0), Sample("probe_http_content_length", 612.0))
    return CheckResult(check, "http", "http://127.0.0.1/", Status.OK, started_at, 0.002, samples)


def reference(results: list[CheckResult]) -> str:
    """The exposition as the sink rendered it before snapshots: every result's lines grouped by
    metric in catalog order, each metric's lines in check name order."""
    families: dict[str, list[str]] = {}
    for r in sorted(results, key=lambda r: r.check):
        for metric, lines in render_result(r).items():
            families.setdefault(metric, []).extend(lines)
    out = []
    for metric in sorted(families, key=lambda m: (list(CHECK_METRICS).index(m), m)):
        spec = CHECK_METRICS[metric]
        out.append(f"# HELP {metric} {spec.help}\n# TYPE {metric} {spec.type}\n")
        out.extend(families[metric])
    return "".join(out)


def test_checks_of_several_types_interleaved_render_as_one_family_each_in_name_order() -> None:
    latest = LatestResults()
    results = [
        http_result(f"c{i:03d}", 1e9 + i) if i % 3 else result(f"c{i:03d}").with_(started_at=1e9 + i)
        for i in reversed(range(60))
    ]
    for r in results:
        latest.put(r)
    text = latest.exposition()
    assert text == reference(results)
    assert text.count("# TYPE probe_success gauge\n") == 1


def test_a_snapshot_shows_each_check_once_as_it_was_when_taken() -> None:
    latest = LatestResults()
    for i in range(100):
        latest.put(http_result(f"c{i:03d}", 1.0))
    snap = latest.snapshot()
    for i in range(100):  # results that arrive while the snapshot is rendered
        latest.put(http_result(f"c{i:03d}", 2.0))
    latest.forget("c050")
    latest.put(http_result("new", 2.0))
    text = snap.text()
    assert text == reference([http_result(f"c{i:03d}", 1.0) for i in range(100)])
    assert snap.body() == text.encode()
    later = [http_result(f"c{i:03d}", 2.0) for i in range(100) if i != 50] + [http_result("new", 2.0)]
    assert latest.exposition() == reference(later)


def failed_http_result(check: str, started_at: float) -> CheckResult:
    """An http run that never got an answer: no status code, no content length."""
    samples = (Sample("probe_http_duration_seconds", 0.0, (("phase", "connect"),)),)
    return CheckResult(check, "http", "http://127.0.0.1/", Status.CRITICAL, started_at, 0.002, samples)


def test_a_family_a_check_no_longer_has_loses_its_line_and_an_empty_family_its_header() -> None:
    """Lines are kept by family: a result without a family the last one had takes the old line
    out of it, and a family no check has any more is not shown (no header without samples)."""
    latest = LatestResults()
    latest.put(http_result("a", 1.0))
    latest.put(http_result("b", 1.0))
    latest.put(failed_http_result("a", 2.0))
    assert latest.exposition() == reference([failed_http_result("a", 2.0), http_result("b", 1.0)])
    latest.put(failed_http_result("b", 2.0))
    text = latest.exposition()
    assert text == reference([failed_http_result("a", 2.0), failed_http_result("b", 2.0)])
    assert "probe_http_status_code" not in text
    latest.put(http_result("a", 3.0))  # back again
    assert latest.exposition() == reference([http_result("a", 3.0), failed_http_result("b", 2.0)])
    latest.forget("a")
    latest.forget("b")
    latest.forget("b")  # twice: nothing to forget
    assert latest.exposition() == ""


# --- what is rendered once per check: its label prefix ------------------------------------------


def test_a_check_whose_target_changes_is_shown_with_the_new_target_only() -> None:
    # A reload that changes a check's URL keeps its name: the prefix kept for the check must follow.
    latest = LatestResults()
    latest.put(result("a"))
    latest.put(CheckResult("a", "tcp", "127.0.0.1:2", Status.OK, 1_700_000_001.0, 0.01))
    text = latest.exposition()
    assert 'target="127.0.0.1:2"' in text
    assert 'target="127.0.0.1:1"' not in text
    assert text.count('{check="a",target="127.0.0.1:2"}') == 4  # success, duration, attempts, last run


def test_two_checks_never_share_a_prefix() -> None:
    latest = LatestResults()
    latest.put(CheckResult("a", "tcp", 'x"y', Status.OK, 1_700_000_000.0, 0.01))
    latest.put(CheckResult("b", "tcp", 'x"y', Status.OK, 1_700_000_000.0, 0.01))
    latest.put(CheckResult("a", "tcp", 'x"y', Status.CRITICAL, 1_700_000_002.0, 0.01))
    text = latest.exposition()
    assert text.count('{check="a",target="x\\"y"}') == 4  # success, duration, attempts, last run
    assert text.count('{check="b",target="x\\"y"}') == 4
    assert 'mamori_check_status{check="a",target="x\\"y",type="tcp",reason="ok"} 2.0' in text
