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
from agent.fleetview import OwnViews, View, Witness, views_of
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


def witness(cluster: str, name: str, state: str, zone: str = "") -> tuple[Sample, ...]:
    """A `mamori_pg_primary_witness` StateSet as the postgres and http/lb checks emit it."""
    return tuple(
        Sample(
            "mamori_pg_primary_witness",
            float(s == state),
            (("cluster", cluster), ("witness", name), ("zone", zone), ("state", s)),
        )
        for s in ("reachable", "down", "unknown")
    )


def pg_result(
    reason: str,
    started_at: float,
    *,
    cluster: str = "db",
    check: str = "db",
    witnesses: tuple[Sample, ...] = (),
) -> CheckResult:
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
            *witnesses,
        ),
        reason=Reason.PRIMARY_DOWN if down else Reason.OK,
    )


def app_result(state: str, started_at: float, *, check: str = "web", zone: str = "") -> CheckResult:
    """An http check with a `db_witness`: the app's own view of the database."""
    return CheckResult(
        check,
        "http",
        "https://app/health",
        Status.OK,
        started_at,
        0.01,
        witness("db", f"app:{check}", state, zone),
    )


STATE = {"reachable": "primary_reachable", "down": "primary_down_standby_ready", "unknown": "primary_unknown"}


def view(
    agent: str,
    down: bool | str,
    timestamp: float,
    interval: float = 1.0,
    *,
    zone: str = "",
    extra: tuple[tuple[str, str, str], ...] = (),
) -> bytes:
    """The payload of `agent`'s view: its own witness (True/False or a state) in `zone`, and
    `extra` witnesses (name, state, zone) — a standby or an app it reads."""
    state = down if isinstance(down, str) else ("down" if down else "reachable")
    samples = tuple(s for name, st, z in extra for s in witness("db", name, st, z))
    (v,) = views_of(pg_result(STATE[state], timestamp, witnesses=samples), agent, interval, zone)
    payload: bytes = v.payload("lab")
    return payload


def old_view(agent: str, down: bool, timestamp: float, interval: float = 1.0) -> bytes:
    """A view as an agent from before the witnesses published it."""
    reason = "primary_down_standby_ready" if down else "primary_reachable"
    data = {"agent": agent, "site": "lab", "cluster": "db", "check": "db", "timestamp": timestamp}
    data.update(interval=interval, primary_down=down, reason=reason, nodes={"primary": not down})
    return json.dumps(data).encode()


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


def judged(f: Fleet, now: float) -> tuple[Status, Reason, dict[tuple[str, str], float], str]:
    """(status, reason, samples by (name, state/verdict label), message) of the verdict at `now`."""
    (r,) = results(f, now)
    samples = {}
    for s in r.samples:
        labels = dict(s.labels)
        samples[(s.name, labels.get("state", labels.get("verdict", "")))] = s.value
    return r.status, r.reason, samples, r.message


def verdict_of(f: Fleet, now: float) -> str:
    _, _, samples, _ = judged(f, now)
    (v,) = [label for (name, label), value in samples.items() if name == "mamori_fleet_verdict" and value]
    return v


def own_views(zone: str = "") -> OwnViews:
    return OwnViews("a1", "lab", "mamori", 1.0, zone=zone)


