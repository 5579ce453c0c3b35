"""The agent's own metrics at N checks, in process: what the per-check counters (8 series per
check: runs by status, attempts by outcome, errors, skipped runs) cost to keep and to scrape.

    python -m bench.own_metrics [--checks 10000] [--repeat 15]

Reports the memory the per-check counters take (tracemalloc, after one run of each check), the
loop's share of a scrape (`MetricRegistry.snapshot()`), the render thread's share (the snapshot
rendered to the bytes /metrics starts with, `render_snapshot_parts` + join), medians of
`--repeat`, and the cost of counting one run on the loop. A profiling aid for issue 16, item 2
(no anchor, no result file: compare figures taken in the same conditions).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

from agent.metrics import render_snapshot_parts
from agent.model import CheckResult, Status
from agent.telemetry import AgentMetrics


def run_result(name: str) -> CheckResult:
    return CheckResult(
        check=name,
        check_type="http",
        target="http://127.0.0.1/",
        status=Status.OK,
        started_at=0.0,
        duration=0.001,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    names = [f"http-{i:05d}.example.internal" for i in range(args.checks)]
    results = [run_result(name) for name in names]

    tracemalloc.start()
    metrics = AgentMetrics()
    before = tracemalloc.get_traced_memory()[0]
    for result in results:
        metrics.check_counters(result.check).count_run(result)
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    snapshots, renders, size = [], [], 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        snap = metrics.registry.snapshot()
        t1 = time.perf_counter()
        size = len(b"".join(render_snapshot_parts(snap)))
        t2 = time.perf_counter()
        snapshots.append(t1 - t0)
        renders.append(t2 - t1)

    counters = [metrics.check_counters(name) for name in names]
    t0 = time.perf_counter()
    for c, result in zip(counters, results, strict=True):
        c.count_run(result)
    per_run = (time.perf_counter() - t0) / len(results)

    print(f"checks: {args.checks}")
    print(f"per-check counters kept: {kept / 1e6:.2f} MB ({kept / args.checks:.0f} B per check, tracemalloc)")
    print(f"snapshot on the loop: {statistics.median(snapshots) * 1e3:.2f} ms (median of {args.repeat})")
    print(f"render of the own metrics: {statistics.median(renders) * 1e3:.2f} ms, {size} bytes")
    print(f"counting one run: {per_run * 1e6:.2f} us")


if __name__ == "__main__":
    main()
