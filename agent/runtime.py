"""The running agent: config → scheduler → fan-out → sinks, plus the HTTP endpoint and signals.

Lifecycle:
- `run()` starts everything, serves until SIGTERM/SIGINT (or `stop()`), then shuts down within
  `agent.shutdown_timeout` and returns 0. It returns non-zero only if start-up fails (the listen
  address cannot be bound), with a one-line log message.
- SIGHUP reloads the config file: the new file is validated completely first, in a worker thread
  (the event loop keeps serving); if it is invalid the agent keeps running the old config and
  logs every problem. Unchanged checks keep their state;
  a changed `alerts:`/`notifiers:` restarts the agent's own alerting in place (its state is on
  disk, so nothing is paged twice); adding or removing the `alerts:` section takes effect after a
  restart, said once by the reload that does it. `outbox:`/`exporters:` and
  agent.listen/concurrency/queue_size take effect after a restart (logged).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent import __version__, config
from agent.config import AgentConfig, ConfigError
from agent.model import CheckRemoved, CheckResult
from agent.pipeline import FanOut, Sink
from agent.scheduler import Scheduler
from agent.server import AgentServer
from agent.statehealth import StateFileHealth
from agent.statuslog import StatusLog
from agent.telemetry import AgentInfoCollector, AgentMetrics, StateFileCollector
from exporters.prometheus import LatestResults, PrometheusSink

log = logging.getLogger("mamori.agent")


FULL_GC_AFTER_YOUNG = 100  # generation-1 collections between full ones (CPython's default: 10)
GC_YOUNG_EVERY = 0.25  # s between collections of the youngest generation
GC_MIDDLE_EVERY = 8  # ... every so many of them (2 s), of the middle one too
GC_FULL_EVERY = 2400  # ... and of all (every 10 minutes)


async def collect_garbage() -> None:
    """Run the cyclic garbage collector on a schedule: the youngest generation every 0.25 s,
    the middle one every 2 s, everything every 10 minutes.

    CPython starts a collection when allocations outnumber deallocations by 700; an agent
    replaces its results all the time (each new result's objects allocated, the last one's freed
    by refcount), so that count hardly moves and the youngest generation grew to every result
    of the last 15-20 s (230 000 objects at 10 000 checks) until a scrape's burst of
    allocations tipped it: a collection of 140-210 ms, then one of the middle generation as
    long, with the event loop stopped, at every scrape (issue 16: the scheduler's p99 lateness).
    On this schedule, at 10 000 checks, the youngest generation is ~4 000 objects (a few ms),
    the middle one ~30 000 (~20 ms), and the full collection (every live result: 100-250 ms)
    comes every 10 minutes instead of every few seconds. The automatic collector stays on, for
    bursts."""
    n = 0
    while True:
        await asyncio.sleep(GC_YOUNG_EVERY)
        n += 1
        gc.collect(2 if n % GC_FULL_EVERY == 0 else 1 if n % GC_MIDDLE_EVERY == 0 else 0)


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        config_path: Path | None,
        env: Mapping[str, str] | None = None,
        listen: str | None = None,
        freeze_gc: bool = False,
    ) -> None:
        from agent.errors import StartupError
        from agent.extras import missing_check_extras

        # A check option's extra that is missing (google_service_account): refused at start, as
        # an exporter's is, not found out on the check's first run.
        if missing := missing_check_extras(cfg):
            raise StartupError(str(missing[0]))
        # `agentctl run` (the agent's own process) sets it; an agent in a test's process does not.
        self._freeze_gc = freeze_gc
        self.config = cfg
        self._alerting_config = cfg  # the config the agent's own alerting runs on (see reload)
        self._config_path = config_path
        self._env = env
        self._listen = listen or cfg.agent.listen
        self.metrics = AgentMetrics()
        self._pumps: list[Any] = []  # exporters.base.Pump, one per push exporter
        self._alert_collector: Any = None  # alerts.telemetry.AlertCollector
        self._reloads: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        # The health of each state file in use ("alerts", "outbox"): /ready and the metrics
        # read it. One object per path for the life of the process (a reload keeps its counts).
        self.state_files: dict[str, StateFileHealth] = {}
        self._healths: dict[Path, StateFileHealth] = {}
        self.latest = LatestResults()
        prometheus = PrometheusSink(self.latest)
        self.metrics.registry.register(AgentInfoCollector(lambda: self.config.agent, __version__))
        self.metrics.registry.register(StateFileCollector(lambda: self.state_files.values()))
        sinks: list[Sink] = [prometheus]
        if cfg.alerts is not None:
            sinks.append(self._alert_sink(cfg))
        if cfg.exporters:
            sinks.append(self._export_sink(cfg))
        self.fanout = FanOut(sinks, cfg.agent.queue_size, self.metrics)
        self.scheduler: Scheduler | None = None
        self.server = AgentServer(self.metrics.registry, self.latest, self._readiness)
        self._status_log = StatusLog()  # one INFO line per status change (agent/statuslog.py)
        self._stop = asyncio.Event()
        self._running = False

    def _publish(self, item: CheckResult | CheckRemoved) -> None:
        """A result (or a removal) from the scheduler: the status log, then every sink."""
        if isinstance(item, CheckResult):
            self._status_log.observe(item)
        else:
            self._status_log.forget(item.check)
        self.fanout.publish(item)

    def _alert_sink(self, cfg: AgentConfig) -> Sink:
        """The agent's own notifier (alerts/): imported only when the config has `alerts:`."""
        from alerts.notifiers import build
        from alerts.sink import AlertSink
        from alerts.store import store_health
        from alerts.telemetry import AlertCollector

        path = Path(cfg.alerts.state_file)
        health = self._healths.setdefault(path, store_health(path))
        sink = AlertSink(
            cfg.alerts,
            {n.name: build(n) for n in cfg.notifiers},
            cfg.agent.name,
            guard_checks=_guard_checks(cfg),
            health=health,
        )
        self.state_files["alerts"] = health
        if self._alert_collector is not None:
            self.metrics.registry.unregister(self._alert_collector)
        self._alert_collector = AlertCollector(sink)
        self.metrics.registry.register(self._alert_collector)
        return sink

    async def _reload_alerting(self, old: AgentConfig, new: AgentConfig) -> None:
        """Restart the agent's own alerting on the new `alerts:`/`notifiers:` between two results.
        Its state is on disk, so this is what an agent restart does to it: firing alerts stay
        firing (no new page), undelivered notifications are sent, rules that are gone stop."""

        async def replace(current: Sink) -> Sink:
            flush = getattr(current, "flush", None)
            if flush is not None and not flush():
                # Closing it now would lose what waits in memory for the state file (disk full),
                # and the file could not be opened again: keep alerting as it runs.
                log.error(
                    "config reload: alerting kept on the previous config: its state file cannot be"
                    " written now; send SIGHUP again once it can"
                )
                return current
            await current.aclose()
            self._alerting_config = new
            try:
                sink = self._alert_sink(new)
            except Exception as exc:  # a state file that cannot be opened, …
                log.error("config reload: alerting kept on the previous config: %s", exc)
                self._alerting_config = old
                sink = self._alert_sink(old)
            else:
                log.info("config reload: alerting restarted on the new rules and notifiers (state kept)")
            start = getattr(sink, "start", None)
            if start is not None:
                await start()
            return sink

        await self.fanout.swap("alerts", replace)

    def _export_sink(self, cfg: AgentConfig) -> Sink:
        """Push exporters behind the durable outbox (exporters/): imported only when configured."""
        from agent.errors import StartupError
        from agent.outbox import Outbox, outbox_health
        from exporters.base import ExportCollector, ExportContext, OutboxSink, exporter_pump
        from exporters.config import ExtraMissing, exporter_module

        context = ExportContext(
            agent=cfg.agent.name,
            labels=dict(cfg.agent.labels),
            interval=cfg.agent.interval,
        )
        try:
            exporters = [exporter_module(e.type).build(e, context) for e in cfg.exporters]
        except ExtraMissing as exc:
            raise StartupError(str(exc)) from None
        health = self._healths.setdefault(cfg.outbox.path, outbox_health(cfg.outbox.path))
        outbox = Outbox(cfg.outbox.path, cfg.outbox.max_size, [e.name for e in exporters], health)
        self.state_files["outbox"] = health
        pumps = [exporter_pump(e, outbox) for e in exporters]
        self._pumps = pumps
        self.metrics.registry.register(ExportCollector(outbox, pumps))
        return OutboxSink(outbox, pumps)

    def _readiness(self) -> str | None:
        """None when ready; else why not, in one line (the body of /ready's 503)."""
        if self._stop.is_set():
            return "shutting down"
        if not self._running:
            return "starting"
        for health in self.state_files.values():
            if health.degraded:
                return f"durability degraded: cannot write the {health.what} {health.path}: {health.error}"
        return None

    def stop(self) -> None:
        """Ask `run()` to shut down. Safe from a signal handler, and to call twice."""
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        host, port = config.parse_listen(self._listen)
        try:
            bound = await self.server.start(host, port)
        except OSError as exc:
            log.error("cannot listen on %s: %s", self._listen, exc.strerror or exc)
            return 1
        log.info(
            "mamori %s started: %s; listening on http://%s:%d", __version__, _summary(self.config), *bound[:2]
        )
        for warning in self.config.warnings:
            log.warning("%s", warning)
        self.metrics.start_time.set(time.time())
        self.metrics.last_reload.set(time.time())
        self.fanout.start()
        for pump in self._pumps:
            pump.start()
        self.scheduler = Scheduler(
            self._publish,
            self.metrics,
            self.config.agent.concurrency,
            publish_removal=self._publish,
            first_run_window=self.config.agent.start_spread,
        )
        self.scheduler.apply(self.config.checks)
        collector: asyncio.Task[None] | None = None
        if self._freeze_gc:
            # What exists now (the config, the checks, their models, the imported modules) lives
            # as long as the agent: keep the cyclic collector from walking it on every full
            # collection (~40 ms with 10 000 checks, issue 16). Refcounting still frees what a
            # reload drops; only cyclic garbage of this first config would stay, once.
            gc.collect()
            gc.freeze()
            # The collector on a schedule of its own (`collect_garbage`): CPython's counts cannot
            # see the churn of results, and a full collection by its default walked every live
            # result every few seconds at 10 000 checks.
            gen0, gen1, _ = gc.get_threshold()
            gc.set_threshold(gen0, gen1, FULL_GC_AFTER_YOUNG)
            collector = loop.create_task(collect_garbage(), name="gc")
        self._running = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self._stop.wait()
        finally:
            if collector is not None:
                collector.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._shutdown()
        return 0

    async def _shutdown(self) -> None:
        deadline = self.config.agent.shutdown_timeout
        log.info("shutting down (deadline %gs)", deadline)
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(deadline):
                if self._reloads:
                    await asyncio.gather(*self._reloads, return_exceptions=True)
                if self.scheduler is not None:
                    await self.scheduler.aclose()
                await self.fanout.aclose(timeout=max(0.0, deadline - (time.monotonic() - t0) - 0.5))
        except TimeoutError:
            log.warning(
                "shutdown deadline of %gs reached; some results may not have been delivered", deadline
            )
        await self.server.aclose()
        self._running = False
        log.info("stopped")

    def reload(self) -> asyncio.Task[None] | None:
        """Re-read and apply the config file (SIGHUP), in the background; returns the task (None
        without a file). Never raises, and the task neither.

        The file is read and validated in a worker thread, so a slow or hostile file (loading is
        bounded: agent/yamldoc.py) never stops the event loop: /healthz, checks and sinks keep
        running meanwhile. An invalid file, or any other failure to load it, changes nothing: it
        is counted (`mamori_config_reloads_total{outcome="failure"}`) and logged one line per
        problem, never as a traceback. Reloads are applied one at a time, in order."""
        if self._config_path is None:
            log.info("SIGHUP: running the embedded default config; nothing to reload")
            return None
        task = asyncio.get_running_loop().create_task(self._reload(self._config_path), name="config-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        return task

    async def _reload(self, path: Path) -> None:
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(config.load, path, self._env)
            except ConfigError as exc:
                self.metrics.reloads.labels(outcome="failure").inc()
                log.error("config reload failed; still running the previous config:")
                for issue in exc.issues:
                    log.error("  %s", issue)
                return
            except Exception as exc:  # a bug in the loader: say so in one line, keep running
                self.metrics.reloads.labels(outcome="failure").inc()
                detail = " ".join(str(exc).split())[:200]
                log.error(
                    "config reload failed (a bug: %s: %s); still running the previous config",
                    type(exc).__name__,
                    detail,
                )
                return
            from agent.extras import missing_check_extras

            if missing := missing_check_extras(new):
                self.metrics.reloads.labels(outcome="failure").inc()
                log.error("config reload failed (%s); still running the previous config", missing[0])
                return
            for warning in new.warnings:
                log.warning("config reload: %s", warning)
            self._apply(new)

    def _apply(self, new: AgentConfig) -> None:
        old = self.config
        for field in ("listen", "concurrency", "queue_size", "start_spread"):
            if getattr(new.agent, field) != getattr(old.agent, field):
                log.warning("config reload: agent.%s changed; it takes effect after a restart", field)
        running = self._alerting_config  # what alerting runs on: a failed reload kept the one before
        if _alerting(new) != _alerting(running):
            if running.alerts is not None and new.alerts is not None:
                task = asyncio.get_running_loop().create_task(self._reload_alerting(running, new))
                self._reloads.add(task)
                task.add_done_callback(self._reloads.discard)
            elif (old.alerts is None) != (new.alerts is None):
                # Only what this file changed: a later reload of a file that still adds (or still
                # lacks) the section says nothing more.
                if new.alerts is None:
                    log.warning("config reload: alerts: removed; the agent's alerting stops after a restart")
                else:
                    log.warning("config reload: alerts: added; the agent's alerting starts after a restart")
        if (new.outbox, new.exporters) != (old.outbox, old.exporters):
            log.warning("config reload: outbox/exporters changed; they take effect after a restart")
        self.config = new
        if self.scheduler is not None:
            started, stopped = self.scheduler.apply(new.checks)
            changed = set(started) & set(stopped)
            log.info(
                "config reloaded: %d added, %d changed, %d removed, %d unchanged",
                len(started) - len(changed),
                len(changed),
                len(stopped) - len(changed),
                len(new.checks) - len(started),
            )
        self.metrics.reloads.labels(outcome="success").inc()
        self.metrics.last_reload.set(time.time())


def _by_type(items: Iterable[Any]) -> str:
    """`http 3, tcp 1`: how many of each `type`, the most frequent first; `none` for none."""
    counts = Counter(str(item.type) for item in items)
    return ", ".join(f"{t} {n}" for t, n in sorted(counts.items(), key=lambda tn: (-tn[1], tn[0]))) or "none"


def _summary(cfg: AgentConfig) -> str:
    """The start line's one-line picture of the config: checks by type, exporters, notifiers."""
    n = len(cfg.checks)
    return (
        f"{n} check{'' if n == 1 else 's'} ({_by_type(cfg.checks)}) from {cfg.source};"
        f" exporters: {_by_type(cfg.exporters)}; notifiers: {_by_type(cfg.notifiers)}"
    )


def _guard_checks(cfg: AgentConfig) -> list[str]:
    """The configured checks the connectivity guard covers (a check's tags reach the alert engine
    on its results; only the guard needs to know the checks that have not reported yet)."""
    if cfg.alerts is None:
        return []
    guard = cfg.alerts.connectivity_guard
    return [c.name for c in cfg.checks if guard.covers(c.name, c.tags)]


def _alerting(cfg: AgentConfig) -> tuple[Any, ...]:
    """What the agent's own alerting is built from: a change means restarting it."""
    return (cfg.alerts, cfg.notifiers, tuple(_guard_checks(cfg)))
