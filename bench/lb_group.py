"""One `lb` check with 50 backends, probed every second: how late its runs start, how long they
take, and the agent's CPU per probe against blackbox_exporter probing the same 51 targets at the
same rate, in the same run.

Set-up, all on 127.0.0.1, every process our child and stopped by its PID:

- 51 app servers (`lab.apps.AppServer`, plain HTTP) in one helper process
  (`python -m bench.lb_group --serve-apps 51`): the first plays the load balancer, the other 50
  are its backends. Their CPU is counted for neither side.
- The agent (`python -m agent.cli run`) with one check, `type: lb`, interval 1 s, timeout 1 s,
  `url` = the load balancer's `/api/health`, the 50 backends static, verdict `all`: 51 probes a
  second. /metrics is scraped once a second, as Prometheus would, and counted in its CPU.
- blackbox_exporter, sent 51 `/probe` requests a second, one for each of the same URLs, paced
  (the anchor, as Prometheus would spread them); and a second one sent the same requests in one
  burst a second, the way the `lb` check runs its members (a batched prober is cheaper per probe).

Lateness is measured twice: exactly, from the start time of every run in the window
(`mamori_check_last_run_timestamp_seconds`, the result's `started_at`, read from those scrapes,
which are placed in the middle of the check's interval so that each sees one new run), as
deviations from the ideal 1 s grid; and from the agent's own `mamori_scheduler_lateness_seconds`
histogram (bucket resolution). No target was set: the figures are reported, and flagged when
lateness p99 > 100 ms, a run is not OK, a run was skipped or a probe of either side failed.

    python -m bench.lb_group [--seconds 60] [--backends 50] [--warmup 5] [--profile]

`--profile` runs the agent under cProfile and prints where its time goes; the CPU figures are
then inflated, so no result file is written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import psutil

from bench import lab
from bench.common import (
    REPO,
    KeepAliveClient,
    agent_process,
    agent_python,
    cpu_seconds,
    exit_on_sigterm,
    histogram_quantile,
    metric_by_label,
    metric_sum,
    percentile,
    print_profile,
    save,
    stop_process,
    tail,
)
from bench.http_cpu import BlackboxDriver
from lab.ports import free_port
from lab.wait import wait_until_sync

NAME = "lb_group"
CHECK = "group"
INTERVAL = 1.0
TIMEOUT = 1.0  # a check's timeout may not exceed its interval; an app answers in ~1 ms
HEALTH_PATH = "/api/health"
LATENESS_FLAG_S = 0.1
# Where in the check's interval the scrapes fall, after a run's start. Mid-interval: a run has
# finished (~30 ms) and the next has not begun, so each scrape shows exactly one new run, and a
# scrape never delays a run's start (which would count as lateness).
SCRAPE_PHASE = 0.5
# Where the second anchor's bursts fall: between a run's end and the scrape, so that the agent and
# that blackbox_exporter do not compete for the CPU (two here) during their bursts.
BURST_PHASE = 0.25
LATENESS_METRIC = "mamori_scheduler_lateness_seconds"


# --- the app servers, in a helper process ---------------------------------------------------------


async def _serve_apps(count: int, seconds: float) -> None:
    """Start `count` app servers ("lb", "app-01"…), print their ports as one JSON line, serve until
    stdin closes or `seconds` have passed, then print the request counts as one JSON line."""
    from lab.apps import AppServer  # aiohttp: only the helper process needs it

    apps = [AppServer("lb"), *(AppServer(f"app-{i:02d}") for i in range(1, count))]
    loop = asyncio.get_running_loop()
    parent_done = asyncio.Event()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            loop.call_soon_threadsafe(parent_done.set)

    threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()
    try:
        for app in apps:
            await app.start()
        print(json.dumps({"ports": [app.port for app in apps]}), flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(parent_done.wait(), seconds)
        print(json.dumps({"requests": {app.name: app.requests for app in apps}}), flush=True)
    finally:
        for app in apps:
            await app.stop()


@dataclass
class AppServers:
    proc: subprocess.Popen[bytes]
    ports: list[int]
    requests: dict[str, int] | None = None  # whole run, read when the helper stops

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}{HEALTH_PATH}"


def _read_json_line(proc: subprocess.Popen[bytes], stream: IO[bytes], timeout: float, log: Path) -> Any:
    ready, _, _ = select.select([stream], [], [], timeout)
    line = stream.readline() if ready else b""
    if not line:
        raise RuntimeError(f"the app servers' helper said nothing (exit code {proc.poll()})\n{tail(log)}")
    return json.loads(line)


@contextlib.contextmanager
def app_servers(count: int, lifetime: float, log: Path) -> Iterator[AppServers]:
    """The helper process serving `count` app servers; it stops by itself after `lifetime` s and
    is stopped by its PID when the block exits, even on error."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                agent_python(),
                "-m",
                "bench.lb_group",
                "--serve-apps",
                str(count),
                "--serve-seconds",
                f"{lifetime:g}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
        )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        servers = AppServers(proc, _read_json_line(proc, proc.stdout, 30, log)["ports"])
        yield servers
        proc.stdin.close()  # the helper's cue to report and stop
        servers.requests = _read_json_line(proc, proc.stdout, 10, log)["requests"]
    finally:
        stop_process(proc)


