"""The status page (`GET /`, agent/statuspage.py) and the history behind it (agent/history.py).

The page itself is tested in a real headless Chromium (lab/browser.py) against real targets: the
lab's checks render, a stopped HAProxy turns the lb and http rows red without reloading the page,
and a target answering markup in its reason phrase shows it as text: no element is injected, no
script runs. Screenshots are kept in the test's directory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent import config
from agent.history import HISTORY_LENGTH, History
from agent.metrics import MetricRegistry
from agent.model import CheckResult, Reason, Status
from agent.runtime import Agent
from agent.server import AgentServer
from exporters.prometheus import LatestResults
from lab.browser import Browser, Page, browser
from lab.ports import free_port
from lab.stack import lab_stack
from lab.wait import wait_until

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b class=injected>'


def result(check: str, status: Status, at: float, message: str = "") -> CheckResult:
    return CheckResult(
        check=check,
        check_type="tcp",
        target="127.0.0.1:1",
        status=status,
        started_at=at,
        duration=0.001,
        message=message,
    )


def test_history_keeps_the_last_results_and_the_last_change() -> None:
    history = History()
    assert history.to_json("a") == {"history": {"started_at": [], "status_code": []}, "last_change": None}
    history.add(result("a", Status.OK, 1.5))
    assert history.to_json("a") == {
        "history": {"started_at": [1], "status_code": [0]},  # whole seconds
        "last_change": {"at": 1.5, "from": None},
    }
    for i in range(2, 100):
        history.add(result("a", Status.CRITICAL if 80 <= i < 90 else Status.OK, float(i)))
    out = history.to_json("a")
    assert out["history"]["started_at"] == list(range(100 - HISTORY_LENGTH, 100))
    statuses = out["history"]["status_code"]
    assert statuses == [0] * (80 - (100 - HISTORY_LENGTH)) + [2] * 10 + [0] * 10
    assert out["last_change"] == {"at": 90.0, "from": "CRITICAL"}
    history.forget("a")
    history.forget("a")
    assert len(history) == 0


def test_a_history_snapshot_is_not_moved_by_later_results() -> None:
    """/api/v1/results renders in a worker thread from a snapshot taken on the loop: the results
    and their history as they were then, never a later result's history beside an older one."""
    history = History()
    for i in range(40):
        history.add(result("a", Status.OK, float(i)))
    history.add(result("b", Status.CRITICAL, 1.0))
    snap = history.snapshot()
    before = {name: snap.to_json(name) for name in ("a", "b")}
    for i in range(40, 45):
        history.add(result("a", Status.CRITICAL, float(i)))
    history.forget("b")
    history.add(result("c", Status.OK, 1.0))
    assert {name: snap.to_json(name) for name in ("a", "b")} == before
    assert snap.to_json("c")["last_change"] is None
    assert history.to_json("a")["last_change"] == {"at": 40.0, "from": "OK"}


