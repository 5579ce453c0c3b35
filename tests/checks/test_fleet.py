"""The fleet quorum (checks/fleet.py; the views: agent/fleetview.py): the arithmetic on real
postgres-shaped results, and three real agents (agent.runtime.Agent) with real postgres checks
on the real PostgreSQL pair of tests/pg.py, talking over a real Mosquitto: one agent partitioned
from the primary alone confirms nothing; the primary really down is confirmed within three
intervals and pages through the agents' own alert rules (`check: "fleet:*"`,
`reason: [primary_down_confirmed]`); an agent whose connection dies (its last will) leaves the
quorum at once and rejoins when it reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from agent import config
from agent.fleetview import OwnViews, View, views_of
from agent.model import CheckResult, Reason, Sample, Status
from agent.runner import execute
from agent.runtime import Agent
from checks.fleet import Fleet, FleetCheck, FleetCheckConfig
from lab.mosquitto import Mosquitto
from lab.ports import free_port
from lab.postgres import PgLab
from lab.proxy import LinkProxy
from lab.wait import wait_until
from tests.fakes.pagerduty import FakePagerDuty, fake_pagerduty
from tests.pg import fixture_pg_cluster, fixture_pg_pair  # noqa: F401  (pytest finds them)

INTERVAL = 0.5  # every agent's postgres check and the fleet's tick
WINDOW = 3 * INTERVAL  # window_intervals: 3 (the default)
T0 = 1_700_000_000.0


# --- the arithmetic --------------------------------------------------------------------------------------


def pg_result(reason: str, started_at: float, *, cluster: str = "db", check: str = "db") -> CheckResult:
    """A postgres check's result as checks/postgres/ shapes it (the samples the fleet reads)."""
    down = reason.startswith("primary_down")
    return CheckResult(
        check=check,
        check_type="postgres",
        target="postgres://127.0.0.1:5432,127.0.0.1:5433/postgres",
        status=Status.CRITICAL if down else Status.OK,
        started_at=started_at,
        duration=0.01,
        samples=(
            Sample("mamori_pg_up", 0.0 if down else 1.0, (("node", "primary"),)),
            Sample("mamori_pg_up", 1.0, (("node", "standby"),)),
            Sample("mamori_pg_failover_ready", 1.0, (("cluster", cluster), ("reason", "ready"))),
            Sample(
                "mamori_pg_failover_recommended",
                float(reason == "primary_down_standby_ready"),
                (("cluster", cluster), ("reason", reason)),
            ),
        ),
        reason=Reason.PRIMARY_DOWN if down else Reason.OK,
    )


def view(agent: str, down: bool, timestamp: float, interval: float = 1.0) -> bytes:
    reason = "primary_down_standby_ready" if down else "primary_reachable"
    (v,) = views_of(pg_result(reason, timestamp), agent, interval)
    payload: bytes = v.payload("lab")
    return payload


def check_config(**cfg: object) -> FleetCheckConfig:
    values = {"type": "fleet", "cluster": "db", "host": "127.0.0.1", "interval": 1.0, "timeout": 1.0}
    return FleetCheckConfig.model_validate({"site": "lab", "agent": "a1", **values, **cfg})


def fleet(**cfg: object) -> Fleet:
    return Fleet(check_config(**cfg))


def results(f: Fleet, now: float) -> list[CheckResult]:
    """The check's result for the verdict at `now` (as the harness makes it from its outcome)."""
    o = f.verdict(now).outcome()
    name, target = "fleet:" + f.cluster, f.target()
    return [CheckResult(name, "fleet", target, o.status, now, 0.0, o.samples, o.message, o.reason)]


def own_views() -> OwnViews:
    return OwnViews("a1", "lab", "mamori", 1.0)


