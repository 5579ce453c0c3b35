"""The agent's HTTP endpoint under attack, side by side with aiohttp.web and prometheus_client's own
server: scrapes answered, their p99 latency and the server's peak RSS during each attack.

Targets, each a fresh process on a free 127.0.0.1 port for each attack, started with the file
descriptor limit systemd gives a service (soft `RLIMIT_NOFILE` 1024, `--nofile`):

- `agent`: `python -m agent.cli run` with 20 checks (an http check of its own /healthz and 19 tcp
  checks), interval 1 s, so /metrics holds what a small agent's does;
- `aiohttp.web`: an `Application` with aiohttp's defaults (`AppRunner`, `TCPSite`), `GET /metrics`
  rendering a prometheus_client registry with as many series as the agent's page, per request;
- `prometheus_client`: `prometheus_client.start_http_server` on the same registry.
The two references run in a helper process, `python -m bench.endpoint --serve KIND PORT SERIES`,
which stops by itself after `--serve-seconds`.

Attacks, each for `--seconds` (default 8) from this process (asyncio, one client process):

- `pipelined`: 64 clients in a loop: connect, send 1 500 pipelined `GET /metrics`, hang up;
- `slowloris`: 600 connections each sending a request head a byte every 5 s;
- `idle`: 2 000 connections that send nothing;
- `slow_readers`: 200 connections each sending 500 pipelined `GET /metrics` and reading nothing;
- `burst`: 300 clients at once, each `GET /metrics` on a new connection, every 2 s;
- `header_1mb`: one client after another sending a request with a 1 MiB header;
- `body_100mb`: one client after another sending `POST /metrics` with a 100 MB body as fast as
  it can, until the server answers or hangs up.

Meanwhile a prober starts a scrape, `GET /metrics` on a new connection, every 0.25 s (timeout 5 s,
each in a thread of its own, so a slow target is probed as often as a fast one),
and a sampler thread reads the target's RSS every 0.1 s (a target past 2 GiB is killed and
counted as such). Figures: scrapes answered (%), their p50/p99 latency (nearest rank, answered
scrapes only), peak RSS, RSS 2 s after the attack stopped, plus what each attack got (the
burst's own answers, the status codes the heavy requests got, how much of a body went out
before the server refused it). Target for the agent: every scrape answered under every attack.

    python -m bench.endpoint [--seconds 8] [--nofile 1024] [--targets agent,aiohttp.web,...]
                             [--attacks pipelined,idle,...] [--agent-src DIR]

`--agent-src DIR` runs the agent from another source tree (e.g. an older commit unpacked with
`git archive`), to measure an earlier endpoint with the same attacks.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    REPO,
    agent_python,
    exit_on_sigterm,
    http_get,
    percentile,
    save,
    stop_process,
    tail,
    verdict,
)
from lab.ports import free_port
from lab.wait import wait_until_sync

NAME = "endpoint"
TARGETS = ("agent", "aiohttp.web", "prometheus_client")
ATTACKS = ("pipelined", "slowloris", "idle", "slow_readers", "burst", "header_1mb", "body_100mb")
CHECKS = 20
PROBE_EVERY = 0.25
PROBE_TIMEOUT = 5.0
KILL_RSS_MB = 2048.0
AFTER_S = 2.0


# --- the reference servers (helper process) ----------------------------------------------------


def _registry(series: int) -> Any:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauge = Gauge(
        "bench_series", "One of the series a small agent exposes.", ["check", "phase"], registry=registry
    )
    for i in range(series):
        gauge.labels(check=f"check-{i // 10:03d}", phase=f"phase-{i % 10}").set(i * 0.001)
    return registry


def _serve(kind: str, port: int, series: int, lifetime: float) -> None:
    from prometheus_client import generate_latest, start_http_server

    registry = _registry(series)
    if kind == "prometheus_client":
        start_http_server(port, addr="127.0.0.1", registry=registry)
        time.sleep(lifetime)
        return
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.sleep(lifetime)
        await runner.cleanup()

    asyncio.run(main())


# --- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def rss_mb(self) -> float:
        return float(psutil.Process(self.process.pid).memory_info().rss) / 2**20


def _nofile(limit: int) -> Callable[[], None]:
    def apply() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))

    return apply


def _agent_config(tmp: Path, port: int) -> Path:
    lines = [
        "agent: {interval: 1s, timeout: 1s}",
        "checks:",
        f"  - {{name: self, type: http, url: 'http://127.0.0.1:{port}/healthz'}}",
    ]
    lines += [
        f"  - {{name: closed-{i:02d}, type: tcp, host: 127.0.0.1, port: {free_port()}}}"
        for i in range(CHECKS - 1)
    ]
    path = tmp / "agent.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def target(name: str, tmp: Path, nofile: int, series: int, agent_src: Path) -> Iterator[Target]:
    port = free_port()
    log = tmp / f"{name}.log"
    if name == "agent":
        cfg = _agent_config(tmp, port)
        cmd = [agent_python(), "-m", "agent.cli", "run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}"]
        cwd = agent_src
    else:
        cmd = [agent_python(), "-m", "bench.endpoint", "--serve", name, str(port), str(series)]
        cwd = REPO
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMORI_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            preexec_fn=_nofile(nofile),
        )
    try:

        def ready() -> bool:
            status, body = http_get(f"http://127.0.0.1:{port}/metrics", 2.0)
            if status != 200:
                return False
            # The agent: once every check has a result (its page then has its full size).
            return name != "agent" or body.count("probe_success{") == CHECKS

        try:
            wait_until_sync(
                f"{name} to serve /metrics", ready, 30, alive=lambda: proc.poll() is None, interval=0.2
            )
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{name}: {exc}\n{tail(log)}") from exc
        yield Target(name, port, proc, log)
    finally:
        stop_process(proc, 5.0)


def _series_of_agent(tmp: Path, nofile: int, agent_src: Path) -> tuple[int, int]:
    """How many series the agent's /metrics has, and its size in bytes."""
    with target("agent", tmp, nofile, 0, agent_src) as agent:
        _, body = http_get(f"http://127.0.0.1:{agent.port}/metrics", 5.0)
    samples = [line for line in body.splitlines() if line and not line.startswith("#")]
    return len(samples), len(body.encode())