# --- the agent ------------------------------------------------------------------------------------


def agent_config(servers: AppServers) -> str:
    lines = [
        "agent:",
        f"  interval: {INTERVAL:g}s",
        f"  timeout: {TIMEOUT:g}s",
        "checks:",
        f"  - name: {CHECK}",
        "    type: lb",
        f"    url: {servers.url(0)}",
        f"    interval: {INTERVAL:g}s",
        f"    timeout: {TIMEOUT:g}s",
        "    verdict: all",
        "    backends:",
    ]
    for i, port in enumerate(servers.ports[1:], 1):
        lines.append(f'      - {{name: app-{i:02d}, address: "127.0.0.1:{port}"}}')
    return "\n".join(lines) + "\n"


@dataclass
class BurstDriver:
    """Sends one `/probe` for each of `targets`, all at once, once per interval (burst n at
    `start(first_at)` + n × interval, monotonic clock), each from its own thread on its own
    keep-alive connection: blackbox_exporter driven the way the agent's `lb` check runs its
    members. At most `rounds` bursts; counts are added per burst, never half of one."""

    port: int
    targets: Sequence[str]
    rounds: int
    first_at: float = 0.0
    done: int = 0
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, first_at: float) -> None:
        self.first_at = first_at
        self._thread = threading.Thread(target=self._run, name="blackbox-burst-driver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Safe to call twice and without `start()`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        paths = [f"/probe?target={quote(t, safe='')}&module=http_2xx" for t in self.targets]
        clients = [KeepAliveClient(self.port) for _ in paths]

        def probe(client: KeepAliveClient, path: str) -> str | None:
            try:
                status, body = client.get(path)
            except OSError as exc:
                status, body = 0, str(exc)
            ok = status == 200 and "\nprobe_success 1\n" in f"\n{body}"
            return None if ok else f"HTTP {status}: {body[:200]}"

        try:
            with ThreadPoolExecutor(len(paths), thread_name_prefix="blackbox-burst") as pool:
                for n in range(self.rounds):
                    if self._stop.wait(max(0.0, self.first_at + n * INTERVAL - time.monotonic())):
                        return
                    failed = [f for f in pool.map(probe, clients, paths) if f is not None]
                    self.failures += failed[: max(0, 5 - len(self.failures))]
                    self.succeeded += len(paths) - len(failed)
                    self.done += len(paths)
        finally:
            for client in clients:
                client.close()


# --- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProberCount:
    cpu: float
    done: int
    ok: int


@dataclass
class Snapshot:
    t: float
    wall: float
    agent_cpu: float
    apps_cpu: float
    runs: dict[str, float]
    skipped: float
    lateness_buckets: dict[float, float]
    lateness_count: float
    lateness_sum: float
    blackbox: dict[str, ProberCount]  # by way of driving it: "paced", "burst"


def _buckets(text: str, name: str) -> dict[float, float]:
    return {float(le): count for le, count in metric_by_label(text, f"{name}_bucket", "le").items()}


def _snapshot(
    text: str,
    agent: psutil.Process,
    apps: psutil.Process,
    blackbox: dict[str, tuple[psutil.Process, BlackboxDriver | BurstDriver]],
) -> Snapshot:
    match = f'check="{CHECK}"'
    return Snapshot(
        t=time.monotonic(),
        wall=time.time(),
        agent_cpu=cpu_seconds(agent),
        apps_cpu=cpu_seconds(apps),
        runs=metric_by_label(
            "\n".join(line for line in text.splitlines() if match in line),
            "mamori_check_runs_total",
            "status",
        ),
        skipped=metric_sum(text, "mamori_scheduler_skipped_runs_total"),
        lateness_buckets=_buckets(text, LATENESS_METRIC),
        lateness_count=metric_sum(text, f"{LATENESS_METRIC}_count"),
        lateness_sum=metric_sum(text, f"{LATENESS_METRIC}_sum"),
        blackbox={
            way: ProberCount(cpu_seconds(proc), driver.done, driver.succeeded)
            for way, (proc, driver) in blackbox.items()
        },
    )


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 3)