def test_a_view_is_what_the_postgres_check_saw() -> None:
    (v,) = views_of(pg_result("primary_down_standby_not_ready", T0), "a1", 2.0, "ad1")
    # Without a witness sample of its own (an older postgres check), the agent's witness comes
    # from its verdict, in the agent's zone.
    assert v == View(
        "a1",
        "db",
        "db",
        T0,
        2.0,
        True,
        "primary_down_standby_not_ready",
        (("primary", False), ("standby", True)),
        "ad1",
        (Witness("agent:a1", "down", "ad1"),),
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
        "zone": "ad1",
        "witnesses": {"agent:a1": {"state": "down", "zone": "ad1"}},
    }
    assert View.parse("a1", "db", v.payload("lab")) == v
    # The check's own witness samples win (a zone-less one takes the agent's zone); a standby's
    # receiver is a witness of its own; a StateSet with no state at 1 is unknown.
    samples = (
        *witness("db", "agent:a1", "unknown"),
        *witness("db", "standby:pg2", "down", "ad2"),
        Sample(
            "mamori_pg_primary_witness",
            0.0,
            (("cluster", "db"), ("witness", "app:x"), ("zone", ""), ("state", "down")),
        ),
    )
    (v,) = views_of(pg_result("primary_unknown", T0, witnesses=samples), "a1", 2.0, "ad1")
    assert (v.primary_down, v.own_state()) == (False, "unknown")
    assert v.witnesses == (
        Witness("agent:a1", "unknown", "ad1"),
        Witness("app:x", "unknown", ""),
        Witness("standby:pg2", "down", "ad2"),
    )
    # Only results naming a cluster make views; the fleet's own results never do.
    single = CheckResult(
        "one", "postgres", "x", Status.OK, T0, 0.0, (Sample("mamori_pg_up", 1.0, (("node", "n"),)),)
    )
    assert views_of(single, "a1", 1.0) == []
    own = CheckResult(
        "fleet:db",
        "fleet",
        "x",
        Status.CRITICAL,
        T0,
        0.0,
        witness("db", "agent:a1", "down"),
        reason=Reason.PRIMARY_DOWN_CONFIRMED,
    )
    assert views_of(own, "a1", 1.0) == []
    own_view = own_views()
    assert own_view.observe([own]) is False and own_view.clusters() == []


def test_a_view_from_an_older_agent_counts_as_its_own_witness() -> None:
    for down, state in ((True, "down"), (False, "reachable")):
        v = View.parse("old", "db", old_view("old", down, T0))
        assert (v.witnesses, v.zone) == (None, "")
        assert v.counted() == (Witness("agent:old", state, ""),) and v.own_state() == state
    data = json.loads(old_view("old", False, T0))
    data["reason"] = "primary_unknown"
    assert View.parse("old", "db", json.dumps(data).encode()).counted() == (Witness("agent:old", "unknown"),)
    # A newer agent's witness in a state we do not know is unknown, not an error.
    data["witnesses"] = {"agent:old": {"state": "sideways", "zone": "ad1"}}
    assert View.parse("old", "db", json.dumps(data).encode()).counted() == (
        Witness("agent:old", "unknown", "ad1"),
    )


def site(f: Fleet, now: float, *views: tuple[str, bytes]) -> None:
    for agent, payload in views:
        f.receive(f"mamori/lab/{agent}/status", b"online")
        f.receive(f"mamori/lab/{agent}/fleet/pg/{'db'}", payload)


def test_a_site_split_is_alive_then_inconclusive_never_confirmed() -> None:
    """Zone ad1: the primary and agent a1, which reaches it. Zone ad2: the standby (its receiver
    lost the primary), a2 and a3 (their paths to it are cut). Then a1 goes away."""
    f = fleet()
    standby = (("standby:pg2", "down", "ad2"),)
    site(
        f,
        T0,
        ("a1", view("a1", False, T0, zone="ad1")),
        ("a2", view("a2", True, T0, zone="ad2", extra=standby)),
        ("a3", view("a3", True, T0, zone="ad2", extra=standby)),
    )
    status, reason, samples, message = judged(f, T0 + 0.5)
    assert (status, reason, verdict_of(f, T0 + 0.5)) == (Status.OK, Reason.OK, "alive")
    assert message == (
        "primary of cluster db alive: reachable from agent:a1 (ad1); witnesses: agent:a1 reachable (ad1),"
        " agent:a2 down (ad2), agent:a3 down (ad2), standby:pg2 down (ad2)"
    )
    assert (
        samples[("mamori_fleet_witnesses", "down")] == 3
        and samples[("mamori_fleet_primary_down_votes", "")] == 3
    )
    # a1's last will: it saw the primary alive 2 s ago and is gone — evidence of a partition.
    f.receive("mamori/lab/a1/status", b"offline")
    status, reason, samples, message = judged(f, T0 + 2)
    assert (status, reason) == (Status.CRITICAL, Reason.PRIMARY_DOWN_INCONCLUSIVE)
    assert verdict_of(f, T0 + 2) == "inconclusive"
    assert message == (
        "primary of cluster db down, inconclusive: down only from zone ad2; a1 saw it alive 2.0 s ago"
        " and is offline; witnesses: agent:a2 down (ad2), agent:a3 down (ad2), standby:pg2 down (ad2)"
    )
    assert samples == {
        ("mamori_fleet_agents", ""): 2,
        ("mamori_fleet_primary_down_votes", ""): 3,
        ("mamori_fleet_quorum", ""): 2,
        ("mamori_fleet_primary_down_confirmed", ""): 0,
        ("mamori_fleet_primary_down_zones", ""): 1,
        ("mamori_fleet_lost_witnesses", ""): 1,
        ("mamori_fleet_witnesses", "reachable"): 0,
        ("mamori_fleet_witnesses", "down"): 3,
        ("mamori_fleet_witnesses", "unknown"): 0,
        ("mamori_fleet_verdict", "alive"): 0,
        ("mamori_fleet_verdict", "confirmed"): 0,
        ("mamori_fleet_verdict", "inconclusive"): 1,
        ("mamori_fleet_verdict", "none"): 0,
    }
    # Past lost_window a1 is no longer evidence, but one zone still never confirms.
    for agent in ("a2", "a3"):
        f.receive(f"mamori/lab/{agent}/fleet/pg/db", view(agent, True, T0 + 40, zone="ad2", extra=standby))
    f.forget(T0 + 40.5)
    _, reason, samples, message = judged(f, T0 + 40.5)
    assert reason == Reason.PRIMARY_DOWN_INCONCLUSIVE and samples[("mamori_fleet_lost_witnesses", "")] == 0
    assert "inconclusive: down only from zone ad2; witnesses:" in message
    # A silent agent (no will yet, its view aged out) is lost too.
    g = fleet()
    site(g, T0, ("a1", view("a1", False, T0, zone="ad1")), ("a2", view("a2", True, T0, zone="ad2")))
    site(g, T0, ("a3", view("a3", True, T0 + 5, zone="ad1")), ("a2", view("a2", True, T0 + 5, zone="ad2")))
    _, reason, _, message = judged(g, T0 + 5)
    assert reason == Reason.PRIMARY_DOWN_INCONCLUSIVE
    assert "a1 saw it alive 5.0 s ago and is silent (its last view is 5.0 s old)" in message


