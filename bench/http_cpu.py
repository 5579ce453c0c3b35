"""CPU per HTTP probe: the agent against blackbox_exporter, same target, same rate, same run.

Both probe one local nginx (`GET /`, a fresh connection per probe) at K probes per second for the
same D seconds, at the same time:

- the agent runs a generated config of K `http` checks with a 1 s interval, and /metrics is
  scraped once a second (as Prometheus would), which is counted in the agent's CPU;
- blackbox_exporter gets K `GET /probe?target=...&module=http_2xx` per second from a paced
  driver in this process (one keep-alive connection, like a Prometheus scraper);
- the floor, a bare asyncio loop in its own process (same interpreter): K times a second, paced,
  `asyncio.open_connection` + one HTTP/1.1 `GET /` written by hand + read to the end + close, no
  HTTP library, no timing, no result. What the agent costs above it is the agent's own work;
  what it costs is CPython's asyncio and the loopback TCP stack (the kernel's share of a connect
  and a send is charged to the process that makes them). It runs twice, side by side: on
  asyncio's own loop, and on uvloop, the loop the agent runs on (agent/eventloop.py; the agent's
  figure is on whichever loop MAMORI_EVENT_LOOP picks, uvloop by default).

CPU is user+sys of each process (psutil) between two points after a warm-up; probes are the
delta of `mamori_check_runs_total` for the agent and the /probe answers with `probe_success 1`
for blackbox_exporter, each bare loop's own count of `200` answers. Target: agent CPU per probe
<= 0.5 x blackbox_exporter's; agent / bare loop and bare loop / blackbox_exporter are reported too,
for each floor.

    python -m bench.http_cpu [--seconds 30] [--checks 20] [--warmup 5] [--profile]

`--profile` runs the agent under cProfile and prints where its time goes; the CPU figures are
then inflated, so no result file is written.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil

from bench import lab
from bench.common import (
    KeepAliveClient,
    agent_process,
    cpu_seconds,
    exit_on_sigterm,
    metric_by_label,
    metric_sum,
    print_profile,
    save,
    tail,
    verdict,
    wait_agent_ready,
)
from lab.ports import free_port

NAME = "http_cpu"
TARGET_RATIO = 0.5
INTERVAL = 1.0
AGENT_TIMEOUT = 1.0  # a check's timeout may not exceed its interval; nginx answers in < 1 ms


def agent_config(nginx_url: str, checks: int) -> str:
    lines = ["agent:", f"  interval: {INTERVAL:g}s", f"  timeout: {AGENT_TIMEOUT:g}s", "checks:"]
    for i in range(checks):
        lines += [
            f"  - name: nginx-{i:03d}",
            "    type: http",
            f"    url: {nginx_url}",
            f"    interval: {INTERVAL:g}s",
            f"    timeout: {AGENT_TIMEOUT:g}s",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class BlackboxDriver:
    """Sends `rate` probes per second, paced (probe n at start + n/rate; if one is slow the next
    ones go at once to catch up, never more than `limit` in all), until stopped. `target` is one
    URL, or several probed in turn (probe n goes to target n mod len)."""

    port: int
    target: str | Sequence[str]
    rate: float
    limit: int
    done: int = 0
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="blackbox-driver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Safe to call twice and without `start()`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        client = KeepAliveClient(self.port)
        targets = [self.target] if isinstance(self.target, str) else list(self.target)
        paths = [f"/probe?target={quote(t, safe='')}&module=http_2xx" for t in targets]
        start = time.monotonic()
        try:
            for n in range(self.limit):
                delay = start + n / self.rate - time.monotonic()
                if self._stop.wait(max(0.0, delay)):
                    return
                try:
                    status, body = client.get(paths[n % len(paths)])
                except OSError as exc:
                    status, body = 0, str(exc)
                ok = status == 200 and "\nprobe_success 1\n" in f"\n{body}"
                if not ok and len(self.failures) < 5:
                    self.failures.append(f"HTTP {status}: {body[:200]}")
                self.succeeded += ok
                self.done += 1
        finally:
            client.close()


async def _bare_probes(
    url: str, rate: float, limit: int, done: Synchronized[int], ok: Synchronized[int]
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: bare-asyncio\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(limit):
        await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
        answer = b""
        try:
            async with asyncio.timeout(AGENT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(request)
                    answer = await reader.read()  # to the end: nginx closes after the answer
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            pass
        ok.value += answer.startswith(b"HTTP/1.1 200 ")
        done.value += 1


# The floors: result key -> the loop the bare probes run on (agent/eventloop.py's names).
FLOORS = {"bare_asyncio_loop": "asyncio", "bare_uvloop": "uvloop"}


def _bare_loop(
    loop: str, url: str, rate: float, limit: int, done: Synchronized[int], ok: Synchronized[int]
) -> None:
    """A floor (in a child process): paced bare probes on `loop` until `limit` or killed."""
    from agent.eventloop import ENV, choose

    choose({ENV: loop}).run(_bare_probes(url, rate, limit, done, ok))


@dataclass
class Floor:
    """One bare loop's process and its shared counters."""

    process: psutil.Process
    done: Synchronized[int]
    ok: Synchronized[int]