def exact_lateness(started: list[float], interval: float) -> dict[str, Any]:
    """Deviations of run start times (wall clock) from the ideal grid s0 + k × interval, k the
    nearest slot, less the smallest deviation (the constant offset); p50/p99 by nearest rank."""
    if not started:
        return {"runs": 0, "p50_ms": None, "p99_ms": None, "max_ms": None, "slots_without_a_run": None}
    s0 = started[0]
    slots = [round((s - s0) / interval) for s in started]
    deviations = [s - s0 - k * interval for s, k in zip(started, slots, strict=True)]
    low = min(deviations)
    lateness = [d - low for d in deviations]
    return {
        "runs": len(started),
        "p50_ms": _ms(percentile(lateness, 50)),
        "p99_ms": _ms(percentile(lateness, 99)),
        "max_ms": _ms(max(lateness)),
        "slots_without_a_run": slots[-1] + 1 - len(set(slots)),
    }


@dataclass(frozen=True)
class LastRun:
    """The check's latest run as one scrape shows it."""

    started_at: float  # unix seconds
    duration: float
    status: int  # 0 OK … 3 UNKNOWN


def last_run(text: str) -> LastRun | None:
    """The check's latest run from a /metrics page, or None before its first run."""

    def mine(labels: dict[str, str]) -> bool:
        return labels.get("check") == CHECK

    if f'mamori_check_last_run_timestamp_seconds{{check="{CHECK}"' not in text:
        return None
    return LastRun(
        started_at=metric_sum(text, "mamori_check_last_run_timestamp_seconds", mine),
        duration=metric_sum(text, "probe_duration_seconds", mine),
        status=int(metric_sum(text, "mamori_check_status", mine)),
    )