async def served(latest: LatestResults) -> tuple[AgentServer, str]:
    srv = AgentServer(MetricRegistry(), latest, lambda: None)
    _, port = await srv.start("127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{port}"


async def test_the_page_is_self_contained_and_allows_only_its_own_script_and_style() -> None:
    srv, base = await served(LatestResults())
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{base}/") as response:
            body = await response.text()
            headers = response.headers
    finally:
        await srv.aclose()
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = dict(p.strip().split(" ", 1) for p in headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    (script,) = re.findall(r"<script>(.*?)</script>", body, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", body, re.S)
    for text, directive in ((script, "script-src"), (style, "style-src")):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"
    assert not re.search(r"(src|href)=\"?(https?:)?//", body)  # nothing from elsewhere
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script


async def test_results_api_gives_each_check_its_history_and_last_change() -> None:
    latest = LatestResults()
    for i, status in enumerate((Status.OK, Status.OK, Status.CRITICAL)):
        latest.put(result("a", status, float(i)))
    latest.put(result("b", Status.OK, 5.0))
    srv, base = await served(latest)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api/v1/results") as response:
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                results = {r["check"]: r for r in (await response.json())["results"]}
            async with session.get(f"{base}/api/v1/results?check=a") as response:
                one = await response.json()
            assert results["a"]["history"] == {"started_at": [0, 1, 2], "status_code": [0, 0, 2]}
            assert one["history"] == results["a"]["history"]
            assert results["a"]["last_change"] == {"at": 2.0, "from": "OK"} == one["last_change"]
            assert results["b"]["last_change"] == {"at": 5.0, "from": None}
            assert results["a"]["status"] == "CRITICAL"  # the result's own fields are unchanged
            latest.forget("a")
            latest.put(result("a", Status.OK, 9.0))  # configured again: a new history
            async with session.get(f"{base}/api/v1/results?check=a") as response:
                assert (await response.json())["history"] == {"started_at": [9], "status_code": [0]}
    finally:
        await srv.aclose()


# --- in a real browser ---


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: bash .ci/ensure-debs chromium (make debs does it)")
    async with browser(tmp_path / "chromium") as b:
        yield b


ROWS = (
    "Array.from(document.querySelectorAll('#rows tr[data-check]'), r => [r.dataset.check, r.dataset.status])"
)


async def rows(page: Page) -> dict[str, str]:
    return dict(await page.evaluate(ROWS))


async def test_the_page_shows_the_labs_checks_and_a_fault_turns_rows_red_in_place(
    chromium: Browser, tmp_path: Path
) -> None:
    async with lab_stack(
        tmp_path / "lab", prometheus=False, alertmanager=False, mqtt=False, postgres=False
    ) as stack:
        await stack.wait_results()
        page = await chromium.open(f"{stack.agent_url}/?refresh=1")
        expected = set(stack.expected_checks())

        async def all_rendered() -> bool:
            return set(await rows(page)) == expected

        await wait_until("the page to show every check", all_rendered, 15)
        await page.evaluate("window.__same_page = true")
        await page.screenshot(tmp_path / "healthy.png")
        assert set((await rows(page)).values()) <= {"OK", "WARNING"}, await rows(page)

        await stack.fault("lb-down")  # a real target stopped: HAProxy

        async def red() -> bool:
            shown = await rows(page)
            return shown["lb"] == "CRITICAL" and shown["http"] == "CRITICAL"

        # One check interval (1 s) plus the page's refresh (1 s) and the checks' timeout; the
        # wait's bound is generous for a loaded machine, what it proves is the in-place update.
        await wait_until("the lb and http rows to turn red", red, 20, interval=0.2)
        await page.screenshot(tmp_path / "lb-down.png")
        assert await page.evaluate("window.__same_page") is True  # not reloaded
        order = list(await rows(page))
        assert order[:2] == ["http", "lb"]  # failing checks first
        color = await page.evaluate(
            "getComputedStyle(document.querySelector('#rows tr[data-check=\"lb\"]')).backgroundColor"
        )
        red_channel, green, blue = (int(x) for x in re.findall(r"\d+", color)[:3])
        assert red_channel > green and red_channel > blue, color
        reason = await page.evaluate(
            "document.querySelector('#rows tr[data-check=\"lb\"]').cells[4].textContent"
        )
        assert reason in {r.value for r in Reason} - {"ok"}, reason  # refused, or a handshake cut


async def hostile_target() -> tuple[asyncio.Server, int]:
    """An HTTP server whose status line's reason phrase is markup and script."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 500 {HOSTILE}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_hostile_targets_markup_stays_text(chromium: Browser, tmp_path: Path) -> None:
    target, target_port = await hostile_target()
    port = free_port()
    cfg = config.parse(
        f"""
agent:
  name: test-agent
  listen: 127.0.0.1:{port}
  interval: 1s
  timeout: 1s
checks:
  - name: hostile
    type: http
    url: http://127.0.0.1:{target_port}/
    tags: [web]
""",
        "test.yml",
        env={},
    )
    agent = Agent(cfg, None)
    task = asyncio.create_task(agent.run())
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ran() -> bool:
                try:
                    async with session.get(f"{base}/api/v1/results?check=hostile") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until("the hostile check to run", ran, 15)
            async with session.get(f"{base}/api/v1/results?check=hostile") as response:
                message = json.loads(await response.text())["message"]
        assert "<script>" in message  # the agent passes the text on; the page must not run it
        page = await chromium.open(f"{base}/?refresh=1")

        async def rendered() -> bool:
            return "hostile" in await rows(page)

        await wait_until("the hostile row", rendered, 15)
        await page.screenshot(tmp_path / "hostile.png")
        shown = await page.evaluate(
            "document.querySelector('#rows tr[data-check=\"hostile\"]').cells[5].textContent"
        )
        assert shown == message
        injected = await page.evaluate(
            "[document.querySelectorAll('img, iframe, object, embed, .injected').length,"
            " document.scripts.length, typeof window.__pwned]"
        )
        assert injected == [0, 1, "undefined"]
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
        target.close()
        await target.wait_closed()


async def test_the_page_shows_100_rows_a_page_failing_first_and_filters_by_tag(
    chromium: Browser, tmp_path: Path
) -> None:
    latest = LatestResults()
    for i in range(250):
        status = Status.CRITICAL if i % 50 == 7 else Status.OK
        latest.put(result(f"c{i:03}", status, 1000.0 + i).with_(tags=("even",) if i % 2 == 0 else ("odd",)))
    srv, base = await served(latest)
    try:
        page = await chromium.open(f"{base}/")

        async def rendered() -> bool:
            return len(await rows(page)) == 100

        await wait_until("the first page", rendered, 15)
        first = list((await rows(page)).items())
        assert [s for _, s in first[:5]] == ["CRITICAL"] * 5 and first[5] == ("c000", "OK")
        assert await page.evaluate("document.getElementById('pageinfo').textContent") == "rows 1–100 of 250"
        await page.evaluate("document.getElementById('next').click()")
        assert next(iter(await rows(page))) == "c097"  # the 96th OK one (c007 and c057 failed)
        await page.evaluate(
            "const t = document.getElementById('f-tag'); t.value = 'odd';"
            " t.dispatchEvent(new Event('change'))"
        )
        shown = await rows(page)
        assert len(shown) == 100 and all(int(name[1:]) % 2 == 1 for name in shown)
        assert await page.evaluate("location.search") == "?tag=odd"
        await page.screenshot(tmp_path / "many.png")
    finally:
        await srv.aclose()