@dataclass
class Snapshot:
    t: float
    agent_cpu: float
    blackbox_cpu: float
    agent_runs: dict[str, float]
    agent_skipped: float
    blackbox_done: int
    blackbox_ok: int
    bare: dict[str, tuple[float, int, int]]  # floor -> (cpu, done, ok)


def _snapshot(
    metrics_text: str,
    agent: psutil.Process,
    blackbox: psutil.Process,
    driver: BlackboxDriver,
    floors: dict[str, Floor],
) -> Snapshot:
    return Snapshot(
        t=time.monotonic(),
        agent_cpu=cpu_seconds(agent),
        blackbox_cpu=cpu_seconds(blackbox),
        agent_runs=metric_by_label(metrics_text, "mamori_check_runs_total", "status"),
        agent_skipped=metric_sum(metrics_text, "mamori_scheduler_skipped_runs_total"),
        blackbox_done=driver.done,
        blackbox_ok=driver.succeeded,
        bare={k: (cpu_seconds(f.process), f.done.value, f.ok.value) for k, f in floors.items()},
    )


def _user_agents(access_log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in access_log.read_text(errors="replace").splitlines():
        ua = line.rsplit('"', 2)[-2] if line.endswith('"') else "?"
        counts[ua] = counts.get(ua, 0) + 1
    return counts


def agent_loop_name() -> str:
    """The loop the agent process will run on: its environment is this one (bench.common)."""
    import os

    from agent.eventloop import EventLoopError, choose

    try:
        return choose(os.environ).name
    except EventLoopError as exc:
        return str(exc)


def run(
    seconds: float = 30.0, checks: int = 20, warmup: float = 5.0, profile: bool = False
) -> dict[str, Any]:
    rate = checks / INTERVAL
    scrapes_warmup = max(1, round(warmup))
    scrapes_window = max(1, round(seconds))
    with (
        lab.nginx() as nginx,
        lab.blackbox_exporter(timeout=AGENT_TIMEOUT) as blackbox,
        tempfile.TemporaryDirectory(prefix="mamori-bench-agent-") as tmp,
    ):
        cfg = Path(tmp) / "agent.yml"
        cfg.write_text(agent_config(nginx.url, checks))
        port = free_port()
        args = ["-c", str(cfg), "--listen", f"127.0.0.1:{port}"]
        prefix = ["-m", "cProfile", "-o", str(Path(tmp) / "agent.prof")] if profile else []
        log = Path(tmp) / "agent.log"
        with agent_process(args, log, python_args=prefix) as agent_proc:
            wait_agent_ready(agent_proc, port, log, 30)
            agent = psutil.Process(agent_proc.pid)
            limit = int(rate * (warmup + seconds + 30))
            driver = BlackboxDriver(blackbox.port, nginx.url, rate, limit=limit)
            # spawn: a fresh interpreter, not a fork of this one and its threads.
            ctx = multiprocessing.get_context("spawn")
            counters = {k: (ctx.Value("q", 0), ctx.Value("q", 0)) for k in FLOORS}
            bare_procs = [
                ctx.Process(
                    target=_bare_loop,
                    args=(loop, nginx.url, rate, limit, *counters[key]),
                    name=f"bare-{loop}",
                    daemon=True,
                )
                for key, loop in FLOORS.items()
            ]
            scraper = KeepAliveClient(port)
            for proc in bare_procs:
                proc.start()
            floors = {
                key: Floor(psutil.Process(proc.pid), *counters[key])
                for key, proc in zip(FLOORS, bare_procs, strict=True)
            }
            driver.start()
            try:
                # One scrape per second, paced; the snapshots are taken right after scrapes number
                # `scrapes_warmup` and `scrapes_warmup + scrapes_window`, so the window holds
                # exactly one scrape per second and no extra ones.
                start = time.monotonic()
                snaps: list[Snapshot] = []
                for n in range(1, scrapes_warmup + scrapes_window + 1):
                    time.sleep(max(0.0, start + n * 1.0 - time.monotonic()))
                    status, text = scraper.get("/metrics")
                    if status != 200:
                        raise RuntimeError(f"agent /metrics answered {status}")
                    if n in (scrapes_warmup, scrapes_warmup + scrapes_window):
                        snaps.append(_snapshot(text, agent, blackbox.process, driver, floors))
                    if agent_proc.poll() is not None:
                        raise RuntimeError(f"agent exited during the run\n{tail(log)}")
            finally:
                driver.stop()
                scraper.close()
                for proc in bare_procs:
                    proc.terminate()
                    proc.join(10)
        if profile:
            print_profile(Path(tmp) / "agent.prof")
        requests_by_ua = _user_agents(nginx.dir / "access.log")

    a, b = snaps
    window = b.t - a.t
    agent_probes = sum(b.agent_runs.values()) - sum(a.agent_runs.values())
    agent_ok = b.agent_runs.get("ok", 0.0) - a.agent_runs.get("ok", 0.0)
    agent_cpu = b.agent_cpu - a.agent_cpu
    bb_probes = b.blackbox_done - a.blackbox_done
    bb_ok = b.blackbox_ok - a.blackbox_ok
    bb_cpu = b.blackbox_cpu - a.blackbox_cpu
    agent_ms = 1000 * agent_cpu / agent_probes if agent_probes else float("nan")
    bb_ms = 1000 * bb_cpu / bb_ok if bb_ok else float("nan")
    ratio = agent_ms / bb_ms if bb_ms else float("nan")
    floor_figures: dict[str, dict[str, Any]] = {}
    all_ok = agent_ok == agent_probes > 0 and bb_ok == bb_probes > 0
    for key in FLOORS:
        cpu = b.bare[key][0] - a.bare[key][0]
        probes = b.bare[key][1] - a.bare[key][1]
        ok = b.bare[key][2] - a.bare[key][2]
        all_ok = all_ok and ok == probes > 0
        ms = 1000 * cpu / ok if ok else float("nan")
        floor_figures[key] = {
            "cpu_s": round(cpu, 3),
            "probes": probes,
            "probes_ok": ok,
            "probes_per_s": round(probes / window, 2),
            "cpu_ms_per_probe": round(ms, 4),
            "cpu_percent": round(100 * cpu / window, 2),
        }
    bare_ms = floor_figures["bare_asyncio_loop"]["cpu_ms_per_probe"]
    uv_ms = floor_figures["bare_uvloop"]["cpu_ms_per_probe"]
    return {
        "parameters": {
            "checks": checks,
            "interval_s": INTERVAL,
            "rate_per_s": rate,
            "seconds": seconds,
            "warmup_s": warmup,
            "agent_scrapes_per_s": 1,
            "agent_check_timeout_s": AGENT_TIMEOUT,
            "blackbox_module_timeout_s": AGENT_TIMEOUT,
            "agent_event_loop": agent_loop_name(),
            "nginx": lab.version(lab.NGINX_BIN),
            "blackbox_exporter": lab.version(lab.BLACKBOX_BIN),
            "profiled": profile,
        },
        "window_s": round(window, 3),
        "agent": {
            "cpu_s": round(agent_cpu, 3),
            "probes": agent_probes,
            "probes_ok": agent_ok,
            "probes_per_s": round(agent_probes / window, 2),
            "skipped_runs": b.agent_skipped - a.agent_skipped,
            "scrapes": scrapes_window,
            "cpu_ms_per_probe": round(agent_ms, 4),
            "cpu_percent": round(100 * agent_cpu / window, 2),
        },
        "blackbox_exporter": {
            "cpu_s": round(bb_cpu, 3),
            "probes": bb_probes,
            "probes_ok": bb_ok,
            "probes_per_s": round(bb_probes / window, 2),
            "cpu_ms_per_probe": round(bb_ms, 4),
            "cpu_percent": round(100 * bb_cpu / window, 2),
            "sample_failures": driver.failures,
        },
        **floor_figures,
        "nginx_requests_by_user_agent_whole_run": requests_by_ua,
        "all_probes_succeeded": all_ok,
        "ratio_agent_to_blackbox": round(ratio, 3),
        "ratio_agent_to_bare_loop": round(agent_ms / bare_ms, 3) if bare_ms else float("nan"),
        "ratio_bare_loop_to_blackbox": round(bare_ms / bb_ms, 3) if bb_ms else float("nan"),
        "ratio_agent_to_bare_uvloop": round(agent_ms / uv_ms, 3) if uv_ms else float("nan"),
        "ratio_bare_uvloop_to_blackbox": round(uv_ms / bb_ms, 3) if bb_ms else float("nan"),
        "target_ratio_max": TARGET_RATIO,
        "verdict": verdict(ratio <= TARGET_RATIO),
    }


def summary(r: dict[str, Any]) -> str:
    ag, bb = r["agent"], r["blackbox_exporter"]
    return (
        f"http_cpu: agent {ag['cpu_ms_per_probe']:.3f} ms/probe ({ag['probes']:g} probes, "
        f"{ag['probes_ok']:g} ok), blackbox_exporter {bb['cpu_ms_per_probe']:.3f} ms/probe "
        f"({bb['probes']} probes, {bb['probes_ok']} ok): ratio {r['ratio_agent_to_blackbox']:.2f} "
        f"(target <= {r['target_ratio_max']}) {r['verdict']}; bare asyncio loop "
        f"{r['bare_asyncio_loop']['cpu_ms_per_probe']:.3f} ms/probe: agent / bare loop "
        f"{r['ratio_agent_to_bare_loop']:.2f}, "
        f"bare loop / blackbox_exporter {r['ratio_bare_loop_to_blackbox']:.2f}; bare uvloop "
        f"{r['bare_uvloop']['cpu_ms_per_probe']:.3f} ms/probe: agent / bare uvloop "
        f"{r['ratio_agent_to_bare_uvloop']:.2f}, "
        f"bare uvloop / blackbox_exporter {r['ratio_bare_uvloop_to_blackbox']:.2f} "
        f"(agent on {r['parameters']['agent_event_loop']})"
        + ("" if r["all_probes_succeeded"] else " [NOT ALL PROBES SUCCEEDED]")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window (default 30)")
    parser.add_argument("--checks", type=int, default=20, help="checks = probes per second (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (default 5)")
    parser.add_argument("--profile", action="store_true", help="run the agent under cProfile, no result file")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    result = run(args.seconds, args.checks, args.warmup, args.profile)
    print(summary(result))
    if not args.profile:
        print(f"  -> {save(NAME, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
