"""Start-up with many checks (issue 16, item 4): a generated config of N `http` checks (interval
15 s, timeout 5 s, each on its own URL path), then

- `agentctl validate FILE`: wall time of a fresh process (1 warm-up + `--runs` measured runs);
  target: median <= 3 s at 10 000 checks;
- `agentctl run -c FILE`: wall time from the process's start to `/ready` answering 200 (loaded,
  validated, every check constructed and its task started); target: median <= 5 s at 10 000.

The anchor, measured the same way in the same run, is `agentctl validate` of a file with one
check: the interpreter and the imports, which the number of checks does not change. The targets
probe a closed local port: start-up never waits on a target (first runs are spread over
agent.start_spread), so nginx is not needed.

    python -m bench.startup [--checks 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import REPO, agentctl_path, exit_on_sigterm, median, save, stop_process, verdict
from lab.ports import free_port

NAME = "startup"
VALIDATE_TARGET_S = 3.0
READY_TARGET_S = 5.0


def config_text(checks: int, listen_port: int, target_port: int) -> str:
    """An agent config with `checks` http checks, as a new user with a fleet would write it."""
    head = f"agent:\n  listen: 127.0.0.1:{listen_port}\n  interval: 15s\n  timeout: 5s\nchecks:\n"
    body = "".join(
        f"  - name: web-{i:05d}\n    type: http\n    url: http://127.0.0.1:{target_port}/app/{i}\n"
        for i in range(checks)
    )
    return head + body


def time_validate(path: Path, runs: int) -> list[float]:
    times: list[float] = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run(
            [agentctl_path(), "validate", str(path)], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        elapsed = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"agentctl validate exited {out.returncode}: {out.stdout} {out.stderr[-500:]}")
        if i:
            times.append(elapsed)
    return times


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def time_ready(path: Path, port: int, runs: int) -> list[float]:
    """Seconds from spawning `agentctl run` to /ready answering 200, one fresh agent per run."""
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [agentctl_path(), "run", "-c", str(path), "--log-level", "warning"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not _ready(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"the agent exited {proc.returncode} before it was ready")
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("the agent was not ready after 120 s")
                time.sleep(0.02)
            times.append(time.perf_counter() - t0)
        finally:
            stop_process(proc)
    return times


def run(checks: int = 10_000, runs: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mamori-startup-") as tmp:
        listen, target = free_port(), free_port()
        big, one = Path(tmp) / "checks.yml", Path(tmp) / "one.yml"
        big.write_text(config_text(checks, listen, target))
        one.write_text(config_text(1, listen, target))
        anchor = time_validate(one, runs)
        validate = time_validate(big, runs)
        ready = time_ready(big, listen, runs)
        size = big.stat().st_size
    v, r = median(validate), median(ready)
    return {
        "parameters": {"checks": checks, "runs": runs, "interval_s": 15, "timeout_s": 5, "file_bytes": size},
        "validate_one_check_s": {"median": round(median(anchor), 3), "runs": [round(t, 3) for t in anchor]},
        "validate_s": {"median": round(v, 3), "runs": [round(t, 3) for t in validate]},
        "ready_s": {"median": round(r, 3), "runs": [round(t, 3) for t in ready]},
        "targets": {
            "validate_s": VALIDATE_TARGET_S,
            "ready_s": READY_TARGET_S,
            "validate": verdict(v <= VALIDATE_TARGET_S),
            "ready": verdict(r <= READY_TARGET_S),
        },
    }


def summary(r: dict[str, Any]) -> str:
    t = r["targets"]
    return (
        f"startup: {r['parameters']['checks']} http checks: agentctl validate median "
        f"{r['validate_s']['median']:.2f}s (one check {r['validate_one_check_s']['median']:.2f}s; "
        f"target <= {t['validate_s']:g}s {t['validate']}), /ready {r['ready_s']['median']:.2f}s "
        f"(target <= {t['ready_s']:g}s {t['ready']})"
    )


def figures(r: dict[str, Any]) -> list[str]:
    """The docs/benchmarks.md section (bench/run_all.py)."""
    p, t = r["parameters"], r["targets"]

    def runs(key: str) -> str:
        return ", ".join(f"{x:.2f}" for x in r[key]["runs"])

    return [
        f"_{r['date']}, {r['machine']['nproc']} cores._ {p['checks']} generated `http` checks "
        f"({p['file_bytes'] / 2**20:.1f} MiB of YAML), median of {p['runs']} fresh processes.",
        "",
        "| | median | runs | target | |",
        "|---|---|---|---|---|",
        f"| `agentctl validate` | **{r['validate_s']['median']:.2f} s** | "
        f"{runs('validate_s')} | ≤ {t['validate_s']:g} s | **{t['validate']}** |",
        f"| `agentctl run` → `/ready` | **{r['ready_s']['median']:.2f} s** | "
        f"{runs('ready_s')} | ≤ {t['ready_s']:g} s | **{t['ready']}** |",
        f"| anchor: `agentctl validate`, one check | {r['validate_one_check_s']['median']:.2f} s | "
        f"{runs('validate_one_check_s')} | | |",
    ]


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = run(args.checks, args.runs)
    path = save(NAME, result)
    print(summary(result))
    print(f"  -> {path}")


if __name__ == "__main__":
    main()