def run(
    seconds: float = 60.0, backends: int = 50, warmup: float = 5.0, profile: bool = False
) -> dict[str, Any]:
    members = backends + 1
    rate = members / INTERVAL
    scrapes_warmup = max(1, round(warmup))
    scrapes_window = max(1, round(seconds))
    with (
        tempfile.TemporaryDirectory(prefix="mamori-bench-lb-group-") as tmp,
        app_servers(members, warmup + seconds + 120, Path(tmp) / "apps.log") as apps,
        lab.blackbox_exporter(timeout=TIMEOUT) as blackbox,
        lab.blackbox_exporter(timeout=TIMEOUT) as blackbox_burst,
    ):
        cfg = Path(tmp) / "agent.yml"
        cfg.write_text(agent_config(apps))
        port = free_port()
        args = ["-c", str(cfg), "--listen", f"127.0.0.1:{port}"]
        prefix = ["-m", "cProfile", "-o", str(Path(tmp) / "agent.prof")] if profile else []
        log = Path(tmp) / "agent.log"
        with agent_process(args, log, python_args=prefix) as agent_proc:
            scraper = KeepAliveClient(port)
            targets = [apps.url(i) for i in range(members)]
            driver = BlackboxDriver(blackbox.port, targets, rate, limit=int(rate * (warmup + seconds + 30)))
            burst = BurstDriver(blackbox_burst.port, targets, rounds=int((warmup + seconds + 30) / INTERVAL))
            probers: dict[str, tuple[psutil.Process, BlackboxDriver | BurstDriver]] = {
                "paced": (blackbox.process, driver),
                "burst": (blackbox_burst.process, burst),
            }
            first: list[LastRun] = []

            def has_run() -> bool:
                status, text = scraper.get("/metrics")
                latest = last_run(text) if status == 200 else None
                if latest is not None:
                    first.append(latest)
                return latest is not None

            try:
                try:
                    wait_until_sync(
                        "the check's first run",
                        has_run,
                        30,
                        alive=lambda: agent_proc.poll() is None,
                        interval=0.2,
                    )
                except (TimeoutError, RuntimeError) as exc:
                    raise RuntimeError(f"agent did not start: {exc}\n{tail(log)}") from exc
                agent = psutil.Process(agent_proc.pid)
                # The scheduler keeps a check's phase fixed on the monotonic clock: place the
                # scrapes and the bursts at fixed points of the check's interval.
                run_start = first[0].started_at + (time.monotonic() - time.time())
                now = time.monotonic()
                driver.start()
                burst.start(now + (run_start + BURST_PHASE * INTERVAL - now) % INTERVAL)
                # One scrape per second, paced; the snapshots are taken right after scrapes number
                # `scrapes_warmup` and `scrapes_warmup + scrapes_window`.
                start = now + (run_start + SCRAPE_PHASE * INTERVAL - now) % INTERVAL - INTERVAL
                snaps: list[Snapshot] = []
                seen: list[LastRun] = []
                scrape_walls: list[float] = []
                for n in range(1, scrapes_warmup + scrapes_window + 1):
                    time.sleep(max(0.0, start + n * INTERVAL - time.monotonic()))
                    wall = time.time()
                    status, text = scraper.get("/metrics")
                    if status != 200:
                        raise RuntimeError(f"agent /metrics answered {status}")
                    if n > scrapes_warmup:
                        scrape_walls.append(wall)
                        latest = last_run(text)
                        if latest is not None:
                            seen.append(latest)
                    if n in (scrapes_warmup, scrapes_warmup + scrapes_window):
                        snaps.append(_snapshot(text, agent, apps.process, probers))
                    if agent_proc.poll() is not None:
                        raise RuntimeError(f"agent exited during the run\n{tail(log)}")
            finally:
                driver.stop()
                burst.stop()
                scraper.close()
        if profile:
            print_profile(Path(tmp) / "agent.prof")
    failures = {"paced": driver.failures, "burst": burst.failures}
    return _figures(snaps, seen, failures, apps, scrape_walls, members, seconds, warmup, profile)


