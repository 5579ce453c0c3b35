"""`type: fleet`: the fleet quorum — is the primary of a Postgres cluster down, as a quorum of the
site's agents sees it?

One agent that cannot reach the primary may be the one that is partitioned; a majority of
independent vantage points seeing it down is a fact worth paging on. Every agent's mqtt exporter
publishes its *view* of each cluster (agent/fleetview.py: derived from its own `postgres` results,
retained, QoS 1, to `<prefix>/<site>/<host>/fleet/pg/<cluster>`), and its status (`online`, or
`offline`: its last will or a clean shutdown). This check:

1. keeps one subscription to `<prefix>/<site>/+/fleet/pg/<cluster>` and `<prefix>/<site>/+/status`
   (its own aiomqtt connection, started at the first run, reconnected with backoff, closed by
   `aclose()`). After each (re)connect it sends itself a marker (`sync_topic`) and judges only once
   it is back, so every retained view has arrived (the broker sends them in order) and no verdict
   is judged on half of them;
2. judges from the views of the *live* agents — those whose view is younger than
   `window_intervals` × their interval and whose status is not `offline`: the primary is down,
   confirmed, when at least `quorum` of them (default: a majority) and at least `min_votes`
   (default 2) see it down;
3. answers each run with the verdict, as check `fleet:<cluster>`: CRITICAL with reason
   `primary_down_confirmed`, else OK. Alert rules match it like any check (`check: "fleet:*"`,
   `reason: [primary_down_confirmed]`). While it is not connected (or not yet synced) it cannot
   know what the others see: it repeats its last verdict and says so in the message (an
   UNKNOWN or OK would resolve a confirmed page); before any verdict it is UNKNOWN.

Data flows one way: views come from postgres results only, so the fleet's own results never
feed back into them. `Fleet` holds the state and the arithmetic and does no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from agent.backoff import backoff
from agent.broker import BrokerHost, ClientLog, TlsOptions, TopicPrefix, tls_context, topic_level_problem
from agent.fields import Duration, Port, secret_value
from agent.fleetview import FLEET_LEVEL, OFFLINE, STATUS, View
from agent.model import Reason, Sample, Status
from checks.base import Check, CheckConfig, CheckOutcome

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger("mamori.checks.fleet")

CHECK_TYPE = "fleet"
CHECK_PREFIX = "fleet:"

AGENTS = "mamori_fleet_agents"
VOTES = "mamori_fleet_primary_down_votes"
QUORUM = "mamori_fleet_quorum"
CONFIRMED = "mamori_fleet_primary_down_confirmed"


class FleetCheckConfig(CheckConfig):
    """A `fleet` check: the broker (the same keys as the mqtt exporter's), where the views are,
    and the quorum. `site` and `agent` default to the agent's (filled in by agent/config.py)."""

    type: Literal["fleet"]
    cluster: str
    # The broker.
    host: BrokerHost
    port: Port | None = None  # default 1883, or 8883 with tls
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None  # or password_file
    tls: TlsOptions | None = None
    # Default mamori-<agent>-fleet-<cluster>: never the exporter's, whose session it would take over.
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    keepalive: Duration = 60.0
    reconnect_delay: Duration = 1.0
    reconnect_max: Duration = 60.0
    # Where the views are: <topic_prefix>/<site>/<agent>/fleet/pg/<cluster>.
    topic_prefix: TopicPrefix = "mamori"
    site: str = "default"
    agent: str = Field(default="", max_length=1024)
    # Live agents that must see the primary down: a majority of them, all of them, or a number.
    quorum: Literal["majority", "all"] | Annotated[int, Field(ge=1, le=1000)] = "majority"
    # Never fewer down votes than this, however few agents are live: one agent alone is never a
    # confirmation (set 1 for a site with a single agent).
    min_votes: int = Field(default=2, ge=1, le=1000)
    # An agent is live while its latest view is younger than this many of its check intervals.
    window_intervals: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="before")
    @classmethod
    def _name(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("cluster"), str):
            expected = CHECK_PREFIX + data["cluster"]
            if "name" not in data:
                return {**data, "name": expected}
            if data["name"] != expected:
                raise ValueError(
                    f"the name of a fleet check is {expected!r} (fleet:<cluster>), not {data['name']!r}:"
                    " alert rules and dashboards know it by that name; remove `name`"
                )
        return data

    @field_validator("cluster", "site")
    @classmethod
    def _level(cls, value: str, info: Any) -> str:
        problem = topic_level_problem(value, str(info.field_name))
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("quorum", mode="before")
    @classmethod
    def _quorum(cls, value: Any) -> Any:
        if value in ("majority", "all") or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ValueError(f"invalid quorum {value!r}: expected majority, all or a number of agents")

    @model_validator(mode="after")
    def _cross(self) -> FleetCheckConfig:
        if isinstance(self.quorum, int) and self.quorum < self.min_votes:
            raise ValueError(
                f"quorum ({self.quorum}) is less than min_votes ({self.min_votes}): "
                f"lower min_votes too if {self.quorum} votes should confirm"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if self.reconnect_max < self.reconnect_delay:
            raise ValueError(
                f"reconnect_max ({self.reconnect_max:g}s) must not be less than "
                f"reconnect_delay ({self.reconnect_delay:g}s)"
            )
        if self.agent and (problem := topic_level_problem(self.agent, "agent")):
            raise ValueError(problem)
        return self

    @property
    def port_number(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883

    def needed(self, live: int) -> int:
        """Down votes needed among `live` agents."""
        if self.quorum == "majority":
            base = live // 2 + 1
        elif self.quorum == "all":
            base = live
        else:
            base = int(self.quorum)
        return max(base, self.min_votes)


@dataclass(frozen=True)
class FleetVerdict:
    cluster: str
    live: tuple[str, ...]  # agents counted, sorted
    down: tuple[str, ...]  # those of them that see the primary down
    needed: int
    confirmed: bool

    def outcome(self, note: str = "") -> CheckOutcome:
        labels = (("cluster", self.cluster),)
        samples = (
            Sample(AGENTS, float(len(self.live)), labels),
            Sample(VOTES, float(len(self.down)), labels),
            Sample(QUORUM, float(self.needed), labels),
            Sample(CONFIRMED, 1.0 if self.confirmed else 0.0, labels),
        )
        down = f" ({', '.join(self.down)})" if self.down else ""
        counts = f"{len(self.down)} of {len(self.live)} live agents see it down{down}, {self.needed} needed"
        if self.confirmed:
            status, reason = Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED
            message = f"primary of cluster {self.cluster} down, confirmed: {counts}"
        else:
            status, reason = Status.OK, Reason.OK
            message = f"primary of cluster {self.cluster} not confirmed down: {counts}"
        return CheckOutcome(status, reason, message + note, samples)


class Fleet:
    """What the broker says about one cluster: every agent's latest view and status. Not
    thread-safe; every call is made from the event loop.

    Times are unix seconds from the caller (views carry wall-clock timestamps, so agents' clocks
    should be NTP-synchronised; a skew small against the check interval does not matter).
    """

    def __init__(self, config: FleetCheckConfig) -> None:
        self.config = config
        self.cluster = config.cluster
        self.base = f"{config.topic_prefix}/{config.site}"
        self._views: dict[str, View] = {}  # agent -> latest view received
        self._status: dict[str, str] = {}  # agent -> its status topic's payload
        self._bad_senders: set[str] = set()

    # --- topics ------------------------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        return [self.target(), f"{self.base}/+/{STATUS}", self.sync_topic()]

    def sync_topic(self) -> str:
        """Where the check sends itself a marker after subscribing: once it is back, every
        retained view and status the subscription brought has arrived before it (the broker
        sends them in order), so no verdict is judged on half of them."""
        return f"{self.base}/{self.config.agent}/{FLEET_LEVEL}/sync"

    def target(self) -> str:
        return f"{self.base}/+/{FLEET_LEVEL}/pg/{self.cluster}"

    # --- what the others say -----------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes) -> bool:
        """A message on one of `subscriptions()`. True if it changed the state."""
        if not topic.startswith(self.base + "/"):
            return False
        parts = topic[len(self.base) + 1 :].split("/")
        if len(parts) == 2 and parts[1] == "status":
            return self._receive_status(parts[0], payload)
        if len(parts) == 4 and parts[1:3] == [FLEET_LEVEL, "pg"] and parts[3] == self.cluster:
            return self._receive_view(parts[0], payload)
        return False

    def _receive_status(self, agent: str, payload: bytes) -> bool:
        text = payload.decode(errors="replace").strip()
        if not text:  # a retained status cleared: the agent is decommissioned
            return self._status.pop(agent, None) is not None
        before = self._status.get(agent)
        self._status[agent] = text
        return before != text

    def _receive_view(self, agent: str, payload: bytes) -> bool:
        if not payload:  # a retained view cleared
            return self._views.pop(agent, None) is not None
        try:
            view = View.parse(agent, self.cluster, payload)
        except ValueError as exc:
            if agent not in self._bad_senders:  # once per sender: a broken peer must not flood the log
                self._bad_senders.add(agent)
                log.warning(
                    "fleet: ignoring a malformed view from %s for cluster %s: %s", agent, self.cluster, exc
                )
            return False
        held = self._views.get(agent)
        if held is not None and held.timestamp > view.timestamp:
            return False  # an older view arriving late (e.g. our own, retained from before a restart)
        self._views[agent] = view
        return held != view

    # --- the verdict -------------------------------------------------------------------------------

    def verdict(self, now: float) -> FleetVerdict:
        live: list[str] = []
        down: list[str] = []
        for agent, view in sorted(self._views.items()):
            if self._status.get(agent) == OFFLINE:
                continue
            if not view.fresh(now, self.config.window_intervals):
                continue
            live.append(agent)
            if view.primary_down:
                down.append(agent)
        needed = self.config.needed(len(live))
        confirmed = bool(live) and len(down) >= needed
        return FleetVerdict(self.cluster, tuple(live), tuple(down), needed, confirmed)

    def forget(self, now: float) -> None:
        """Drop views too old to ever count again."""
        for agent, view in list(self._views.items()):
            if view.forgotten(now, self.config.window_intervals):
                del self._views[agent]


class FleetCheck(Check[FleetCheckConfig]):
    """See the module docstring. `aclose()` stops the subscription; safe twice, and without a run."""

    type_name: ClassVar[str] = CHECK_TYPE
    config_model: ClassVar[type[CheckConfig]] = FleetCheckConfig

    def __init__(
        self,
        config: FleetCheckConfig,
        module: Any = None,  # aiomqtt (imported at the first run when None)
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config)
        self.fleet = Fleet(config)
        self.client_id = config.client_id or f"mamori-{config.agent}-fleet-{config.cluster}"[:128]
        self._mqtt = module
        self._rand = rand
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._connected = False
        self._synced = asyncio.Event()  # this connection's retained messages are in
        self._sync_marker = b""
        self._last: FleetVerdict | None = None
        self._error = "not connected to the broker yet"
        self._logged_error = ""  # the failure logged for the current streak ("" = none)
        self._session_up = False
        self.failures = 0  # failed connects or lost connections in a row
        self.connects = 0
        self._client_log = ClientLog(log)
        self._client_logger = self._client_log.logger()

    @property
    def target(self) -> str:
        return self.fleet.target()

    async def run(self) -> CheckOutcome:
        if self._task is None and not self._closed:
            if self._mqtt is None:
                import aiomqtt

                self._mqtt = aiomqtt
            ctx: ssl.SSLContext | None = None
            if self.config.tls is not None:
                ctx = tls_context(self.config.tls, f"fleet check {self.name}")
            self._task = asyncio.create_task(self._connection_loop(ctx), name=f"fleet:{self.name}")
        if not self._synced.is_set() and self._last is None:
            # Until the first verdict, a run waits for the retained views (within its budget)
            # rather than answer without them; later ones repeat the last verdict at once.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.time_left() - 0.1)):
                    await self._synced.wait()
        now = self._clock()
        self.fleet.forget(now)
        if self._synced.is_set():
            self._last = self.fleet.verdict(now)
            return self._last.outcome()
        why = self._error if not self._connected else "the retained views have not all arrived yet"
        if self._last is not None:
            return self._last.outcome(f" (the last verdict, repeated: {why})")
        return CheckOutcome(
            Status.UNKNOWN, Reason.UNREACHABLE, f"no verdict yet for cluster {self.fleet.cluster}: {why}"
        )

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # --- the subscription --------------------------------------------------------------------------

    def _new_client(self, ctx: ssl.SSLContext | None) -> aiomqtt.Client:
        cfg = self.config
        client: aiomqtt.Client = self._mqtt.Client(
            cfg.host,
            cfg.port_number,
            username=cfg.username,
            password=secret_value(cfg.password),
            identifier=self.client_id,
            keepalive=max(1, round(cfg.keepalive)),
            timeout=cfg.timeout,
            tls_context=ctx,
            logger=self._client_logger,
        )
        return client

    async def _connection_loop(self, ctx: ssl.SSLContext | None) -> None:
        while True:
            try:
                await self._session(ctx)
            except self._mqtt.MqttError as exc:
                cause = exc.__cause__  # aiomqtt's "Disconnected during message iteration" wraps why
                self._failed(str(cause) if cause is not None else str(exc) or type(exc).__name__)
            except Exception as exc:  # an OS error aiomqtt did not wrap: keep reconnecting
                self._failed(f"{type(exc).__name__}: {exc}")
            finally:
                self._connected = False
                self._synced.clear()
            cfg = self.config
            await asyncio.sleep(
                backoff(max(1, self.failures), self._rand, base=cfg.reconnect_delay, cap=cfg.reconnect_max)
            )

    def _failed(self, error: str) -> None:
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
            log.error("fleet check %s: %s; reconnecting with backoff", self.name, self._error)
            self._logged_error = error

    async def _session(self, ctx: ssl.SSLContext | None) -> None:
        """One connection, from CONNECT until it drops (MqttError)."""
        fleet = self.fleet
        async with self._new_client(ctx) as client:
            self._sync_marker = os.urandom(8).hex().encode()
            sync_deadline = time.monotonic() + self.config.timeout
            await client.subscribe([(topic, 1) for topic in fleet.subscriptions()])
            await client.publish(fleet.sync_topic(), self._sync_marker, qos=1)
            self._connected, self._session_up = True, True
            self.connects += 1
            where = f"{self.config.host}:{self.config.port_number}"
            if self._logged_error:
                log.info(
                    "fleet check %s: connected to %s again (after %d failed attempts)",
                    self.name,
                    where,
                    self.failures,
                )
            else:
                log.info("fleet check %s: connected to %s as %s", self.name, where, self.client_id)
            self.failures, self._logged_error = 0, ""
            self._error = f"connection to {where} lost"
            messages = aiter(client.messages)
            while True:
                if not self._synced.is_set() and time.monotonic() >= sync_deadline:
                    log.warning(
                        "fleet check %s: the sync marker did not come back within %gs "
                        "(may this client publish and subscribe to %s?); judging without it",
                        self.name,
                        self.config.timeout,
                        fleet.sync_topic(),
                    )
                    self._synced.set()
                wait = None if self._synced.is_set() else sync_deadline - time.monotonic()
                try:
                    async with asyncio.timeout(wait):
                        message = await anext(messages)
                except TimeoutError:
                    continue
                payload = message.payload if isinstance(message.payload, bytes) else b""
                topic = message.topic.value
                if topic == fleet.sync_topic():
                    if payload == self._sync_marker:
                        self._synced.set()
                    continue
                fleet.receive(topic, payload)
