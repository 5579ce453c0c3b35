"""Capacity: N `http` checks on one agent, scraped by a real Prometheus, against blackbox_exporter.

For each size N (default 100, 1 000 and 10 000, one after the other), all on 127.0.0.1:

- nginx (`bench.lab.nginx`) is the target; check i probes `GET /?c=i` (one URL per check, so the
  access log shows when every check has probed once);
- the agent (`python -m agent.cli run`, its own process) runs a generated config of N `http`
  checks, interval 15 s and timeout 5 s (set once in `agent:`), every other setting at its
  default;
- a real Prometheus scrapes the agent's /metrics every 15 s (scrape_timeout 10 s), as in
  production; every agent figure of the window comes from it: runs by status, skipped runs and
  the lateness histogram (the agent's own `mamori_scheduler_lateness_seconds`) at the first and
  last scrape of the window, and `scrape_duration_seconds` / `scrape_samples_scraped` of every
  scrape in it;
- blackbox_exporter gets the same probe rate (N / 15 per second, the same N URLs in turn) from
  paced drivers in this process (bench.http_cpu's driver, one per 150 probes/s, each on its own
  keep-alive connection), the same nginx, in the same run: by default right after the agent's
  window, with the agent stopped, for min(`--seconds`, 30) s after 5 s of warm-up; with
  `--anchor concurrent` during the agent's window, as bench.http_cpu does. At 10 000 checks the
  two together ask more than this 2-core machine has (the agent ~0.5 core, blackbox_exporter
  ~0.9 core, nginx twice the requests, Prometheus), so running them at once measures the
  contention rather than either of them.

The window starts at the first Prometheus scrape after every check has probed once and lasts
`--seconds` (rounded up to whole scrape intervals: 45 s = 3 scrapes, the default, so a size takes
about 2 minutes and the default run about 6). CPU (user + sys, psutil) of the agent and of
blackbox_exporter is sampled every second and interpolated at the window's two scrape timestamps
(for the anchor alone, at the ends of its own window). After the window, one direct GET of
/metrics gives its size in bytes (and one with `Accept-Encoding: gzip`, to see whether the agent
compresses). RSS is the agent's at the end
of the window (and the peak sampled). Start-up: the time from starting the agent process to
/ready, and to the first complete set of results (every check's first probe seen by nginx; the
scheduler spreads first runs over `agent.start_spread`, 10 s, so about 10 s is the floor).

    python -m bench.capacity [--checks 100,1000,10000] [--interval 15] [--seconds 45]
                             [--anchor after|concurrent]

Targets (issue 16, judged at the largest size): runs >= 99 % of expected and none skipped;
agent CPU per probe <= 0.5 x blackbox_exporter's; lateness p99 <= 100 ms; every scrape in the
window <= 150 ms; RSS <= 120 MB; /ready within 5 s.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

from bench import lab
from bench.common import (
    agent_process,
    cpu_seconds,
    exit_on_sigterm,
    histogram_quantile,
    http_get,
    median,
    save,
    tail,
    verdict,
    wait_agent_ready,
)
from bench.http_cpu import BlackboxDriver
from lab.ports import free_port
from lab.wait import wait_until_sync

NAME = "capacity"
JOB = "mamori"
TIMEOUT = 5.0
SCRAPE_TIMEOUT = 10.0
ANCHORS = ("after", "concurrent")
ANCHOR_SECONDS = 30.0  # the anchor's window when it runs alone (CPU per probe at a steady rate)
WARMUP = 5.0
DRIVER_RATE = 150.0  # probes/s one blackbox driver thread is asked for, at most
TARGETS = {
    "runs_ratio_min": 0.99,
    "skipped_max": 0,
    "cpu_ratio_max": 0.5,
    "lateness_p99_ms_max": 100.0,
    "scrape_ms_max": 150.0,
    "rss_mb_max": 120.0,
    "ready_s_max": 5.0,
}


def agent_config(urls: Sequence[str], interval: float) -> str:
    """Interval and timeout once, in `agent:` (as a user with thousands of checks writes them):
    with both on every check, 10 000 checks pass the config's 100 000-node bound."""
    lines = ["agent:", f"  interval: {interval:g}s", f"  timeout: {TIMEOUT:g}s", "checks:"]
    for i, url in enumerate(urls):
        lines += [f"  - name: nginx-{i:05d}", "    type: http", f"    url: {url}"]
    return "\n".join(lines) + "\n"


