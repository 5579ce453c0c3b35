"""Docker: the read-only engine client, discovery and the docker check, against the strict fake
engine of tests/fakes/docker_engine.py — only for what the real engine of tests/docker/ cannot be
made to do here (docs/lab.md, "Docker": errors, garbled answers, races, exact restart counts,
networks with addresses)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

import checks.docker
from agent import config as agent_config
from agent.errors import ConfigError
from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks import REGISTRY
from checks.base import CheckOutcome
from checks.docker import DockerCheck, DockerConfig
from checks.docker_api import (
    Backend,
    DiscoveryConfig,
    DockerClient,
    DockerError,
    container_name,
    discover,
    to_backend,
)
from tests.fakes.docker_engine import FakeDocker, fake_docker

PORT = "mamori.probe.port"
PATH = "mamori.probe.path"
SERVICE = "mamori.service"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[FakeDocker]:
    async with fake_docker(tmp_path) as fake:
        yield fake
    # Whatever a test did, the client sent nothing but GETs of API v1.43 container endpoints.
    assert {method for method, _ in fake.requests} <= {"GET"}
    assert all(target.startswith("/v1.43/containers/") for _, target in fake.requests)


@pytest.fixture
async def client(engine: FakeDocker) -> AsyncIterator[DockerClient]:
    c = DockerClient(engine.socket, timeout=2)
    yield c
    await c.aclose()


@pytest.fixture
def docker_registered() -> Iterator[None]:
    """Make sure the docker type is registered (as in checks/__init__.py) for this test, and leave
    the registry as it was."""
    before = REGISTRY.get("docker")
    REGISTRY["docker"] = "checks.docker:DockerCheck"
    try:
        yield
    finally:
        if before is None:
            REGISTRY.pop("docker", None)
        else:
            REGISTRY["docker"] = before


def filters_sent(target: str) -> dict[str, Any] | None:
    query = parse_qs(urlsplit(target).query)
    return json.loads(query["filters"][0]) if "filters" in query else None


async def raw_request(socket: Path, method: str, target: str) -> tuple[int, Any]:
    """One hand-written HTTP/1.1 request, to test the fake itself with what DockerClient never sends."""
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body) if body else None


# --- the fake engine is strict -------------------------------------------------------------------


async def test_fake_rejects_what_the_engine_rejects(engine: FakeDocker) -> None:
    engine.add("web-1", {PORT: "80"}, "172.17.0.2")
    sock = engine.socket
    assert await raw_request(sock, "POST", "/v1.43/containers/json") == (
        405,
        {"message": "method POST not allowed"},
    )
    assert await raw_request(sock, "DELETE", f"/v1.43/containers/{engine.id_of('web-1')}/json") == (
        405,
        {"message": "method DELETE not allowed"},
    )
    assert await raw_request(sock, "GET", "/v1.12/containers/json") == (
        400,
        {
            "message": "client version 1.12 is too old. Minimum supported API version is 1.24, "
            "please upgrade your client to a newer version"
        },
    )
    assert await raw_request(sock, "GET", "/v1.44/containers/json") == (
        400,
        {"message": "client version 1.44 is too new. Maximum supported API version is 1.43"},
    )
    assert await raw_request(sock, "GET", "/v1.43/info") == (404, {"message": "page not found"})
    assert await raw_request(sock, "GET", "/v1.43/containers/json?filters=%7Bnot") == (
        400,
        {"message": "invalid filter"},
    )
    assert await raw_request(sock, "GET", '/v1.43/containers/json?filters={"colour":["x"]}') == (
        400,
        {"message": "invalid filter 'colour'"},
    )
    status, _ = await raw_request(sock, "GET", '/v1.43/containers/json?filters={"status":["running"]}')
    assert status == 501  # accepted by the engine, not implemented here: never silently ignored
    assert await raw_request(sock, "GET", "/v1.43/containers/nope/json") == (
        404,
        {"message": "No such container: nope"},
    )
    # An unversioned path is served, as by the engine; the legacy filter form is understood.
    status, listed = await raw_request(
        sock, "GET", '/containers/json?filters={"label":{"mamori.probe.port":true}}'
    )
    assert (status, [c["Names"] for c in listed]) == (200, [["/web-1"]])
    engine.requests.clear()  # the POST and DELETE above were this test's, not a client's


async def test_fake_lists_like_the_engine(engine: FakeDocker) -> None:
    for i, state in enumerate(("running", "paused", "restarting", "exited", "created", "dead")):
        engine.add(f"c{i}-{state}", {PORT: "80"}, f"10.0.0.{i + 2}", state=state)
    engine.add("no-labels", {}, "10.0.0.99")
    status, listed = await raw_request(engine.socket, "GET", "/v1.43/containers/json")
    # Without all: the engine's "running" set (paused and restarting too), newest first.
    assert (status, [c["Names"][0] for c in listed]) == (
        200,
        ["/no-labels", "/c2-restarting", "/c1-paused", "/c0-running"],
    )
    _, listed = await raw_request(engine.socket, "GET", "/v1.43/containers/json?all=1")
    assert len(listed) == 7
    states = {c["Names"][0]: (c["State"], c["Status"]) for c in listed}
    assert states["/c3-exited"] == ("exited", "Exited (0) 3 minutes ago")
    assert states["/c1-paused"] == ("paused", "Up 5 minutes (Paused)")
    running = next(c for c in listed if c["Names"] == ["/c0-running"])
    assert running["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == "10.0.0.2"
    assert len(running["Id"]) == 64 and int(running["Id"], 16) >= 0
    exited = next(c for c in listed if c["Names"] == ["/c3-exited"])
    assert exited["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == ""


# --- the client ----------------------------------------------------------------------------------


async def test_permission_denied_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The tests may run as root, which no file mode stops: make the connect itself fail as the
    # kernel does for a socket the agent's user may not open.
    loop = asyncio.get_running_loop()

    async def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(loop, "create_unix_connection", denied)
    client = DockerClient("/var/run/docker.sock")
    with pytest.raises(DockerError) as info:
        await client.list_containers({})
    await client.aclose()
    assert str(info.value) == (
        "cannot reach the Docker engine at /var/run/docker.sock: permission denied — mount the socket "
        "read-only and add the agent's user to the docker group"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any socket regardless of its mode")
async def test_permission_denied_for_real(engine: FakeDocker) -> None:
    engine.socket.chmod(0)
    client = DockerClient(engine.socket)
    with pytest.raises(DockerError, match="permission denied — mount the socket read-only"):
        await client.list_containers({})
    await client.aclose()


async def test_engine_errors_become_one_line_docker_errors(engine: FakeDocker, client: DockerClient) -> None:
    engine.fail_next(500, "Internal error:\nsomething broke")
    with pytest.raises(DockerError) as info:
        await client.list_containers({})
    assert (str(info.value), info.value.status) == (
        f"the Docker engine at {engine.socket} answered 500 to GET /v1.43/containers/json: "
        "Internal error: something broke",
        500,
    )
    engine.garble_next(b"<html>bad gateway</html>", status=502)
    with pytest.raises(
        DockerError,
        match=re.escape("answered 502 to GET /v1.43/containers/json: <html>bad gateway</html>") + "$",
    ):
        await client.list_containers({})
    engine.garble_next(b'[{"Id": "abc"')
    with pytest.raises(DockerError) as info:
        await client.list_containers({})
    assert str(info.value) == (
        f"invalid JSON from the Docker engine at {engine.socket} (GET /v1.43/containers/json): "
        "Expecting ',' delimiter"
    )
    engine.garble_next(b'{"Id": "abc"}')
    with pytest.raises(DockerError, match=r"unexpected answer .*: expected a list$"):
        await client.list_containers({})
    engine.garble_next(b"[1, 2]")
    with pytest.raises(DockerError, match=r"expected a list$"):
        await client.list_containers({})
    engine.garble_next(b"[]")
    with pytest.raises(DockerError, match=r"expected an object$"):
        await client.inspect("x")


async def test_connection_closed_without_an_answer(engine: FakeDocker) -> None:
    client = DockerClient(engine.socket)
    # aiohttp retries a GET once when the connection closes before an answer (e.g. a kept-alive
    # connection the engine had just closed): one close is survived, a second is an error.
    engine.close_next()
    assert await client.list_containers({}) == []
    assert len(engine.requests) == 2
    engine.close_next()
    engine.close_next()
    with pytest.raises(DockerError) as info:
        await client.list_containers({})
    await client.aclose()
    assert str(info.value) == (
        f"the Docker engine at {engine.socket} closed the connection without answering "
        "(GET /v1.43/containers/json)"
    )


# --- discovery -----------------------------------------------------------------------------------


def discovery(**values: Any) -> DiscoveryConfig:
    return DiscoveryConfig.model_validate(values)


async def test_discover_picks_the_network(engine: FakeDocker, client: DockerClient) -> None:
    engine.add("multi", {PORT: "80"}, networks={"zeta_net": "10.9.0.2", "alpha_net": "10.1.0.2"})
    engine.add("other", {PORT: "80"}, networks={"zeta_net": "10.9.0.3"})
    backends, notes = await discover(client, discovery(socket=engine.socket))
    # By default: the first network in name order, whatever order the engine sends them in.
    assert [(b.name, b.host) for b in backends] == [("multi", "10.1.0.2"), ("other", "10.9.0.3")]
    assert notes == []
    backends, notes = await discover(client, discovery(socket=engine.socket, network="zeta_net"))
    assert [(b.name, b.host) for b in backends] == [("multi", "10.9.0.2"), ("other", "10.9.0.3")]
    backends, notes = await discover(client, discovery(socket=engine.socket, network="alpha_net"))
    assert [(b.name, b.host) for b in backends] == [("multi", "10.1.0.2")]
    assert notes == ["other skipped: not attached to network alpha_net (attached: zeta_net)"]


def test_to_backend_tolerates_whatever_the_engine_sends() -> None:
    cfg = DiscoveryConfig()
    assert to_backend({}, cfg) == (None, " skipped: unknown")
    assert to_backend({"State": "running", "Names": "x", "Id": 7, "Labels": []}, cfg) == (
        None,
        " skipped: no mamori.probe.port label",
    )
    entry = {
        "Id": "ab" * 32,
        "Names": ["/app/db", "/db"],  # a legacy link alias first
        "State": "running",
        "Labels": {PORT: "5432", SERVICE: 3},
        "HostConfig": None,
        "NetworkSettings": {
            "Networks": {"a": None, "b": {"IPAddress": 5}, "c": {"GlobalIPv6Address": "fd00::2"}}
        },
    }
    assert to_backend(entry, cfg) == (Backend("db", "fd00::2", 5432, None, "ab" * 6, None), "")
    assert to_backend({**entry, "HostConfig": {"NetworkMode": "container:abc"}}, cfg) == (
        None,
        "db skipped: network mode container:abc gives it no address of its own",
    )
    assert to_backend({**entry, "NetworkSettings": {"Networks": {}}}, cfg) == (
        None,
        "db skipped: no IP address on any network",
    )
    assert to_backend(entry, DiscoveryConfig(network="b")) == (None, "db skipped: no IP address on network b")


def test_discovery_config_validation() -> None:
    cfg = DiscoveryConfig()
    assert (cfg.socket, cfg.labels, cfg.port_label, cfg.path_label, cfg.service_label) == (
        Path("/var/run/docker.sock"),
        {PORT: None},
        PORT,
        PATH,
        SERVICE,
    )
    assert (cfg.service, cfg.network, cfg.host_address) == (None, None, "127.0.0.1")
    assert cfg.selector() == {PORT: None}
    assert DiscoveryConfig(service="web").selector() == {PORT: None, SERVICE: "web"}
    assert DiscoveryConfig(labels={SERVICE: "web"}, service="web").selector() == {SERVICE: "web"}
    bad: list[tuple[dict[str, Any], str]] = [
        ({"colour": "red"}, "Extra inputs are not permitted"),
        ({"socket": "docker.sock"}, "'docker.sock' is not an absolute path"),
        ({"socket": "/" + "s" * 120}, "a unix socket path must be at most 107 bytes"),
        ({"labels": {"a=b": None}}, "invalid label key 'a=b': must be non-empty, without '=' or spaces"),
        (
            {"labels": {SERVICE: "db"}, "service": "web"},
            "service: 'web' contradicts labels['mamori.service']",
        ),
        ({"port_label": ""}, "String should match pattern"),
    ]
    for values, message in bad:
        with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(")):
            DiscoveryConfig.model_validate(values)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.service = "x"  # type: ignore[misc]


# --- the docker check ----------------------------------------------------------------------------


_made: list[DockerCheck] = []


@pytest.fixture(autouse=True)
async def close_checks() -> AsyncIterator[None]:
    """Close every check `make` built in the test (aclose is safe twice, so tests may too)."""
    yield
    while _made:
        await _made.pop().aclose()


def make(engine: FakeDocker, **values: Any) -> DockerCheck:
    base = {"name": "containers", "interval": 30, "timeout": 2, "socket": str(engine.socket)}
    check = DockerCheck(DockerConfig.model_validate({**base, **values}))
    _made.append(check)
    return check


def sample(outcome: CheckOutcome | CheckResult, name: str, **labels: str) -> float:
    matches = [s.value for s in outcome.samples if s.name == name and dict(s.labels) == labels]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0]


class Clock:
    """checks.docker's clock, moved by hand: tells the next run from a retry."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(checks.docker, "_clock", c)
    return c


