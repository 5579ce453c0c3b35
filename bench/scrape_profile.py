"""The /metrics path at scale: an agent with N http checks against a local nginx, scraped every
`--every` seconds (alternately with and without gzip); reports each scrape's wall time and size,
the scheduler's lateness p50/p99 between the first and the last scrape (from the agent's own
histogram) and the agent's RSS.

    python -m bench.scrape_profile [--checks 10000] [--interval 15] [--every 15] [--scrapes 6]
                                   [--warmup 60]

A profiling aid for the scrape (issue 16, item 2); the capacity figures are bench/capacity.py's.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import lab
from bench.common import agent_process, histogram_quantile, series, wait_agent_ready
from lab.ports import free_port

LATENESS = "mamori_scheduler_lateness_seconds_bucket"


def agent_config(url: str, checks: int, interval: float) -> str:
    lines = ["agent:", f"  interval: {interval:g}s", "  timeout: 5s", "checks:"]
    for i in range(checks):
        lines += [f"  - name: web-{i:05d}", "    type: http", f"    url: {url}"]
    return "\n".join(lines) + "\n"


def _scrape(port: int, gz: bool) -> tuple[float, int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Accept-Encoding": "gzip"} if gz else {}
    start = time.perf_counter()
    conn.request("GET", "/metrics", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    wall = time.perf_counter() - start
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"/metrics answered {resp.status}")
    size = len(body)
    if resp.getheader("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return wall, size, body.decode()


def _lateness(text: str) -> dict[float, float]:
    return {float(labels["le"]): value for labels, value in series(text, LATENESS)}


def run(checks: int, interval: float, every: float, scrapes: int, warmup: float) -> dict[str, Any]:
    with lab.nginx() as nginx, tempfile.TemporaryDirectory(prefix="mamori-scrape-") as tmp:
        cfg = Path(tmp) / "agent.yml"
        cfg.write_text(agent_config(nginx.url, checks, interval))
        port = free_port()
        log = Path(tmp) / "agent.log"
        with agent_process(["-c", str(cfg), "--listen", f"127.0.0.1:{port}"], log) as proc:
            wait_agent_ready(proc, port, log, 120)
            agent = psutil.Process(proc.pid)
            rss_ready = agent.memory_info().rss
            time.sleep(warmup)  # every check has a result and the start-up's backlog is gone
            rss_results = agent.memory_info().rss
            cpu_start = agent.cpu_times()
            rows: list[dict[str, Any]] = []
            first: dict[float, float] = {}
            last: dict[float, float] = {}
            start = time.monotonic()
            for n in range(scrapes):
                time.sleep(max(0.0, start + n * every - time.monotonic()))
                wall, size, text = _scrape(port, gz=n % 2 == 1)
                lines = text.count("\n")
                rss = round(agent.memory_info().rss / 1e6, 1)
                rows.append(
                    {
                        "gzip": n % 2 == 1,
                        "wall_s": round(wall, 4),
                        "bytes": size,
                        "lines": lines,
                        "rss_mb": rss,
                    }
                )
                if n == 0:
                    first = _lateness(text)
                last = _lateness(text)
            cpu_end = agent.cpu_times()
            elapsed = time.monotonic() - start
            delta = {b: last[b] - first.get(b, 0.0) for b in last}
            return {
                "checks": checks,
                "interval_s": interval,
                "scrape_every_s": every,
                "scrapes": rows,
                "lateness_p50_s": histogram_quantile(0.5, delta),
                "lateness_p99_s": histogram_quantile(0.99, delta),
                "lateness_over_100ms": delta.get(math.inf, 0.0) - delta.get(0.1, 0.0),
                "lateness_count": delta.get(math.inf, 0.0),
                "agent_cpu_cores": round(
                    (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / elapsed, 3
                ),
                "rss_mb_ready": round(rss_ready / 1e6, 1),
                "rss_mb_results": round(rss_results / 1e6, 1),
                "rss_mb": round(agent.memory_info().rss / 1e6, 1),
            }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", type=int, default=10000)
    p.add_argument("--interval", type=float, default=15.0)
    p.add_argument("--every", type=float, default=15.0)
    p.add_argument("--scrapes", type=int, default=6)
    p.add_argument("--warmup", type=float, default=60.0, help="seconds from ready to the first scrape")
    a = p.parse_args(argv)
    print(json.dumps(run(a.checks, a.interval, a.every, a.scrapes, a.warmup), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