# --- pure helpers (tests/bench/test_capacity.py) ----------------------------------------------

_PROBE = re.compile(r'"GET /\?c=(\d+) HTTP/1\.[01]"')


def probed_checks(lines: Sequence[str]) -> set[int]:
    """The check numbers whose probe (`GET /?c=N`) appears in these nginx access-log lines."""
    return {int(m.group(1)) for line in lines if (m := _PROBE.search(line))}


def interpolate(samples: Sequence[tuple[float, float]], t: float) -> float:
    """The value at time `t` of a series of (time, value) samples sorted by time, linearly
    interpolated between the two around it (clamped to the first / last outside them)."""
    if not samples:
        raise ValueError("interpolate over no samples")
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return samples[-1][1]


def buckets_delta(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """Cumulative histogram buckets over a window: `after - before`, bucket by bucket."""
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def parse_vector(body: str) -> list[tuple[dict[str, str], float]]:
    """A Prometheus `/api/v1/query` answer of type vector: (labels, value) per series."""
    doc = json.loads(body)
    if doc.get("status") != "success":
        raise RuntimeError(f"prometheus query failed: {doc.get('error', body[:200])}")
    data = doc["data"]
    if data["resultType"] != "vector":
        raise RuntimeError(f"expected a vector, got {data['resultType']}")
    return [(item["metric"], float(item["value"][1])) for item in data["result"]]


def parse_matrix(body: str) -> list[tuple[float, float]]:
    """The raw samples (timestamp, value) of the one series of a range-vector query answer."""
    doc = json.loads(body)
    if doc.get("status") != "success":
        raise RuntimeError(f"prometheus query failed: {doc.get('error', body[:200])}")
    result = doc["data"]["result"]
    if not result:
        return []
    return [(float(t), float(v)) for t, v in result[0]["values"]]


# --- Prometheus -------------------------------------------------------------------------------


class Prom:
    def __init__(self, port: int) -> None:
        self.port = port

    def _get(self, expr: str, at: float | None) -> str:
        params = {"query": expr} | ({} if at is None else {"time": f"{at:.3f}"})
        status, body = http_get(f"http://127.0.0.1:{self.port}/api/v1/query?{urlencode(params)}", 30)
        if status != 200:
            raise RuntimeError(f"prometheus answered {status} to {expr!r}: {body[:200]}")
        return body

    def vector(self, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        return parse_vector(self._get(expr, at))

    def scalar(self, expr: str, at: float | None = None) -> float:
        """The value of a one-series query; 0 when it has no series (a counter not yet created)."""
        return sum(v for _, v in self.vector(expr, at))

    def samples(self, expr: str, at: float) -> list[tuple[float, float]]:
        return parse_matrix(self._get(expr, at))

    def last_scrape(self) -> float | None:
        """Timestamp (unix s) of the last scrape of the agent, None before the first."""
        got = self.vector(f'timestamp(up{{job="{JOB}"}})')
        return got[0][1] if got else None


def _snapshot(prom: Prom, at: float) -> dict[str, Any]:
    lateness = {
        (math.inf if labels["le"] == "+Inf" else float(labels["le"])): v
        for labels, v in prom.vector("sum by (le) (mamori_scheduler_lateness_seconds_bucket)", at)
    }
    return {
        "runs": {
            labels.get("status", "?"): v
            for labels, v in prom.vector("sum by (status) (mamori_check_runs_total)", at)
        },
        "skipped": prom.scalar("sum(mamori_scheduler_skipped_runs_total)", at),
        "lateness": lateness,
        "checks_with_runs": prom.scalar("count(count by (check) (mamori_check_runs_total))", at),
        "up": prom.scalar(f'up{{job="{JOB}"}}', at),
    }


def _wait_for_scrape(prom: Prom, after: float, deadline_s: float, alive: Any) -> float:
    """The timestamp of the first scrape later than `after` (unix s), waited for."""
    found: list[float] = []

    def newer() -> bool:
        ts = prom.last_scrape()
        if ts is not None and ts > after:
            found.append(ts)
            return True
        return False

    wait_until_sync("a Prometheus scrape of the agent", newer, deadline_s, interval=0.5, alive=alive)
    return found[-1]


# --- sampling ---------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Every second: wall time, agent CPU and RSS, blackbox_exporter CPU, the drivers' counts."""

    agent: psutil.Process | None
    blackbox: psutil.Process
    drivers: list[BlackboxDriver]
    rows: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Safe to call twice and without `start()`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            try:
                row = (
                    time.time(),
                    0.0 if self.agent is None else cpu_seconds(self.agent),
                    0.0 if self.agent is None else self.agent.memory_info().rss / 2**20,
                    cpu_seconds(self.blackbox),
                    float(sum(d.done for d in self.drivers)),
                    float(sum(d.succeeded for d in self.drivers)),
                )
            except psutil.Error:
                return
            self.rows.append(row)
            if self._stop.wait(1.0):
                return

    def at(self, column: int, t: float) -> float:
        return interpolate([(row[0], row[column]) for row in self.rows], t)


def _drivers(port: int, urls: Sequence[str], rate: float, seconds: float) -> list[BlackboxDriver]:
    """Paced drivers for `rate` probes/s over `urls`, one per DRIVER_RATE, each on its own share
    of the URLs and its own keep-alive connection; they stop by themselves after `seconds`."""
    shares = max(1, math.ceil(rate / DRIVER_RATE))
    return [
        BlackboxDriver(port, urls[i::shares], rate / shares, limit=int(rate / shares * seconds))
        for i in range(shares)
    ]


def _anchor_alone(blackbox: lab.Server, urls: Sequence[str], rate: float, seconds: float) -> dict[str, Any]:
    """blackbox_exporter at `rate` probes/s, the agent stopped: CPU and probes over `seconds`
    after a warm-up of WARMUP s."""
    drivers = _drivers(blackbox.port, urls, rate, WARMUP + seconds + 10)
    sampler = Sampler(None, blackbox.process, drivers)
    sampler.start()
    for d in drivers:
        d.start()
    try:
        t_a = time.time() + WARMUP
        time.sleep(WARMUP + seconds + 1.5)
        t_b = t_a + seconds
    finally:
        for d in drivers:
            d.stop()
        sampler.stop()
    return _anchor_figures(sampler, drivers, t_a, t_b)


def _anchor_figures(
    sampler: Sampler, drivers: list[BlackboxDriver], t_a: float, t_b: float
) -> dict[str, Any]:
    cpu = sampler.at(3, t_b) - sampler.at(3, t_a)
    done = sampler.at(4, t_b) - sampler.at(4, t_a)
    ok = sampler.at(5, t_b) - sampler.at(5, t_a)
    return {
        "drivers": len(drivers),
        "window_s": round(t_b - t_a, 3),
        "probes": round(done, 1),
        "probes_ok": round(ok, 1),
        "probes_per_s": round(done / (t_b - t_a), 2),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_probe": round(1000 * cpu / ok, 4) if ok else None,
        "sample_failures": [f for d in drivers for f in d.failures][:5],
    }


DIRECT_GETS = 3
FLOOR_JOB = "floor"
FLOOR_INTERVAL = 5.0
FLOOR_SCRAPES = 3  # counted after the first, which creates the series


def _prometheus_floor(nginx: lab.Server, page: bytes, page_gz: bytes) -> dict[str, Any]:
    """Prometheus's own part of a scrape of this page: its `scrape_duration_seconds` counts the
    fetch and also parsing and appending every sample to its TSDB. Here it scrapes the agent's
    last page, saved and served pre-gzipped by nginx (no work per request), every 5 s; the first
    scrape (which creates the series) is left out."""
    www = nginx.dir / "www"
    for name, data in (("metrics", page), ("metrics.gz", page_gz)):
        (www / name).write_bytes(data)
        (www / name).chmod(0o644)
    with lab.prometheus(f"127.0.0.1:{nginx.port}", FLOOR_JOB, FLOOR_INTERVAL, 4.0) as prometheus:
        prom = Prom(prometheus.port)
        expr = f'scrape_duration_seconds{{job="{FLOOR_JOB}"}}[5m]'
        got: list[tuple[float, float]] = []

        def enough() -> bool:
            got[:] = prom.samples(expr, time.time())
            return len(got) >= FLOOR_SCRAPES + 1

        wait_until_sync(
            "Prometheus's scrapes of the saved page", enough, (FLOOR_SCRAPES + 3) * FLOOR_INTERVAL + 30
        )
        ups = [v for _, v in prom.samples(f'up{{job="{FLOOR_JOB}"}}[5m]', time.time())]
    durations = [v for _, v in got[1 : FLOOR_SCRAPES + 1]]
    return {
        "durations_ms": [round(1000 * d, 1) for d in durations],
        "p50_ms": round(1000 * median(durations), 1),
        "failed": sum(1 for u in ups if u != 1.0),
    }


def _get_metrics(port: int, gzip: bool) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT)
    try:
        began = time.monotonic()
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gzip else {})
        resp = conn.getresponse()
        body = resp.read()
        took = time.monotonic() - began
    finally:
        conn.close()
    return {
        "body": body,  # taken out before the figures are saved
        "status": resp.status,
        "bytes": len(body),
        "content_encoding": resp.getheader("Content-Encoding") or "identity",
        "wall_ms": round(1000 * took, 1),
        "lines": body.count(b"\n") if not gzip or resp.getheader("Content-Encoding") is None else None,
    }