async def run_at(check: DockerCheck, clock: Clock, advance: float = 30.0) -> CheckOutcome:
    clock.now += advance
    return await check.run()


async def test_restarts_between_runs(engine: FakeDocker, clock: Clock) -> None:
    engine.add("web-1", {PORT: "80"}, "10.0.0.2", restart_count=10)
    engine.add("web-2", {PORT: "80"}, "10.0.0.3", restart_count=0)
    check = make(engine, restart_warning=2, restart_critical=4)
    first = await run_at(check, clock)
    assert (first.status, first.message) == (Status.OK, "2 containers: 2 running")  # no baseline yet
    engine.update("web-1", restart_count=11)
    assert (await run_at(check, clock)).status == Status.OK  # 1 < restart_warning
    engine.update("web-1", restart_count=13)
    outcome = await run_at(check, clock)
    assert (outcome.status, outcome.reason, outcome.message) == (
        Status.WARNING,
        Reason.CONTAINER_RESTARTING,
        "web-1: restarted 2 times since the last run; 2 containers: 2 running",
    )
    engine.update("web-1", restart_count=17)
    engine.update("web-2", restart_count=2)
    outcome = await run_at(check, clock)
    assert (outcome.status, outcome.reason, outcome.message) == (
        Status.CRITICAL,
        Reason.CONTAINER_RESTARTING,
        "web-1: restarted 4 times since the last run; web-2: restarted 2 times since the last run; "
        "2 containers: 2 running",
    )
    # A retry a moment later in the same run keeps the previous run as the baseline...
    retry = await run_at(check, clock, advance=1.0)
    assert (retry.status, retry.message) == (outcome.status, outcome.message)
    # ...and the next run compares with this one.
    assert (await run_at(check, clock)).status == Status.OK
    # A re-created container has a new id and its own count: no restart is invented.
    engine.remove("web-1")
    engine.add("web-1", {PORT: "80"}, "10.0.0.2", restart_count=0)
    assert (await run_at(check, clock)).status == Status.OK
    # A count that went down was reset: count from zero.
    engine.update("web-2", restart_count=1)
    engine.update("web-2", restart_count=0)
    assert (await run_at(check, clock)).status == Status.OK
    engine.update("web-1", restart_count=1)
    assert (await run_at(check, clock)).status == Status.OK
    engine.update("web-1", restart_count=3)
    assert (await run_at(check, clock)).status == Status.WARNING


