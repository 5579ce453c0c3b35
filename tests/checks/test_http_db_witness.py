"""`db_witness` on the `http` check: the application's health answer as a witness of a Postgres
cluster's primary (`mamori_pg_primary_witness`, issue 15), against the real local servers of
tests/servers.py. The `lb` side runs on the real web lab in tests/checks/test_lb.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from agent import config
from agent.catalog import CHECK_METRICS, WITNESS_STATES
from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.http.check import HttpCheck
from checks.http.config import HttpConfig
from lab.ports import free_port
from tests.servers import respond, serve_http, slow

WITNESS = {"cluster": "main"}


def witness(result: CheckResult) -> tuple[str, dict[str, str]]:
    """(the state at 1, the other labels), after checking the StateSet: every state once, one at 1."""
    samples = [s for s in result.samples if s.name == "mamori_pg_primary_witness"]
    spec = CHECK_METRICS["mamori_pg_primary_witness"]
    assert all(tuple(k for k, _ in s.labels) == spec.labels for s in samples), samples
    assert sorted(dict(s.labels)["state"] for s in samples) == sorted(WITNESS_STATES), samples
    assert sorted(s.value for s in samples) == [0.0, 0.0, 1.0], samples
    others = {k: v for k, v in samples[0].labels if k != "state"}
    assert all({k: v for k, v in s.labels if k != "state"} == others for s in samples)
    return next(dict(s.labels)["state"] for s in samples if s.value), others


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def health(status: int, payload: bytes, content_type: str = "application/json") -> Any:
    return respond(status, payload, {"Content-Type": content_type})


# Every answer of item 2's mapping: path -> (handler, the state it means).
ANSWERS: dict[str, tuple[Any, str]] = {
    "/up": (health(200, body({"status": "ok", "db": {"status": "up"}})), "reachable"),
    "/ok": (health(200, body({"db": {"status": "ok"}})), "reachable"),
    "/true": (health(200, body({"db": {"status": True}})), "reachable"),
    "/spring": (health(200, body({"status": "UP", "db": {"status": "UP"}})), "reachable"),
    "/down": (health(200, body({"db": {"status": "down"}})), "down"),
    "/error": (health(200, body({"db": {"status": "error"}})), "down"),
    "/false": (health(200, body({"db": {"status": False}})), "down"),
    # Health endpoints answer 503 when their database is down: what the body says still counts.
    "/503-down": (health(503, body({"status": "error", "db": {"status": "down"}})), "down"),
    "/503-up": (health(503, body({"status": "error", "db": {"status": "up"}})), "reachable"),
    "/degraded": (health(200, body({"db": {"status": "degraded"}})), "unknown"),
    "/one": (health(200, body({"db": {"status": 1}})), "unknown"),  # JSON 1 is not true
    "/null": (health(200, body({"db": {"status": None}})), "unknown"),
    "/object": (health(200, body({"db": {"status": {"primary": "up"}}})), "unknown"),
    "/missing": (health(200, body({"status": "ok", "db": {}})), "unknown"),
    "/no-db": (health(200, body({"status": "ok"})), "unknown"),
    "/list": (health(200, body(["up"])), "unknown"),
    "/html": (health(200, b"<!doctype html><h1>up</h1>", "text/html"), "unknown"),
    "/empty": (health(204, b""), "unknown"),
    "/500": (health(500, body({"error": "internal"})), "unknown"),
    "/404": (respond(404, b"not found\n"), "unknown"),
    "/nested": (health(200, b"[" * 200_000), "unknown"),  # not a bug: garbage
}


async def run(url: str, **overrides: Any) -> CheckResult:
    values = {"timeout": 2.0, "db_witness": WITNESS, **overrides}
    return await execute(HttpCheck.from_url(url, **values))


async def test_every_answer_maps_to_its_state() -> None:
    async with serve_http({path: handler for path, (handler, _) in ANSWERS.items()}) as srv:
        results = await asyncio.gather(*(run(srv.url(path)) for path in ANSWERS))
    seen = {path: witness(result)[0] for path, result in zip(ANSWERS, results, strict=True)}
    assert seen == {path: state for path, (_, state) in ANSWERS.items()}
    # Its name is the check's; a loopback URL is on this host, whose zone is not configured here.
    assert witness(results[0])[1] == {"cluster": "main", "witness": f"app:{results[0].check}", "zone": ""}


async def test_the_witness_never_changes_the_checks_own_verdict() -> None:
    """Evidence for the failover verdict, not a health rule: `json` conditions stay the way to fail
    the check on what the body says; the body is read and parsed once for both."""
    routes = {
        "/down": ANSWERS["/down"][0],
        "/503-down": ANSWERS["/503-down"][0],
        "/html": ANSWERS["/html"][0],
    }
    async with serve_http(routes) as srv:
        ok_but_down = await run(srv.url("/down"))
        failing = await run(srv.url("/down"), json=[{"path": "db.status", "equals": "up"}])
        status_503 = await run(srv.url("/503-down"))
        not_json = await run(srv.url("/html"), json=[{"path": "db", "exists": True}])
        requests = len(srv.requests)
    assert (ok_but_down.status, ok_but_down.reason) == (Status.OK, Reason.OK)
    assert witness(ok_but_down)[0] == "down"
    assert (failing.reason, failing.message) == (
        Reason.JSON_MISMATCH,
        'json db.status is "down", expected "up"',
    )
    assert witness(failing)[0] == "down"
    assert (status_503.reason, witness(status_503)[0]) == (Reason.STATUS_MISMATCH, "down")
    assert (not_json.reason, not_json.message) == (Reason.JSON_MISMATCH, "body is not JSON")
    assert witness(not_json)[0] == "unknown"
    assert requests == 4  # never a second request


async def test_no_answer_is_unknown() -> None:
    refused = await run(f"http://127.0.0.1:{free_port()}/")
    assert (refused.reason, witness(refused)[0]) == (Reason.REFUSED, "unknown")
    async with serve_http({"/": slow(2.0)}) as srv:
        timed_out = await run(srv.url("/"), timeout=0.1)
    assert (timed_out.reason, witness(timed_out)[0]) == (Reason.TIMEOUT, "unknown")


async def test_a_body_past_the_size_limit_is_not_read() -> None:
    # Valid JSON that says "down", then padding: cut at max_body_size, it would still parse.
    padded = body({"db": {"status": "down"}}) + b" " * 2000
    async with serve_http({"/": health(200, padded)}) as srv:
        result = await run(srv.url("/"), max_body_size=1024)
    assert (result.reason, witness(result)[0]) == (Reason.BODY_TOO_LARGE, "unknown")


async def test_path_and_values_are_configurable() -> None:
    routes = {
        "/a": health(200, body({"checks": [{"database": "connected"}]})),
        "/b": health(200, body({"checks": [{"database": "disconnected"}]})),
        "/c": health(200, body({"checks": [{"database": "up"}]})),  # not in this check's lists
    }
    custom = {**WITNESS, "path": "checks[0].database", "up": ["connected"], "down": ["disconnected"]}
    async with serve_http(routes) as srv:
        states = [witness(await run(srv.url(p), db_witness=custom))[0] for p in ("/a", "/b", "/c")]
    assert states == ["reachable", "down", "unknown"]


def _config(url: str = "http://app.example.test/health", **values: Any) -> HttpConfig:
    base = {"name": "app", "type": "http", "url": url, "interval": 10, "timeout": 5}
    return HttpConfig.model_validate({**base, **values})


@pytest.mark.parametrize(
    ("url", "db_witness", "agent_zone", "zone"),
    [
        ("http://app.example.test/health", WITNESS, "ad1", ""),  # may run anywhere
        ("http://127.0.0.1:3000/health", WITNESS, "ad1", "ad1"),  # runs on this host
        ("http://localhost:3000/health", WITNESS, "ad1", "ad1"),
        ("http://[::1]:3000/health", WITNESS, "", ""),  # no zone configured
        ("http://app.example.test/health", {**WITNESS, "zone": "ad2"}, "ad1", "ad2"),
        ("http://127.0.0.1:3000/health", {**WITNESS, "zone": "ad2"}, "ad1", "ad2"),
    ],
)
def test_the_witness_zone(url: str, db_witness: dict[str, str], agent_zone: str, zone: str) -> None:
    check = HttpCheck(_config(url, db_witness=db_witness, agent_zone=agent_zone))
    assert check.witness_zone == zone


def test_the_agents_zone_is_filled_in_from_its_labels() -> None:
    def load(labels: str) -> list[str]:
        doc = f"""