# --- one size ---------------------------------------------------------------------------------


def run_size(checks: int, interval: float, seconds: float, anchor: str = "after") -> dict[str, Any]:
    rate = checks / interval
    with (
        lab.nginx() as nginx,
        lab.blackbox_exporter(timeout=TIMEOUT) as blackbox,
        tempfile.TemporaryDirectory(prefix="mamori-bench-capacity-") as tmp,
    ):
        urls = [f"{nginx.url}?c={i}" for i in range(checks)]
        cfg = Path(tmp) / "agent.yml"
        cfg.write_text(agent_config(urls, interval))
        port = free_port()
        log = Path(tmp) / "agent.log"
        access_log = nginx.dir / "access.log"
        with (
            lab.prometheus(f"127.0.0.1:{port}", JOB, interval, SCRAPE_TIMEOUT) as prometheus,
            agent_process(["-c", str(cfg), "--listen", f"127.0.0.1:{port}"], log) as agent_proc,
        ):
            started = time.monotonic()
            alive = lambda: agent_proc.poll() is None  # noqa: E731
            wait_agent_ready(agent_proc, port, log, 120)
            ready_s = time.monotonic() - started
            seen: set[int] = set()
            offset = 0

            def all_probed() -> bool:
                nonlocal offset
                with access_log.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk.rpartition(b"\n")[0]
                offset += len(complete) + (1 if complete else 0)
                seen.update(probed_checks(complete.decode("utf-8", "replace").splitlines()))
                return len(seen) >= checks

            wait_until_sync(
                "every check's first probe", all_probed, 3 * interval + 60, interval=0.2, alive=alive
            )
            first_complete_s = time.monotonic() - started
            first_complete_wall = time.time()

            agent = psutil.Process(agent_proc.pid)
            concurrent = anchor == "concurrent"
            drivers = _drivers(blackbox.port, urls, rate, seconds + 3 * interval + 30) if concurrent else []
            sampler = Sampler(agent, blackbox.process, drivers)
            prom = Prom(prometheus.port)
            sampler.start()
            for d in drivers:
                d.start()
            try:
                t_a = _wait_for_scrape(prom, first_complete_wall, 2 * interval + 10, alive)
                snap_a = _snapshot(prom, t_a)
                scrapes = max(1, math.ceil(seconds / interval - 0.01))
                t_b = _wait_for_scrape(
                    prom, t_a + (scrapes - 0.5) * interval, seconds + 2 * interval + 10, alive
                )
                snap_b = _snapshot(prom, t_b)
                window = t_b - t_a
                span_q = f"{math.ceil(window) + 1}s"
                durations = [
                    v
                    for t, v in prom.samples(f'scrape_duration_seconds{{job="{JOB}"}}[{span_q}]', t_b)
                    if t > t_a
                ]
                samples_scraped = [
                    v
                    for t, v in prom.samples(f'scrape_samples_scraped{{job="{JOB}"}}[{span_q}]', t_b)
                    if t > t_a
                ]
                ups = [v for t, v in prom.samples(f'up{{job="{JOB}"}}[{span_q}]', t_b) if t > t_a]
                time.sleep(1.5)  # one more CPU sample after t_b
                rss_end = agent.memory_info().rss / 2**20
            finally:
                for d in drivers:
                    d.stop()
                sampler.stop()
            plain = _get_metrics(port, gzip=False)
            gz = _get_metrics(port, gzip=True)
            # Two more, 2 s apart: the agent's whole part of a gzip scrape (request to last
            # byte) while it probes at full rate, with no Prometheus ingesting beside it.
            gz["walls_ms"] = [gz["wall_ms"]]
            for _ in range(DIRECT_GETS - 1):
                time.sleep(2.0)
                gz["walls_ms"].append(_get_metrics(port, gzip=True)["wall_ms"])
            gz["wall_ms"] = max(gz["walls_ms"])
            if agent_proc.poll() is not None:
                raise RuntimeError(f"agent exited during the run\n{tail(log)}")
        page, page_gz = plain.pop("body"), gz.pop("body")
        floor = _prometheus_floor(nginx, page, page_gz) if gz["content_encoding"] == "gzip" else None
        if concurrent:
            bb = _anchor_figures(sampler, drivers, t_a, t_b)
        else:
            bb = _anchor_alone(blackbox, urls, rate, min(seconds, ANCHOR_SECONDS))
        bb["mode"] = anchor

    runs_a, runs_b = snap_a["runs"], snap_b["runs"]
    runs_by_status = {s: runs_b[s] - runs_a.get(s, 0.0) for s in runs_b}
    runs = sum(runs_by_status.values())
    expected = rate * window
    agent_cpu = sampler.at(1, t_b) - sampler.at(1, t_a)
    agent_ms = 1000 * agent_cpu / runs if runs else math.nan
    bb_ms = bb["cpu_ms_per_probe"] or math.nan
    lateness = buckets_delta(snap_a["lateness"], snap_b["lateness"])

    def ms(q: float) -> float | None:
        v = histogram_quantile(q, lateness)
        return None if math.isnan(v) else round(1000 * v, 2)

    count = lateness.get(math.inf, 0.0)
    return {
        "checks": checks,
        "window_s": round(window, 3),
        "scrapes_in_window": len(durations),
        "runs": runs,
        "runs_expected": round(expected, 1),
        "runs_per_s": round(runs / window, 2),
        "runs_per_s_expected": round(rate, 2),
        "runs_ratio": round(runs / expected, 4) if expected else None,
        "runs_by_status": runs_by_status,
        "skipped_runs": snap_b["skipped"] - snap_a["skipped"],
        "checks_with_results": snap_b["checks_with_runs"],
        "lateness_ms": {"p50": ms(0.5), "p99": ms(0.99), "runs": count},
        "agent": {
            "cpu_s": round(agent_cpu, 3),
            "cpu_cores": round(agent_cpu / window, 3),
            "cpu_ms_per_probe": round(agent_ms, 4),
            "rss_mb": round(rss_end, 1),
            "peak_rss_mb": round(max(row[2] for row in sampler.rows), 1),
        },
        "blackbox_exporter": bb,
        "ratio_agent_to_blackbox": round(agent_ms / bb_ms, 3) if bb_ms else None,
        "scrape": {
            "durations_ms": [round(1000 * d, 1) for d in durations],
            "p50_ms": round(1000 * median(durations), 1) if durations else None,
            "max_ms": round(1000 * max(durations), 1) if durations else None,
            "failed": sum(1 for u in ups if u != 1.0),
            "samples": int(samples_scraped[-1]) if samples_scraped else None,
            "direct_get": plain,
            "direct_get_gzip": gz,
            "prometheus_floor": floor,
            "agent_part_p50_ms": (
                round(1000 * median(durations) - floor["p50_ms"], 1) if durations and floor else None
            ),
        },
        "startup": {"ready_s": round(ready_s, 2), "first_complete_results_s": round(first_complete_s, 2)},
    }