def test_a_real_death_is_confirmed_from_two_zones() -> None:
    f = fleet()
    site(
        f,
        T0,
        ("a1", view("a1", True, T0, zone="ad1")),
        ("a2", view("a2", True, T0, zone="ad2", extra=(("standby:pg2", "down", "ad2"),))),
    )
    status, reason, samples, message = judged(f, T0 + 0.5)
    assert (status, reason, verdict_of(f, T0 + 0.5)) == (
        Status.CRITICAL,
        Reason.PRIMARY_DOWN_CONFIRMED,
        "confirmed",
    )
    assert message == (
        "primary of cluster db down, confirmed: 3 witnesses see it down in 2 zones (ad1, ad2);"
        " witnesses: agent:a1 down (ad1), agent:a2 down (ad2), standby:pg2 down (ad2)"
    )
    assert samples[("mamori_fleet_primary_down_confirmed", "")] == 1
    assert samples[("mamori_fleet_primary_down_zones", "")] == 2
    # An agent that goes away within lost_window of seeing the primary alive is lost, even if it
    # said down last (a whole zone may have gone with the primary): a person decides.
    f.receive("mamori/lab/a1/status", b"offline")
    assert verdict_of(f, T0 + 1) == "inconclusive"


@pytest.mark.parametrize(
    ("cfg", "views", "verdict", "why"),
    [
        # A stall: every agent times out within stall_grace (unknown), the standby still streams
        # with a stale message: no witness says anything — no verdict either way.
        (
            {},
            [("a1", "unknown", "ad1", ()), ("a2", "unknown", "ad2", (("standby:pg2", "unknown", "ad2"),))],
            "none",
            "no witness says reachable or down",
        ),
        # The app still reaches the database: its witness vetoes every down vote.
        (
            {},
            [("a1", "down", "ad1", (("app:web", "reachable", "ad1"),)), ("a2", "down", "ad2", ())],
            "alive",
            "reachable from app:web (ad1)",
        ),
        # The same app witness reported by two agents counts once, its strongest report.
        (
            {},
            [
                ("a1", "down", "ad1", (("app:web", "down", "ad1"),)),
                ("a2", "down", "ad1", (("app:web", "unknown", "ad1"),)),
            ],
            "inconclusive",
            "down only from zone ad1",
        ),
        ({}, [("a1", "down", "ad1", ()), ("a2", "unknown", "ad2", ())], "inconclusive", "1 of 2 votes"),
        # No zones anywhere: inconclusive unless the site says it has none (min_zones: 0).
        ({}, [("a1", "down", "", ()), ("a2", "down", "", ())], "inconclusive", "down from no zone"),
        (
            {"min_zones": 0},
            [("a1", "down", "", ()), ("a2", "down", "", ())],
            "confirmed",
            "confirmed: 2 witnesses",
        ),
        (
            {"min_zones": 3},
            [("a1", "down", "ad1", ()), ("a2", "down", "ad2", ())],
            "inconclusive",
            "down from 2 zones (ad1, ad2), 3 needed",
        ),
        # An old `quorum:` still loads and adds its requirement on the live agents' own votes.
        (
            {"quorum": "all"},
            [("a1", "down", "ad1", ()), ("a2", "down", "ad2", ()), ("a3", "unknown", "ad2", ())],
            "inconclusive",
            "2 of 3 live agents see it down, 3 needed (quorum)",
        ),
        (
            {"quorum": "majority"},
            [("a1", "down", "ad1", ()), ("a2", "down", "ad2", ()), ("a3", "unknown", "ad2", ())],
            "confirmed",
            "confirmed",
        ),
        ({}, [], "none", "no witness (no live agent reports on it)"),
    ],
)
def test_the_verdict(
    cfg: dict[str, object],
    views: list[tuple[str, str, str, tuple[tuple[str, str, str], ...]]],
    verdict: str,
    why: str,
) -> None:
    f = fleet(**cfg)
    site(
        f,
        T0,
        *((agent, view(agent, state, T0, zone=zone, extra=extra)) for agent, state, zone, extra in views),
    )
    status, reason, _, message = judged(f, T0 + 0.5)
    assert verdict_of(f, T0 + 0.5) == verdict, message
    assert why in message
    expected = {
        "alive": (Status.OK, Reason.OK),
        "none": (Status.OK, Reason.OK),
        "confirmed": (Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED),
        "inconclusive": (Status.CRITICAL, Reason.PRIMARY_DOWN_INCONCLUSIVE),
    }
    assert (status, reason) == expected[verdict]


