"""The `lb` check against the real web lab: HAProxy in front of real app servers on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.lb import LbCheck, LbConfig
from lab.web import WebLab, web_lab

PUBLIC = "app.example.test"


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[WebLab]:
    async with web_lab(tmp_path, apps=3) as started:
        yield started


def lb_check(lab: WebLab, url: str | None = None, **overrides: Any) -> LbCheck:
    values: dict[str, Any] = {
        "name": "web",
        "type": "lb",
        "url": url or lab.url,
        "interval": 10,
        "timeout": 3,
        "tls": {"ca_file": str(lab.ca_file)},
        "backends": [{"name": a.name, "address": f"127.0.0.1:{a.port}"} for a in lab.apps],
        "backend_scheme": "https" if lab.backend_tls else "http",
        **overrides,
    }
    return LbCheck(LbConfig.model_validate(values))


def members(result: CheckResult) -> dict[str, tuple[float, str]]:
    """member -> (status, reason)"""
    return {
        dict(s.labels)["member"]: (s.value, dict(s.labels)["reason"])
        for s in result.samples
        if s.name == "mamori_member_status"
    }


def value(result: CheckResult, name: str, **labels: str) -> float:
    for s in result.samples:
        if s.name == name and dict(s.labels) == labels:
            return s.value
    raise KeyError((name, labels))


@pytest.fixture
def public_name_resolves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Make app.example.test resolve to the given loopback addresses (default 127.0.0.1)."""
    addresses = ["127.0.0.1"]
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == PUBLIC:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port or 0))) for a in addresses]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield addresses


async def test_all_healthy(lab: WebLab) -> None:
    result = await execute(lb_check(lab))
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
    assert members(result) == {n: (0.0, "ok") for n in ("lb", "app-1", "app-2", "app-3")}
    assert value(result, "mamori_group_members_healthy", role="backend") == 3
    assert value(result, "mamori_group_members", role="backend") == 3
    assert value(result, "probe_http_status_code") == 200  # the lb keeps blackbox_exporter's names
    assert value(result, "mamori_member_http_status_code", member="app-2", role="backend") == 200
    assert result.message.endswith("3/3 backends healthy")


@pytest.mark.parametrize(
    ("verdict", "status"),
    [("all", Status.CRITICAL), ({"quorum": 2}, Status.WARNING), ("any", Status.WARNING)],
)
async def test_one_backend_down_follows_the_policy(lab: WebLab, verdict: Any, status: Status) -> None:
    await lab.apps[1].down()
    await lab.wait_until_haproxy_sees({"app-2": "DOWN"})
    result = await execute(lb_check(lab, verdict=verdict))
    assert (result.status, result.reason) == (status, Reason.BACKEND_DOWN), result.message
    assert members(result)["app-2"] == (2.0, "refused")
    assert members(result)["lb"] == (0.0, "ok")
    assert value(result, "mamori_group_members_healthy", role="backend") == 2
    assert "app-2: connection refused" in result.message


async def test_every_backend_down_is_an_app_outage(lab: WebLab) -> None:
    for app in lab.apps:
        app.error(503)
    await lab.wait_until_haproxy_sees({a.name: "DOWN" for a in lab.apps})
    result = await execute(lb_check(lab))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.APP_OUTAGE), result.message
    assert members(result)["lb"] == (2.0, "status_mismatch")


async def test_broken_route_with_healthy_backends_is_the_lbs_fault(lab: WebLab) -> None:
    await lab.haproxy.break_route()
    result = await execute(lb_check(lab))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.LB_MISCONFIGURED), result.message
    assert {m: s for m, s in members(result).items() if m != "lb"} == {
        n: (0.0, "ok") for n in ("app-1", "app-2", "app-3")
    }


async def test_lb_still_routing_to_a_dead_backend(lab: WebLab) -> None:
    await lab.haproxy.slow_health_checks()
    await lab.apps[0].down()
    # HAProxy retries a refused backend before answering 503 (or our timeout comes first): the lb fails.
    check = lb_check(lab, timeout=1.5)
    reasons = set()
    for _ in range(6):  # round robin: within a few runs the lb sends our probe to app-1
        result = await execute(check)
        reasons.add(result.reason)
        if result.reason is Reason.LB_ROUTES_TO_DOWN_BACKEND:
            assert result.status is Status.CRITICAL
            assert "app-1: connection refused" in result.message
            break
    assert Reason.LB_ROUTES_TO_DOWN_BACKEND in reasons, reasons


