"""`type: mqtt`: every result, as JSON, to an MQTT broker — retained, so a newcomer sees the latest
status of every check at once — with a last will, and optionally this agent's views for the fleet
quorum (agent/fleetview.py; the quorum itself is the `fleet` check, checks/fleet.py).

Topics (`<prefix>` default `mamori`, `<site>` the agent's `site` label or `default`, `<host>` the
agent's name):
- `<prefix>/<site>/<host>/<check>`: the latest result (`CheckResult.to_json()` plus `agent`,
  `site`, `host`), QoS `qos` (default 1), retained;
- `<prefix>/<site>/<host>/status`: `online` (retained) on every connect, `offline` (retained) as
  the last will (an unclean disconnect) and before a clean shutdown;
- with `fleet: {enabled: true}`: `<prefix>/<site>/<host>/fleet/pg/<cluster>`, this agent's view of
  each Postgres cluster — the witnesses (`mamori_pg_primary_witness`) of its own postgres, http
  and lb results, and its zone (the agent's `zone` label) — (agent/fleetview.py), QoS 1,
  retained, published when it changes, sent again after each reconnect. Nothing is read back:
  the verdict is the `fleet` check's (checks/fleet.py), which subscribes to these views on its
  own connection.

Lifecycle and guarantees:
- `start()` starts one connection task: connect, publish `online`, wait until the connection drops,
  then reconnect with exponential backoff and jitter (`reconnect_delay` doubling to
  `reconnect_max`). Each connection is a new aiomqtt client, so
  nothing a dead connection had in flight is resent behind the outbox's back.
- `push()` never raises: while disconnected it returns `PushResult(0, why)` at once and the
  results wait in the durable outbox; connected, it publishes the batch in order and reports as
  handled the longest prefix whose PUBACKs arrived (QoS 1; QoS 0: written to the socket). The
  pump retries the rest (at-least-once: a retried message may arrive twice; the retained copy
  is the latest either way).
- A failing connection is logged once per streak of failures (again if the reason changes),
  and once when it connects again; never with the password.
- `aclose()` publishes `offline`, disconnects cleanly and stops the tasks. Safe twice, and
  without `start()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from agent.backoff import backoff
from agent.broker import BrokerHost, ClientLog, TlsOptions, TopicPrefix, tls_context, topic_level_problem
from agent.delivery.outcome import PushResult
from agent.errors import StartupError
from agent.fields import Duration, Model, Port, secret_value
from agent.fleetview import FLEET_LEVEL, STATUS, OwnViews
from agent.model import CheckResult
from agent.outbox import Record
from exporters.base import ExportContext, ExporterBase, PushExporter

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger("mamori.exporters.mqtt")

ONLINE, OFFLINE = b"online", b"offline"
_CLOSE_TIMEOUT = 2.0  # aclose(): the `offline` message and the DISCONNECT


def agent_problems(agent: str, site: str) -> list[str]:
    """Why this agent's name or site cannot be used in topics (empty: they can). agent/config.py
    may call this at load for a config with an mqtt exporter; build() calls it at the latest."""
    problems = [topic_level_problem(agent, "agent.name"), topic_level_problem(site, "agent.labels.site")]
    return [p for p in problems if p is not None]


_MOVED = ("quorum", "min_votes", "window_intervals")
_VIEW_WINDOWS = 3  # own views are forgotten after 10 × this many of their intervals (agent/fleetview.py)


class FleetViews(Model):
    """The `fleet:` key of an mqtt exporter: publish this agent's views for the fleet quorum."""

    enabled: bool = False

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and (moved := [k for k in _MOVED if k in data]):
            raise ValueError(
                f"{', '.join(moved)}: the fleet quorum is a check now — move these keys to a check"
                " of type fleet (docs/checks/fleet.md); here only `enabled` remains"
            )
        return data