async def test_a_sigkill_exit_the_engine_did_not_flag_as_oom_says_what_it_may_be(engine: FakeDocker) -> None:
    """On cgroup v2 the engine flags OOMKilled only if the kernel's OOM event beats the exit to it
    (seen for real under load: exit 137, OOMKilled false). The fake makes that race on demand."""
    engine.add("worker", {PORT: "80"}, "10.0.0.3", state="exited", exit_code=137, oom_killed=False)
    outcome = await make(engine).run()
    assert (outcome.status, outcome.reason) == (Status.CRITICAL, Reason.CONTAINER_EXITED)
    assert outcome.message.startswith(
        "worker: exited with code 137 (SIGKILL: docker kill, or an OOM kill the engine did not flag)"
    ), outcome.message


async def test_oom_killed_and_exited(engine: FakeDocker) -> None:
    engine.add("web-1", {PORT: "80"}, "10.0.0.2")
    engine.add("worker", {PORT: "80"}, "10.0.0.3", state="exited", exit_code=137, oom_killed=True)
    engine.add("cron", {PORT: "80"}, "10.0.0.4", state="exited", exit_code=2)
    outcome = await make(engine).run()
    # An OOM kill explains the exit: it names the result; both containers are listed.
    assert (outcome.status, outcome.reason) == (Status.CRITICAL, Reason.CONTAINER_OOM_KILLED)
    assert outcome.message == (
        "cron: exited with code 2; worker: OOM-killed, exited with code 137; "
        "3 containers: 1 running, 2 exited"
    )
    assert sample(outcome, "mamori_container_oom_killed", container="worker") == 1
    assert sample(outcome, "mamori_container_exit_code", container="worker") == 137
    # Each state alone is made for real in tests/docker/test_container_states.py; "dead" (a
    # removal that failed half-way) cannot be made there.
    engine.remove("worker")
    engine.update("cron", state="dead", exit_code=0)
    outcome = await make(engine).run()
    assert (outcome.reason, outcome.message) == (
        Reason.CONTAINER_EXITED,
        "cron: dead with code 0; 2 containers: 1 running, 1 dead",
    )