async def test_slow_backend_is_a_latency_warning_on_that_member(lab: WebLab) -> None:
    lab.apps[2].slow(400)
    result = await execute(lb_check(lab, latency_warning="250ms", latency_critical="2s"))
    assert members(result)["app-3"] == (1.0, "latency")
    assert (result.status, result.reason) == (Status.WARNING, Reason.LATENCY), result.message


async def test_haproxy_stopped_is_refused(lab: WebLab) -> None:
    await lab.haproxy.stop()
    result = await execute(lb_check(lab))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.REFUSED), result.message
    assert result.message.startswith("load balancer: connection refused")
    await lab.haproxy.start()
    result = await execute(lb_check(lab))
    assert result.status is Status.OK, result.message


async def test_backends_by_ip_keep_the_public_name_for_tls(
    tmp_path: Path, public_name_resolves: list[str]
) -> None:
    async with web_lab(tmp_path, apps=2, backend_tls=True) as lab:
        url = lab.url.replace("127.0.0.1", PUBLIC)
        result = await execute(lb_check(lab, url=url))
        assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
        # The same backends without the public name: their certificate is for app.example.test only.
        result = await execute(lb_check(lab, url=lab.url))
        assert members(result)["app-1"] == (2.0, "tls_hostname"), result.message
        assert result.reason is Reason.APP_OUTAGE


async def test_every_address_of_the_name_is_probed(lab: WebLab, public_name_resolves: list[str]) -> None:
    public_name_resolves[:] = ["127.0.0.1", "127.0.0.2"]  # only 127.0.0.1 has the load balancer
    url = lab.url.replace("127.0.0.1", PUBLIC)
    result = await execute(lb_check(lab, url=url, backends=[]))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.LB_ADDRESS_DOWN), result.message
    assert members(result)["lb"] == (0.0, "ok")  # the name's first address answers
    assert members(result)["address-1"] == (0.0, "ok")
    assert members(result)["address-2"] == (2.0, "refused")
    assert "address-2 (127.0.0.2)" in result.message
    assert not any("127.0.0" in v for s in result.samples for _, v in s.labels)  # no IPs in labels


def test_config_errors() -> None:
    base = {"name": "w", "type": "lb", "url": "https://x/", "interval": 10, "timeout": 3}
    with pytest.raises(ValueError, match="backend names must be unique and not 'lb': a"):
        LbConfig.model_validate({**base, "backends": [{"name": "a", "address": "h:1"}] * 2})
    with pytest.raises(ValueError, match="invalid backend address 'h': expected HOST:PORT"):
        LbConfig.model_validate({**base, "backends": [{"name": "a", "address": "h"}]})
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        LbConfig.model_validate({**base, "verdict": {"quorum": 0}})


async def test_discovered_backends_follow_containers(lab: WebLab, tmp_path: Path) -> None:
    from tests.fakes.docker_engine import fake_docker

    async with fake_docker(tmp_path) as engine:
        labels = {"mamori.service": "web", "mamori.probe.path": "/api/health"}
        engine.add("web-1", {**labels, "mamori.probe.port": str(lab.apps[0].port)}, network="host")
        engine.add("web-2", {**labels, "mamori.probe.port": str(lab.apps[1].port)}, network="host")
        engine.add("other", {"mamori.probe.port": "1"}, network="host")  # another service
        check = lb_check(lab, backends=[], docker={"socket": str(engine.socket), "service": "web"})
        try:
            result = await execute(check)
            assert sorted(m for m in members(result) if m != "lb") == ["web-1", "web-2"], result.message
            assert result.status is Status.OK

            engine.add("web-3", {**labels, "mamori.probe.port": str(lab.apps[2].port)}, network="host")
            engine.remove("web-1")
            result = await execute(check)  # the next run, i.e. within one interval
            assert sorted(m for m in members(result) if m != "lb") == ["web-2", "web-3"]

            engine.fail_next(500, "engine is busy")
            result = await execute(check)
            assert result.status is Status.OK
            assert "discovery failed, using the last known backends" in result.message
            assert sorted(m for m in members(result) if m != "lb") == ["web-2", "web-3"]
        finally:
            await check.aclose()