def test_a_view_is_what_the_postgres_check_saw() -> None:
    (v,) = views_of(pg_result("primary_down_standby_not_ready", T0), "a1", 2.0)
    assert v == View(
        "a1",
        "db",
        "db",
        T0,
        2.0,
        True,
        "primary_down_standby_not_ready",
        (("primary", False), ("standby", True)),
    )
    assert json.loads(v.payload("lab")) == {
        "agent": "a1",
        "site": "lab",
        "cluster": "db",
        "check": "db",
        "timestamp": T0,
        "interval": 2.0,
        "primary_down": True,
        "reason": "primary_down_standby_not_ready",
        "nodes": {"primary": False, "standby": True},
    }
    assert View.parse("a1", "db", v.payload("lab")) == v
    # Only postgres results with a cluster view make views; the fleet's own results never do.
    single = CheckResult(
        "one", "postgres", "x", Status.OK, T0, 0.0, (Sample("mamori_pg_up", 1.0, (("node", "n"),)),)
    )
    assert views_of(single, "a1", 1.0) == []
    own = CheckResult(
        "fleet:db", "fleet", "x", Status.CRITICAL, T0, 0.0, reason=Reason.PRIMARY_DOWN_CONFIRMED
    )
    own_view = own_views()
    assert own_view.observe([own]) is False and own_view.clusters() == []


@pytest.mark.parametrize(
    ("cfg", "downs", "confirmed", "needed"),
    [
        ({}, [True, False, False], False, 2),  # one agent alone: maybe it is the partitioned one
        ({}, [True, True, False], True, 2),  # a majority of three
        ({}, [True, True, False, False], False, 3),  # two of four is not a majority
        ({}, [True], False, 2),  # alone, never (min_votes 2)
        ({"min_votes": 1}, [True], True, 1),  # ...unless the site has one agent and says so
        ({"quorum": "all"}, [True, True, False], False, 3),  # one agent that reaches it vetoes
        ({"quorum": "all"}, [True, True, True], True, 3),
        ({"quorum": 2}, [True, True, False, False, False], True, 2),
    ],
)
def test_the_quorum(cfg: dict[str, object], downs: list[bool], confirmed: bool, needed: int) -> None:
    f = fleet(**cfg)
    for i, down in enumerate(downs):
        f.receive(f"mamori/lab/a{i + 1}/status", b"online")
        f.receive(f"mamori/lab/a{i + 1}/fleet/pg/db", view(f"a{i + 1}", down, T0))
    (r,) = results(f, T0 + 0.5)
    samples = {s.name: s.value for s in r.samples}
    assert samples == {
        "mamori_fleet_agents": len(downs),
        "mamori_fleet_primary_down_votes": sum(downs),
        "mamori_fleet_quorum": needed,
        "mamori_fleet_primary_down_confirmed": float(confirmed),
    }
    assert (r.check, r.check_type, r.target) == ("fleet:db", "fleet", "mamori/lab/+/fleet/pg/db")
    if confirmed:
        assert (r.status, r.reason) == (Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED)
        assert r.message.startswith(
            f"primary of cluster db down, confirmed: {sum(downs)} of {len(downs)} live agents"
        )
    else:
        assert (r.status, r.reason) == (Status.OK, Reason.OK)


def test_live_means_heard_from_within_the_window_and_not_offline() -> None:
    f = fleet()
    for agent in ("a1", "a2", "a3"):
        f.receive(f"mamori/lab/{agent}/fleet/pg/db", view(agent, True, T0))
    assert f.verdict(T0 + 1).confirmed and len(f.verdict(T0 + 1).live) == 3
    # a3's last will: it no longer counts, although its view is still fresh.
    f.receive("mamori/lab/a3/status", b"offline")
    v = f.verdict(T0 + 1)
    assert (v.live, v.down, v.needed, v.confirmed) == (("a1", "a2"), ("a1", "a2"), 2, True)
    # a2 falls silent: after 3 of its intervals it is not live either, and a1 alone confirms nothing.
    f.receive("mamori/lab/a1/fleet/pg/db", view("a1", True, T0 + 3))
    v = f.verdict(T0 + 3.5)
    assert (v.live, v.confirmed) == (("a1",), False)
    # a3 back online with a fresh view: counted again.
    f.receive("mamori/lab/a3/status", b"online")
    f.receive("mamori/lab/a3/fleet/pg/db", view("a3", True, T0 + 3.2))
    assert f.verdict(T0 + 3.5).live == ("a1", "a3") and f.verdict(T0 + 3.5).confirmed
    # An older view arriving late (a replay) does not replace a newer one.
    f.receive("mamori/lab/a3/fleet/pg/db", view("a3", False, T0 + 1))
    assert f.verdict(T0 + 3.5).down == ("a1", "a3")
    # Cleared retained views/statuses are forgotten; garbage is ignored (and logged once).
    f.receive("mamori/lab/a3/fleet/pg/db", b"")
    f.receive("mamori/lab/a9/fleet/pg/db", b"{not json")
    f.receive(
        "mamori/lab/a9/fleet/pg/db",
        json.dumps({"timestamp": T0, "interval": 0, "primary_down": True}).encode(),
    )
    f.receive("mamori/other/a1/fleet/pg/db", view("x", True, T0 + 3))  # another site: not ours
    assert f.verdict(T0 + 3.5).live == ("a1",)
    # Long gone: forgotten.
    f.forget(T0 + 1000)
    assert f.verdict(T0 + 1000).live == ()