async def test_worst_wins_and_precedence(engine: FakeDocker, clock: Clock) -> None:
    engine.add("a", {PORT: "80"}, "10.0.0.2", health="unhealthy", restart_count=0)
    engine.add("b", {PORT: "80"}, "10.0.0.3", restart_count=0)
    check = make(engine, expect_running=3)
    first = await run_at(check, clock)
    # Two CRITICAL problems: unhealthy is more specific than missing.
    assert (first.status, first.reason) == (Status.CRITICAL, Reason.CONTAINER_UNHEALTHY)
    assert first.message == "a: unhealthy; 2 running, expected at least 3; 2 containers: 2 running"
    engine.update("a", health="healthy")
    engine.update("b", restart_count=1)
    outcome = await run_at(check, clock)
    # A WARNING restart loses to the CRITICAL missing container, but is still listed.
    assert (outcome.status, outcome.reason) == (Status.CRITICAL, Reason.CONTAINER_MISSING)
    assert outcome.message == (
        "b: restarted once since the last run; 2 running, expected at least 3; "
        "2 containers: 2 running (1 healthy)"
    )
    engine.update("b", restart_count=2, state="restarting", exit_code=3, oom_killed=True)
    outcome = await run_at(check, clock)
    assert (outcome.status, outcome.reason) == (Status.CRITICAL, Reason.CONTAINER_OOM_KILLED)
    assert outcome.message.startswith(
        "b: OOM-killed, restarting (restart count 2, last exit code 3), restarted once since the last run; "
    )


