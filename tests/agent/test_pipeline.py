"""Fan-out: a slow or failing sink never delays the others; drops are counted."""

from __future__ import annotations

import asyncio

from agent.model import CheckRemoved, CheckResult, Status
from agent.pipeline import FanOut
from agent.telemetry import AgentMetrics


def result(i: int) -> CheckResult:
    return CheckResult(
        check=f"c{i}", check_type="sleep", target="t", status=Status.OK, started_at=0.0, duration=0.0
    )


class Recorder:
    def __init__(self, name: str, delay: float = 0.0, fail: bool = False) -> None:
        self.name = name
        self.delay = delay
        self.fail = fail
        self.got: list[str] = []
        self.closed = 0

    async def consume(self, r: CheckResult) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("sink is down")
        self.got.append(r.check)

    async def remove(self, event: CheckRemoved) -> None:
        self.got.append(f"removed {event.check}")

    async def aclose(self) -> None:
        self.closed += 1


def value(metrics: AgentMetrics, name: str, sink: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"sink": sink})


async def test_slow_sink_drops_oldest_and_fast_sink_gets_everything() -> None:
    metrics = AgentMetrics()
    fast, slow = Recorder("fast"), Recorder("slow", delay=10)
    fan = FanOut([fast, slow], capacity=5, metrics=metrics)
    fan.start()
    for i in range(20):
        fan.publish(result(i))  # never blocks
        await asyncio.sleep(0)  # let the workers run, as the scheduler does between results
    assert await fan.drain(timeout=0.2) is False  # the slow sink is still busy
    assert fast.got == [f"c{i}" for i in range(20)]
    # slow took c0 and is stuck on it; of the 19 queued after, only the newest 5 are kept.
    assert value(metrics, "mamori_sink_dropped_total", "slow") == 14
    assert value(metrics, "mamori_sink_dropped_total", "fast") == 0
    assert value(metrics, "mamori_sink_queue_depth", "slow") == 5
    assert value(metrics, "mamori_sink_queue_capacity", "slow") == 5
    await fan.aclose(timeout=0.1)
    assert (fast.closed, slow.closed) == (1, 1)
    await fan.aclose(timeout=0.1)  # safe twice


async def test_failing_sink_is_counted_and_keeps_running() -> None:
    metrics = AgentMetrics()
    bad, good = Recorder("bad", fail=True), Recorder("good")
    fan = FanOut([bad, good], capacity=100, metrics=metrics)
    fan.start()
    for i in range(3):
        fan.publish(result(i))
    assert await fan.drain(timeout=2) is True
    assert value(metrics, "mamori_sink_errors_total", "bad") == 3
    assert good.got == ["c0", "c1", "c2"]
    await fan.aclose()


async def test_close_without_start_is_safe() -> None:
    sink = Recorder("s")
    await FanOut([sink], capacity=1, metrics=AgentMetrics()).aclose()
    assert sink.closed == 1