def judge(size: dict[str, Any]) -> dict[str, str]:
    """PASS/MISS of each of issue 16's targets for one size."""
    late, scrape = size["lateness_ms"]["p99"], size["scrape"]["max_ms"]
    # The agent's part: the slowest direct gzip GET of /metrics (request to last byte) while it
    # probes at full rate. Prometheus's scrape_duration_seconds also counts its own parsing and
    # appending of every sample (`prometheus_floor`: the same page from nginx).
    agent_part = size["scrape"]["direct_get_gzip"].get("wall_ms")
    ratio = size["ratio_agent_to_blackbox"]
    return {
        "runs": verdict(
            (size["runs_ratio"] or 0) >= TARGETS["runs_ratio_min"]
            and size["skipped_runs"] <= TARGETS["skipped_max"]
        ),
        "cpu": verdict(ratio is not None and ratio <= TARGETS["cpu_ratio_max"]),
        "lateness": verdict(late is not None and late <= TARGETS["lateness_p99_ms_max"]),
        "scrape": verdict(
            scrape is not None and scrape <= TARGETS["scrape_ms_max"] and size["scrape"]["failed"] == 0
        ),
        # The same target for the agent's part: Prometheus's figure less its own for the same page.
        "scrape_agent_part": verdict(
            agent_part is not None
            and agent_part <= TARGETS["scrape_ms_max"]
            and size["scrape"]["failed"] == 0
        ),
        "rss": verdict(size["agent"]["rss_mb"] <= TARGETS["rss_mb_max"]),
        "ready": verdict(size["startup"]["ready_s"] <= TARGETS["ready_s_max"]),
    }