async def test_container_removed_between_list_and_inspect(engine: FakeDocker) -> None:
    engine.add("web-1", {PORT: "80"}, "10.0.0.2")
    check = make(engine, expect_running=1)
    await check.run()
    engine.requests.clear()
    engine.garble_next(json.dumps([engine.containers["web-1"].list_entry()]).encode())
    engine.remove("web-1")
    outcome = await check.run()
    assert (outcome.status, outcome.reason, outcome.message) == (
        Status.CRITICAL,
        Reason.CONTAINER_MISSING,
        "0 running, expected at least 1; no containers match the labels mamori.probe.port; "
        "1 removed while being inspected",
    )
    assert len(engine.requests) == 2


@pytest.mark.parametrize("fail_request", [0, 1])
async def test_engine_errors_are_unknown(engine: FakeDocker, fail_request: int) -> None:
    engine.add("web-1", {PORT: "80"}, "10.0.0.2")
    check = make(engine)
    if fail_request == 1:  # the list succeeds, the inspect fails
        engine.garble_next(json.dumps([engine.containers["web-1"].list_entry()]).encode())
    engine.fail_next(500, "Internal Server Error")
    result = await execute(check)
    path = (
        "/v1.43/containers/json" if fail_request == 0 else f"/v1.43/containers/{engine.id_of('web-1')}/json"
    )
    assert (result.status, result.reason, result.message) == (
        Status.UNKNOWN,
        Reason.UNAVAILABLE,
        f"the Docker engine at {engine.socket} answered 500 to GET {path}: Internal Server Error",
    )
    engine.garble_next(b"\x00\xffnot json")
    result = await execute(check)
    assert (result.status, result.reason) == (Status.UNKNOWN, Reason.UNAVAILABLE)
    assert result.message == (
        f"invalid JSON from the Docker engine at {engine.socket} (GET /v1.43/containers/json): "
        "Expecting value"
    )
    engine.garble_next(b"[" * 100_000 + b"]" * 100_000)
    result = await execute(check)
    assert (result.reason, result.message) == (
        Reason.UNAVAILABLE,
        f"invalid JSON from the Docker engine at {engine.socket} (GET /v1.43/containers/json): "
        "nested too deeply",
    )
    assert (await execute(check)).status == Status.OK  # each fault was for one request only
    await check.aclose()