# --- measuring ----------------------------------------------------------------------------------


def _request(path: str, *headers: str, method: str = "GET", close: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(answer: bytes) -> int:
    parts = answer.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit() else 0


def _blocking_scrape(port: int) -> tuple[int, float]:
    """GET /metrics on a new connection: (status, seconds); status 0 if it failed or timed out."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(_request("/metrics"))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if time.monotonic() - t0 > PROBE_TIMEOUT:
                    raise TimeoutError
    except OSError:
        return 0, time.monotonic() - t0
    status = _status(answer)
    complete = answer.find(b"\r\n\r\n") > 0 and status == 200
    return (status if complete else 0), time.monotonic() - t0


@dataclass
class Watch:
    """The prober and the RSS sampler, each a thread, until `stop` is set."""

    target: Target
    stop: threading.Event = field(default_factory=threading.Event)
    scrapes: list[tuple[int, float]] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    killed_at_mb: float | None = None

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._probe), threading.Thread(target=self._sample)]
        for t in threads:
            t.start()
        return threads

    def _probe(self) -> None:
        # One scrape every PROBE_EVERY whether the last one has finished or not, like Prometheus:
        # a slow target is probed as often as a fast one.
        probes: list[threading.Thread] = []
        t0 = time.monotonic()
        while not self.stop.wait(max(0.0, t0 + len(probes) * PROBE_EVERY - time.monotonic())):
            probe = threading.Thread(target=lambda: self.scrapes.append(_blocking_scrape(self.target.port)))
            probe.start()
            probes.append(probe)
        for probe in probes:
            probe.join()

    def _sample(self) -> None:
        while not self.stop.is_set():
            try:
                rss = self.target.rss_mb()
            except psutil.Error:
                return
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            if rss > KILL_RSS_MB and self.killed_at_mb is None:
                self.killed_at_mb = rss
                self.target.process.kill()
                return
            self.stop.wait(0.1)


@dataclass
class Attack:
    """What an attack saw: its own answers and counts, as it wants to report them."""

    port: int
    stop_at: float
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    sent_before_refusal: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
        except (OSError, TimeoutError):
            self.counts["connect_failed"] += 1
            return None
        self.writers.append(writer)
        return reader, writer

    def close_all(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()


def _outcome(answer: bytes | BaseException) -> str:
    if isinstance(answer, BaseException):
        return "reset" if isinstance(answer, ConnectionResetError) else type(answer).__name__
    return str(_status(answer)) if answer else "closed"


async def _pipelined(a: Attack) -> None:
    data = _request("/metrics", close=False) * 1500

    async def client() -> None:
        while a.running():
            conn = await a.connect()
            if conn is None:
                await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(OSError, TimeoutError):
                conn[1].write(data)
                await asyncio.wait_for(conn[1].drain(), 2)
                a.counts["connections"] += 1
            conn[1].close()
            a.writers.remove(conn[1])

    await asyncio.gather(*(client() for _ in range(64)))


async def _hold(a: Attack, count: int, first: bytes, dribble_every: float | None = None) -> None:
    gate = asyncio.Semaphore(200)

    async def one() -> None:
        async with gate:
            conn = await a.connect()
        if conn is None:
            return
        a.counts["opened"] += 1
        conn[1].write(first)
        while a.running():
            await asyncio.sleep(dribble_every or 0.5)
            if dribble_every is not None:
                with contextlib.suppress(OSError):
                    conn[1].write(b"X")

    await asyncio.gather(*(one() for _ in range(count)))


async def _burst(a: Attack) -> None:
    async def one() -> None:
        t0 = time.monotonic()
        conn = await a.connect()
        if conn is None:
            a.statuses["connect_failed"] += 1
            return
        reader, writer = conn
        try:
            writer.write(_request("/metrics"))
            answer: bytes | BaseException = await asyncio.wait_for(reader.read(-1), PROBE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            answer = exc
        writer.transport.abort()
        a.writers.remove(writer)
        a.statuses[_outcome(answer)] += 1
        if _outcome(answer) == "200":
            a.seconds.append(time.monotonic() - t0)

    while a.running():
        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(300)))
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))


async def _header_1mb(a: Attack) -> None:
    data = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"
    while a.running():
        t0 = time.monotonic()
        conn = await a.connect()
        if conn is None:
            await asyncio.sleep(0.1)
            continue
        reader, writer = conn
        answer: bytes | BaseException
        try:
            writer.write(data)
            answer = await asyncio.wait_for(reader.read(-1), PROBE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            answer = exc
        writer.transport.abort()
        a.writers.remove(writer)
        a.statuses[_outcome(answer)] += 1
        a.seconds.append(time.monotonic() - t0)
        await asyncio.sleep(0.1)


async def _body_100mb(a: Attack) -> None:
    total = 100_000_000
    chunk = b"x" * 2**20
    while a.running():
        t0 = time.monotonic()
        conn = await a.connect()
        if conn is None:
            await asyncio.sleep(0.1)
            continue
        reader, writer = conn
        sent = 0
        answer: bytes | BaseException = b""
        writer.write(_request("/metrics", f"Content-Length: {total}", method="POST", close=False))
        read = asyncio.ensure_future(reader.read(65536))
        try:
            while sent < total and not read.done() and a.running():
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), PROBE_TIMEOUT)
                sent += len(chunk)
            answer = await asyncio.wait_for(read, PROBE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            answer = exc
        read.cancel()
        writer.transport.abort()
        a.writers.remove(writer)
        a.statuses[_outcome(answer)] += 1
        a.sent_before_refusal.append(sent)
        a.seconds.append(time.monotonic() - t0)
        await asyncio.sleep(0.1)


ATTACK_RUNS: dict[str, Callable[[Attack], Awaitable[None]]] = {
    "pipelined": _pipelined,
    "slowloris": lambda a: _hold(a, 600, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n", 5.0),
    "idle": lambda a: _hold(a, 2000, b""),
    "slow_readers": lambda a: _hold(a, 200, _request("/metrics", close=False) * 500),
    "burst": _burst,
    "header_1mb": _header_1mb,
    "body_100mb": _body_100mb,
}


def _ms(values: list[float], pct: float) -> float | None:
    return round(percentile(values, pct) * 1000, 1) if values else None


def attack(t: Target, name: str, seconds: float) -> dict[str, Any]:
    base = t.rss_mb()
    watch = Watch(t, peak_rss_mb=base)
    threads = watch.run()
    a = Attack(t.port, time.monotonic() + seconds)

    async def go() -> None:
        try:
            await asyncio.wait_for(ATTACK_RUNS[name](a), seconds + 30)
        except TimeoutError:
            a.counts["attack_overran"] += 1
        finally:
            a.close_all()

    t0 = time.monotonic()
    asyncio.run(go())
    attack_s = time.monotonic() - t0
    time.sleep(AFTER_S)
    watch.stop.set()
    for thread in threads:
        thread.join()
    alive = t.process.poll() is None
    after = t.rss_mb() if alive else None
    recovered = [_blocking_scrape(t.port)[0] == 200 for _ in range(3)] if alive else []
    answered = [s for status, s in watch.scrapes if status == 200]
    out: dict[str, Any] = {
        "attack_s": round(attack_s, 2),
        "scrapes": len(watch.scrapes),
        "scrapes_answered": len(answered),
        "answered_pct": round(100 * len(answered) / len(watch.scrapes), 1) if watch.scrapes else None,
        "p50_ms": _ms(answered, 50),
        "p99_ms": _ms(answered, 99),
        "max_ms": _ms(answered, 100),
        "rss_before_mb": round(base, 1),
        "peak_rss_mb": round(watch.peak_rss_mb, 1),
        "rss_after_mb": None if after is None else round(after, 1),
        "killed_at_rss_mb": None if watch.killed_at_mb is None else round(watch.killed_at_mb),
        "alive_after": alive,
        "scrapes_after_ok": sum(recovered),
        "attack": dict(a.counts),
    }
    if a.statuses:
        out["attack_statuses"] = dict(a.statuses)
    if name == "burst":
        total = sum(a.statuses.values())
        out["burst_answered_pct"] = round(100 * a.statuses.get("200", 0) / total, 1) if total else None
        out["burst_p99_ms"] = _ms(a.seconds, 99)
    if a.sent_before_refusal:
        out["body_sent_mb_median"] = round(percentile(a.sent_before_refusal, 50) / 2**20, 1)
        out["body_sent_mb_max"] = round(max(a.sent_before_refusal) / 2**20, 1)
    if a.seconds and name in ("header_1mb", "body_100mb"):
        out["answer_s_median"] = round(percentile(a.seconds, 50), 3)
    return out


def _raise_own_fd_limit(at_least: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, max(hard, at_least)))


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("aiohttp", "prometheus_client")}


def run(
    seconds: float = 8.0,
    nofile: int = 1024,
    targets: tuple[str, ...] = TARGETS,
    attacks: tuple[str, ...] = ATTACKS,
    agent_src: Path = REPO,
) -> dict[str, Any]:
    _raise_own_fd_limit(8192)
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mamori-bench-endpoint-") as tmp_name:
        tmp = Path(tmp_name)
        series, size = _series_of_agent(tmp, nofile, agent_src)
        for name in targets:
            figures[name] = {}
            for attack_name in attacks:
                with target(name, tmp, nofile, series, agent_src) as t:
                    figures[name][attack_name] = attack(t, attack_name, seconds)
                print(f"  {name:18} {attack_name:13} {_cell(figures[name][attack_name])}", flush=True)
    agent = figures.get("agent", {})
    every = all(f["answered_pct"] == 100.0 for f in agent.values())
    flags = [
        f"{t}: {a}: {f['answered_pct']} % of scrapes answered"
        for t, per in figures.items()
        for a, f in per.items()
        if f["answered_pct"] != 100.0
    ]
    return {
        "parameters": {
            "seconds_per_attack": seconds,
            "rlimit_nofile_soft": nofile,
            "probe_every_s": PROBE_EVERY,
            "probe_timeout_s": PROBE_TIMEOUT,
            "agent_checks": CHECKS,
            "agent_src": str(agent_src),
            "metrics_series": series,
            "agent_metrics_bytes": size,
            "versions": _versions(),
            "percentile_method": "nearest rank",
        },
        "targets": figures,
        "flags": flags,
        "target": "the agent answers every scrape under every attack",
        "verdict": verdict(bool(agent) and every),
    }


def _cell(f: dict[str, Any]) -> str:
    killed = f" (killed at {f['killed_at_rss_mb']} MB)" if f.get("killed_at_rss_mb") else ""
    p99 = "n/a" if f["p99_ms"] is None else f"{f['p99_ms']:g} ms"
    return f"{f['answered_pct']} % answered, p99 {p99}, peak {f['peak_rss_mb']:g} MB{killed}"


def summary(r: dict[str, Any]) -> str:
    parts = []
    for name, per in r["targets"].items():
        worst = min((f["answered_pct"] or 0.0) for f in per.values())
        peak = max(f["peak_rss_mb"] for f in per.values())
        parts.append(f"{name} worst {worst:g} % answered, peak RSS {peak:g} MB")
    return f"endpoint: {'; '.join(parts)}; {r['target']}: {r['verdict']}"


_ATTACK_LABELS = {
    "pipelined": "pipelined + hang up (64 clients)",
    "slowloris": "slowloris (600, a byte every 5 s)",
    "idle": "2 000 idle connections",
    "slow_readers": "slow readers (200 × 500 pipelined)",
    "burst": "300-client burst every 2 s",
    "header_1mb": "1 MiB header",
    "body_100mb": "100 MB body",
}


def figures(r: dict[str, Any]) -> list[str]:
    """The docs/benchmarks.md section (for bench/run_all.py's SECTIONS)."""
    p, m, per_target = r["parameters"], r["machine"], r["targets"]
    names = list(per_target)
    attacks = [a for a in ATTACKS if all(a in per_target[n] for n in names)]

    def cell(f: dict[str, Any]) -> str:
        p99 = "n/a" if f["p99_ms"] is None else f"{f['p99_ms']:g}"
        killed = f" (killed at {f['killed_at_rss_mb']})" if f.get("killed_at_rss_mb") else ""
        answered = f"**{f['answered_pct']:g} %** ({f['scrapes_answered']}/{f['scrapes']})"
        return f"{answered} | {p99} | {f['peak_rss_mb']:g}{killed}"

    rows = [
        f"_{r['date']} on {m['nproc']} CPUs ({m.get('cpu_model') or 'unknown CPU'}), Python {m['python']}, "
        f"aiohttp {p['versions']['aiohttp']}, prometheus_client {p['versions']['prometheus_client']}._ "
        f"Each attack {p['seconds_per_attack']:g} s against a fresh process, soft RLIMIT_NOFILE "
        f"{p['rlimit_nofile_soft']}; a scrape (`GET /metrics`, new connection, timeout "
        f"{p['probe_timeout_s']:g} s) every {p['probe_every_s']:g} s meanwhile; {p['metrics_series']} series "
        f"on every target's page ({p['agent_metrics_bytes'] / 1024:.1f} KiB for the agent).",
        "",
        "| attack | " + " | ".join(f"{n}: answered | p99 ms | peak RSS MB" for n in names) + " |",
        "|---|" + "---:|---:|---:|" * len(names),
    ]
    for a in attacks:
        rows.append(f"| {_ATTACK_LABELS[a]} | " + " | ".join(cell(per_target[n][a]) for n in names) + " |")
    rows += [
        "",
        "What the attacks themselves got, and memory 2 s after each attack stopped:",
        "",
        "| attack | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def got(a: str, f: dict[str, Any]) -> str:
        statuses = ", ".join(f"{k} × {v}" for k, v in sorted(f.get("attack_statuses", {}).items()))
        text = {
            "burst": f"{f.get('burst_answered_pct')} % of the burst answered",
            "header_1mb": f"{statuses}; median {f.get('answer_s_median')} s",
            "body_100mb": f"{statuses}; {f.get('body_sent_mb_median')} MB sent (median) before the answer",
        }.get(a, "")
        after = "dead" if f["rss_after_mb"] is None else f"{f['rss_after_mb']:g} MB after"
        return f"{text}{'; ' if text else ''}{after}"

    for a in attacks:
        rows.append(f"| {_ATTACK_LABELS[a]} | " + " | ".join(got(a, per_target[n][a]) for n in names) + " |")
    flags = (
        "**FLAGGED**: " + "; ".join(r["flags"]) + "." if r["flags"] else "Every target answered every scrape."
    )
    rows += ["", f"Target, {r['target']}: **{r['verdict']}**. {flags}"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.endpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per attack (default 8)")
    parser.add_argument("--nofile", type=int, default=1024, help="targets' soft RLIMIT_NOFILE (default 1024)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset")
    parser.add_argument("--agent-src", type=Path, default=REPO, help="source tree to run the agent from")
    parser.add_argument("--output", default=NAME, help="result name under bench/results (default endpoint)")
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "PORT", "SERIES"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-seconds", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        kind, port, series = args.serve
        _serve(kind, int(port), int(series), args.serve_seconds)
        return 0
    exit_on_sigterm()
    targets = tuple(t for t in args.targets.split(",") if t)
    attacks = tuple(a for a in args.attacks.split(",") if a)
    unknown = (set(targets) - set(TARGETS)) | (set(attacks) - set(ATTACKS))
    if unknown:
        parser.error(f"unknown target or attack: {', '.join(sorted(unknown))}")
    result = run(args.seconds, args.nofile, targets, attacks, args.agent_src.resolve())
    print(summary(result))
    print(f"  -> {save(args.output, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