def run(
    sizes: Sequence[int] = (100, 1000, 10000),
    interval: float = 15.0,
    seconds: float = 45.0,
    anchor: str = "after",
) -> dict[str, Any]:
    results = []
    for n in sizes:
        size = run_size(n, interval, seconds, anchor)
        size["verdicts"] = judge(size)
        print(summary_line(size), flush=True)
        results.append(size)
    return {
        "parameters": {
            "checks": list(sizes),
            "interval_s": interval,
            "check_timeout_s": TIMEOUT,
            "seconds": seconds,
            "anchor": anchor,
            "anchor_seconds_alone": min(seconds, ANCHOR_SECONDS),
            "scrape_interval_s": interval,
            "scrape_timeout_s": SCRAPE_TIMEOUT,
            "nginx": lab.version(lab.NGINX_BIN),
            "blackbox_exporter": lab.version(lab.BLACKBOX_BIN),
            "prometheus": lab.version(lab.PROMETHEUS_BIN),
        },
        "targets": TARGETS,
        "sizes": results,
    }


def summary_line(s: dict[str, Any]) -> str:
    late, sc, ag = s["lateness_ms"], s["scrape"], s["agent"]
    return (
        f"capacity {s['checks']}: runs/s {s['runs_per_s']:g} of {s['runs_per_s_expected']:g} "
        f"({s['skipped_runs']:g} skipped), lateness p50 {late['p50']} ms p99 {late['p99']} ms, "
        f"CPU {ag['cpu_ms_per_probe']:.3f} ms/probe = {s['ratio_agent_to_blackbox']} x blackbox, "
        f"scrape p50 {sc['p50_ms']} ms max {sc['max_ms']} ms (Prometheus's own part for this page "
        f"{(sc.get('prometheus_floor') or {}).get('p50_ms')} ms, "
        f"the agent's {sc.get('agent_part_p50_ms')} ms; "
        f"direct gzip GETs {sc['direct_get_gzip'].get('walls_ms')} ms), "
        f"{sc['direct_get']['bytes'] / 1e6:.2f} MB, "
        f"{sc['samples']} samples, RSS {ag['rss_mb']:g} MB, ready {s['startup']['ready_s']:g} s, "
        f"first complete results {s['startup']['first_complete_results_s']:g} s"
    )


