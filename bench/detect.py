"""Time to detect: from stopping the PostgreSQL lab's primary until the failover trigger reaches
the PagerDuty fake, on both paths, over the stack of tests/alerts/test_e2e.py (all on 127.0.0.1,
every process ours and stopped by its PID):

- the agent's own notifier: two in-process agents, each with a `postgres` check on the pair and a
  rule `status: critical, reason: [primary_down], failure_threshold: 2`, `group_wait: 0s`,
  routed to a `pagerduty` notifier whose `url` is the fake;
- Prometheus → Alertmanager: Prometheus scraping both agents, loading alerts/rules/*.yml with
  every `for:` rewritten to 5 s (the real PostgresFailoverRecommended has `for: 1m`: add 55 s to
  this path in production), alerting to Alertmanager with the deployed config pointed at the fake
  and group_wait/group_interval 1 s.

Each run: a healthy baseline (both agents scraped and reaching the primary), `stop_primary()`
(fast), then the first arrival of each trigger is recorded (polled every 10 ms), then
`start_primary()` and the resolves are awaited; each run has a fresh stack. The clock starts just before
`stop_primary()` is called. Target (agent path, every agent, every run): ≤ agent interval ×
failure_threshold + 2 s.

    python -m bench.detect [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import median, verdict, write_result
from lab.wait import wait_until
from tests.alerts.test_e2e import (
    AGENT_INTERVAL,
    EVAL_INTERVAL,
    FAILURE_THRESHOLD,
    GROUP_INTERVAL,
    GROUP_WAIT,
    RULE_FOR,
    SCRAPE_INTERVAL,
    E2EStack,
    e2e_stack,
)

TARGET = AGENT_INTERVAL * FAILURE_THRESHOLD + 2.0
TIMEOUT = 60.0


async def one_run(stack: E2EStack, first: bool) -> dict[str, float]:
    await stack.wait_healthy(60, first=first)
    seen_before = {a: len(stack.agent_events(a, "trigger")) for a in stack.agent_names}
    am_before = len(stack.failover_events("trigger"))
    began = time.monotonic()
    await stack.lab.stop_primary()
    arrived: dict[str, float] = {}
    while len(arrived) < len(stack.agent_names) + 1:
        now = time.monotonic()
        if now - began > TIMEOUT:
            raise TimeoutError(f"after {TIMEOUT:g} s only {sorted(arrived)} arrived")
        for agent in stack.agent_names:
            if agent not in arrived and len(stack.agent_events(agent, "trigger")) > seen_before[agent]:
                arrived[agent] = now - began
        if "alertmanager" not in arrived and len(stack.failover_events("trigger")) > am_before:
            arrived["alertmanager"] = now - began
        await asyncio.sleep(0.01)
    am_resolves = len(stack.failover_events("resolve"))
    await stack.lab.start_primary()
    await wait_until(
        "the resolves",
        lambda: (
            len(stack.failover_events("resolve")) > am_resolves
            and all(len(stack.agent_events(a, "resolve")) > seen_before[a] for a in stack.agent_names)
        ),
        TIMEOUT,
    )
    return arrived


async def run(runs: int) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    names: tuple[str, ...] = ()
    for i in range(runs):
        # A fresh stack per run (lab, agents, state files, Prometheus, Alertmanager, fakes).
        async with e2e_stack() as stack:
            arrived = await one_run(stack, first=True)
            names = stack.agent_names
        results.append(arrived)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(arrived.items())))
    agent_times = [r[a] for r in results for a in names]
    am_times = [r["alertmanager"] for r in results]
    ok = max(agent_times) <= TARGET
    return {
        "parameters": {
            "runs": runs,
            "agents": len(names),
            "agent_interval_s": AGENT_INTERVAL,
            "failure_threshold": FAILURE_THRESHOLD,
            "agent_group_wait_s": 0.0,
            "scrape_interval_s": SCRAPE_INTERVAL,
            "evaluation_interval_s": EVAL_INTERVAL,
            "rule_for": RULE_FOR,
            "rule_for_production": "1m",
            "am_group_wait": GROUP_WAIT,
            "am_group_interval": GROUP_INTERVAL,
            "stop_mode": "fast",
        },
        "runs": results,
        "agent_path_s": {"median": median(agent_times), "max": max(agent_times)},
        "alertmanager_path_s": {"median": median(am_times), "max": max(am_times)},
        "target_agent_path_s": TARGET,
        "verdict": verdict(ok),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.runs))
    figures = dict(result)
    path = write_result("detect", figures.pop("parameters"), figures)
    agent, am = result["agent_path_s"], result["alertmanager_path_s"]
    print(
        f"agent's own notifier: median {agent['median']:.2f} s, max {agent['max']:.2f} s "
        f"(target ≤ {TARGET:g} s) {result['verdict']}"
    )
    print(f"Prometheus → Alertmanager (for: {RULE_FOR}): median {am['median']:.2f} s, max {am['max']:.2f} s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