async def test_hung_engine_is_unknown_within_the_timeout(engine: FakeDocker) -> None:
    # A hung list is the real engine frozen (tests/docker/test_engine_faults.py); a hang that
    # starts exactly between the list and an inspect can only be made here.
    engine.add("web-1", {PORT: "80"}, "10.0.0.2")
    check = make(engine, timeout=0.4)
    engine.garble_next(json.dumps([engine.containers["web-1"].list_entry()]).encode())
    engine.hang()
    result = await execute(check)
    await check.aclose()
    assert (result.status, result.reason) == (Status.UNKNOWN, Reason.UNAVAILABLE)
    assert result.message == f"no answer from the Docker engine at {engine.socket} within 0.4s"
    assert 0.4 <= result.duration < 0.85  # the check's own timeout, not the harness's grace (0.5s more)


async def test_garbled_inspect_never_raises(engine: FakeDocker) -> None:
    # A list entry without an Id is not inspected; odd inspect objects read as defaults.
    entry = {"Id": "f" * 64, "Names": ["/odd"], "State": "running"}
    weird: list[tuple[Any, Status, str]] = [
        ({}, Status.OK, "1 container: 1 unknown"),
        (
            {"Id": "f" * 64, "Name": 7, "State": "running", "RestartCount": "3"},
            Status.OK,
            "1 container: 1 unknown",
        ),
        (
            {
                "Id": "f" * 64,
                "State": {"Status": 5, "Health": "healthy", "OOMKilled": "yes", "ExitCode": 1.5},
            },
            Status.OK,
            "1 container: 1 unknown",
        ),
        (
            {"Id": "f" * 64, "Name": "/odd", "State": {"Status": "exited", "ExitCode": True, "Health": None}},
            Status.OK,
            "1 container: 1 exited; odd exited with code 0",
        ),
        (
            {"Id": "f" * 64, "Name": "/odd", "State": {"Status": "exited", "ExitCode": 3, "OOMKilled": True}},
            Status.CRITICAL,
            "odd: OOM-killed, exited with code 3; 1 container: 1 exited",
        ),
    ]
    for data, status, message in weird:
        check = make(engine)
        engine.garble_next(json.dumps([entry, {"Names": ["/no-id"]}]).encode())
        engine.garble_next(json.dumps(data).encode())
        outcome = await check.run()
        await check.aclose()
        assert (outcome.status, outcome.message) == (status, message), data
        assert (
            sample(
                outcome, "mamori_container_restarts_total", container=container_name({**data, "Id": "f" * 64})
            )
            == 0
        )


