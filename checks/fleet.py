"""`type: fleet`: the fleet verdict — is the primary of a Postgres cluster down, as the site's
independent witnesses see it?

One agent that cannot reach the primary may be the one that is partitioned, and two vantage
points on the same side of a partition are not two witnesses. Every agent's mqtt exporter
publishes its *view* of each cluster (agent/fleetview.py: the witnesses of its own results —
`agent:<agent>` from its postgres check, `standby:<node>` from the standbys' WAL receivers,
`app:<check>` from the application's health endpoint —, each reachable, down or unknown, with
its zone; retained, QoS 1, to `<prefix>/<site>/<host>/fleet/pg/<cluster>`), and its status
(`online`, or `offline`: its last will or a clean shutdown). This check:

1. keeps one subscription to `<prefix>/<site>/+/fleet/pg/<cluster>` and `<prefix>/<site>/+/status`
   (its own aiomqtt connection, started at the first run, reconnected with backoff, closed by
   `aclose()`). After each (re)connect it sends itself a marker (`sync_topic`) and judges only once
   it is back, so every retained view has arrived (the broker sends them in order) and no verdict
   is judged on half of them;
2. judges from the witnesses of the *live* agents' views — those younger than `window_intervals`
   × their interval whose agent is not `offline` —, each witness once (the strongest report of
   it: reachable > down > unknown): **alive** if any says reachable; **confirmed** if at least
   `min_votes` say down, in at least `min_zones` distinct zones, and no agent is *lost* (it said
   the primary was reachable within `lost_window` and is now offline or silent); **inconclusive**
   if some say down otherwise; else none;
3. answers each run with the verdict, as check `fleet:<cluster>`: CRITICAL with reason
   `primary_down_confirmed` or `primary_down_inconclusive` (a person decides: never a failover
   recommendation), else OK; the message names every witness with its state and zone, and why an
   inconclusive verdict is not confirmed. While it is not connected (or not yet synced) it cannot
   know what the others see: it repeats its last verdict and says so in the message (an UNKNOWN
   or OK would resolve a confirmed page); before any verdict it is UNKNOWN.

The Prometheus recording rules (alerts/rules/postgres.yml) do the same arithmetic on the same
witnesses. Data flows one way: views never come from fleet results. `Fleet` holds the state and
the arithmetic and does no I/O.
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
from agent.fleetview import (
    DOWN,
    FLEET_LEVEL,
    OFFLINE,
    REACHABLE,
    STATUS,
    UNKNOWN,
    View,
    Witness,
    dedupe,
)
from agent.model import CheckResult, Reason, Sample, Status
from checks.base import Check, CheckConfig, CheckOutcome, PerfDatum

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger("mamori.checks.fleet")

CHECK_TYPE = "fleet"
CHECK_PREFIX = "fleet:"

AGENTS = "mamori_fleet_agents"
VOTES = "mamori_fleet_primary_down_votes"
QUORUM = "mamori_fleet_quorum"
CONFIRMED = "mamori_fleet_primary_down_confirmed"
DOWN_ZONES = "mamori_fleet_primary_down_zones"
LOST = "mamori_fleet_lost_witnesses"
WITNESSES = "mamori_fleet_witnesses"
VERDICT = "mamori_fleet_verdict"
ALIVE, CONFIRMED_VERDICT, INCONCLUSIVE, NONE = "alive", "confirmed", "inconclusive", "none"
VERDICTS = (ALIVE, CONFIRMED_VERDICT, INCONCLUSIVE, NONE)


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
    # Never fewer down witnesses than this: one witness alone is never a confirmation.
    min_votes: int = Field(default=2, ge=1, le=1000)
    # The down witnesses must stand in at least this many distinct (non-empty) zones: two vantage
    # points on one side of a partition are not two witnesses. 0: no zone requirement (a site
    # without zones, which then cannot tell a dead primary from an isolated one).
    min_zones: int = Field(default=2, ge=0, le=100)
    # An agent that said the primary was reachable within this and is now offline or silent is
    # *lost*: evidence of a partition, not of a dead primary (the verdict is then inconclusive).
    lost_window: Duration = 30.0
    # Optional, in addition: live agents whose own postgres check must see the primary down (a
    # majority of them, all of them, or a number). Unset (the default), the witnesses decide.
    quorum: Literal["majority", "all"] | Annotated[int, Field(ge=1, le=1000)] | None = None
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
        if value is None or value in ("majority", "all"):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"invalid quorum {value!r}: expected majority, all or a number of agents")

    @model_validator(mode="after")
    def _cross(self) -> FleetCheckConfig:
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

    def agents_needed(self, live: int) -> int:
        """Live agents that must see the primary down themselves (`quorum`; 0 when unset)."""
        if self.quorum is None:
            return 0
        if self.quorum == "majority":
            return live // 2 + 1
        if self.quorum == "all":
            return live
        return int(self.quorum)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _zone(zone: str) -> str:
    return zone or "no zone"


@dataclass(frozen=True)
class Lost:
    """An agent that said the primary was reachable `ago` seconds ago and is now gone."""

    agent: str
    ago: float
    why: str  # "is offline", "is silent (its last view is 12 s old)"

    def __str__(self) -> str:
        return f"{self.agent} saw it alive {_seconds(self.ago)} ago and {self.why}"


@dataclass(frozen=True)
class FleetVerdict:
    """The verdict on one cluster at one moment, with its evidence."""

    cluster: str
    live: tuple[str, ...]  # agents counted, sorted
    witnesses: tuple[Witness, ...]  # every witness of the live agents, once (the strongest), by name
    lost: tuple[Lost, ...]
    min_votes: int
    min_zones: int
    agents_down: tuple[str, ...] = ()  # live agents whose own witness says down
    agents_needed: int = 0  # `quorum` (0: unset)

    def _in(self, state: str) -> tuple[Witness, ...]:
        return tuple(w for w in self.witnesses if w.state == state)

    @property
    def down(self) -> tuple[Witness, ...]:
        return self._in(DOWN)

    @property
    def reachable(self) -> tuple[Witness, ...]:
        return self._in(REACHABLE)

    @property
    def down_zones(self) -> tuple[str, ...]:
        return tuple(sorted({w.zone for w in self.down if w.zone}))

    @property
    def needed(self) -> int:
        """Down votes needed (min_votes; with `quorum`, at least the agents it needs)."""
        return max(self.min_votes, self.agents_needed)

    def not_confirmed_because(self) -> list[str]:
        """Why down witnesses do not confirm (empty: nothing stands in the way)."""
        why: list[str] = []
        down, zones = self.down, self.down_zones
        if len(down) < self.min_votes:
            why.append(f"{len(down)} of {self.min_votes} votes")
        if self.min_zones and len(zones) < self.min_zones:
            if not zones:
                why.append("down from no zone (no down witness has a zone)")
            elif len(zones) == 1:
                why.append(f"down only from zone {zones[0]}")
            else:
                why.append(f"down from {len(zones)} zones ({', '.join(zones)}), {self.min_zones} needed")
        why.extend(str(lost) for lost in self.lost)
        if self.agents_needed and len(self.agents_down) < self.agents_needed:
            why.append(
                f"{len(self.agents_down)} of {len(self.live)} live agents see it down,"
                f" {self.agents_needed} needed (quorum)"
            )
        return why

    @property
    def verdict(self) -> str:
        if self.reachable:
            return ALIVE
        if not self.down:
            return NONE
        return INCONCLUSIVE if self.not_confirmed_because() else CONFIRMED_VERDICT

    @property
    def confirmed(self) -> bool:
        return self.verdict == CONFIRMED_VERDICT

    def evidence(self) -> str:
        if not self.witnesses:
            return "no witness (no live agent reports on it)"
        return "witnesses: " + ", ".join(f"{w.name} {w.state} ({_zone(w.zone)})" for w in self.witnesses)

    def outcome(self, note: str = "") -> CheckOutcome:
        labels = (("cluster", self.cluster),)
        verdict = self.verdict
        samples = (
            Sample(AGENTS, float(len(self.live)), labels),
            Sample(VOTES, float(len(self.down)), labels),
            Sample(QUORUM, float(self.needed), labels),
            Sample(CONFIRMED, 1.0 if verdict == CONFIRMED_VERDICT else 0.0, labels),
            Sample(DOWN_ZONES, float(len(self.down_zones)), labels),
            Sample(LOST, float(len(self.lost)), labels),
            *(
                Sample(WITNESSES, float(len(self._in(state))), (*labels, ("state", state)))
                for state in (REACHABLE, DOWN, UNKNOWN)
            ),
            *(Sample(VERDICT, float(v == verdict), (*labels, ("verdict", v))) for v in VERDICTS),
        )
        c, evidence = self.cluster, self.evidence()
        status, reason = Status.OK, Reason.OK
        if verdict == CONFIRMED_VERDICT:
            status, reason = Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED
            zones = (
                f" in {len(self.down_zones)} zones ({', '.join(self.down_zones)})" if self.down_zones else ""
            )
            seen = f"{len(self.down)} witnesses see it down{zones}"
            message = f"primary of cluster {c} down, confirmed: {seen}; {evidence}"
        elif verdict == INCONCLUSIVE:
            status, reason = Status.CRITICAL, Reason.PRIMARY_DOWN_INCONCLUSIVE
            why = "; ".join(self.not_confirmed_because())
            message = f"primary of cluster {c} down, inconclusive: {why}; {evidence}"
        elif verdict == ALIVE:
            seen = ", ".join(f"{w.name} ({_zone(w.zone)})" for w in self.reachable)
            message = f"primary of cluster {c} alive: reachable from {seen}; {evidence}"
        else:
            message = f"primary of cluster {c} not seen down: no witness says reachable or down; {evidence}"
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
        self._reachable_at: dict[str, float] = {}  # agent -> when it last said the primary was reachable
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
        if not payload:  # a retained view cleared: the agent is decommissioned
            self._reachable_at.pop(agent, None)
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
        if view.own_state() == REACHABLE:
            self._reachable_at[agent] = max(view.timestamp, self._reachable_at.get(agent, view.timestamp))
        return held != view

    # --- the verdict -------------------------------------------------------------------------------

    def verdict(self, now: float) -> FleetVerdict:
        cfg = self.config
        live: list[str] = []
        reports: list[Witness] = []
        agents_down: list[str] = []
        for agent, view in sorted(self._views.items()):
            if self._status.get(agent) == OFFLINE or not view.fresh(now, cfg.window_intervals):
                continue
            live.append(agent)
            reports.extend(view.counted())
            if view.own_state() == DOWN:
                agents_down.append(agent)
        lost: list[Lost] = []
        for agent, at in sorted(self._reachable_at.items()):
            if agent in live or now - at > cfg.lost_window:
                continue
            last = self._views.get(agent)
            if self._status.get(agent) == OFFLINE or last is None:
                why = "is offline"
            else:
                why = f"is silent (its last view is {_seconds(last.age(now))} old)"
            lost.append(Lost(agent, max(0.0, now - at), why))
        witnesses = dedupe(reports)
        return FleetVerdict(
            cluster=self.cluster,
            live=tuple(live),
            witnesses=tuple(witnesses[n] for n in sorted(witnesses)),
            lost=tuple(lost),
            min_votes=cfg.min_votes,
            min_zones=cfg.min_zones,
            agents_down=tuple(agents_down),
            agents_needed=cfg.agents_needed(len(live)),
        )

    def forget(self, now: float) -> None:
        """Drop views too old to ever count again, and reachable reports older than `lost_window`."""
        for agent, view in list(self._views.items()):
            if view.forgotten(now, self.config.window_intervals):
                del self._views[agent]
        for agent, at in list(self._reachable_at.items()):
            if now - at > self.config.lost_window:
                del self._reachable_at[agent]


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

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        """time, the live agents, the down votes, the votes a confirmation needs and the zones the
        down votes stand in (no thresholds: the verdict also weighs the zones)."""
        values = {s.name: s.value for s in result.samples}
        out = [PerfDatum("time", result.duration, "s", min=0)]
        if AGENTS in values:
            out.append(PerfDatum("agents", values[AGENTS], min=0))
            out.append(PerfDatum("down_votes", values.get(VOTES, 0.0), min=0))
            out.append(PerfDatum("quorum", values.get(QUORUM, 0.0), min=0))
            out.append(PerfDatum("down_zones", values.get(DOWN_ZONES, 0.0), min=0))
        return out

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