def test_own_results_become_views_once_with_their_measured_interval() -> None:
    f = own_views()
    assert f.observe([pg_result("primary_reachable", T0)])
    assert f.observe([pg_result("primary_reachable", T0 + 0.5)])
    ((topic, _, v),) = f.unsent()
    assert topic == "mamori/lab/a1/fleet/pg/db" and v.interval == 0.5 and v.timestamp == T0 + 0.5
    assert f.observe([pg_result("primary_reachable", T0 + 0.5)]) is False  # the same run, replayed
    f.sent(v)
    assert f.unsent() == []
    f.reconnected()  # a new connection: publish it again (the broker may have lost it)
    assert [u[2] for u in f.unsent()] == [v]
    assert f.clusters() == ["db"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{type: fleet, cluster: db, host: x, quorum: most}",
            "checks[0].quorum: invalid quorum 'most': expected majority, all or a number of agents",
        ),
        (
            "{type: fleet, cluster: db, host: x, quorum: 1}",
            "checks[0].quorum: quorum (1) is less than min_votes (2): "
            "lower min_votes too if 1 votes should confirm",
        ),
        (
            "{type: fleet, cluster: db, host: x, window_intervals: 0}",
            "checks[0].window_intervals: Input should be greater than or equal to 1",
        ),
        (
            "{type: fleet, name: quorum, cluster: db, host: x}",
            "checks[0]: the name of a fleet check is 'fleet:db' (fleet:<cluster>), not 'quorum':"
            " alert rules and dashboards know it by that name; remove `name`",
        ),
        (
            "{type: fleet, cluster: db/x, host: x}",
            "checks[0].cluster: cluster 'db/x' cannot be an MQTT topic level",
        ),
        ("{type: fleet, cluster: db, host: x, password: p}", "checks[0].password: password needs username"),
        ("{type: fleet, cluster: db, host: 'mqtt://x'}", "checks[0].host: invalid host 'mqtt://x'"),
    ],
)
def test_config_is_validated_at_load(entry: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse(f"checks:\n  - {entry}\n", "t.yml", env={})
    assert str(err.value).startswith(f"t.yml:2: {message}"), str(err.value)


def test_name_site_and_agent_default_to_the_agents() -> None:
    text = "agent: {name: h1, labels: {site: lab}}\nchecks:\n  - {type: fleet, cluster: db, host: x}\n"
    (cfg,) = config.parse(text, "t.yml", env={}).checks
    assert isinstance(cfg, FleetCheckConfig)
    assert (cfg.name, cfg.site, cfg.agent, cfg.port_number) == ("fleet:db", "lab", "h1", 1883)
    check = FleetCheck(cfg)
    assert (check.target, check.client_id) == ("mamori/lab/+/fleet/pg/db", "mamori-h1-fleet-db")


def test_a_fleet_check_without_this_agents_views_is_a_warning() -> None:
    text = """
agent: {name: h1, labels: {site: lab}}
checks:
  - {name: db, type: postgres, nodes: [{name: a, host: 127.0.0.1}, {name: b, host: 127.0.0.2}]}
  - {type: fleet, cluster: db, host: 127.0.0.1}
"""
    cfg = config.parse(text, "t.yml", env={})
    assert [str(w) for w in cfg.warnings] == [
        "t.yml:5: checks[1]: warning: this agent watches cluster 'db' but does not vote in its quorum:"
        " no mqtt exporter publishes its views (fleet: {enabled: true})"
    ]
    views = "exporters:\n  - {name: bus, type: mqtt, host: 127.0.0.1, fleet: {enabled: true}}\n"
    assert config.parse(text + views, "t.yml", env={}).warnings == ()


async def test_without_a_broker_it_says_so_and_repeats_the_last_verdict() -> None:
    cfg = check_config(port=free_port(), timeout=0.3, reconnect_delay=0.05, reconnect_max=0.1)
    check = FleetCheck(cfg)
    try:
        r = await execute(check)
        assert (r.status, r.reason) == (Status.UNKNOWN, Reason.UNREACHABLE), r
        assert r.message.startswith("no verdict yet for cluster db: cannot connect to 127.0.0.1:"), r.message
        # A confirmed verdict stands while the broker cannot be asked: an OK or UNKNOWN would
        # resolve the page.
        for agent in ("a1", "a2"):
            check.fleet.receive(f"mamori/lab/{agent}/fleet/pg/db", view(agent, True, time.time()))
        check._last = check.fleet.verdict(time.time())
        r = await execute(check)
        assert (r.status, r.reason) == (Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED), r
        assert "(the last verdict, repeated: cannot connect to 127.0.0.1:" in r.message, r.message
        assert r.duration < 0.2, "with a verdict to repeat, a run does not wait for the broker"
    finally:
        await check.aclose()


# --- three agents, a real Postgres pair, a real broker ------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mosquitto]:
    async with Mosquitto(tmp_path_factory.mktemp("fleet-broker"), users={"agent": "fleet-pw"}) as b:
        yield b


@pytest.mark.asyncio(loop_scope="session")
async def test_a_newcomer_judges_only_once_every_retained_view_is_in(broker: Mosquitto) -> None:
    """Two of five agents see the primary down: a newcomer must never confirm, although the
    retained views reach it one by one (down ones first), which would be 2 of 2 for a moment."""
    now = time.time()
    async with aiomqtt.Client("127.0.0.1", broker.port, username="agent", password="fleet-pw") as other:
        for i in range(1, 6):
            payload = view(f"a{i}", i <= 2, now, interval=60.0).replace(b'"site":"lab"', b'"site":"burst"')
            await other.publish(f"mamori/burst/a{i}/status", b"online", qos=1, retain=True)
            await other.publish(f"mamori/burst/a{i}/fleet/pg/db", payload, qos=1, retain=True)
    published: list[CheckResult] = []
    cfg = check_config(
        port=broker.port, username="agent", password="fleet-pw", site="burst", agent="newcomer", timeout=2.0
    )
    check = FleetCheck(cfg)
    try:
        for _ in range(4):  # the first run waits for the retained views; then a few runs more
            published.append(await execute(check))
            await asyncio.sleep(0.1)
    finally:
        await check.aclose()
        await check.aclose()  # safe twice
    verdicts = [({s.name: s.value for s in r.samples}, r.status) for r in published]
    first, _ = verdicts[0]
    assert first["mamori_fleet_agents"] == 5 and first["mamori_fleet_primary_down_votes"] == 2, verdicts
    assert all(status == Status.OK for _, status in verdicts), verdicts
    assert {r.check for r in published} == {"fleet:db"}
    async with aiomqtt.Client("127.0.0.1", broker.port, username="agent", password="fleet-pw") as other:
        for i in range(1, 6):  # clear the retained messages
            await other.publish(f"mamori/burst/a{i}/status", b"", qos=1, retain=True)
            await other.publish(f"mamori/burst/a{i}/fleet/pg/db", b"", qos=1, retain=True)


@dataclass
class Member:
    name: str
    agent: Agent
    task: asyncio.Task[int]
    pg_link: LinkProxy | None = None  # its own path to the primary (only agent3's)
    bus_link: LinkProxy | None = None  # its own path to the broker (only agent3's)

    def fleet(self) -> CheckResult | None:
        return self.agent.latest.get("fleet:db")

    def status(self) -> tuple[Status, Reason] | None:
        r = self.fleet()
        return None if r is None else (r.status, r.reason)

    def samples(self) -> dict[str, float]:
        r = self.fleet()
        return {} if r is None else {s.name: s.value for s in r.samples}


def agent_yaml(
    name: str, lab: PgLab, primary_port: int, broker_port: int, pd: FakePagerDuty, directory: Path
) -> str:
    return f"""
agent:
  name: {name}
  listen: "127.0.0.1:{free_port()}"
  labels: {{site: lab}}
  interval: {INTERVAL}s
  timeout: 0.4s
checks:
  - name: db
    type: postgres
    heartbeat: false
    password: {lab.monitoring_password}
    nodes:
      - {{name: primary, host: 127.0.0.1, port: {primary_port}}}
      - {{name: standby, host: 127.0.0.1, port: {lab.standby.port}}}
  # The verdict is cheap to ask for (what the subscription holds): asked often, so that a change
  # (agent3's last will) shows within a fraction of the postgres check's interval.
  - type: fleet
    cluster: db
    interval: 0.1s
    timeout: 0.1s
    host: 127.0.0.1
    port: {broker_port}
    username: agent
    password: fleet-pw
    reconnect_delay: 0.1s
    reconnect_max: 0.5s
    quorum: majority
    window_intervals: 3
outbox: {{path: {directory / f"{name}-outbox.db"}}}
exporters:
  - name: bus
    type: mqtt
    host: 127.0.0.1
    port: {broker_port}
    username: agent
    password: fleet-pw
    reconnect_delay: 0.1s
    reconnect_max: 0.5s
    fleet: {{enabled: true}}
notifiers:
  - {{name: pd, type: pagerduty, routing_key: {pd.routing_key}, url: "{pd.url}"}}
alerts:
  state_file: {directory / f"{name}-alerts.db"}
  group_wait: 0s
  rules:
    - name: fleet_primary_down
      check: "fleet:*"
      status: critical
      reason: [primary_down_confirmed]
      severity: critical
      summary: "{{check}} on {{agent}}: {{reason}} ({{message}})"
  routes: {{critical: [pd]}}
"""


@contextlib.asynccontextmanager
async def three_agents(
    lab: PgLab, broker: Mosquitto, pd: FakePagerDuty, directory: Path
) -> AsyncIterator[list[Member]]:
    members: list[Member] = []
    pg_link = LinkProxy(lab.primary.port)
    bus_link = LinkProxy(broker.port)
    try:
        for i in (1, 2, 3):
            name = f"agent{i}"
            partitionable = i == 3
            text = agent_yaml(
                name,
                lab,
                pg_link.port if partitionable else lab.primary.port,
                bus_link.port if partitionable else broker.port,
                pd,
                directory,
            )
            agent = Agent(config.parse(text, f"{name}.yml", env={}), None)
            member = Member(name, agent, asyncio.create_task(agent.run()))
            if partitionable:
                member.pg_link, member.bus_link = pg_link, bus_link
            members.append(member)
        yield members
    finally:
        for m in members:
            m.agent.stop()
        for m in members:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(m.task, 10)
        await asyncio.to_thread(pg_link.close)
        await asyncio.to_thread(bus_link.close)


async def watch(members: list[Member], seconds: float) -> list[tuple[str, Status, dict[str, float]]]:
    """Every fleet verdict the agents hold during `seconds` (polled every 20 ms)."""
    seen: list[tuple[str, Status, dict[str, float]]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in members:
            r = m.fleet()
            if r is not None:
                seen.append((m.name, r.status, m.samples()))
        await asyncio.sleep(0.02)
    return seen


def pages(pd: FakePagerDuty, agent: str, action: str) -> list[dict[str, object]]:
    key = f"mamori:{agent}:fleet_primary_down:fleet:db"
    return [e for e in pd.events if e.get("dedup_key") == key and e["event_action"] == action]


async def retained_status(port: int, agent: str) -> bytes:
    async with aiomqtt.Client("127.0.0.1", port, username="agent", password="fleet-pw") as c:
        await c.subscribe(f"mamori/lab/{agent}/status", qos=1)
        async with asyncio.timeout(2):
            async for m in c.messages:
                return m.payload if isinstance(m.payload, bytes) else b""
    raise AssertionError("no retained status")


@pytest.mark.asyncio(loop_scope="session")
async def test_three_agents_confirm_only_what_a_quorum_sees(
    pg_pair: PgLab, broker: Mosquitto, tmp_path: Path
) -> None:
    async with fake_pagerduty() as pd, three_agents(pg_pair, broker, pd, tmp_path) as members:
        a1, a2, a3 = members
        assert a3.pg_link is not None and a3.bus_link is not None

        def everywhere(agents: int, votes: int) -> bool:
            return all(
                m.samples().get("mamori_fleet_agents") == agents
                and m.samples().get("mamori_fleet_primary_down_votes") == votes
                for m in members
            )

        # Healthy: three live agents, none sees the primary down.
        await wait_until("three agents reaching the primary", lambda: everywhere(3, 0), 15)
        assert all(m.status() == (Status.OK, Reason.OK) for m in members)

        # agent3 alone cannot reach the primary (its path is partitioned): one vote, no confirmation.
        await asyncio.to_thread(a3.pg_link.cut)
        await wait_until("agent3's vote", lambda: everywhere(3, 1), 5 * INTERVAL)
        seen = await watch(members, 2 * WINDOW)
        assert seen and all(status == Status.OK for _, status, _ in seen), seen
        assert all(
            s["mamori_fleet_primary_down_confirmed"] == 0 and s["mamori_fleet_quorum"] == 2
            for _, _, s in seen
        )
        assert pd.events == []
        await asyncio.to_thread(a3.pg_link.restore)
        await wait_until("agent3 reaching the primary again", lambda: everywhere(3, 0), 5 * INTERVAL)

        # The primary really down: every agent sees it, confirmed within three intervals.
        await pg_pair.stop_primary()
        took = await wait_until(
            "the confirmation on every agent",
            lambda: all(m.status() == (Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED) for m in members),
            3 * INTERVAL,
        )
        assert took <= 3 * INTERVAL  # (measured here: ~0.4 s)
        await wait_until("every vote", lambda: everywhere(3, 3), 3 * INTERVAL)  # (2 of 3 confirm already)
        r = a1.fleet()
        assert r is not None and r.status == Status.CRITICAL
        assert r.message.startswith("primary of cluster db down, confirmed: 3 of 3 live agents see it down")
        # ...and the agents' own alert rule pages on it, through the engine, once per agent.
        await wait_until(
            "a page from every agent", lambda: all(pages(pd, m.name, "trigger") for m in members), 5
        )
        event = pages(pd, "agent1", "trigger")[0]
        assert "fleet:db on agent1: primary_down_confirmed" in str(event["payload"])

        # agent3's connection dies uncleanly: its last will takes it out of the quorum at once
        # (well before its retained view would age out), and two votes of two still confirm.
        await asyncio.to_thread(a3.bus_link.cut)
        await asyncio.to_thread(a3.bus_link.reset)
        left = await wait_until(
            "agent3 leaving the quorum",
            lambda: all(m.samples().get("mamori_fleet_agents") == 2 for m in (a1, a2)),
            WINDOW,
        )
        # Aging out would take a full window after agent3's last run (>= 1 s here); the will, ~0 s.
        assert left < INTERVAL, left
        assert await retained_status(broker.port, "agent3") == b"offline"
        assert all(m.status() == (Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED) for m in (a1, a2))
        # Back on the bus: online again, its views republished, counted again.
        await asyncio.to_thread(a3.bus_link.restore)
        await wait_until("agent3 back in the quorum", lambda: everywhere(3, 3), 5)
        assert await retained_status(broker.port, "agent3") == b"online"

        # The primary back: not confirmed any more, and the pages resolve.
        await pg_pair.start_primary()
        await wait_until("the all-clear", lambda: everywhere(3, 0), 10)
        await wait_until("the pages resolved", lambda: all(pages(pd, m.name, "resolve") for m in members), 5)
        assert pd.rejected == []
        assert all(len(pages(pd, m.name, "trigger")) == 1 for m in members), pd.events