def _figures(
    snaps: list[Snapshot],
    seen: list[LastRun],
    failures: dict[str, list[str]],
    apps: AppServers,
    scrape_walls: list[float],
    members: int,
    seconds: float,
    warmup: float,
    profile: bool,
) -> dict[str, Any]:
    a, b = snaps
    window = b.t - a.t
    runs_by_status = {s: b.runs.get(s, 0.0) - a.runs.get(s, 0.0) for s in sorted(b.runs)}
    runs = sum(runs_by_status.values())
    runs_ok = runs_by_status.get("ok", 0.0)
    probes = members * runs
    agent_cpu = b.agent_cpu - a.agent_cpu
    skipped = b.skipped - a.skipped
    agent_ms = 1000 * agent_cpu / probes if probes else math.nan
    anchors: dict[str, dict[str, Any]] = {}
    for way in ("paced", "burst"):
        bb_cpu = b.blackbox[way].cpu - a.blackbox[way].cpu
        bb_ok = b.blackbox[way].ok - a.blackbox[way].ok
        bb_ms = 1000 * bb_cpu / bb_ok if bb_ok else math.nan
        anchors[way] = {
            "cpu_s": round(bb_cpu, 3),
            "probes": b.blackbox[way].done - a.blackbox[way].done,
            "probes_ok": bb_ok,
            "probes_per_s": round((b.blackbox[way].done - a.blackbox[way].done) / window, 2),
            "cpu_ms_per_probe": round(bb_ms, 4),
            "cpu_percent": round(100 * bb_cpu / window, 2),
            "sample_failures": failures[way],
            "ratio_agent_to_this": round(agent_ms / bb_ms, 3) if bb_ms else math.nan,
        }

    buckets = {
        le: b.lateness_buckets.get(le, 0.0) - a.lateness_buckets.get(le, 0.0) for le in b.lateness_buckets
    }
    observations = b.lateness_count - a.lateness_count
    hist_p99_ms = _ms(histogram_quantile(0.99, buckets))
    histogram = {
        "observations": observations,
        "p50_ms": _ms(histogram_quantile(0.5, buckets)),
        "p99_ms": hist_p99_ms,
        "mean_ms": _ms((b.lateness_sum - a.lateness_sum) / observations) if observations else None,
        "bucket_deltas": {("+Inf" if math.isinf(le) else f"{le:g}"): n for le, n in sorted(buckets.items())},
    }

    # The runs the window's scrapes saw: each scrape shows the latest run, one new run per scrape.
    distinct = {r.started_at: r for r in seen}
    started = sorted(distinct)
    exact = exact_lateness(started, INTERVAL)
    durations = [distinct[s].duration for s in started]
    not_ok_seen = sorted({distinct[s].status for s in started} - {0})
    phases = [(w - started[0]) % INTERVAL for w in scrape_walls] if started else []

    flags = []
    if exact["p99_ms"] is not None and exact["p99_ms"] > 1000 * LATENESS_FLAG_S:
        flags.append(f"lateness p99 (exact) {exact['p99_ms']:.1f} ms > {1000 * LATENESS_FLAG_S:g} ms")
    if hist_p99_ms > 1000 * LATENESS_FLAG_S:
        flags.append(f"lateness p99 (histogram) {hist_p99_ms:.1f} ms > {1000 * LATENESS_FLAG_S:g} ms")
    if runs_ok != runs or not runs or not_ok_seen:
        flags.append(f"not every run OK: {runs_by_status}")
    if skipped:
        flags.append(f"{skipped:g} runs skipped")
    for way, bb in anchors.items():
        if bb["probes_ok"] != bb["probes"] or not bb["probes"]:
            flags.append(
                f"blackbox_exporter ({way}): {bb['probes'] - bb['probes_ok']} of {bb['probes']} failed"
            )
    if exact["runs"] != runs or exact["slots_without_a_run"]:
        flags.append(
            f"the scrapes saw {exact['runs']} distinct runs ({exact['slots_without_a_run']} slots without "
            f"one) where the counter says {runs:g}: the exact lateness misses runs"
        )

    requests = sorted((apps.requests or {}).values())
    return {
        "parameters": {
            "checks": 1,
            "check_type": "lb",
            "backends": members - 1,
            "probes_per_run": members,
            "interval_s": INTERVAL,
            "check_timeout_s": TIMEOUT,
            "rate_per_s": members / INTERVAL,
            "seconds": seconds,
            "warmup_s": warmup,
            "agent_scrapes_per_s": 1,
            "scrape_phase_after_run_start_s": SCRAPE_PHASE * INTERVAL,
            "load_balancer": "an AppServer like the backends (plain HTTP; no HAProxy)",
            "blackbox_module_timeout_s": TIMEOUT,
            "blackbox_burst_phase_after_run_start_s": BURST_PHASE * INTERVAL,
            "blackbox_exporter": lab.version(lab.BLACKBOX_BIN),
            "profiled": profile,
        },
        "window_s": round(window, 3),
        "lateness": {"exact": exact, "histogram": histogram},
        "run_duration": {
            "runs": len(durations),
            "p50_ms": _ms(percentile(durations, 50)) if durations else None,
            "p99_ms": _ms(percentile(durations, 99)) if durations else None,
            "max_ms": _ms(max(durations)) if durations else None,
        },
        "scrape_phase_measured_ms": _ms(percentile(phases, 50)) if phases else None,
        "agent": {
            "cpu_s": round(agent_cpu, 3),
            "runs": runs,
            "runs_by_status": runs_by_status,
            "probes": probes,
            "probes_per_s": round(probes / window, 2),
            "skipped_runs": skipped,
            "scrapes": len(scrape_walls),
            "cpu_ms_per_probe": round(agent_ms, 4),
            "cpu_ms_per_run": round(1000 * agent_cpu / runs, 3) if runs else None,
            "cpu_percent": round(100 * agent_cpu / window, 2),
        },
        "blackbox_exporter": anchors["paced"],
        "blackbox_exporter_burst": anchors["burst"],
        "app_servers_not_counted": {
            "cpu_s": round(b.apps_cpu - a.apps_cpu, 3),
            "cpu_percent": round(100 * (b.apps_cpu - a.apps_cpu) / window, 2),
            "requests_per_server_whole_run_min": requests[0] if requests else None,
            "requests_per_server_whole_run_max": requests[-1] if requests else None,
        },
        "all_runs_ok": runs_ok == runs > 0 and not not_ok_seen,
        "ratio_agent_to_blackbox": anchors["paced"]["ratio_agent_to_this"],
        "ratio_agent_to_blackbox_burst": anchors["burst"]["ratio_agent_to_this"],
        "flags": flags,
    }


