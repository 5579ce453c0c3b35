"""Shared helpers for the benchmarks: result files, statistics, ports, process handling.

Everything here talks to 127.0.0.1 only. Helpers that start processes leave stopping them to the
caller's `finally` (see `stop_process`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import math
import os
import platform
import pstats
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from lab.wait import wait_until_sync

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


# --- statistics -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p90 of 9 values is the 9th smallest): no interpolation, so the
    figure is always one that was measured."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """The q-quantile (0 < q < 1) of a Prometheus histogram from its cumulative bucket counts
    (upper bound -> count, `+Inf` as `math.inf`), interpolated linearly inside the bucket the rank
    falls in, as PromQL's `histogram_quantile` does: its resolution is the bucket's width. A rank
    in the `+Inf` bucket gives the largest finite bound; no observations give NaN."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- results ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def write_result(name: str, parameters: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json; returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": parameters,
        **figures,
    }
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)  # a reader never sees half a file
    return path


def save(name: str, result: dict[str, Any]) -> Path:
    """Write a benchmark's `run()` answer (whose "parameters" key holds its parameters)."""
    figures = dict(result)
    return write_result(name, figures.pop("parameters"), figures)


def read_result(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


# --- ports and HTTP ---------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET a loopback URL; returns (status, body). Raises OSError if it cannot connect."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks talk to 127.0.0.1 only, not {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of exactly `name` in a /metrics page (text format): (labels, value)."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            labels, _, value = rest[1:].rpartition("} ")
        elif rest.startswith(" "):
            labels, value = "", rest[1:]
        else:
            continue  # another metric whose name starts with `name`
        out.append((dict(_LABEL.findall(labels)), float(value.split()[0])))
    return out


def metric_sum(text: str, name: str, match: Callable[[dict[str, str]], bool] | None = None) -> float:
    """Sum of the samples of `name`, optionally only those whose labels satisfy `match`."""
    return sum(value for labels, value in series(text, name) if match is None or match(labels))


def metric_by_label(text: str, name: str, label: str) -> dict[str, float]:
    """Samples of `name` summed by the value of one label (samples without it are skipped)."""
    out: dict[str, float] = {}
    for labels, value in series(text, name):
        if label in labels:
            out[labels[label]] = out.get(labels[label], 0.0) + value
    return out


# --- processes --------------------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU time of the process itself (its threads included, children not)."""
    t = proc.cpu_times()
    return float(t.user + t.system)


def memory(proc: psutil.Process) -> dict[str, float | None]:
    """RSS and, where the kernel lets us read it, USS, in MiB."""
    rss = proc.memory_info().rss / 2**20
    uss: float | None
    try:
        uss = proc.memory_full_info().uss / 2**20
    except (psutil.AccessDenied, AttributeError):
        uss = None
    return {"rss_mb": round(rss, 2), "uss_mb": None if uss is None else round(uss, 2)}


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """SIGTERM the process by its PID, SIGKILL it if it has not exited after `timeout` s.
    Safe to call twice and on a process that has already exited. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return proc.returncode


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that the `finally` blocks that stop our servers run when
    the benchmark itself is terminated (SIGINT already raises KeyboardInterrupt)."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def agent_python() -> str:
    """The interpreter of the venv the agent is installed in (the one running the benchmarks)."""
    return sys.executable


def agentctl_path() -> str:
    """`.venv/bin/agentctl` of this checkout, else the one next to the running interpreter."""
    for candidate in (REPO / ".venv" / "bin" / "agentctl", Path(sys.executable).parent / "agentctl"):
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError("agentctl not found: run `make` to install the package into .venv")


@contextlib.contextmanager
def agent_process(
    args: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    python_args: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """`python [PYTHON_ARGS] -m agent.cli run ARGS` as a subprocess, output to `log_path`;
    stopped (by PID) when the block exits, even on error."""
    run_env = dict(os.environ if env is None else env)
    # The listen address must come from --listen only, never from the caller's environment.
    for key in ("MAMORI_LISTEN", "MAMORI_SELF_ADDRESS"):
        run_env.pop(key, None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [agent_python(), *python_args, "-m", "agent.cli", "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=run_env,
            cwd=REPO,
        )
        try:
            yield proc
        finally:
            stop_process(proc)


def wait_agent_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float) -> None:
    """Return once the agent of `agent_process` answers /ready on 127.0.0.1:`port`; raise
    RuntimeError with the end of its log if it exits or is not ready within `timeout` s."""
    try:
        wait_until_sync(
            "the agent's /ready",
            lambda: http_get(f"http://127.0.0.1:{port}/ready", 1.0)[0] == 200,
            timeout,
            interval=0.1,
            alive=lambda: proc.poll() is None,
        )
    except (TimeoutError, RuntimeError) as exc:
        raise RuntimeError(f"agent did not start: {exc}\n{tail(log_path)}") from exc


def print_profile(path: Path) -> None:
    """Print a cProfile file's top 30 functions by cumulative and by own time."""
    if not path.exists():
        print(f"no profile written to {path}", file=sys.stderr)
        return
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(30)


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


class KeepAliveClient:
    """GETs over one persistent HTTP/1.1 connection to 127.0.0.1:port, as Prometheus scrapes a
    target; reconnects once if the server closed the connection. Not thread-safe: one per thread."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self._port = port
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, str]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=self._timeout)
            try:
                self._conn.request("GET", path)
                resp = self._conn.getresponse()
                return resp.status, resp.read().decode("utf-8", "replace")
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Safe to call twice."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