def summary(r: dict[str, Any]) -> str:
    return "\n".join(summary_line(s) for s in r["sizes"])


def figures(r: dict[str, Any]) -> list[str]:
    """The docs/benchmarks.md section (for bench/run_all.py's SECTIONS)."""
    p, m, t = r["parameters"], r["machine"], r["targets"]
    sizes = r["sizes"]
    largest = sizes[-1]
    v = largest["verdicts"]

    def cells(fn: Any) -> str:
        return " | ".join(fn(s) for s in sizes)

    def opt(x: float | None, fmt: str = "g") -> str:
        return "n/a" if x is None else format(x, fmt)

    head = " | ".join(f"{s['checks']:,} checks".replace(",", " ") for s in sizes)

    def row(label: str, cell: Any, target: str = "", ok: str = "") -> str:
        return (
            f"| {label} | "
            + " | ".join(cell(s) for s in sizes)
            + f" | {target} | {f'**{ok}**' if ok else ''} |"
        )

    def late(s: dict[str, Any]) -> str:
        return f"{opt(s['lateness_ms']['p50'])} / **{opt(s['lateness_ms']['p99'])}**"

    def scrape(s: dict[str, Any]) -> str:
        return f"{opt(s['scrape']['p50_ms'])} / **{opt(s['scrape']['max_ms'])}**"

    def gzip(s: dict[str, Any]) -> str:
        g = s["scrape"]["direct_get_gzip"]
        return f"{g['content_encoding']} ({g['bytes'] / 1e6:.2f} MB)"

    return [
        f"_{r['date']} on {m['nproc']} CPUs ({m.get('cpu_model') or 'unknown CPU'}), Python {m['python']}, "
        f"load {m.get('load_avg_1m_at_start', '?')} at start._ `http` checks every {p['interval_s']:g} s "
        f"(timeout {p['check_timeout_s']:g} s) at one nginx, scraped by "
        f"{p['prometheus'].split(' (')[0]} every {p['scrape_interval_s']:g} s; window of "
        f"~{p['seconds']:g} s from the first scrape after every check's first result; "
        f"{p['blackbox_exporter'].split(' (')[0]} at the same rate "
        + (
            "during the same window."
            if p.get("anchor") == "concurrent"
            else f"right after it, the agent stopped ({p.get('anchor_seconds_alone', 0):g} s)."
        ),
        "",
        f"| figure | {head} | target (at {largest['checks']}) | |",
        "|---|" + "---:|" * len(sizes) + "---|---|",
        row(
            "runs/s (expected)",
            lambda s: f"{s['runs_per_s']:g} ({s['runs_per_s_expected']:g})",
            f"≥ {100 * t['runs_ratio_min']:g} % of expected, 0 skipped",
            v["runs"],
        ),
        row("skipped runs", lambda s: f"{s['skipped_runs']:g}"),
        row("lateness p50 / p99 ms", late, f"p99 ≤ {t['lateness_p99_ms_max']:g} ms", v["lateness"]),
        row(
            "agent CPU ms / probe (cores)",
            lambda s: f"{s['agent']['cpu_ms_per_probe']:.3f} ({s['agent']['cpu_cores']:.2f})",
        ),
        row(
            "blackbox_exporter CPU ms / probe (probes/s)",
            lambda s: (
                f"{opt(s['blackbox_exporter']['cpu_ms_per_probe'], '.3f')} "
                f"({s['blackbox_exporter']['probes_per_s']:g}/s)"
            ),
        ),
        row(
            "ratio agent / blackbox_exporter",
            lambda s: f"**{opt(s['ratio_agent_to_blackbox'], '.2f')}**",
            f"≤ {t['cpu_ratio_max']:g}",
            v["cpu"],
        ),
        row("scrape p50 / max ms (Prometheus)", scrape, f"≤ {t['scrape_ms_max']:g} ms", v["scrape"]),
        row(
            "Prometheus's own part: the same page from nginx, p50 ms",
            lambda s: opt((s["scrape"].get("prometheus_floor") or {}).get("p50_ms")),
        ),
        row(
            "scrape p50 less Prometheus's own, ms",
            lambda s: opt(s["scrape"].get("agent_part_p50_ms")),
        ),
        row(
            "the agent's part: slowest of 3 direct gzip GETs while it probes, ms",
            lambda s: f"**{opt(s['scrape']['direct_get_gzip']['wall_ms'])}**",
            f"≤ {t['scrape_ms_max']:g} ms",
            v.get("scrape_agent_part", ""),
        ),
        row(
            "scrape MB / samples",
            lambda s: f"{s['scrape']['direct_get']['bytes'] / 1e6:.2f} / {s['scrape']['samples']}",
        ),
        row("with `Accept-Encoding: gzip`", gzip, "gzip"),
        row(
            "RSS MB (peak)",
            lambda s: f"**{s['agent']['rss_mb']:g}** ({s['agent']['peak_rss_mb']:g})",
            f"≤ {t['rss_mb_max']:g}",
            v["rss"],
        ),
        row(
            "start → /ready s",
            lambda s: f"{s['startup']['ready_s']:g}",
            f"≤ {t['ready_s_max']:g}",
            v["ready"],
        ),
        row("start → first complete results s", lambda s: f"{s['startup']['first_complete_results_s']:g}"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checks", default="100,1000,10000", help="sizes, a comma list (default 100,1000,10000)"
    )
    parser.add_argument("--interval", type=float, default=15.0, help="check and scrape interval (default 15)")
    parser.add_argument("--seconds", type=float, default=45.0, help="measured window per size (default 45)")
    parser.add_argument(
        "--anchor",
        choices=ANCHORS,
        default="after",
        help="blackbox_exporter after the agent's window, alone (default), or during it",
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.checks.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--checks: not a comma list of numbers: {args.checks!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--checks: at least one size, each >= 1")
    exit_on_sigterm()
    result = run(sizes, args.interval, args.seconds, args.anchor)
    print(f"  -> {save(NAME, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