def summary(r: dict[str, Any]) -> str:
    p, ag, bb = r["parameters"], r["agent"], r["blackbox_exporter"]
    ex, hist = r["lateness"]["exact"], r["lateness"]["histogram"]
    exact = f"p50 {ex['p50_ms']:.1f} ms p99 {ex['p99_ms']:.1f} ms (exact) / " if ex["runs"] else ""
    return (
        f"lb_group: {p['probes_per_run']} probes/s for {r['window_s']:g} s; lateness {exact}"
        f"p50 {hist['p50_ms']:.1f} ms p99 {hist['p99_ms']:.1f} ms (histogram); "
        f"agent {ag['cpu_ms_per_probe']:.3f} ms/probe vs blackbox_exporter "
        f"{bb['cpu_ms_per_probe']:.3f} ms/probe: ratio {r['ratio_agent_to_blackbox']:.2f} "
        f"(vs blackbox_exporter sent the same probes in bursts: "
        f"{r['blackbox_exporter_burst']['cpu_ms_per_probe']:.3f} ms/probe, "
        f"ratio {r['ratio_agent_to_blackbox_burst']:.2f})" + "".join(f" [FLAG: {f}]" for f in r["flags"])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lb_group", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window (default 60)")
    parser.add_argument("--backends", type=int, default=50, help="backends behind the LB (default 50)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (default 5)")
    parser.add_argument("--profile", action="store_true", help="run the agent under cProfile, no result file")
    parser.add_argument("--serve-apps", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--serve-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_apps:
        asyncio.run(_serve_apps(args.serve_apps, args.serve_seconds))
        return 0
    exit_on_sigterm()
    result = run(args.seconds, args.backends, args.warmup, args.profile)
    print(summary(result))
    if not args.profile:
        print(f"  -> {save(NAME, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