def test_old_and_new_views_judge_together() -> None:
    f = fleet(min_zones=0)
    site(f, T0, ("old", old_view("old", True, T0)), ("new", view("new", True, T0, zone="ad1")))
    assert verdict_of(f, T0 + 0.5) == "confirmed"
    site(f, T0, ("old", old_view("old", False, T0 + 0.2)))
    assert verdict_of(f, T0 + 0.5) == "alive"


def test_live_means_heard_from_within_the_window_and_not_offline() -> None:
    f = fleet(min_zones=0, lost_window=0.5)
    for agent in ("a1", "a2", "a3"):
        f.receive(f"mamori/lab/{agent}/fleet/pg/db", view(agent, True, T0))
    assert f.verdict(T0 + 1).confirmed and len(f.verdict(T0 + 1).live) == 3
    # a3's last will: it no longer counts, although its view is still fresh.
    f.receive("mamori/lab/a3/status", b"offline")
    v = f.verdict(T0 + 1)
    assert (v.live, [w.name for w in v.down], v.needed, v.confirmed) == (
        ("a1", "a2"),
        ["agent:a1", "agent:a2"],
        2,
        True,
    )
    # a2 falls silent: after 3 of its intervals it is not live either, and a1 alone confirms nothing.
    f.receive("mamori/lab/a1/fleet/pg/db", view("a1", True, T0 + 3))
    v = f.verdict(T0 + 3.5)
    assert (v.live, v.verdict) == (("a1",), "inconclusive")
    # a3 back online with a fresh view: counted again.
    f.receive("mamori/lab/a3/status", b"online")
    f.receive("mamori/lab/a3/fleet/pg/db", view("a3", True, T0 + 3.2))
    assert f.verdict(T0 + 3.5).live == ("a1", "a3") and f.verdict(T0 + 3.5).confirmed
    # An older view arriving late (a replay) does not replace a newer one.
    f.receive("mamori/lab/a3/fleet/pg/db", view("a3", False, T0 + 1))
    assert [w.name for w in f.verdict(T0 + 3.5).down] == ["agent:a1", "agent:a3"]
    # Cleared retained views/statuses are forgotten; garbage is ignored (and logged once).
    f.receive("mamori/lab/a3/fleet/pg/db", b"")
    f.receive("mamori/lab/a9/fleet/pg/db", b"{not json")
    f.receive(
        "mamori/lab/a9/fleet/pg/db",
        json.dumps({"timestamp": T0, "interval": 0, "primary_down": True}).encode(),
    )
    f.receive(
        "mamori/lab/a9/fleet/pg/db",
        json.dumps({"timestamp": T0, "interval": 1, "primary_down": True, "witnesses": 3}).encode(),
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


def test_an_apps_witness_joins_the_agents_view() -> None:
    """Witness results of any check update the view (timestamp: the newest result's); results
    that name no cluster change nothing; a check that stops speaking of a cluster leaves it."""
    f = own_views(zone="ad1")
    assert f.observe([pg_result("primary_reachable", T0)])
    assert f.observe([app_result("down", T0 + 0.3)])
    ((_, payload, v),) = f.unsent()
    assert (v.timestamp, v.check, v.reason, v.zone) == (T0 + 0.3, "db", "primary_reachable", "ad1")
    assert v.witnesses == (Witness("agent:a1", "reachable", "ad1"), Witness("app:web", "down", ""))
    assert json.loads(payload)["witnesses"]["app:web"] == {"state": "down", "zone": ""}
    f.sent(v)
    host = CheckResult("host", "host", "h", Status.OK, T0 + 0.4, 0.0, (Sample("host_load1", 0.1, ()),))
    assert f.observe([host]) is False and f.unsent() == []
    # The postgres check goes on; the app check's witness stays while its check is not stale.
    assert f.observe([pg_result("primary_down_standby_ready", T0 + 1)])
    assert [w.state for w in f.unsent()[0][2].witnesses or ()] == ["down", "down"]
    # The app check no longer has a db_witness (a reload): its witness leaves the view.
    assert f.observe([CheckResult("web", "http", "https://app/health", Status.OK, T0 + 1.3, 0.0)])
    assert [w.name for w in f.unsent()[0][2].witnesses or ()] == ["agent:a1"]
    # An agent without a postgres check of the cluster (an app host) still publishes its app's
    # witness: no own witness, so never counted as an agent that saw the primary alive.
    g = own_views()
    assert g.observe([app_result("reachable", T0)])
    ((_, _, only),) = g.unsent()
    assert (only.primary_down, only.reason, only.own_state(), only.check) == (False, "", "unknown", "web")
    # A check that stopped: its part goes stale against the newer runs and then is forgotten.
    h = own_views()
    h.observe([app_result("down", T0), pg_result("primary_reachable", T0 + 0.1)])
    for i in range(2, 12):
        h.observe([pg_result("primary_reachable", T0 + i)])
    assert [w.name for w in h.unsent()[0][2].witnesses or ()] == ["agent:a1"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{type: fleet, cluster: db, host: x, quorum: most}",
            "checks[0].quorum: invalid quorum 'most': expected majority, all or a number of agents",
        ),
        (
            "{type: fleet, cluster: db, host: x, min_zones: -1}",
            "checks[0].min_zones: Input should be greater than or equal to 0",
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
        for agent, zone in (("a1", "ad1"), ("a2", "ad2")):
            check.fleet.receive(f"mamori/lab/{agent}/fleet/pg/db", view(agent, True, time.time(), zone=zone))
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


ZONES = {"agent1": "ad1", "agent2": "ad2", "agent3": "ad2"}
LOST_WINDOW = 1.0  # production's 30 s, time-scaled for these intervals


def agent_yaml(
    name: str, lab: PgLab, primary_port: int, broker_port: int, pd: FakePagerDuty, directory: Path
) -> str:
    return f"""
agent:
  name: {name}
  listen: "127.0.0.1:{free_port()}"
  labels: {{site: lab, zone: {ZONES[name]}}}
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
    min_votes: 2
    min_zones: 2
    lost_window: {LOST_WINDOW}s
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
      group_wait: 0s
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
async def test_three_agents_confirm_only_what_two_zones_see(
    pg_pair: PgLab, broker: Mosquitto, tmp_path: Path
) -> None:
    """agent1 in zone ad1, agent2 and agent3 in ad2 (`agent.labels.zone`)."""
    async with fake_pagerduty() as pd, three_agents(pg_pair, broker, pd, tmp_path) as members:
        a1, a2, a3 = members
        assert a3.pg_link is not None and a3.bus_link is not None

        def everywhere(agents: int, votes: int, at_least: bool = False) -> bool:
            return all(
                m.samples().get("mamori_fleet_agents") == agents
                and (
                    m.samples().get("mamori_fleet_primary_down_votes", -1) >= votes
                    if at_least
                    else m.samples().get("mamori_fleet_primary_down_votes") == votes
                )
                for m in members
            )

        def reachable(m: Member) -> float:
            r = m.fleet()
            found = [s.value for s in r.samples if dict(s.labels).get("state") == "reachable"] if r else []
            return found[0] if found else -1.0

        # Healthy: three live agents, none sees the primary down.
        await wait_until("three agents reaching the primary", lambda: everywhere(3, 0), 15)
        assert all(m.status() == (Status.OK, Reason.OK) for m in members)
        seen_alive = reachable(a1)  # every agent's own witness (and, with them, the standby's)
        assert seen_alive >= 3

        # agent3 alone cannot reach the primary (its path is partitioned): the others still
        # reach it, so the verdict stays alive, never a page.
        await asyncio.to_thread(a3.pg_link.cut)
        await wait_until(
            "agent3 not reaching it",
            lambda: all(reachable(m) == seen_alive - 1 for m in members),
            5 * INTERVAL,
        )
        seen = await watch(members, 2 * WINDOW)
        assert seen and all(status == Status.OK for _, status, _ in seen), seen
        assert all(s["mamori_fleet_primary_down_confirmed"] == 0 for _, _, s in seen)
        assert pd.events == [], pd.events
        await asyncio.to_thread(a3.pg_link.restore)
        await wait_until(
            "agent3 reaching the primary again",
            lambda: everywhere(3, 0) and all(reachable(m) == seen_alive for m in members),
            5 * INTERVAL,
        )

        # The primary really down: every agent sees it, from two zones, confirmed within three intervals.
        await pg_pair.stop_primary()
        stopped = time.monotonic()
        took = await wait_until(
            "the confirmation on every agent",
            lambda: all(m.status() == (Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED) for m in members),
            3 * INTERVAL,
        )
        assert took <= 3 * INTERVAL  # (measured here: ~0.4 s)
        await wait_until("every vote", lambda: everywhere(3, 3, at_least=True), 3 * INTERVAL)
        r = a1.fleet()
        assert r is not None and r.status == Status.CRITICAL
        assert r.message.startswith("primary of cluster db down, confirmed: "), r.message
        assert (
            " in 2 zones (ad1, ad2); witnesses: agent:agent1 down (ad1), agent:agent2 down (ad2)" in r.message
        )
        # ...and the agents' own alert rule pages on it (group_wait 0s), once per agent.
        await wait_until(
            "a page from every agent", lambda: all(pages(pd, m.name, "trigger") for m in members), 5
        )
        event = pages(pd, "agent1", "trigger")[0]
        assert "fleet:db on agent1: primary_down_confirmed" in str(event["payload"])

        # agent3's connection dies uncleanly: its last will takes it out at once (well before its
        # retained view would age out). It saw the primary alive more than lost_window ago, so it
        # is not lost, and agent1 (ad1) and agent2 (ad2) still confirm.
        await asyncio.sleep(max(0.0, stopped + LOST_WINDOW + 0.2 - time.monotonic()))
        await asyncio.to_thread(a3.bus_link.cut)
        await asyncio.to_thread(a3.bus_link.reset)
        left = await wait_until(
            "agent3 leaving",
            lambda: all(m.samples().get("mamori_fleet_agents") == 2 for m in (a1, a2)),
            WINDOW,
        )
        # Aging out would take a full window after agent3's last run (>= 1 s here); the will, ~0 s.
        assert left < INTERVAL, left
        assert await retained_status(broker.port, "agent3") == b"offline"
        assert all(m.status() == (Status.CRITICAL, Reason.PRIMARY_DOWN_CONFIRMED) for m in (a1, a2))
        # Back on the bus: online again, its views republished, counted again.
        await asyncio.to_thread(a3.bus_link.restore)
        await wait_until("agent3 back", lambda: everywhere(3, 3, at_least=True), 5)
        assert await retained_status(broker.port, "agent3") == b"online"

        # The primary back: alive, and the pages resolve.
        await pg_pair.start_primary()
        await wait_until("the all-clear", lambda: everywhere(3, 0), 10)
        await wait_until("the pages resolved", lambda: all(pages(pd, m.name, "resolve") for m in members), 5)
        assert pd.rejected == []
        assert all(len(pages(pd, m.name, "trigger")) == 1 for m in members), pd.events


@pytest.mark.asyncio(loop_scope="session")
async def test_a_site_split_on_a_real_broker_is_inconclusive(broker: Mosquitto) -> None:
    """The site split of issue 15 on a real Mosquitto: agent1 (zone ad1, with the primary) sees it
    alive; agent2 and agent3 (ad2) and the standby's receiver (ad2) see it down. Every view is
    published retained by a real client with the exporter's last will; then agent1's connection
    dies uncleanly and the broker publishes its will: inconclusive (lost, one zone), never
    confirmed."""
    base = "mamori/split"
    link = LinkProxy(broker.port)
    standby = (("standby:pg2", "down", "ad2"),)

    def client(agent: str, port: int) -> aiomqtt.Client:
        will = aiomqtt.Will(f"{base}/{agent}/status", payload=b"offline", qos=1, retain=True)
        return aiomqtt.Client(
            "127.0.0.1", port, username="agent", password="fleet-pw", will=will, keepalive=60
        )

    async def publish(c: aiomqtt.Client, agent: str, payload: bytes) -> None:
        await c.publish(f"{base}/{agent}/status", b"online", qos=1, retain=True)
        await c.publish(
            f"{base}/{agent}/fleet/pg/db",
            payload.replace(b'"site":"lab"', b'"site":"split"'),
            qos=1,
            retain=True,
        )

    cfg = check_config(
        port=broker.port, username="agent", password="fleet-pw", site="split", agent="judge", timeout=2.0
    )
    check = FleetCheck(cfg)
    try:
        async with client("agent2", broker.port) as c2, client("agent3", broker.port) as c3:
            c1 = client("agent1", link.port)
            await c1.__aenter__()
            now = time.time()
            await publish(c1, "agent1", view("agent1", False, now, 60.0, zone="ad1"))
            await publish(c2, "agent2", view("agent2", True, now, 60.0, zone="ad2", extra=standby))
            await publish(c3, "agent3", view("agent3", True, now, 60.0, zone="ad2", extra=standby))
            r = await execute(check)
            assert (r.status, r.reason) == (Status.OK, Reason.OK), r
            assert r.message.startswith("primary of cluster db alive: reachable from agent:agent1 (ad1)"), (
                r.message
            )
            # agent1's connection dies uncleanly: the broker publishes its last will.
            await asyncio.to_thread(link.cut)
            await asyncio.to_thread(link.reset)
            with contextlib.suppress(Exception):
                await c1.__aexit__(None, None, None)

            async def judged_inconclusive() -> CheckResult:
                while True:
                    r = await execute(check)
                    if r.reason != Reason.OK:
                        return r
                    await asyncio.sleep(0.05)

            async with asyncio.timeout(5):
                r = await judged_inconclusive()
            assert (r.status, r.reason) == (Status.CRITICAL, Reason.PRIMARY_DOWN_INCONCLUSIVE), r
            assert r.message.startswith(
                "primary of cluster db down, inconclusive: down only from zone ad2; agent1 saw it alive"
            ), r.message
            witnesses = "agent:agent2 down (ad2), agent:agent3 down (ad2), standby:pg2 down (ad2)"
            assert f"ago and is offline; witnesses: {witnesses}" in r.message
            samples = {(s.name, dict(s.labels).get("verdict", "")): s.value for s in r.samples}
            assert samples[("mamori_fleet_lost_witnesses", "")] == 1
            assert samples[("mamori_fleet_verdict", "inconclusive")] == 1
            for c, agent in ((c2, "agent2"), (c3, "agent3")):  # clear the retained messages
                await c.publish(f"{base}/{agent}/status", b"", qos=1, retain=True)
                await c.publish(f"{base}/{agent}/fleet/pg/db", b"", qos=1, retain=True)
            await c2.publish(f"{base}/agent1/status", b"", qos=1, retain=True)
            await c2.publish(f"{base}/agent1/fleet/pg/db", b"", qos=1, retain=True)
    finally:
        await check.aclose()
        await asyncio.to_thread(link.close)
