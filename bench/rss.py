"""Memory of the running agent (psutil RSS, and USS where readable), in two set-ups:

(a) the embedded default config (a host check and an http check of the agent's own /healthz,
    15 s interval), measured a few seconds after both checks have a result;
(b) a generated config of 100 http checks against a local nginx (2 s interval), measured once
    every check has run at least 3 times.

Targets: (a) RSS <= 50 MB, (b) RSS <= 60 MB (MB = MiB here). Anchors measured in the same run:
the bare interpreter, and an interpreter that has only imported what the agent imports.

    python -m bench.rss [--settle 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import lab
from bench.common import (
    REPO,
    agent_process,
    agent_python,
    exit_on_sigterm,
    http_get,
    memory,
    metric_by_label,
    save,
    stop_process,
    tail,
    verdict,
)
from lab.ports import free_port
from lab.wait import wait_until_sync

NAME = "rss"
TARGET_DEFAULT_MB = 50.0
TARGET_100_MB = 60.0
MANY_CHECKS = 100
MANY_INTERVAL = 2.0
MIN_RUNS = 3

# What `agentctl run` imports for the default config, without starting anything.
_IMPORTS_ONLY = (
    "import sys, agent.cli, agent.config, agent.logs, agent.runtime, checks.host.check, checks.http.check;"
    "print('ready', flush=True); sys.stdin.read()"
)


def _anchor(code: str) -> dict[str, float | None]:
    """Memory of `python -c code` once it has printed a line (it then waits on stdin)."""
    proc = subprocess.Popen(
        [agent_python(), "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(b"ready"):
            raise RuntimeError(f"anchor {code!r} did not start")
        return memory(psutil.Process(proc.pid))
    finally:
        stop_process(proc)


def _default_config(settle: float, tmp: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp / "agent-default.log"
    with agent_process(["--listen", f"127.0.0.1:{port}"], log) as proc:

        def alive() -> bool:
            return proc.poll() is None

        t0 = time.monotonic()

        def both_checks() -> bool:
            status, body = http_get(f"{base}/api/v1/results", 2.0)
            names = {r["check"] for r in json.loads(body)["results"]} if status == 200 else set()
            return {"host", "self"} <= names

        try:
            # The first runs are spread over agent.start_spread (10 s).
            wait_until_sync("results of both default checks", both_checks, 60, alive=alive, interval=0.5)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"agent (default config): {exc}\n{tail(log)}") from exc
        waited = time.monotonic() - t0
        time.sleep(settle)
        mem = memory(psutil.Process(proc.pid))
        _, body = http_get(f"{base}/api/v1/results", 2.0)
        statuses = {r["check"]: r["status"] for r in json.loads(body)["results"]}
    return {
        **mem,
        "seconds_until_both_results": round(waited, 1),
        "settle_s": settle,
        "uptime_at_measure_s": round(waited + settle, 1),
        "check_statuses": statuses,
        "target_rss_mb_max": TARGET_DEFAULT_MB,
        "verdict": verdict(mem["rss_mb"] is not None and mem["rss_mb"] <= TARGET_DEFAULT_MB),
    }


def _many_checks(tmp: Path, settle: float) -> dict[str, Any]:
    with lab.nginx() as nginx:
        lines = ["agent:", f"  interval: {MANY_INTERVAL:g}s", f"  timeout: {MANY_INTERVAL:g}s", "checks:"]
        for i in range(MANY_CHECKS):
            lines += [
                f"  - name: nginx-{i:03d}",
                "    type: http",
                f"    url: {nginx.url}",
                f"    interval: {MANY_INTERVAL:g}s",
                f"    timeout: {MANY_INTERVAL:g}s",
            ]
        cfg = tmp / "agent-100.yml"
        cfg.write_text("\n".join(lines) + "\n")
        port = free_port()
        log = tmp / "agent-100.log"
        with agent_process(["-c", str(cfg), "--listen", f"127.0.0.1:{port}"], log) as proc:
            agent = psutil.Process(proc.pid)
            peak = 0.0
            runs: dict[str, float] = {}
            t0 = time.monotonic()

            def enough_runs() -> bool:
                nonlocal peak, runs
                peak = max(peak, agent.memory_info().rss / 2**20)
                status, text = http_get(f"http://127.0.0.1:{port}/metrics", 2.0)
                runs = metric_by_label(text, "mamori_check_runs_total", "check") if status == 200 else {}
                return len(runs) == MANY_CHECKS and min(runs.values()) >= MIN_RUNS

            try:
                wait_until_sync(
                    f"{MIN_RUNS} runs of each check",
                    enough_runs,
                    90,
                    alive=lambda: proc.poll() is None,
                    interval=0.5,
                )
            except (TimeoutError, RuntimeError) as exc:
                raise RuntimeError(f"agent (100 checks): {exc}\n{tail(log)}") from exc
            waited = time.monotonic() - t0
            time.sleep(settle)
            mem = memory(agent)
            peak = max(peak, mem["rss_mb"] or 0.0)
            _, text = http_get(f"http://127.0.0.1:{port}/metrics", 2.0)
            by_status = metric_by_label(text, "mamori_check_runs_total", "status")
            runs = metric_by_label(text, "mamori_check_runs_total", "check")
    return {
        **mem,
        "peak_rss_mb_seen": round(peak, 2),
        "checks": MANY_CHECKS,
        "interval_s": MANY_INTERVAL,
        "seconds_until_min_runs": round(waited, 1),
        "settle_s": settle,
        "runs_per_check_at_measure_min": min(runs.values()),
        "runs_per_check_at_measure_max": max(runs.values()),
        "runs_by_status": by_status,
        "target_rss_mb_max": TARGET_100_MB,
        "verdict": verdict(mem["rss_mb"] is not None and mem["rss_mb"] <= TARGET_100_MB),
    }


def run(settle: float = 5.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mamori-bench-rss-") as tmp_name:
        tmp = Path(tmp_name)
        anchors = {
            "python_bare": _anchor("import sys; print('ready', flush=True); sys.stdin.read()"),
            "python_agent_imports_only": _anchor(_IMPORTS_ONLY),
        }
        default = _default_config(settle, tmp)
        many = _many_checks(tmp, settle)
    return {
        "parameters": {
            "unit": "MiB (2**20 bytes)",
            "settle_s": settle,
            "many_checks": MANY_CHECKS,
            "many_interval_s": MANY_INTERVAL,
            "min_runs_per_check": MIN_RUNS,
            "nginx": lab.version(lab.NGINX_BIN),
        },
        "default_config": default,
        "http_checks_100": many,
        "anchors": anchors,
    }


def summary(r: dict[str, Any]) -> str:
    d, m, a = r["default_config"], r["http_checks_100"], r["anchors"]

    def uss(x: dict[str, Any]) -> str:
        return f", USS {x['uss_mb']:.1f}" if x.get("uss_mb") is not None else ""

    return (
        f"rss: default config {d['rss_mb']:.1f} MB{uss(d)} (target <= {d['target_rss_mb_max']:g}) "
        f"{d['verdict']}; 100 http checks {m['rss_mb']:.1f} MB{uss(m)} "
        f"(target <= {m['target_rss_mb_max']:g}) {m['verdict']}; "
        f"anchors: bare python {a['python_bare']['rss_mb']:.1f} MB, "
        f"agent imports only {a['python_agent_imports_only']['rss_mb']:.1f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before measuring")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    result = run(args.settle)
    print(summary(result))
    print(f"  -> {save(NAME, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
