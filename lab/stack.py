"""The whole lab as one object: web lab, Postgres pair, Mosquitto, an agent watching them all,
and Prometheus + Alertmanager running the shipped configs and rules. `python -m lab.demo` runs it;
tests use it for anything that needs "a real agent on real data".

    async with lab_stack(tmp_dir) as stack:          # ~5-10 s; everything stopped at exit, even on error
        stack.agent_url                              # http://127.0.0.1:PORT (/metrics, /api/v1/results)
        await stack.wait_scraped()                   # Prometheus has scraped the agent twice
        await stack.fault("primary-down")            # any of Stack.FAULTS; "reset" heals everything

What runs, all on 127.0.0.1 (ports picked free unless asked for):

- the web lab (lab/web.py): HAProxy (TLS) in front of app-1..app-3;
- the Postgres lab (lab/postgres.py): primary + streaming standby behind a link proxy, WAL
  archiving, the monitoring role of deploy/postgres/monitoring-role.sql; one real base backup
  (`pg_basebackup`) in `pg/backups/` for the pg_backup check. Optional: skipped (with a note in
  `Stack.skipped`) when the PostgreSQL 15 binaries are missing, or with `postgres=False`;
- Mosquitto (lab/mosquitto.py) when installed, with the agent's MQTT exporter (the fleet's views on);
- the agent, in this process (agent/runtime.py), from the config file this module writes
  (`agent/agent.yml`); its checks are named after their types: `lb`, `http`, `tcp`, `host`,
  `postgres` (cluster `db`), `pg_backup`, plus the fleet check `fleet:db` with MQTT;
- Prometheus from deploy/prometheus/prometheus.yml with alerts/rules/*.yml, and Alertmanager from
  deploy/alertmanager/alertmanager.yml whose receivers (PagerDuty, Slack, the dead-man's switch)
  all point at a loopback recorder in this process (`Stack.notifications`).

Every child process is ours, started through `setpriv --pdeathsig KILL` where available and
stopped by its PID. A start that fails half-way stops whatever it had started before raising
`StackError` (one line, naming the log to read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from lab.agent_config import AgentSetup, PgTarget, agent_yaml
from lab.alertmanager import ALERTMANAGER_YML, alertmanager_argv, alertmanager_config
from lab.errors import StackError as StackError  # raised by the whole stack: importable here
from lab.ports import HOST, accepts, free_port
from lab.process import Child, ChildExited
from lab.prometheus import PROMETHEUS_YML, RULES_DIR, prometheus_argv, prometheus_config
from lab.recorder import RecordedNotification, Recorder
from lab.wait import wait_until

if TYPE_CHECKING:  # the labs are imported when started: `python -m lab.demo fault` stays light
    from agent.model import CheckResult
    from agent.runtime import Agent
    from lab.mosquitto import Mosquitto
    from lab.postgres import PgLab
    from lab.web import WebLab

log = logging.getLogger("mamori.lab.stack")

SITE = "lab"
AGENT_NAME = "lab-agent"
CLUSTER = "db"
SLOW_APP_MS = 600  # above the checks' 300 ms latency_warning, below HAProxy's 1 s check timeout
PG_BIN = Path("/usr/lib/postgresql/15/bin")

# Debian packages of the optional parts (what to install when one is skipped).
PACKAGES = {
    "postgres": "postgresql",
    "mosquitto": "mosquitto",
    "prometheus": "prometheus",
    "alertmanager": "prometheus-alertmanager",
}
_READY_TIMEOUT = 30.0  # Prometheus/Alertmanager answer /-/ready in ~1-2 s here
_STOP_TIMEOUT = 10.0


class AgentStopped(StackError):
    """The in-process agent stopped while the stack waited for it (its SIGINT/SIGTERM handler)."""


# --- child processes (Prometheus, Alertmanager) ------------------------------------------------


class _Child:
    """Prometheus or Alertmanager: a `lab.process.Child` that listens on a port and has a ready
    path, its output in `log_file`.

    `argv_for(port)` gives the command line for a listen port (writing any config that names the
    port). `start()` returns once the port accepts connections; an automatically picked port
    that another process took in the meantime is picked again (twice at most)."""

    def __init__(
        self, name: str, argv_for: Callable[[int], list[str]], log_file: Path, ready_path: str
    ) -> None:
        self.name = name
        self.argv_for = argv_for
        self.log_file = log_file
        self.ready_path = ready_path
        self.port = 0
        self._child = Child(name, log_file=log_file, grace=_STOP_TIMEOUT)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid

    async def start(self, port: int | None) -> None:
        for attempt in range(3):
            self.port = port or free_port()
            self._child.start(self.argv_for(self.port))
            try:
                await self._child.wait_ready(
                    f"{self.name} to listen", lambda: accepts(self.port), _READY_TIMEOUT, interval=0.05
                )
            except TimeoutError:
                raise StackError(
                    f"{self.name} not listening after {_READY_TIMEOUT:g} s: see {self.log_file}"
                ) from None
            except ChildExited as exc:
                returncode = exc.returncode
            else:
                return
            taken = "address already in use" in self._child.log_since_start(limit=1 << 20)
            if port is not None or not taken or attempt == 2:
                why = f"port {self.port} is taken" if taken else f"exited with status {returncode}"
                raise StackError(f"{self.name} did not start ({why}): see {self.log_file}")

    async def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Until `ready_path` answers 200; StackError (naming the log) if it exits or times out."""
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

            async def ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(self.url + self.ready_path) as response:
                        return response.status == 200
                return False

            try:
                await self._child.wait_ready(f"{self.name} to be ready", ready, timeout, interval=0.1)
            except ChildExited as exc:
                raise StackError(
                    f"{self.name} exited (status {exc.returncode}) at start: see {self.log_file}"
                ) from None
            except TimeoutError:
                raise StackError(f"{self.name} not ready after {timeout:g} s: see {self.log_file}") from None

    async def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 10 s. Safe twice and before start()."""
        await self._child.stop()


# --- the stack ---------------------------------------------------------------------------------


def _postgres_can_enter(path: Path) -> bool:
    """Whether the `postgres` OS user can reach `path` (we run PostgreSQL as it when root)."""
    if os.geteuid() != 0:
        return True
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return True  # PgLab says what is wrong
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
            return False
    return True


class Stack:
    """The running stack (see the module docstring). Made by `lab_stack()`."""

    FAULTS: ClassVar[dict[str, str]] = {
        "primary-down": "stop the Postgres primary: the postgres check goes CRITICAL (primary_down)",
        "primary-up": "start the Postgres primary again",
        "primary-freeze": "SIGSTOP the primary: it accepts TCP but never answers (a hung server)",
        "primary-thaw": "SIGCONT the primary",
        "link-cut": "partition the standby from the primary (bytes stop, nothing is closed)",
        "link-restore": "reconnect the standby's link",
        "replay-pause": "pause WAL replay on the standby (pg_wal_replay_pause)",
        "replay-resume": "resume WAL replay on the standby",
        "archive-break": "make the primary's archive_command fail",
        "archive-fix": "archive again (and wait until nothing waits to be archived)",
        "app-down": "stop app-1 (connections refused): a backend down, the lb check WARNING",
        "app-up": "start app-1 again",
        "app-slow": f"app-1 answers after {SLOW_APP_MS} ms (checks warn above 300 ms)",
        "app-fast": "app-1 answers at once again",
        "lb-down": "stop HAProxy: the lb and http checks CRITICAL (refused)",
        "lb-up": "start HAProxy again",
        "backend-route-break": "HAProxy sends every request to an empty backend (503); the apps are fine",
        "backend-route-fix": "HAProxy routes to the apps again",
        "mqtt-down": "stop the MQTT broker: results wait in the agent's outbox",
        "mqtt-up": "start the MQTT broker again (the outbox drains)",
        "reset": "everything healthy again",
    }

    def __init__(self, directory: Path, interval: float) -> None:
        self.directory = directory
        self.interval = interval
        self.site = SITE
        self.host = AGENT_NAME
        self.cluster = CLUSTER
        self.web: WebLab
        self._pg: PgLab | None = None
        self.pg_directory: Path | None = None
        self.mqtt: Mosquitto | None = None
        self.agent: Agent
        self.agent_config = directory / "agent" / "agent.yml"
        self.agent_url = ""
        self.prometheus_url: str | None = None
        self.alertmanager_url: str | None = None
        self.prometheus_config: Path | None = None
        self.alertmanager_config: Path | None = None
        self.skipped: dict[str, str] = {}  # part -> why (the Debian package to install)
        self._recorder = Recorder(directory / "notifications.jsonl")
        self._children: dict[str, _Child] = {}
        self._fault_lock = asyncio.Lock()
        self._agent_task: asyncio.Task[int] | None = None

    # --- what is running ---

    @property
    def pg(self) -> PgLab:
        """The Postgres lab. Raises StackError when this stack runs without Postgres (`skipped`)."""
        if self._pg is None:
            raise StackError(f"this stack runs without Postgres: {self.skipped.get('postgres', 'disabled')}")
        return self._pg

    @property
    def has_postgres(self) -> bool:
        return self._pg is not None

    @property
    def notifications(self) -> list[RecordedNotification]:
        """Everything Alertmanager has sent to its receivers, oldest first."""
        return self._recorder.notifications

    def on_notification(self, listener: Callable[[RecordedNotification], None]) -> None:
        """Call `listener` (in the event loop) for every notification Alertmanager sends."""
        self._recorder.listeners.append(listener)

    @property
    def mqtt_topics(self) -> str:
        """The MQTT topic filter of this agent's results."""
        return f"mamori/{self.site}/{self.host}/#"

    def pids(self) -> dict[str, int]:
        """The PIDs of every child process running now, by part."""
        found: dict[str, int | None] = {}
        if hasattr(self, "web"):
            with contextlib.suppress(RuntimeError):
                found["haproxy"] = self.web.haproxy.pid
        if self._pg is not None:
            found["postgres-primary"] = self._pg.primary.pid
            found["postgres-standby"] = self._pg.standby.pid
        if self.mqtt is not None:
            found["mosquitto"] = self.mqtt.pid
        for name, child in self._children.items():
            found[name] = child.pid
        return {name: pid for name, pid in found.items() if pid is not None}

    def results(self) -> dict[str, CheckResult]:
        """The agent's latest result per check."""
        return {r.check: r for r in self.agent.latest.all()}

    def expected_checks(self) -> list[str]:
        return [c.name for c in self.agent.config.checks]

    async def wait_results(self, timeout: float = 15.0) -> None:
        """Until the agent has a result for every check."""
        expected = set(self.expected_checks())

        def complete() -> bool:
            self._agent_alive()
            return expected <= set(self.results())

        await wait_until("a result from every check", complete, timeout, interval=0.1)

    def _agent_alive(self) -> None:
        task = self.agent_task
        if task is not None and task.done():
            raise AgentStopped("the agent has stopped")

    async def wait_healthy(self, timeout: float = 20.0) -> float:
        """Until every check's latest result is OK; return the seconds waited. TimeoutError names
        the checks that are not."""
        expected = set(self.expected_checks())
        bad: list[str] = []

        def healthy() -> bool:
            nonlocal bad
            results = self.results()
            bad = [
                f"{n}: {results[n].status.label.upper()} {results[n].reason.value}" if n in results else n
                for n in sorted(expected)
                if n not in results or results[n].status != 0
            ]
            if bad:
                self._agent_alive()
            return not bad

        try:
            return await wait_until("every check to be OK", healthy, timeout, interval=0.1)
        except TimeoutError:
            raise TimeoutError(f"not healthy after {timeout:g} s: {'; '.join(bad)}") from None

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query to the stack's Prometheus; the `result` list."""
        import aiohttp

        if self.prometheus_url is None:
            raise StackError(
                f"this stack runs without Prometheus: {self.skipped.get('prometheus', 'disabled')}"
            )
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"{self.prometheus_url}/api/v1/query", params={"query": promql}) as response,
        ):
            body = await response.json()
        if body.get("status") != "success":
            raise StackError(f"Prometheus query {promql!r} failed: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_scraped(self, timeout: float = 30.0) -> None:
        """Until Prometheus has scraped the agent at least twice (up == 1 both times)."""
        promql = f'sum_over_time(up{{job="mamori", site="{self.site}", host="{self.host}"}}[1h])'

        async def scraped() -> bool:
            result = await self.query(promql)
            return bool(result) and float(result[0]["value"][1]) >= 2

        await wait_until("two scrapes of the agent by Prometheus", scraped, timeout, interval=0.1)

    # --- faults ---

    async def fault(self, name: str) -> str:
        """Inject or clear the fault `name` (see FAULTS); return one line saying what was done.
        One at a time (serialized). Raises ValueError naming the known faults for an unknown
        name, StackError for a Postgres fault without Postgres or an MQTT one without a broker."""
        if name not in self.FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(self.FAULTS)}")
        async with self._fault_lock:
            began = time.monotonic()
            done = await self._fault(name)
            return f"{name}: {done} ({time.monotonic() - began:.1f} s)"

    async def _fault(self, name: str) -> str:
        app = self.web.app("app-1")
        haproxy = self.web.haproxy
        if name.startswith(("primary-", "link-", "replay-", "archive-")):
            pg = self.pg
            actions: dict[str, tuple[Callable[[], Any], str]] = {
                "primary-down": (pg.stop_primary, "primary stopped"),
                "primary-up": (pg.start_primary, "primary started"),
                "primary-freeze": (pg.freeze_primary, "primary frozen (SIGSTOP)"),
                "primary-thaw": (pg.thaw_primary, "primary thawed (SIGCONT)"),
                "link-cut": (pg.cut_link, "standby link cut"),
                "link-restore": (pg.restore_link, "standby link restored"),
                "replay-pause": (pg.pause_replay, "replay paused on the standby"),
                "replay-resume": (pg.resume_replay, "replay resumed on the standby"),
                "archive-break": (pg.break_archiving, "archiving broken"),
                "archive-fix": (pg.fix_archiving, "archiving fixed, backlog archived"),
            }
            action, done = actions[name]
            await action()
            if name == "archive-break":
                # An idle primary completes no WAL segment for hours: complete one now, so that
                # the archiver tries (and fails) at once.
                await _switch_wal(pg.primary.superuser_dsn())
                done += "; WAL segment switched (its archiving fails)"
            return done
        if name.startswith("mqtt-"):
            if self.mqtt is None:
                raise StackError(f"this stack runs without MQTT: {self.skipped.get('mosquitto', 'disabled')}")
            if name == "mqtt-down":
                await self.mqtt.stop()
                return "broker stopped"
            await self.mqtt.start()
            return "broker started"
        if name == "app-down":
            await app.down()
            return "app-1 stopped"
        if name == "app-up":
            await app.up()
            return "app-1 started"
        if name == "app-slow":
            app.slow(SLOW_APP_MS)
            return f"app-1 answers after {SLOW_APP_MS} ms"
        if name == "app-fast":
            app.healthy()
            return "app-1 answers at once"
        if name == "lb-down":
            await haproxy.stop()
            return "HAProxy stopped"
        if name == "lb-up":
            await haproxy.start()
            return "HAProxy started"
        if name == "backend-route-break":
            await haproxy.break_route()
            return "HAProxy routes to an empty backend"
        if name == "backend-route-fix":
            await haproxy.fix_route()
            return "HAProxy routes to the apps"
        assert name == "reset", name
        return await self._reset()

    async def _reset(self) -> str:
        for app in self.web.apps:
            app.healthy()
            if not app.listening:
                await app.up()
        haproxy = self.web.haproxy
        if not haproxy.running:
            await haproxy.start()
        await haproxy.fix_route()
        await haproxy.fast_health_checks()
        await self.web.wait_until_haproxy_sees({a.name: "UP" for a in self.web.apps}, timeout=10)
        if self.mqtt is not None:
            await self.mqtt.start()
        if self._pg is not None:
            await self._pg.reset()
        return (
            "apps, HAProxy"
            + (", Postgres pair" if self._pg else "")
            + (", broker" if self.mqtt else "")
            + " healthy"
        )

    # --- lifecycle (used by lab_stack) ---

    async def _start(
        self,
        *,
        prometheus: bool,
        alertmanager: bool,
        mqtt: bool,
        postgres: bool,
        listen_port: int | None,
        prometheus_port: int | None,
        alertmanager_port: int | None,
    ) -> None:
        from lab.mosquitto import Mosquitto
        from lab.postgres import PgLab
        from lab.web import WebLab

        d = self.directory
        for sub in ("agent", "prometheus", "alertmanager", "secrets", "web", "mosquitto"):
            shutil.rmtree(d / sub, ignore_errors=True)
            (d / sub).mkdir(parents=True)
        (d / "secrets").chmod(0o700)
        self._recorder.log_file.unlink(missing_ok=True)

        if shutil.which("haproxy") is None:
            raise StackError("HAProxy is required: apt install haproxy")
        if postgres and not (PG_BIN / "postgres").is_file():
            self.skipped["postgres"] = f"PostgreSQL 15 not installed (apt install {PACKAGES['postgres']})"
        elif postgres:
            pg_dir = d / "pg"
            if not _postgres_can_enter(d):
                # pytest's tmp_path is private to root; PostgreSQL runs as `postgres`.
                pg_dir = Path(tempfile.mkdtemp(prefix="mamori-stack-pg-"))
            else:
                shutil.rmtree(pg_dir, ignore_errors=True)
            self.pg_directory = pg_dir
            self._pg = PgLab(pg_dir)
        else:
            self.skipped["postgres"] = "disabled"
        if not mqtt:
            self.skipped["mosquitto"] = "disabled"
        elif shutil.which("mosquitto") is None:
            self.skipped["mosquitto"] = f"mosquitto not installed (apt install {PACKAGES['mosquitto']})"
        else:
            self.mqtt = Mosquitto(d / "mosquitto", persistence=False)
        want_prom = prometheus and shutil.which("prometheus") is not None
        if not prometheus:
            self.skipped["prometheus"] = "disabled"
        elif not want_prom:
            self.skipped["prometheus"] = f"prometheus not installed (apt install {PACKAGES['prometheus']})"
        want_am = want_prom and alertmanager and shutil.which("prometheus-alertmanager") is not None
        if not alertmanager:
            self.skipped["alertmanager"] = "disabled"
        elif not want_prom:
            self.skipped["alertmanager"] = "needs Prometheus"
        elif not want_am:
            self.skipped["alertmanager"] = (
                f"prometheus-alertmanager not installed (apt install {PACKAGES['alertmanager']})"
            )

        # Prometheus and Alertmanager first: they take the longest to be ready (and Prometheus
        # applies file_sd targets only every 5 s), and need nothing but the agent's port.
        await self._recorder.start()
        # The agent's port is held (bound, not listening) until the agent starts, so that no
        # port picked for another part in the meantime can be the same.
        held = socket.socket()
        try:
            held.bind((HOST, listen_port or 0))
        except OSError as exc:
            held.close()
            raise StackError(f"cannot listen on {HOST}:{listen_port}: {exc.strerror}") from None
        with held:
            listen = int(held.getsockname()[1])
            self.agent_url = f"http://{HOST}:{listen}"
            if want_am:
                await self._start_alertmanager(alertmanager_port)
            if want_prom:
                await self._start_prometheus(prometheus_port, listen)
            # Then everything independent at once: the labs and the broker.
            self.web = WebLab(d / "web", apps=3)
            starts: list[Any] = [self.web.start()]
            if self._pg is not None:
                starts.append(self._start_postgres())
            if self.mqtt is not None:
                starts.append(self.mqtt.start())
            await _gather(*starts)
            self.agent_config.write_text(self._agent_yaml(listen))
        await self._start_agent()
        for child in self._children.values():
            await child.wait_ready()
        await self.wait_results()

    async def _start_postgres(self) -> None:
        pg = self.pg
        await pg.start()
        # One real base backup for the pg_backup check (~0.3 s): tar format, WAL from the archive.
        backups = pg.directory / "backups"
        argv = [str(PG_BIN / "pg_basebackup"), "-h", HOST, "-p", str(pg.primary.port), "-U", "postgres"]
        argv += ["-D", str(backups / time.strftime("base-%Y%m%dT%H%M%S")), "-F", "t", "-X", "none"]
        argv += ["--checkpoint=fast", "--no-sync"]
        if os.geteuid() == 0:
            backups.mkdir(exist_ok=True)
            shutil.chown(backups, "postgres", "postgres")
            argv = ["runuser", "-u", "postgres", "--", *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(pg.directory),
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise StackError(f"pg_basebackup failed: {out.decode(errors='replace').strip()}")
        (self.directory / "secrets" / "pg-password").write_text(pg.monitoring_password + "\n")
        (self.directory / "secrets" / "pg-password").chmod(0o600)

    async def _start_alertmanager(self, port: int | None) -> None:
        d = self.directory / "alertmanager"
        url = self._recorder.base_url
        text = alertmanager_config(
            ALERTMANAGER_YML.read_text(),
            self.directory / "secrets",
            pagerduty_url=f"{url}/pagerduty/v2/enqueue",
            pagerduty_routing_key="lab-routing-key-0123456789abcdef",
            slack_webhook_url=f"{url}/slack",
            deadman_url=f"{url}/deadmans-switch",
        )
        self.alertmanager_config = d / "alertmanager.yml"
        self.alertmanager_config.write_text(text)

        config_file = self.alertmanager_config

        def argv(port: int) -> list[str]:
            return alertmanager_argv(config_file, d / "data", port)

        child = self._children["alertmanager"] = _Child(
            "alertmanager", argv, d / "alertmanager.log", "/-/ready"
        )
        await child.start(port)
        self.alertmanager_url = child.url

    async def _start_prometheus(self, port: int | None, agent_port: int) -> None:
        d = self.directory / "prometheus"
        targets = d / "targets" / "mamori.yml"
        targets.parent.mkdir()
        targets.write_text(
            yaml.safe_dump(
                [{"targets": [f"{HOST}:{agent_port}"], "labels": {"site": self.site, "host": self.host}}]
            )
        )
        config_file = self.prometheus_config = d / "prometheus.yml"
        am = self.alertmanager_url

        def argv(port: int) -> list[str]:
            config_file.write_text(
                prometheus_config(
                    PROMETHEUS_YML.read_text(),
                    targets_file=targets,
                    rule_files=[str(RULES_DIR / "*.yml")],
                    prometheus_address=f"{HOST}:{port}",
                    alertmanager_address=am.removeprefix("http://") if am else None,
                    interval=self.interval,
                )
            )
            return prometheus_argv(config_file, d / "data", port, interval=self.interval)

        child = self._children["prometheus"] = _Child("prometheus", argv, d / "prometheus.log", "/-/ready")
        await child.start(port)
        self.prometheus_url = child.url

    async def _start_agent(self) -> None:
        from agent import config
        from agent.errors import ConfigError
        from agent.runtime import Agent

        try:
            cfg = config.load(self.agent_config, env={})
        except ConfigError as exc:  # a bug here, but say where
            raise StackError(f"the lab's agent config {self.agent_config} is invalid: {exc}") from None
        self.agent = Agent(cfg, self.agent_config, env={})
        task = self._agent_task = asyncio.create_task(self.agent.run(), name="lab-agent")

        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

            async def ready() -> bool:
                if task.done():
                    raise StackError(f"the agent did not start (cannot listen on {self.agent_url}?)")
                try:
                    async with session.get(f"{self.agent_url}/ready") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until("the agent to listen", ready, 10, interval=0.1)

    @property
    def agent_task(self) -> asyncio.Task[int] | None:
        """The agent's `run()` task; done when the agent has stopped (e.g. on SIGINT/SIGTERM)."""
        return self._agent_task

    def _agent_yaml(self, port: int) -> str:
        pg = self._pg
        setup = AgentSetup(
            name=self.host,
            site=self.site,
            port=port,
            interval=self.interval,
            directory=self.directory,
            lb_url=self.web.url,
            ca_file=self.web.ca_file,
            backends=tuple((a.name, a.port) for a in self.web.apps),
            haproxy_port=self.web.haproxy.port,
            notify_url=f"{self._recorder.base_url}/agent-webhook",
            cluster=self.cluster,
            pg=None
            if pg is None
            else PgTarget(
                primary_port=pg.primary.port,
                standby_port=pg.standby.port,
                password_file=self.directory / "secrets" / "pg-password",
                backups=pg.directory / "backups",
            ),
            mqtt_port=self.mqtt.port if self.mqtt is not None else None,
        )
        return agent_yaml(setup, self.agent_config)

    async def _stop(self) -> None:
        """Stop everything (Prometheus first, so it does not alert on the teardown), each step
        in its own try so that one failing leaves nothing else running. Safe on a half-started
        stack."""
        errors: list[BaseException] = []

        async def step(what: Callable[[], Any]) -> None:
            try:
                await what()
            except BaseException as exc:  # keep stopping the rest
                errors.append(exc)

        if "prometheus" in self._children:
            await step(self._children["prometheus"].stop)
        task = self.agent_task
        if task is not None:
            self.agent.stop()

            async def agent_done() -> None:
                await asyncio.wait_for(asyncio.shield(task), 15)

            await step(agent_done)
        for name, child in self._children.items():
            if name != "prometheus":
                await step(child.stop)
        if self.mqtt is not None:
            await step(self.mqtt.aclose)
        if hasattr(self, "web"):
            await step(self.web.stop)
        if self._pg is not None:
            await step(self._pg.stop)
            if self.pg_directory is not None and not self.pg_directory.is_relative_to(self.directory):
                shutil.rmtree(self.pg_directory, ignore_errors=True)
        await step(self._recorder.stop)
        for exc in errors:
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("while stopping the lab stack: %s", exc)


async def _switch_wal(dsn: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_switch_wal()")


async def _gather(*aws: Any) -> None:
    """Run all; when one fails, still wait for the others (so that stop() sees them started),
    then raise the first failure."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


MARKER = ".mamori-lab"  # in a directory the stack has used: reusing it may replace its contents


def prepare_directory(directory: Path | None) -> Path:
    """The stack's directory, created and marked: a temporary one for None, else `directory` if
    new, empty, or used by a stack before — the stack replaces its own subdirectories at start,
    so it refuses a directory holding anything else (StackError)."""
    if directory is None:
        root = Path(tempfile.mkdtemp(prefix="mamori-stack-"))
    else:
        root = directory.absolute()
        try:
            root.mkdir(parents=True, exist_ok=True)
            used = any(root.iterdir())
        except OSError as exc:
            raise StackError(f"cannot use {root}: {exc.strerror or exc}") from None
        if used and not (root / MARKER).exists():
            raise StackError(f"{root} is not empty and not a lab directory: give a new or empty one")
    (root / MARKER).write_text("A Mamori lab stack's directory (lab/stack.py); rewritten at each start.\n")
    return root


@contextlib.asynccontextmanager
async def lab_stack(
    directory: Path | None = None,
    *,
    interval: float = 1.0,
    prometheus: bool = True,
    alertmanager: bool = True,
    mqtt: bool = True,
    listen_port: int | None = None,
    postgres: bool = True,
    prometheus_port: int | None = None,
    alertmanager_port: int | None = None,
) -> AsyncIterator[Stack]:
    """`async with lab_stack(dir) as stack:` — the started stack, stopped at exit even on error.

    `directory` holds everything (configs, logs, data) and is kept; without one a temporary
    directory is used and removed. Parts whose binary is missing are skipped (`stack.skipped`
    says which, with the Debian package), except the web lab (HAProxy is required). Raises
    StackError (one line) when something fails to start, after stopping what had started.
    """
    if not interval > 0:
        raise ValueError(f"interval must be positive, not {interval!r}")
    own = directory is None
    root = prepare_directory(directory)
    stack = Stack(root, interval)
    try:
        try:
            await stack._start(
                prometheus=prometheus,
                alertmanager=alertmanager,
                mqtt=mqtt,
                postgres=postgres,
                listen_port=listen_port,
                prometheus_port=prometheus_port,
                alertmanager_port=alertmanager_port,
            )
        except StackError:
            raise
        except TimeoutError as exc:
            raise StackError(f"the lab did not start: {exc} (logs in {root})") from None
        except (OSError, RuntimeError) as exc:
            text = str(exc).strip().splitlines()
            raise StackError(f"the lab did not start: {text[0] if text else type(exc).__name__}") from None
        yield stack
    finally:
        await stack._stop()
        if own:
            shutil.rmtree(root, ignore_errors=True)
