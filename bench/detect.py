"""Time to page a dead primary on both paging paths, at production speed, against a naive anchor
measured in the same run (issue 15 item 3: ≤ 30 s on both paths, no page for a 15 s stall).

The stack is lab/failover.py's `FailoverLab` at `chain_scale` 1, i.e. production's failover chain
(deploy/examples/production.yml, deploy/prometheus/, deploy/alertmanager/): the real PostgreSQL
pair; three in-process agents in two zones (agent1 with the primary in ad1, agent2 and agent3 with
the standby in ad2), each reaching each node through its own link; the postgres check every 2 s,
timeout 2 s, `stall_grace` 17 s; the fleet check every 1 s over a real Mosquitto; a real
Prometheus scraping the agents every 5 s and evaluating the failover group every 2 s; a real
Alertmanager (group_wait 1 s: the lab's floor, production's failover route says 0 s); the strict
PagerDuty fake. All on 127.0.0.1, every process ours and stopped by its PID.

Faults, each `--runs` times, each from a checked healthy, quiet baseline (`FailoverLab.revert`):
- `stopped`: the primary stopped (fast shutdown: connections refused at once);
- `frozen`: the primary SIGSTOPped (a hung host: connections time out, so the stall grace runs);
- `stall`: the primary SIGSTOPped for 15 s, then SIGCONT (a VM pause, a long checkpoint): must
  page nothing.
The clock starts when the fault is injected. Recorded: the first PagerDuty trigger of
PostgresFailoverRecommended sent by Alertmanager (the Prometheus path), each agent's trigger of
`pg_primary_down_confirmed` (the agent path), and the anchor's trigger.

The anchor: postgres_exporter on the primary, scraped by the same Prometheus at the same 5 s,
with the rule an operator writes first — `pg_up == 0 or up == 0` on that job, no `for:`, one
vantage point — through the same Alertmanager. It is as fast as a page can be and has no
defence against a stall or a partition; `ratio` is Mamori's time over the anchor's.

    python -m bench.detect [--runs 2] [--faults stopped,frozen,stall]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.common import median, verdict, write_result
from bench.pg_cluster import exporter_queries, postgres_exporter
from lab.failover import FailoverLab, Observed, failover_lab, until_paged
from lab.ports import HOST, free_port
from tests.fakes.pagerduty import fake_pagerduty
from tests.fakes.slack import fake_slack

TARGET = 30.0  # issue 15 item 3, both paths
STALL = 15.0
FAULTS = ("stopped", "frozen", "stall")
PROMETHEUS_PAGE = "alertmanager:PostgresFailoverRecommended"
AGENT_PAGE = "agent:pg_primary_down_confirmed"
ANCHOR = "AnchorPrimaryDown"
ANCHOR_PAGE = f"alertmanager:{ANCHOR}"
FALSE_PAGES: list[str] = []  # what paged during the stalls (named in the result)
ANCHOR_RULES = f"""groups:
  - name: anchor
    rules:
      - alert: {ANCHOR}
        expr: pg_up{{job="anchor"}} == 0 or up{{job="anchor"}} == 0
        labels:
          severity: critical
          cluster: anchor
        annotations:
          summary: "postgres_exporter: the primary is down (one vantage point, no for:)"
