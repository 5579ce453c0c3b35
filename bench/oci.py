"""The OCI Monitoring exporter (`exporters/oci.py`) through the real `oci` SDK against the strict
fake (tests/fakes/oci_monitoring.py): how full its requests are against the service's limit of
50 metric streams per request, its requests per second in steady state against the tenancy's 50
per second, its CPU per 1 000 datapoints, and the replay of a 10-minute outage.

Set-up, all on 127.0.0.1: the fake runs in a helper process (`python -m bench.oci --serve-fake
DIR`), so its CPU (JSON parsing, signature checks) is not counted; this process runs the exporter
and the SDK, and its process CPU time (every thread: the SDK runs in worker threads) is the
figure. Requests are signed with an API key from an `~/.oci/config`-style file, as in production.
`SERIES` streams = `SERIES / 5` checks, each result giving 5 streams (probe_success, duration,
status, attempts and one sample), stamped every `INTERVAL` s:

- steady: `--steady-checks` http-like checks (17 streams a result, as a plain-HTTP `http` check
  gives; the field report of issue 11) every `--steady-interval` s, each result handed to the
  real OutboxSink, Outbox and Pump at its check's phase in the interval (as the scheduler spreads
  them), for `--steady` s of real time; then one result more and the sink closes (the shutdown
  drain). Requests per second and streams per request;
- live: one interval's results pushed at once, one interval at a time;
- backlog: the same number of intervals queued first, then pushed the way the pump does
  (`batch` results at a time, the exporter taking a prefix that fits 50 streams); and the same
  with only 50 series, where several intervals fit one request;
- outage replay: the real Outbox (sqlite) and Pump, the outbox holding OUTAGE seconds of results
  when the service comes back; time to drain, then the same replay again under tracemalloc for the
  peak Python memory (tracemalloc slows the run, so the timed replay is the first one).

No anchor exists for OCI: the figures are absolute, plus the ratio of datapoints per request to
the 50-stream maximum (1.0 = one datapoint per stream; more = several datapoints per stream).
The verdict is PASS when the fake accepted every datapoint exactly once and never answered 429
(its 50 requests a second), and in the steady state every request carried at least 45 streams
and nothing was left after the shutdown drain. The exporter runs with its defaults, pacing
included, so the live, backlog and replay times are paced too.

    python -m bench.oci [--series 200] [--interval 15] [--outage 600] [--rounds 40]
                        [--steady 20] [--steady-checks 40] [--steady-interval 2]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import select
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil

from bench.common import REPO, agent_python, exit_on_sigterm, save, stop_process, tail, verdict

NAME = "oci"
STREAMS_PER_CHECK = 5
MAX_STREAMS = 50


# --- the fake, in its own process -------------------------------------------------------------


async def _serve_fake(directory: Path, seconds: float) -> None:
    """Serve the fake with the key and compartment of DIR/setup.json; print {"port"}; answer each
    `stats` line on stdin with one JSON line; stop at EOF or after `seconds`."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from tests.fakes.http_faults import serve
    from tests.fakes.oci_monitoring import FakeOciMonitoring

    setup = json.loads((directory / "setup.json").read_text())
    key = load_pem_public_key(setup["public_key"].encode())
    assert isinstance(key, rsa.RSAPublicKey)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lines.put_nowait, None)

    async with serve(FakeOciMonitoring()) as fake:
        fake.register(setup["key_id"], key)
        fake.authorize(setup["compartment"])
        threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
        print(json.dumps({"port": fake.port}), flush=True)
        deadline = loop.time() + seconds
        while True:
            try:
                line = await asyncio.wait_for(lines.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return
            if line is None:
                return
            counts = fake.datapoints()
            print(
                json.dumps(
                    {
                        "points": len(fake.points),
                        "distinct": len(counts),
                        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
                        "posts": len(fake.posts),
                        "failed_streams": sum(len(p.failed) for p in fake.posts),
                        "errors": len(fake.errors),
                        "attempts": fake.attempts,
                        "throttled": fake.throttled,
                        "post_streams": [p.streams for p in fake.posts],
                        "post_at": [round(p.at, 4) for p in fake.posts],
                    }
                ),
                flush=True,
            )


class FakeProcess:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stats\n")
        self.proc.stdin.flush()
        data: dict[str, Any] = _read_json_line(self.proc, self.proc.stdout, 30, self.log)
        return data


def _read_json_line(proc: subprocess.Popen[bytes], stream: IO[bytes], timeout: float, log: Path) -> Any:
    ready, _, _ = select.select([stream], [], [], timeout)
    line = stream.readline() if ready else b""
    if not line:
        raise RuntimeError(f"the fake's helper said nothing (exit code {proc.poll()})\n{tail(log)}")
    return json.loads(line)


@contextlib.contextmanager
def fake_process(directory: Path, lifetime: float) -> Iterator[FakeProcess]:
    """The fake's helper process; stopped by its PID when the block exits, even on error."""
    log = directory / "fake.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                agent_python(),
                "-m",
                "bench.oci",
                "--serve-fake",
                str(directory),
                "--serve-seconds",
                f"{lifetime:g}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
        )
    try:
        assert proc.stdout is not None
        yield FakeProcess(proc, _read_json_line(proc, proc.stdout, 60, log)["port"], log)
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        stop_process(proc)


