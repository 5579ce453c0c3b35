"""The real servers the benchmarks run against: nginx (the probe target), blackbox_exporter
(the anchor for CPU per probe) and Prometheus (the scraper), each on a free 127.0.0.1 port in its
own temp dir.

Both are context managers: the process is started in the foreground as our child, tracked by its
PID, and stopped (SIGTERM, then SIGKILL) and its temp dir removed on exit, even on error.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import http_get, stop_process, tail
from lab.ports import free_port
from lab.prometheus import prometheus_argv
from lab.wait import wait_until_sync

NGINX_BIN = "/usr/sbin/nginx"
BLACKBOX_BIN = "prometheus-blackbox-exporter"
PROMETHEUS_BIN = "prometheus"

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    log_format bench '$remote_addr "$request" $status $body_bytes_sent "$http_user_agent"';
    access_log {dir}/access.log bench;
    default_type text/html;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location = /health {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
        # A saved /metrics page, served pre-gzipped (bench.capacity's Prometheus floor).
        location = /metrics {{
            default_type "text/plain; version=0.0.4; charset=utf-8";
            gzip_static on;
        }}
    }}
}}
"""

_INDEX = "<!doctype html><title>bench</title><p>Mamori benchmark target.</p>\n"

_BLACKBOX_CONF = """\
modules:
  http_2xx:
    prober: http
    timeout: {timeout:g}s
    http:
      preferred_ip_protocol: ip4
"""


@dataclass
class Server:
    """A running server: its process, where it listens, and its temp dir (logs live there)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None


def _raise_with_log(server: Server, log: Path, exc: Exception) -> None:
    raise RuntimeError(f"{server.name} did not start: {exc}\n{tail(log)}") from exc


@contextlib.contextmanager
def _served(
    name: str,
    argv: list[str],
    tmp: Path,
    port: int,
    ready: str,
    timeout: float,
    error_log: Path | None = None,
) -> Iterator[Server]:
    """Start `argv` in `tmp` (its output to tmp/<name>.log), wait until GET `ready` (a path
    without its leading /) answers 200, yield it, and stop it by its PID. Start-up failures name
    the server and end with its log (`error_log` if it writes one of its own)."""
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp)
    server = Server(name, proc, port, tmp)
    try:
        try:
            wait_until_sync(
                f"{name} /{ready}",
                lambda: http_get(f"{server.url}{ready}", 1.0)[0] == 200,
                timeout,
                alive=server.alive,
            )
        except (TimeoutError, RuntimeError) as exc:
            _raise_with_log(server, error_log or log, exc)
        yield server
    finally:
        stop_process(proc)


@contextlib.contextmanager
def nginx() -> Iterator[Server]:
    """nginx (master + 1 worker) serving a small static `/` and `/health` on a free port.

    `Server.process` is the master; the worker is its child. The access log (with user agents) is
    `Server.dir / "access.log"`."""
    if not Path(NGINX_BIN).exists():
        raise FileNotFoundError(f"{NGINX_BIN} not found: install nginx-light (make bench does)")
    tmp = Path(tempfile.mkdtemp(prefix="mamori-bench-nginx-"))
    try:
        # Workers run as an unprivileged user when we are root: let them read the docroot.
        tmp.chmod(0o755)
        (tmp / "www").mkdir(mode=0o755)
        (tmp / "tmp").mkdir(mode=0o755)
        (tmp / "www" / "index.html").write_text(_INDEX)
        (tmp / "www" / "index.html").chmod(0o644)
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=tmp, port=port))
        argv = [NGINX_BIN, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
        with _served("nginx", argv, tmp, port, "health", 10, tmp / "error.log") as server:
            yield server
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def blackbox_exporter(timeout: float = 5.0) -> Iterator[Server]:
    """blackbox_exporter with one module, `http_2xx` (`timeout` s, IPv4), on a free port, at its
    default log level (info: nothing is logged per successful probe)."""
    binary = shutil.which(BLACKBOX_BIN)
    if binary is None:
        raise FileNotFoundError(f"{BLACKBOX_BIN} not found: install prometheus-blackbox-exporter")
    tmp = Path(tempfile.mkdtemp(prefix="mamori-bench-blackbox-"))
    try:
        conf = tmp / "blackbox.yml"
        conf.write_text(_BLACKBOX_CONF.format(timeout=timeout))
        port = free_port()
        argv = [binary, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}"]
        with _served("blackbox_exporter", argv, tmp, port, "-/healthy", 10) as server:
            yield server
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_PROMETHEUS_CONF = """\
global:
  scrape_interval: {interval:g}s
  scrape_timeout: {timeout:g}s
  evaluation_interval: {interval:g}s
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: ["{target}"]
"""


@contextlib.contextmanager
def prometheus(target: str, job: str, interval: float = 15.0, timeout: float = 10.0) -> Iterator[Server]:
    """Prometheus scraping one target (`host:port`) as job `job` every `interval` s (scrape
    timeout `timeout` s), its TSDB in the temp dir; nothing else (no rules, no self-scrape)."""
    binary = shutil.which(PROMETHEUS_BIN)
    if binary is None:
        raise FileNotFoundError(f"{PROMETHEUS_BIN} not found: install the prometheus package")
    tmp = Path(tempfile.mkdtemp(prefix="mamori-bench-prometheus-"))
    try:
        conf = tmp / "prometheus.yml"
        conf.write_text(_PROMETHEUS_CONF.format(interval=interval, timeout=timeout, job=job, target=target))
        port = free_port()
        argv = [binary, *prometheus_argv(conf, tmp / "data", port, interval=interval)[1:]]
        with _served("prometheus", argv, tmp, port, "-/ready", 30) as server:
            yield server
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def version(binary: str) -> str:
    """The first line of `BINARY -v`/`--version` (nginx prints to stderr)."""
    flag = "-v" if binary == NGINX_BIN else "--version"
    path = shutil.which(binary) or binary
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


if __name__ == "__main__":
    # Smoke test: start both, probe nginx through blackbox_exporter once, stop both.
    with nginx() as target, blackbox_exporter() as bb:
        status, body = http_get(f"{bb.url}probe?target={target.url}&module=http_2xx")
        ok = "probe_success 1" in body
        print(f"nginx on {target.port}, blackbox on {bb.port}: HTTP {status}, probe_success={int(ok)}")