"""


def _paged(seen: Observed, key: str, who: str = "") -> float | None:
    for s in seen.items:
        if f"{s.path}:{s.name}" == key and s.state in ("trigger", "firing") and (not who or s.who == who):
            return s.at
    return None


async def one_run(fl: FailoverLab, fault: str) -> dict[str, float | None]:
    await fl.revert()
    if fault == "stopped":
        await fl.pg.stop_primary()
    else:
        await fl.pg.faults.freeze_primary()
    if fault == "stall":
        async with fl.watch() as seen:
            await asyncio.sleep(STALL)
            await fl.pg.faults.thaw_primary()
            await asyncio.sleep(fl.window)  # whatever the stall set off has arrived by now
    else:
        seen = await until_paged(fl, 3 * TARGET, (PROMETHEUS_PAGE, ANCHOR_PAGE), (AGENT_PAGE,))
    out: dict[str, float | None] = {
        "prometheus": _paged(seen, PROMETHEUS_PAGE),
        "anchor": _paged(seen, ANCHOR_PAGE),
    }
    for agent in fl.names:
        out[agent] = _paged(seen, AGENT_PAGE, agent)
    if fault == "stall":  # any failover or inconclusive page of Mamori's is a false one
        loud = sorted(
            k
            for k in seen.fired()
            if ANCHOR not in k
            and any(w in k for w in ("PrimaryDown", "Failover", "primary_down", "failover"))
        )
        FALSE_PAGES.extend(loud)
        out["false_pages"] = float(len(loud))
    return out


@contextlib.asynccontextmanager
async def stack() -> AsyncIterator[FailoverLab]:
    port = free_port()
    jobs = [{"job_name": "anchor", "static_configs": [{"targets": [f"{HOST}:{port}"]}]}]
    work = Path(tempfile.mkdtemp(prefix="mamori-detect-"))
    try:
        queries = work / "queries.yaml"
        queries.write_text(exporter_queries()[0])
        async with (
            fake_pagerduty() as pd,
            fake_slack() as slack,
            failover_lab(
                pd, slack, chain_scale=1.0, extra_jobs=jobs, extra_rules={"anchor.yml": ANCHOR_RULES}
            ) as fl,
        ):
            with postgres_exporter(
                fl.pg.primary, fl.pg.monitoring_password, queries, work, database="postgres", port=port
            ):
                await fl.baseline(120)
                yield fl
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _summary(values: list[float | None]) -> dict[str, float | None]:
    got = [v for v in values if v is not None]
    return {
        "median": median(got) if got else None,
        "max": max(got) if got else None,
        "missed": float(len(values) - len(got)),
    }


async def run(runs: int, faults: tuple[str, ...]) -> dict[str, Any]:
    results: dict[str, list[dict[str, float | None]]] = {f: [] for f in faults}
    began = time.monotonic()
    async with stack() as fl:
        names = fl.names
        timing = {
            "check_interval_s": fl.check_interval,
            "check_timeout_s": fl.check_timeout,
            "stall_grace_s": fl.stall_grace,
            "scrape_interval_s": fl.scrape_interval,
            "worst_case_s": fl.window,
        }
        for i in range(runs):
            for fault in faults:
                got = await one_run(fl, fault)
                results[fault].append(got)
                shown = ", ".join(f"{k} {v:.1f} s" if v is not None else f"{k} -" for k, v in got.items())
                print(f"run {i + 1} {fault}: {shown}", flush=True)
        await fl.revert()
    figures: dict[str, Any] = {}
    ok = True
    for fault, rows in results.items():
        if fault == "stall":
            false = sum(r.get("false_pages") or 0.0 for r in rows)
            anchor_paged = sum(1 for r in rows if r["anchor"] is not None)
            figures[fault] = {
                "mamori_false_pages": false,
                "false_pages_seen": sorted(set(FALSE_PAGES)),
                "anchor_pages": float(anchor_paged),
                "runs": len(rows),
            }
            ok = ok and false == 0
            continue
        prom = _summary([r["prometheus"] for r in rows])
        agent = _summary([r[a] for r in rows for a in names])
        anchor = _summary([r["anchor"] for r in rows])
        figures[fault] = {
            "prometheus_path_s": prom,
            "agent_path_s": agent,
            "anchor_s": anchor,
            "ratio_prometheus_to_anchor": (prom["median"] / anchor["median"])
            if prom["median"] and anchor["median"]
            else None,
            "ratio_agent_to_anchor": (agent["median"] / anchor["median"])
            if agent["median"] and anchor["median"]
            else None,
        }
        for path in (prom, agent):
            ok = ok and not path["missed"] and path["max"] is not None and path["max"] <= TARGET
    return {
        "parameters": {
            "runs": runs,
            "faults": list(faults),
            "agents": len(names),
            **timing,
            "target_s": TARGET,
        },
        "runs": results,
        **figures,
        "wall_s": round(time.monotonic() - began, 1),
        "verdict": verdict(ok),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    args = parser.parse_args()
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not faults or args.runs < 1:
        parser.error(f"--faults takes {', '.join(FAULTS)}; --runs at least 1")
    result = asyncio.run(run(args.runs, faults))
    figures = dict(result)
    path = write_result("detect", figures.pop("parameters"), figures)
    for fault in faults:
        f = result[fault]
        if fault == "stall":
            print(
                f"15 s stall: Mamori false pages {f['mamori_false_pages']:g}"
                + (f" ({', '.join(f['false_pages_seen'])})" if f["false_pages_seen"] else "")
                + f", anchor paged in {f['anchor_pages']:g} of {f['runs']} runs"
            )
            continue

        def show(s: dict[str, float | None]) -> str:
            if s["median"] is None or s["max"] is None:
                return "never paged"
            missed = f", {s['missed']:g} missed" if s["missed"] else ""
            return f"median {s['median']:.1f} s, max {s['max']:.1f} s{missed}"

        ratio = f["ratio_prometheus_to_anchor"]
        print(
            f"{fault}: Prometheus path {show(f['prometheus_path_s'])}; agent path {show(f['agent_path_s'])}; "
            f"anchor {show(f['anchor_s'])}" + (f"; ratio {ratio:.2f}× the anchor" if ratio else "")
        )
    print(f"target ≤ {TARGET:g} s on both paths, no false page: {result['verdict']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