# --- the measurements --------------------------------------------------------------------------


def _results(checks: int, timestamps: list[float]) -> list[Any]:
    from agent.model import CheckResult, Sample, Status

    return [
        [
            CheckResult(
                check=f"check-{i:03d}",
                check_type="tcp",
                target=f"10.0.{i // 250}.{i % 250}:5432",
                status=Status.OK,
                started_at=t,
                duration=0.004 + i * 1e-5,
                samples=(Sample("probe_dns_lookup_time_seconds", 0.0005),),
            )
            for i in range(checks)
        ]
        for t in timestamps
    ]


HTTP_SAMPLES = (
    *(
        ("probe_http_duration_seconds", (("phase", p),))
        for p in ("resolve", "connect", "tls", "processing", "transfer")
    ),
    ("probe_http_status_code", ()),
    ("probe_http_version", ()),
    ("probe_http_redirects", ()),
    ("probe_http_ssl", ()),
    ("probe_http_content_length", ()),
    ("probe_ssl_earliest_cert_expiry", ()),
    ("probe_tls_version_info", (("version", "TLS 1.3"),)),
    ("probe_dns_lookup_time_seconds", ()),
)
HTTP_STREAMS = 4 + len(HTTP_SAMPLES)  # probe_success, duration, status, attempts + the samples


def _http_result(i: int, t: float) -> Any:
    """The result of a plain-HTTP `http` check: 17 streams, as in the field report of issue 11."""
    from agent.model import CheckResult, Sample, Status

    return CheckResult(
        check=f"web-{i:03d}",
        check_type="http",
        target=f"https://app-{i:03d}.example.internal/health",
        status=Status.OK,
        started_at=t,
        duration=0.02 + i * 1e-4,
        samples=tuple(Sample(name, 0.001 * (k + 1), labels) for k, (name, labels) in enumerate(HTTP_SAMPLES)),
    )


