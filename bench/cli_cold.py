"""Cold start of the CLI: wall time of `agentctl check http://127.0.0.1:NGINX/`, a fresh process
each time (1 warm-up + 9 measured runs), against a local nginx. Target: median <= 0.4 s.

The anchor, measured the same way in the same run, is the bare interpreter (`python -c pass`
with the same venv): what no amount of import trimming can remove. `python -X importtime` of
the same command is recorded too (top 10 by cumulative time), to show what to cut.

    python -m bench.cli_cold [--runs 9]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench import lab
from bench.common import REPO, agent_python, agentctl_path, exit_on_sigterm, median, percentile, save, verdict

NAME = "cli_cold"
TARGET_S = 0.4


def _time_runs(cmd: Sequence[str], runs: int, expect: str = "") -> list[float]:
    """Wall time of `runs` fresh runs of cmd, after one unmeasured warm-up run. Every run must
    exit 0 and print `expect` at the start of its output."""
    times: list[float] = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
        elapsed = time.perf_counter() - t0
        if out.returncode != 0 or not out.stdout.startswith(expect):
            raise RuntimeError(
                f"{' '.join(cmd)} exited {out.returncode}: {out.stdout.strip()} {out.stderr.strip()[-500:]}"
            )
        if i:
            times.append(elapsed)
    return times


def parse_importtime(stderr: str) -> list[dict[str, Any]]:
    """`-X importtime` lines -> [{module, self_us, cumulative_us, depth}], in import order."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3:
            continue
        name = parts[2]
        stripped = name.lstrip()
        depth = (len(name) - len(stripped) - 1) // 2
        rows.append(
            {
                "module": stripped,
                "self_us": int(parts[0]),
                "cumulative_us": int(parts[1]),
                "depth": depth,
            }
        )
    return rows


def import_profile(cmd: Sequence[str]) -> dict[str, Any]:
    out = subprocess.run(
        [agent_python(), "-X", "importtime", *cmd], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    rows = parse_importtime(out.stderr)
    top_level = [r for r in rows if r["depth"] == 0]
    by_cumulative = sorted(rows, key=lambda r: -r["cumulative_us"])
    by_self = sorted(rows, key=lambda r: -r["self_us"])
    return {
        "exit_code": out.returncode,
        "modules_imported": len(rows),
        "total_import_ms": round(sum(r["cumulative_us"] for r in top_level) / 1000, 1),
        "top10_cumulative": by_cumulative[:10],
        "top10_top_level_cumulative": sorted(top_level, key=lambda r: -r["cumulative_us"])[:10],
        "top10_self": by_self[:10],
    }


def run(runs: int = 9) -> dict[str, Any]:
    with lab.nginx() as nginx:
        agentctl = agentctl_path()
        cmd = [agentctl, "check", nginx.url]
        baseline = _time_runs([agent_python(), "-c", "pass"], runs)
        times = _time_runs(cmd, runs, expect="HTTP OK")
        imports = import_profile(cmd)
    med, p90 = median(times), percentile(times, 90)
    base = median(baseline)
    return {
        "parameters": {
            "command": f"{agentctl} check http://127.0.0.1:PORT/ (nginx, static /)",
            "warmup_runs": 1,
            "runs": runs,
            "percentile_method": "nearest rank",
            "nginx": lab.version(lab.NGINX_BIN),
        },
        "runs_s": [round(t, 4) for t in times],
        "median_s": round(med, 4),
        "p90_s": round(p90, 4),
        "anchor_python_pass": {
            "runs_s": [round(t, 4) for t in baseline],
            "median_s": round(base, 4),
        },
        "median_minus_interpreter_s": round(med - base, 4),
        "importtime": imports,
        "target_median_s_max": TARGET_S,
        "verdict": verdict(med <= TARGET_S),
    }


def summary(r: dict[str, Any]) -> str:
    imp = r["importtime"]
    top = ", ".join(
        f"{m['module']} {m['cumulative_us'] / 1000:.0f}ms" for m in imp["top10_top_level_cumulative"][:3]
    )
    return (
        f"cli_cold: agentctl check median {r['median_s']:.3f}s, p90 {r['p90_s']:.3f}s "
        f"(python -c pass {r['anchor_python_pass']['median_s']:.3f}s; "
        f"imports {imp['total_import_ms']:.0f}ms: {top}); "
        f"target median <= {r['target_median_s_max']}s {r['verdict']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_cold", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="measured runs after 1 warm-up (default 9)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    result = run(args.runs)
    print(summary(result))
    print(f"  -> {save(NAME, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