async def test_health_none_is_no_healthcheck(engine: FakeDocker) -> None:
    # API 1.44+ reports Health.Status "none" for a container without a healthcheck.
    entry = engine.add("web-1", {PORT: "80"}, "10.0.0.2")
    data = entry.inspect()
    data["State"]["Health"] = {"Status": "none", "FailingStreak": 0, "Log": []}
    engine.garble_next(json.dumps([entry.list_entry()]).encode())
    engine.garble_next(json.dumps(data).encode())
    outcome = await make(engine).run()
    assert (outcome.status, sample(outcome, "mamori_container_healthy", container="web-1")) == (Status.OK, -1)


def test_docker_config_defaults_and_validation() -> None:
    cfg = DockerConfig(name="c", interval=30, timeout=5)
    assert (cfg.include_stopped, cfg.restart_warning, cfg.restart_critical, cfg.expect_running) == (
        True,
        1,
        3,
        None,
    )
    assert (cfg.socket, cfg.labels, cfg.service) == (Path("/var/run/docker.sock"), {PORT: None}, None)
    with pytest.raises(
        ValidationError, match=r"restart_warning \(5\) must not exceed restart_critical \(3, its default\)"
    ):
        DockerConfig(name="c", interval=30, timeout=5, restart_warning=5)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DockerConfig.model_validate({"name": "c", "interval": 30, "timeout": 5, "port_label": "x"})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        DockerConfig(name="c", interval=30, timeout=5, expect_running=0)


def test_loaded_from_a_config_file(docker_registered: None) -> None:
    cfg = agent_config.parse(
        """
agent: {interval: 30s, timeout: 5s}
checks:
  - name: web-containers
    type: docker
    socket: /run/docker.sock
    service: web
    expect_running: 2
    restart_critical: 5
""",
        "docker.yml",
        env={},
    )
    (loaded,) = cfg.checks
    assert isinstance(loaded, DockerConfig)
    assert (
        loaded.socket,
        loaded.service,
        loaded.expect_running,
        loaded.restart_critical,
        loaded.timeout,
    ) == (
        Path("/run/docker.sock"),
        "web",
        2,
        5,
        5.0,
    )
    with pytest.raises(ConfigError) as info:
        agent_config.parse(
            """
checks:
  - name: c
    type: docker
    restart_warning: 4
    restart_critical: 2
    labels: {"a=b": null}
    stopped: true
""",
            "bad.yml",
            env={},
        )
    assert [(i.line, i.path, i.message) for i in info.value.issues] == [
        (7, "checks[0].labels", "invalid label key 'a=b': must be non-empty, without '=' or spaces"),
        (8, "checks[0].stopped", "unknown key"),
    ]
    with pytest.raises(ConfigError) as info:
        agent_config.parse(
            "checks:\n  - {name: c, type: docker, restart_warning: 4, restart_critical: 2}\n",
            "bad.yml",
            env={},
        )
    assert [(i.line, i.path, i.message) for i in info.value.issues] == [
        (2, "checks[0].restart_warning", "restart_warning (4) must not exceed restart_critical (2)"),
    ]