async def _steady(
    args: argparse.Namespace, directory: Path, cfg: Any, context: Any, fake: FakeProcess
) -> dict[str, Any]:
    """The steady state through the real OutboxSink, Outbox and Pump (see the module's doc)."""
    from agent.outbox import Outbox
    from exporters.base import OutboxSink, exporter_pump
    from exporters.oci import build

    checks, interval = args.steady_checks, args.steady_interval
    outbox = Outbox(directory / "outbox-steady.db", 256 * 2**20, [cfg.name])
    exporter = build(cfg, context)
    pump = exporter_pump(exporter, outbox)
    sink = OutboxSink(outbox, [pump])
    before = fake.stats()
    loop = asyncio.get_running_loop()
    pump.start()
    start = loop.time() + 0.2
    produced = 0
    t = 0.0
    while True:
        k, i = divmod(produced, checks)
        t = start + k * interval + i * interval / checks  # each check at its own phase
        if t >= start + args.steady:
            break
        await asyncio.sleep(max(0.0, t - loop.time()))
        await sink.consume(_http_result(i, time.time()))
        produced += 1
    await asyncio.sleep(max(0.0, start + args.steady - loop.time()))
    window = loop.time() - start
    in_window, depth = exporter.requests, outbox.depth(cfg.name)
    during = fake.stats()
    # One result more, then the agent stops: the shutdown drain must send it without lingering.
    await sink.consume(_http_result(0, time.time()))
    produced += 1
    w0 = time.perf_counter()
    await sink.aclose()  # stops the pump, drains what waits (at most 3 s), closes
    flush_s = time.perf_counter() - w0
    after = fake.stats()
    n0, n1 = before["posts"], during["posts"]
    streams = during["post_streams"][n0:n1]
    at = during["post_at"][n0:n1]
    ordered = sorted(streams)
    return {
        "checks": checks,
        "interval_s": interval,
        "streams_per_result": HTTP_STREAMS,
        "seconds": round(window, 2),
        "results": produced,
        "datapoints": produced * HTTP_STREAMS,
        "requests": in_window,
        "requests_per_s": round(in_window / window, 2),
        "max_requests_in_1s": max((bisect.bisect_left(at, a + 1.0) - i for i, a in enumerate(at)), default=0),
        "streams_per_request_mean": round(sum(streams) / len(streams), 1) if streams else 0.0,
        "streams_per_request_min": ordered[0] if ordered else 0,
        "streams_per_request_p10": ordered[len(ordered) // 10] if ordered else 0,
        "requests_under_45_streams": sum(1 for n in streams if n < 45),
        "depth_at_end": depth,
        "shutdown_flush_requests": after["posts"] - n1,
        "shutdown_flush_s": round(flush_s, 3),
        "depth_after_close": _depth_after(directory / "outbox-steady.db", cfg.name),
    }


def _depth_after(path: Path, name: str) -> int:
    from agent.outbox import Outbox

    outbox = Outbox(path, 256 * 2**20, [name])
    try:
        return outbox.depth(name)
    finally:
        outbox.close()


async def _push_all(exporter: Any, records: list[Any], batch: int) -> None:
    """What the pump does with a healthy service: offer `batch` records, drop what was handled."""
    while records:
        outcome = await exporter.push(records[:batch])
        if outcome.error or not outcome.handled:
            raise RuntimeError(f"push failed: {outcome.error}")
        records = records[outcome.handled :]


def _shape(exporter: Any, cpu: float, wall: float, r0: int, d0: int) -> dict[str, float]:
    requests, points = exporter.requests - r0, exporter.datapoints - d0
    per_request = points / requests
    return {
        "requests": requests,
        "datapoints": points,
        "datapoints_per_request": round(per_request, 2),
        "ratio_to_50_streams": round(per_request / MAX_STREAMS, 3),
        "cpu_ms_per_1000_datapoints": round(cpu * 1000 / points * 1000, 2),
        "wall_s": round(wall, 3),
    }


async def _measure(args: argparse.Namespace, directory: Path, fake: FakeProcess) -> dict[str, Any]:
    from agent.model import CheckResult
    from agent.outbox import Outbox, Record
    from exporters.base import ExportContext, exporter_pump
    from exporters.oci import OciConfig, build

    setup = json.loads((directory / "setup.json").read_text())
    checks = max(1, args.series // STREAMS_PER_CHECK)
    cfg = OciConfig.model_validate(
        {
            "type": "oci",
            "compartment_id": setup["compartment"],
            "namespace": "mamori",
            "config_file": setup["config_file"],
            "endpoint": fake.url,
            "dimensions": {"env": "bench"},
        }
    )
    context = ExportContext(
        agent="bench-host", labels={"site": "bench", "role": "app"}, interval=args.interval
    )
    exporter = build(cfg, context)
    now = time.time()
    seq = 0

    def records(results: list[CheckResult]) -> list[Record]:
        nonlocal seq
        out = []
        for r in results:
            seq += 1
            out.append(Record(seq, r))
        return out

    # Warm-up: the client, the signer, the first connection (not measured).
    await _push_all(exporter, records(_results(checks, [now - 3000])[0]), cfg.batch)
    sent = checks * STREAMS_PER_CHECK
    figures: dict[str, Any] = {}

    # steady: results arriving over time through the sink, outbox and pump
    figures["steady"] = await _steady(args, directory, cfg, context, fake)
    sent += figures["steady"]["datapoints"]

    # live: one interval at a time
    rounds = [_results(checks, [now - 2900 + k * args.interval])[0] for k in range(args.rounds)]
    r0, d0, c0, w0 = exporter.requests, exporter.datapoints, time.process_time(), time.perf_counter()
    for results in rounds:
        await _push_all(exporter, records(results), cfg.batch)
    figures["live"] = _shape(exporter, time.process_time() - c0, time.perf_counter() - w0, r0, d0)
    sent += args.rounds * checks * STREAMS_PER_CHECK

    # backlog: the same intervals queued, pushed the way the pump offers them
    backlog = [r for k in range(args.rounds) for r in _results(checks, [now - 2000 + k * args.interval])[0]]
    queued = records(backlog)
    r0, d0, c0, w0 = exporter.requests, exporter.datapoints, time.process_time(), time.perf_counter()
    await _push_all(exporter, queued, cfg.batch)
    figures["backlog"] = _shape(exporter, time.process_time() - c0, time.perf_counter() - w0, r0, d0)
    sent += len(backlog) * STREAMS_PER_CHECK

    # backlog_50: the same, with only 50 series (10 checks): every stream fits one request, so a
    # request carries several datapoints per stream (up to the batch, or 1 000 datapoints)
    few = MAX_STREAMS // STREAMS_PER_CHECK
    backlog = [r for k in range(args.rounds) for r in _results(few, [now - 1000 + k * args.interval])[0]]
    queued = records(backlog)
    r0, d0, c0, w0 = exporter.requests, exporter.datapoints, time.process_time(), time.perf_counter()
    await _push_all(exporter, queued, cfg.batch)
    figures["backlog_50_series"] = _shape(
        exporter, time.process_time() - c0, time.perf_counter() - w0, r0, d0
    )
    sent += len(backlog) * STREAMS_PER_CHECK
    await exporter.aclose()

    # outage replay: OUTAGE seconds of results in the real outbox, then the service is back
    intervals = int(args.outage // args.interval)
    replay: dict[str, Any] = {
        "results": intervals * checks,
        "datapoints": intervals * checks * STREAMS_PER_CHECK,
    }
    proc = psutil.Process()
    for traced in (False, True):
        start = time.time() - args.outage
        outbox = Outbox(directory / f"outbox-{traced}.db", 256 * 2**20, ["oci"])
        for k in range(intervals):
            outbox.append(_results(checks, [start + k * args.interval])[0])
        exporter = build(cfg, context)
        pump = exporter_pump(exporter, outbox)
        rss0 = proc.memory_info().rss
        if traced:
            tracemalloc.start()
        c0, w0 = time.process_time(), time.perf_counter()
        steps = 0
        while (delay := await pump.step()) is not None:
            steps += 1
            if delay:
                raise RuntimeError(f"push failed during the replay: {pump.last_error}")
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if traced:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            replay["peak_traced_mib"] = round(peak / 2**20, 2)
            replay["wall_s_under_tracemalloc"] = round(wall, 3)
        else:
            replay |= {
                "drain_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "requests": exporter.requests,
                "datapoints_per_request": round(exporter.datapoints / exporter.requests, 1),
                "ratio_to_50_streams": round(exporter.datapoints / exporter.requests / MAX_STREAMS, 2),
                "cpu_ms_per_1000_datapoints": round(cpu * 1000 / exporter.datapoints * 1000, 2),
                "rss_growth_mib": round((proc.memory_info().rss - rss0) / 2**20, 2),
            }
        replay.setdefault("depth_after", outbox.depth("oci"))
        await exporter.aclose()
        outbox.close()
        sent += intervals * checks * STREAMS_PER_CHECK
    figures["outage_replay"] = replay
    figures["rss_mib_at_end"] = round(proc.memory_info().rss / 2**20, 1)
    figures["expected_datapoints"] = sent
    return figures


def run(
    series: int = 200,
    interval: float = 15.0,
    outage: float = 600.0,
    rounds: int = 40,
    steady: float = 20.0,
    steady_checks: int = 40,
    steady_interval: float = 2.0,
) -> dict[str, Any]:
    from exporters.oci import OciConfig
    from tests.fakes.oci_monitoring import ApiKey, ocid, public_pem

    cfg_defaults = {k: OciConfig.model_fields[k].default for k in ("linger", "max_requests_per_second")}
    args = argparse.Namespace(
        series=series,
        interval=interval,
        outage=outage,
        rounds=rounds,
        steady=steady,
        steady_checks=steady_checks,
        steady_interval=steady_interval,
    )
    with tempfile.TemporaryDirectory(prefix="mamori-bench-oci-") as tmp:
        directory = Path(tmp)
        key = ApiKey.create(directory / "oci")
        setup = {
            "key_id": key.key_id,
            "public_key": public_pem(key.public_key),
            "compartment": ocid("compartment"),
            "config_file": str(key.config_file),
        }
        (directory / "setup.json").write_text(json.dumps(setup))
        with fake_process(directory, lifetime=900) as fake:
            figures = asyncio.run(_measure(args, directory, fake))
            stats = fake.stats()
    for per_request in ("post_streams", "post_at"):  # used above; too long for the file
        stats.pop(per_request)
    exact = stats["duplicates"] == 0 and stats["distinct"] == figures["expected_datapoints"]
    shape = figures["steady"]
    full = shape["requests_under_45_streams"] == 0 and shape["depth_after_close"] == 0
    return {
        "parameters": {
            "series": series,
            "checks": max(1, series // STREAMS_PER_CHECK),
            "streams_per_check": STREAMS_PER_CHECK,
            "interval_s": interval,
            "outage_s": outage,
            "rounds": rounds,
            "oci_sdk": _sdk_version(),
        },
        **figures,
        "fake": stats,
        "exporter": {
            "linger": cfg_defaults["linger"],
            "max_requests_per_second": cfg_defaults["max_requests_per_second"],
        },
        "verdict": verdict(exact and full and stats["errors"] == 0 and stats["throttled"] == 0),
    }


def _sdk_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("oci")


def summary(r: dict[str, Any]) -> str:
    live, backlog, replay, steady = r["live"], r["backlog"], r["outage_replay"], r["steady"]
    p = r["parameters"]
    return (
        f"oci: steady state of {steady['checks']} checks at {steady['interval_s']:g} s "
        f"({steady['streams_per_result']} streams a result): {steady['requests_per_s']:g} requests/s "
        f"(at most {steady['max_requests_in_1s']} in a second), "
        f"{steady['streams_per_request_mean']:g} streams/request "
        f"({steady['requests_under_45_streams']} requests under 45); "
        f"live {live['datapoints_per_request']:g} datapoints/request "
        f"({live['ratio_to_50_streams']:.2f} x the 50-stream limit), "
        f"{live['cpu_ms_per_1000_datapoints']:.1f} ms CPU per 1000 datapoints; backlog "
        f"{backlog['datapoints_per_request']:g}/request ({backlog['ratio_to_50_streams']:.2f} x), "
        f"{backlog['cpu_ms_per_1000_datapoints']:.1f} ms CPU per 1000; a backlog of 50 series "
        f"{r['backlog_50_series']['datapoints_per_request']:g}/request "
        f"({r['backlog_50_series']['ratio_to_50_streams']:.2f} x); {p['outage_s']:g} s outage of "
        f"{p['series']} series at {p['interval_s']:g} s ({replay['datapoints']} datapoints) drained in "
        f"{replay['drain_s']:.2f} s with {replay['requests']} requests, peak traced memory "
        f"{replay['peak_traced_mib']:.1f} MiB; every datapoint exactly once: {r['verdict']}"
    )


def figures(r: dict[str, Any]) -> list[str]:
    """The docs/benchmarks.md section (for bench/run_all.py's SECTIONS)."""
    p, replay = r["parameters"], r["outage_replay"]
    m = r["machine"]
    steady = r["steady"]
    cfg = r["exporter"]
    rows = [
        f"_{r['date']} on {m['nproc']} CPUs ({m.get('cpu_model') or 'unknown CPU'}), Python {m['python']}, "
        f"oci {p['oci_sdk']}._ The exporter's defaults (linger {cfg['linger']:g} s, at most "
        f"{cfg['max_requests_per_second']:g} requests/s); the fake in its own process.",
        "",
        f"Steady state: {steady['checks']} `http` checks ({steady['streams_per_result']} streams a "
        f"result) every {steady['interval_s']:g} s, through the sink, outbox and pump, for "
        f"{steady['seconds']:g} s, then one result more and the shutdown: {steady['results']} results, "
        f"{steady['datapoints']} datapoints.",
        "",
        "| requests / s | most in one second | streams / request (mean, p10, min) | requests under 45 "
        "streams | shutdown drain |",
        "|---:|---:|---:|---:|---:|",
        f"| **{steady['requests_per_s']:g}** | {steady['max_requests_in_1s']} | "
        f"**{steady['streams_per_request_mean']:g}**, {steady['streams_per_request_p10']}, "
        f"{steady['streams_per_request_min']} | {steady['requests_under_45_streams']} of "
        f"{steady['requests']} | {steady['shutdown_flush_requests']} request(s), "
        f"{steady['shutdown_flush_s']:.2f} s, {steady['depth_after_close']} left |",
        "",
        f"Batching: {p['series']} series ({p['checks']} checks x {p['streams_per_check']} streams) every "
        f"{p['interval_s']:g} s.",
        "",
        "| | requests | datapoints / request | × the 50-stream limit | CPU ms / 1 000 datapoints | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    shapes = (
        ("live (one interval per push)", "live"),
        ("backlog (queued intervals)", "backlog"),
        (f"backlog of {MAX_STREAMS} series only", "backlog_50_series"),
    )
    for label, key in shapes:
        s = r[key]
        rows.append(
            f"| {label} | {s['requests']} | {s['datapoints_per_request']:g} | "
            f"{s['ratio_to_50_streams']:.2f} | **{s['cpu_ms_per_1000_datapoints']:.1f}** | "
            f"{s['wall_s']:.2f} |"
        )
    rows.append(
        f"| outage replay ({p['outage_s']:g} s, outbox + pump) | {replay['requests']} | "
        f"{replay['datapoints_per_request']:g} | {replay['ratio_to_50_streams']:.2f} | "
        f"**{replay['cpu_ms_per_1000_datapoints']:.1f}** | {replay['drain_s']:.2f} |"
    )
    rows += [
        "",
        f"Outage replay: {replay['results']} results ({replay['datapoints']} datapoints) drained in "
        f"**{replay['drain_s']:.2f} s**; peak traced Python memory during the drain "
        f"**{replay['peak_traced_mib']:.1f} MiB** (RSS growth {replay['rss_growth_mib']:g} MiB). "
        f"Fake: {r['fake']['distinct']} distinct datapoints, {r['fake']['duplicates']} duplicates, "
        f"{r['fake']['errors']} errors, {r['fake'].get('throttled', 0)} throttled: **{r['verdict']}**.",
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.oci", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--series", type=int, default=200, help="metric streams (default 200)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between results (default 15)")
    parser.add_argument("--outage", type=float, default=600.0, help="outage replayed, seconds (default 600)")
    parser.add_argument(
        "--rounds", type=int, default=40, help="intervals in the live/backlog runs (default 40)"
    )
    parser.add_argument(
        "--steady", type=float, default=20.0, help="steady state measured, seconds (default 20)"
    )
    parser.add_argument(
        "--steady-checks", type=int, default=40, help="checks in the steady state (default 40)"
    )
    parser.add_argument(
        "--steady-interval", type=float, default=2.0, help="their interval, seconds (default 2)"
    )
    parser.add_argument("--serve-fake", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--serve-seconds", type=float, default=900.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_fake:
        asyncio.run(_serve_fake(Path(args.serve_fake), args.serve_seconds))
        return 0
    exit_on_sigterm()
    result = run(
        args.series,
        args.interval,
        args.outage,
        args.rounds,
        args.steady,
        args.steady_checks,
        args.steady_interval,
    )
    print(summary(result))
    print(f"  -> {save(NAME, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