async def test_discovery_that_never_worked_is_unknown(lab: WebLab, tmp_path: Path) -> None:
    check = lb_check(lab, backends=[], docker={"socket": str(tmp_path / "missing.sock")})
    result = await execute(check)
    await check.aclose()
    assert (result.status, result.reason) == (Status.UNKNOWN, Reason.UNAVAILABLE)
    assert result.message.startswith("cannot discover backends: cannot reach the Docker engine at")


def witnesses(result: CheckResult) -> dict[str, tuple[str, str]]:
    """witness -> (zone, the state at 1); every witness has all three states, one of them at 1."""
    out: dict[str, tuple[str, str]] = {}
    for s in result.samples:
        if s.name == "mamori_pg_primary_witness":
            labels = dict(s.labels)
            assert labels["cluster"] == "main"
            zone, state = out.get(labels["witness"], (labels["zone"], ""))
            assert zone == labels["zone"]
            out[labels["witness"]] = (zone, labels["state"] if s.value else state)
    counted = [dict(s.labels)["witness"] for s in result.samples if s.name == "mamori_pg_primary_witness"]
    assert all(counted.count(w) == 3 and state for w, (_, state) in out.items()), result.samples
    return out


async def test_db_witness_of_the_lb_answer_and_of_every_backend(lab: WebLab) -> None:
    backends = [
        {"name": "app-1", "address": f"127.0.0.1:{lab.apps[0].port}", "zone": "ad1"},
        {"name": "app-2", "address": f"127.0.0.1:{lab.apps[1].port}", "zone": "ad2"},
        {"name": "app-3", "address": f"127.0.0.1:{lab.apps[2].port}"},  # its zone is not known
    ]
    check = lb_check(lab, backends=backends, db_witness={"cluster": "main"}, agent_zone="ad1")
    result = await execute(check)
    assert result.status is Status.OK, result.message
    # The answer through the load balancer may come from any zone; no witness for `web/lb`.
    assert witnesses(result) == {
        "app:web": ("", "reachable"),
        "app:web/app-1": ("ad1", "reachable"),
        "app:web/app-2": ("ad2", "reachable"),
        "app:web/app-3": ("", "reachable"),
    }

    lab.apps[1].db_down()  # HAProxy's health check wants 200 only: app-2 stays in the pool
    result = await execute(check)
    assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message  # evidence, not health
    seen = witnesses(result)
    assert seen["app:web"][1] in ("reachable", "down")  # round robin: whichever app answered
    assert {w: v for w, v in seen.items() if w != "app:web"} == {
        "app:web/app-1": ("ad1", "reachable"),
        "app:web/app-2": ("ad2", "down"),
        "app:web/app-3": ("", "reachable"),
    }

    for app in lab.apps:
        app.db_down()
    await lab.apps[2].down()
    await lab.wait_until_haproxy_sees({"app-3": "DOWN"})
    result = await execute(check)
    assert witnesses(result) == {
        "app:web": ("", "down"),
        "app:web/app-1": ("ad1", "down"),
        "app:web/app-2": ("ad2", "down"),
        "app:web/app-3": ("", "unknown"),  # refused: no view
    }


async def test_db_witness_zones_of_discovered_backends(lab: WebLab, tmp_path: Path) -> None:
    """Containers of the local engine run on this host: the agent's zone, unless the check says."""
    from tests.fakes.docker_engine import fake_docker

    async with fake_docker(tmp_path) as engine:
        engine.add("web-1", {"mamori.probe.port": str(lab.apps[0].port)}, network="host")
        docker = {"socket": str(engine.socket)}
        checks = [
            lb_check(lab, backends=[], docker=docker, db_witness={"cluster": "main"}, agent_zone="ad3"),
            lb_check(lab, backends=[], docker=docker, db_witness={"cluster": "main", "zone": "ad1"}),
        ]
        try:
            results = [await execute(check) for check in checks]
        finally:
            for check in checks:
                await check.aclose()
    assert witnesses(results[0]) == {"app:web": ("", "reachable"), "app:web/web-1": ("ad3", "reachable")}
    assert witnesses(results[1]) == {"app:web": ("ad1", "reachable"), "app:web/web-1": ("ad1", "reachable")}