class MqttConfig(ExporterBase):
    type: Literal["mqtt"]
    host: BrokerHost
    port: Port | None = None  # default 1883, or 8883 with tls
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None  # or password_file
    tls: TlsOptions | None = None
    client_id: str | None = Field(default=None, min_length=1, max_length=128)  # default mamori-<host>
    topic_prefix: TopicPrefix = "mamori"
    qos: Literal[0, 1] = 1
    keepalive: Duration = 60.0
    timeout: Duration = 10.0  # waiting for CONNACK, and for a batch's PUBACKs
    reconnect_delay: Duration = 1.0
    reconnect_max: Duration = 60.0
    fleet: FleetViews = FleetViews()

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and (value != value.strip() or any(ord(c) < 32 for c in value)):
            raise ValueError("client_id must not contain spaces at its ends or control characters")
        return value

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, value: float) -> float:
        if not 1 <= value <= 65535:
            raise ValueError("keepalive must be between 1s and 65535s (18h12m15s)")
        return value

    @model_validator(mode="after")
    def _agent(self, info: ValidationInfo) -> MqttConfig:
        """With the loader's context (agent/config.py): the agent's name and site must be topic
        levels, and no check may take a reserved topic (`status`, `fleet/…`)."""
        context = info.context or {}
        if "agent_name" in context:
            labels = context.get("agent_labels") or {}
            problems = agent_problems(str(context["agent_name"]), str(labels.get("site", "default")))
            if problems:
                raise ValueError("; ".join(problems))
        for check in context.get("check_names", ()):
            if check == STATUS or str(check).startswith(f"{FLEET_LEVEL}/"):
                raise ValueError(
                    f"check {check!r} would publish to a reserved topic (status, fleet/…): rename it"
                )
        return self

    @model_validator(mode="after")
    def _cross(self) -> MqttConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if self.reconnect_max < self.reconnect_delay:
            raise ValueError(
                f"reconnect_max ({self.reconnect_max:g}s) must not be less than "
                f"reconnect_delay ({self.reconnect_delay:g}s)"
            )
        return self

    @property
    def port_number(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883


def payload_of(result: CheckResult, agent: str, site: str) -> bytes:
    """A result as the JSON every subscriber reads: `CheckResult.to_json()` plus agent, site and
    host. A non-finite sample value (which JSON cannot carry) is sent as null."""
    data: dict[str, Any] = {**result.to_json(), "agent": agent, "site": site, "host": agent}
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        for sample in data["samples"]:
            if not math.isfinite(sample["value"]):
                sample["value"] = None
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


class MqttExporter:
    """The PushExporter for `type: mqtt`. See the module docstring for its guarantees."""

    def __init__(
        self,
        config: MqttConfig,
        context: ExportContext,
        module: Any,  # aiomqtt, imported by build()
        ssl_context: ssl.SSLContext | None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.batch = config.batch
        self.config = config
        self.context = context
        self._mqtt = module
        self._ssl = ssl_context
        self._rand = rand
        self._clock = clock
        self.agent = context.agent
        self.site = context.site
        self.base = f"{config.topic_prefix}/{self.site}/{self.agent}"
        self.status_topic = f"{self.base}/{STATUS}"
        self.client_id = config.client_id or f"mamori-{self.agent}"
        self.views = (
            OwnViews(
                self.agent,
                self.site,
                config.topic_prefix,
                context.interval,
                zone=context.labels.get("zone", ""),
                window_intervals=_VIEW_WINDOWS,
            )
            if config.fleet.enabled
            else None
        )
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Future[None] | None = None  # done when the current connection ends
        self._closing = asyncio.Event()
        self._views_wake = asyncio.Event()
        # Set on each connect: the pump (exporters/base.py) ends its retry wait and sends the
        # backlog at once instead of after the rest of its backoff.
        self.reconnected = asyncio.Event()
        self._first_attempt = asyncio.Event()  # set once the first connect succeeded or failed
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._error = "not connected to the broker yet"
        self._logged_error = ""  # the failure logged for the current streak ("" = none)
        self._session_up = False  # the current session got as far as CONNACK
        self.failures = 0  # failed connects or lost connections in a row
        self.connects = 0  # successful connects, ever
        self._reserved_logged: set[str] = set()
        self._client_log = ClientLog(log)
        self._client_logger = self._client_log.logger()

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None and self._lost is not None and not self._lost.done()

    async def start(self) -> None:
        """Start the connection task and wait (up to `timeout`) for the first attempt's outcome,
        so that results waiting from before a restart go out at once rather than after a retry."""
        if self._tasks or self._closed:
            return
        self._tasks.append(asyncio.create_task(self._connection_loop(), name=f"mqtt:{self.name}"))
        if self.views is not None:
            self._tasks.append(asyncio.create_task(self._views_loop(), name=f"mqtt-views:{self.name}"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.timeout):
                await self._first_attempt.wait()

    async def aclose(self) -> None:
        """Publish `offline`, disconnect cleanly (no last will), stop. Safe twice."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        tasks, self._tasks = self._tasks, []
        if tasks and self.connected:
            # The connection task publishes `offline` and disconnects once it sees _closing (a
            # connect in progress is simply cancelled: there is nobody to say goodbye to yet).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT + self.config.timeout):
                    await asyncio.wait(tasks[:1])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the connection ----------------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        cfg = self.config
        client: aiomqtt.Client = self._mqtt.Client(
            cfg.host,
            cfg.port_number,
            username=cfg.username,
            password=secret_value(cfg.password),
            identifier=self.client_id,
            will=self._mqtt.Will(self.status_topic, payload=OFFLINE, qos=1, retain=True),
            keepalive=max(1, round(cfg.keepalive)),
            timeout=cfg.timeout,
            tls_context=self._ssl,
            max_inflight_messages=100,
            logger=self._client_logger,
        )
        client.pending_calls_threshold = self.batch + 100  # a full batch in flight is normal
        return client

    async def _connection_loop(self) -> None:
        while not self._closing.is_set():
            try:
                await self._session()
            except self._mqtt.MqttError as exc:
                self._failed(str(exc) or type(exc).__name__)
            except Exception as exc:  # a bug or an OS error aiomqtt did not wrap: keep reconnecting
                self._failed(f"{type(exc).__name__}: {exc}")
            self._first_attempt.set()
            if self._closing.is_set():
                break
            await self._sleep(self._delay())

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()

    def _delay(self) -> float:
        cfg = self.config
        return backoff(max(1, self.failures), self._rand, base=cfg.reconnect_delay, cap=cfg.reconnect_max)

    def _failed(self, error: str) -> None:
        """A connect failed or a connection ended: remember why (push() says it), log it once
        per streak (and again if the reason changes)."""
        self.failures += 1
        where = f"{self.config.host}:{self.config.port_number}"
        detail, self._client_log.last_error = self._client_log.last_error, ""
        if error.startswith(("[code:128]", "[code:7]")):  # "unspecified error" / "connection lost"
            error = detail or "the broker (or something on the way) closed the connection"
        if self._session_up:
            self._error = f"connection to {where} lost: {error}"
        else:
            self._error = f"cannot connect to {where}: {error}"
        self._session_up = False
        if error != self._logged_error:
            log.error(
                "mqtt exporter %s: %s; reconnecting with backoff, results wait in the outbox",
                self.name,
                self._error,
            )
            self._logged_error = error

    async def _session(self) -> None:
        """One connection, from CONNECT to its end. Returns when closing; raises MqttError when
        the connection fails or drops."""
        client = self._new_client()
        async with client:
            await client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            if self.views is not None:
                self.views.reconnected()
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._client, self._lost = client, lost
            self.connects += 1
            self.reconnected.set()
            where = f"{self.config.host}:{self.config.port_number}"
            if self._logged_error:
                log.info(
                    "mqtt exporter %s: connected to %s again (after %d failed attempts)",
                    self.name,
                    where,
                    self.failures,
                )
            else:
                log.info("mqtt exporter %s: connected to %s as %s", self.name, where, self.client_id)
            self.failures, self._logged_error, self._session_up = 0, "", True
            self._error = f"connection to {where} lost"
            self._views_wake.set()
            self._first_attempt.set()
            reader = asyncio.create_task(self._read(client))
            closing = asyncio.create_task(self._closing.wait())
            try:
                await asyncio.wait({reader, closing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._client = None
                if not lost.done():
                    lost.set_result(None)
                for task in (reader, closing):
                    task.cancel()
                await asyncio.gather(reader, closing, return_exceptions=True)
                self._views_wake.set()
            if not self._closing.is_set():
                exc = reader.exception() if not reader.cancelled() else None
                if exc is None:
                    raise self._mqtt.MqttError("the connection ended")
                cause = exc.__cause__  # aiomqtt's "Disconnected during message iteration" wraps why
                raise self._mqtt.MqttError(str(cause) if cause is not None else str(exc))
            # A clean shutdown: say so before the DISCONNECT (which suppresses the last will).
            with contextlib.suppress(self._mqtt.MqttError):
                await client.publish(self.status_topic, OFFLINE, qos=1, retain=True, timeout=_CLOSE_TIMEOUT)

    async def _read(self, client: aiomqtt.Client) -> None:
        """Until the connection drops (aiomqtt raises MqttError then). Nothing is subscribed, so
        no message is expected; any that comes is ignored."""
        async for _ in client.messages:
            pass

    # --- results -----------------------------------------------------------------------------------

    def topic(self, result: CheckResult) -> str | None:
        """The result's topic, or None for a check name that would take a reserved topic."""
        check = result.check
        if check == STATUS or check.startswith(f"{FLEET_LEVEL}/"):
            return None
        return f"{self.base}/{check}"

    async def push(self, records: Sequence[Record]) -> PushResult:
        if self.views is not None and self.views.observe(r.result for r in records):
            self._views_wake.set()
        client, lost = self._client, self._lost
        if client is None or lost is None or lost.done():
            return PushResult(0, self._error)
        tasks: list[asyncio.Task[None] | None] = []
        for record in records:
            topic = self.topic(record.result)
            if topic is None:
                self._log_reserved(record.result.check)
                tasks.append(None)
                continue
            payload = payload_of(record.result, self.agent, self.site)
            coro = client.publish(topic, payload, qos=self.config.qos, retain=True, timeout=math.inf)
            tasks.append(asyncio.create_task(coro))
        pending = [t for t in tasks if t is not None]
        timed_out = False
        if pending:
            everything = asyncio.gather(*pending, return_exceptions=True)
            waiters: set[asyncio.Future[Any]] = {everything, lost}
            done, _ = await asyncio.wait(
                waiters, timeout=self.config.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            timed_out = not done
            for t in pending:
                t.cancel()
            await everything
        handled, dropped, error = 0, 0, ""
        for task in tasks:
            if task is None:
                handled, dropped = handled + 1, dropped + 1
                continue
            if task.cancelled():
                error = self._error if lost.done() else f"no PUBACK within {self.config.timeout:g}s"
                break
            exc = task.exception()
            if exc is not None:
                error = self._error if lost.done() else f"publish failed: {exc}"
                break
            handled += 1
        if not error and timed_out and handled < len(records):
            error = f"no PUBACK within {self.config.timeout:g}s"
        return PushResult(handled, error, dropped={"invalid": dropped} if dropped else {})

    def _log_reserved(self, check: str) -> None:
        if check not in self._reserved_logged:
            self._reserved_logged.add(check)
            log.error(
                "mqtt exporter %s: check %r is not published: its topic %s/%s is reserved "
                "(status, fleet/…); rename the check",
                self.name,
                check,
                self.base,
                check,
            )

    # --- the fleet's views -------------------------------------------------------------------------

    async def _views_loop(self) -> None:
        """Publish this agent's views as they change (and all of them again after a reconnect);
        forget, once an interval, those too old to count again."""
        assert self.views is not None
        views = self.views
        interval = self.context.interval
        next_tick = time.monotonic()
        while not self._closing.is_set():
            self._views_wake.clear()  # before the work: a wake during it is not lost
            client, lost = self._client, self._lost
            if client is not None and lost is not None and not lost.done():
                for topic, payload, view in views.unsent():
                    if not await self._acked(client, lost, topic, payload):
                        break  # the connection task notices and reconnects; sent again then
                    views.sent(view)
            if time.monotonic() >= next_tick:
                views.forget(self._clock(), _VIEW_WINDOWS)
                next_tick = time.monotonic() + interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_tick - time.monotonic())):
                    await self._views_wake.wait()

    async def _acked(
        self, client: aiomqtt.Client, lost: asyncio.Future[None], topic: str, payload: bytes
    ) -> bool:
        """Publish one retained QoS 1 message; True once its PUBACK arrived (False if the
        connection ends or `timeout` passes first)."""
        task = asyncio.create_task(client.publish(topic, payload, qos=1, retain=True, timeout=math.inf))
        waiters: set[asyncio.Future[Any]] = {task, lost}
        await asyncio.wait(waiters, timeout=self.config.timeout, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        return not task.cancelled() and task.exception() is None


def require(config: MqttConfig) -> None:
    """Raises ExtraMissing when aiomqtt (a core dependency) is not installed."""
    try:
        import aiomqtt  # noqa: F401
    except ImportError:
        from exporters.config import ExtraMissing

        raise ExtraMissing(
            f"exporter {config.name} (type mqtt) needs aiomqtt (a dependency of mamori), which is not"
            " installed: pip install 'aiomqtt>=2.5,<3'"
        ) from None


def build(config: MqttConfig, context: ExportContext) -> PushExporter:
    require(config)
    import aiomqtt

    problems = agent_problems(context.agent, context.site)
    if problems:
        raise StartupError(f"mqtt exporter {config.name}: {'; '.join(problems)}")
    ctx = tls_context(config.tls, f"mqtt exporter {config.name}") if config.tls is not None else None
    return MqttExporter(config, context, aiomqtt, ctx)