agent: {{labels: {{{labels}}}}}
checks:
  - {{name: app, type: http, url: "http://127.0.0.1/", db_witness: {{cluster: main}}}}
  - {{name: web, type: lb, url: "http://127.0.0.1/", db_witness: {{cluster: main}}}}
  - {{name: plain, type: http, url: "http://127.0.0.1/"}}
"""
        checks = config.parse(doc, "agent.yml", env={}).checks
        return [c.agent_zone for c in checks if isinstance(c, HttpConfig)]

    assert load("site: tokyo, zone: ad1") == ["ad1", "ad1", ""]
    assert load("site: tokyo") == ["", "", ""]


def test_defaults() -> None:
    cfg = _config(db_witness=WITNESS).db_witness
    assert cfg is not None
    assert (cfg.path, cfg.up, cfg.down, cfg.zone) == (
        "db.status",
        ("up", "ok", True),
        ("down", "error", False),
        None,
    )


@pytest.mark.parametrize(
    ("db_witness", "error"),
    [
        ({}, "cluster\n  Field required"),
        ({"cluster": "main db"}, "String should match pattern"),
        ({"cluster": "main", "path": "db..status"}, "invalid json path 'db..status'"),
        ({"cluster": "main", "up": []}, "at least 1 item"),
        (
            {"cluster": "main", "up": ["Up"], "down": ["up", "down"]},
            'a value cannot mean both up and down: "Up"',
        ),
        ({"cluster": "main", "zone": ""}, "String should match pattern"),
        ({"cluster": "main", "up": [None]}, "up.0"),
        ({"cluster": "main", "primary": "pg-ad1"}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(db_witness: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error.replace(".", r"\.").replace("(", r"\(")):
        _config(db_witness=db_witness)


def test_a_head_request_has_no_body_to_read() -> None:
    with pytest.raises(ValidationError, match="db_witness: a HEAD response has no body to read"):
        _config(method="HEAD", db_witness=WITNESS)
