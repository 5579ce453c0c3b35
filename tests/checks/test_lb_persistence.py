"""The `lb` check's session persistence against real HAProxy (cookie SERVERID) and real app
servers that name themselves in `X-Instance` and in the health body's `instance`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import Reason, Status
from agent.runner import execute
from checks.lb import LbCheck, LbConfig
from lab.haproxy import COOKIE
from lab.web import WebLab, web_lab
from tests.checks.test_lb import lb_check

BY_HEADER = {"cookie": COOKIE, "backend_header": "X-Instance"}
BY_BODY = {"cookie": COOKIE, "backend_regex": r'"instance":\s*"([^"]+)"'}


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[WebLab]:
    async with web_lab(tmp_path, apps=3) as started:
        yield started


def pinned_to(message: str) -> str:
    m = re.search(r"session stayed on (app-\d)", message)
    assert m, message
    return m.group(1)


@pytest.mark.parametrize("persistence", [BY_HEADER, BY_BODY], ids=["header", "body-regex"])
async def test_cookie_persistence_on_is_ok(lab: WebLab, persistence: dict[str, Any]) -> None:
    check = lb_check(lab, persistence={**persistence, "requests": 4})
    first = await execute(check)
    assert (first.status, first.reason) == (Status.OK, Reason.OK), first.message
    pinned = pinned_to(first.message)
    assert "new session stayed on" in first.message and "(4 requests)" in first.message
    # The session is kept from run to run, as a browser keeps it.
    second = await execute(check)
    assert (second.status, second.reason) == (Status.OK, Reason.OK), second.message
    assert f"; session stayed on {pinned} (4 requests)" in second.message


async def test_persistence_off_is_a_missing_cookie(lab: WebLab) -> None:
    await lab.haproxy.set_persistence("off")
    result = await execute(lb_check(lab, persistence=BY_HEADER))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.LB_COOKIE_MISSING), result.message
    assert result.message.startswith("the load balancer set no SERVERID cookie: session persistence is off")
    assert result.message.endswith("3/3 backends healthy)")  # the group's own verdict follows


async def test_a_cookie_the_lb_ignores_is_a_moved_session(lab: WebLab) -> None:
    await lab.haproxy.set_persistence("ignored")  # SERVERID still set, every request balanced
    result = await execute(lb_check(lab, persistence=BY_HEADER))
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.LB_SESSION_MOVED), result.message
    assert re.match(
        r"request 1 carrying the SERVERID cookie of (app-\d) landed on (?!\1)app-\d, "
        r"while \1 is not known to be down; the load balancer set a new cookie",
        result.message,
    ), result.message


async def test_pinned_backend_going_down_is_redispatched(lab: WebLab) -> None:
    check = lb_check(lab, persistence=BY_HEADER, verdict="any")
    pinned = pinned_to((await execute(check)).message)
    await lab.app(pinned).down()
    await lab.wait_until_haproxy_sees({pinned: "DOWN"})
    result = await execute(check)
    # The backend is down (the group's verdict), and the session moved as HAProxy is meant to do.
    assert (result.status, result.reason) == (Status.WARNING, Reason.BACKEND_DOWN), result.message
    redispatched = rf"the session pinned to {pinned} was redispatched to (app-\d) \({pinned} is down\)"
    m = re.search(redispatched, result.message)
    assert m, result.message
    # The new backend's cookie is kept: the next run's session stays there.
    again = await execute(check)
    assert f"session stayed on {m.group(1)}" in again.message, again.message


async def test_an_answer_that_names_no_backend_is_unknown(lab: WebLab) -> None:
    result = await execute(lb_check(lab, persistence={"cookie": COOKIE, "backend_header": "X-Served-By"}))
    assert (result.status, result.reason) == (Status.UNKNOWN, Reason.LB_BACKEND_UNKNOWN), result.message
    assert "does not say which backend sent it: no X-Served-By header" in result.message


def test_persistence_config_errors() -> None:
    base = {"name": "w", "type": "lb", "url": "https://x/", "interval": 10, "timeout": 3}
    with pytest.raises(ValueError, match="exactly one of backend_header or backend_regex"):
        LbConfig.model_validate({**base, "persistence": {"cookie": "SERVERID"}})
    with pytest.raises(ValueError, match="exactly one of backend_header or backend_regex"):
        LbConfig.model_validate({**base, "persistence": {**BY_HEADER, "backend_regex": "x"}})
    with pytest.raises(ValueError, match="should match pattern"):
        LbConfig.model_validate({**base, "persistence": {"cookie": "a b", "backend_header": "X"}})
    LbCheck(LbConfig.model_validate({**base, "persistence": BY_BODY}))
