"""The agent's own alerting with its state file on a real full file system (a small tmpfs,
tests/conftest.py `small_fs`), against the strict PagerDuty and Slack fakes.

Issue 11, item 1: a check went CRITICAL while the disk was full; the trigger was neither stored
nor sent, yet the alert was saved as paged once a few bytes were free, and its resolve reached
PagerDuty (and Slack) for an incident nobody had seen. Now what the engine has told never gets
ahead of what is stored: the trigger is kept and sent once there is space, before its resolve,
and a resolve is never sent alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.model import CheckResult, Reason, Status
from agent.pipeline import FanOut
from agent.telemetry import AgentMetrics
from alerts.config import AlertsConfig
from alerts.model import Event, Notification, Severity
from alerts.notifiers.config import PagerDutyConfig, SlackConfig
from alerts.notifiers.pagerduty import PagerDutyNotifier
from alerts.notifiers.slack import SlackNotifier
from alerts.sink import PENDING_LIMIT, AlertSink
from alerts.store import AlertStore
from lab.wait import wait_until
from tests.conftest import SmallFs
from tests.fakes.pagerduty import FakePagerDuty, fake_pagerduty
from tests.fakes.slack import FakeSlack, fake_slack

KEY = "mamori:host1:down:web"


def config(state_file: Path) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "state_file": str(state_file),
            "rules": [{"name": "down", "check": "web", "status": "critical", "success_threshold": 2}],
            "routes": {"critical": ["pd", "chat"]},
            "group_wait": 0,
        }
    )


def result(status: Status) -> CheckResult:
    reason = Reason.OK if status is Status.OK else Reason.REFUSED
    return CheckResult("web", "http", "https://web.example/", status, 0.0, 0.1, reason=reason)


@dataclass
class Services:
    pd: FakePagerDuty
    slack: FakeSlack
    chat_url: str

    def notifiers(self) -> dict[str, Any]:
        return {
            "pd": PagerDutyNotifier(
                PagerDutyConfig(type="pagerduty", name="pd", routing_key=self.pd.routing_key, url=self.pd.url)
            ),
            "chat": SlackNotifier(
                SlackConfig.model_validate(
                    {"type": "slack", "name": "chat", "webhook_url": self.chat_url, "min_interval": 0.05}
                )
            ),
        }

    def slack_events(self) -> list[str]:
        """ "trigger" or "resolve" per accepted Slack message (a resolve is green: "good")."""
        return [
            "resolve" if m.body["attachments"][0]["color"] == "good" else "trigger"
            for m in self.slack.messages
        ]


@asynccontextmanager
async def services() -> AsyncIterator[Services]:
    async with fake_pagerduty() as pd, fake_slack() as slack:
        slack.min_interval = 0.0
        yield Services(pd, slack, slack.add_webhook("#alerts"))


def sink_for(path: Path, svc: Services) -> AlertSink:
    return AlertSink(config(path), svc.notifiers(), "host1", tick_interval=0.05)


class Pipeline:
    """The sink behind the agent's fan-out, as in the agent (a sink exception is only counted)."""

    def __init__(self, sink: AlertSink) -> None:
        self.sink = sink
        self.fanout = FanOut([sink], 100, AgentMetrics())

    async def __aenter__(self) -> Pipeline:
        await self.sink.start()
        self.fanout.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.fanout.aclose()

    async def publish(self, status: Status) -> None:
        self.fanout.publish(result(status))
        assert await self.fanout.drain(5.0)


async def test_a_trigger_made_on_a_full_disk_is_sent_once_there_is_space_then_its_resolve(
    small_fs: SmallFs, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_fs.path / "alerts.db"
    async with services() as svc:
        sink = sink_for(path, svc)
        async with Pipeline(sink) as agent:
            small_fs.fill()
            with caplog.at_level(logging.INFO, logger="mamori.statefile"):
                await agent.publish(Status.CRITICAL)  # the trigger cannot be stored
                await asyncio.sleep(0.5)  # ten ticks, each retrying the commit
                assert svc.pd.events == [] and svc.slack.messages == []  # nothing sent unstored
                assert sink.store.health.degraded
                assert sink.pending() == {"chat": 1, "pd": 1}  # waiting, in memory
                errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
                assert errors == [
                    f"cannot write the alert state file {path}: database or disk is full; alert changes "
                    "and their notifications are kept in memory (up to 1000) and stored, then sent, once "
                    "it can be written"
                ]
                small_fs.free()
                await wait_until("the trigger", lambda: svc.pd.state_changes == [(KEY, "triggered")])
                assert not sink.store.health.degraded
                infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
                assert len(infos) == 1 and f"alert state file {path} is writable again" in infos[0]
            await wait_until("the Slack trigger", lambda: svc.slack_events() == ["trigger"])

            for _ in range(2):  # success_threshold: 2
                await agent.publish(Status.OK)
            await wait_until(
                "the resolve", lambda: svc.pd.state_changes == [(KEY, "triggered"), (KEY, "resolved")]
            )
            await wait_until("the Slack resolve", lambda: svc.slack_events() == ["trigger", "resolve"])
        assert [e["event_action"] for e in svc.pd.events] == ["trigger", "resolve"]
        assert svc.pd.rejected == []


async def test_failure_and_recovery_on_a_full_disk_send_trigger_then_resolve_never_a_lone_resolve(
    small_fs: SmallFs,
) -> None:
    path = small_fs.path / "alerts.db"
    async with services() as svc:
        async with Pipeline(sink_for(path, svc)) as agent:
            small_fs.fill()
            for status in (Status.CRITICAL, Status.OK, Status.OK):  # fired and cleared meanwhile
                await agent.publish(status)
                await asyncio.sleep(0.1)
            assert svc.pd.events == [] and svc.slack.messages == []
            small_fs.free()
            await wait_until(
                "trigger and resolve", lambda: svc.pd.state_changes == [(KEY, "triggered"), (KEY, "resolved")]
            )
            await wait_until("Slack", lambda: svc.slack_events() == ["trigger", "resolve"])
        assert [e["event_action"] for e in svc.pd.events] == ["trigger", "resolve"]


async def test_a_restart_during_the_spell_pages_again_rather_than_resolving_what_was_never_sent(
    small_fs: SmallFs,
) -> None:
    path = small_fs.path / "alerts.db"
    async with services() as svc:
        sink = sink_for(path, svc)
        await sink.start()
        small_fs.fill()
        await sink.consume(result(Status.CRITICAL))
        await sink.aclose()  # stopped while the disk is still full: the trigger is lost, counted
        assert sink.dropped == {("chat", "disk_full"): 1, ("pd", "disk_full"): 1}
        small_fs.free()

        sink = sink_for(path, svc)  # the state file says nothing was told
        await sink.start()
        try:
            for _ in range(2):
                await sink.consume(result(Status.OK))
            await asyncio.sleep(0.3)
            assert svc.pd.events == [] and svc.slack.messages == []  # no lone resolve
            await sink.consume(result(Status.CRITICAL))  # still failing: paged now
            await wait_until("the trigger", lambda: svc.pd.state_changes == [(KEY, "triggered")])
        finally:
            await sink.aclose()


async def test_a_delivery_that_cannot_be_recorded_is_not_sent_again(
    small_fs: SmallFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trigger is stored and sent, then the disk fills before the row can be deleted: it must
    not be resent every 5 s, and its resolve waits until the trigger's delivery is recorded."""
    monkeypatch.setattr("agent.delivery.log.UNSAVED_RETRY", 0.1)  # try to record it 10 times a second
    path = small_fs.path / "alerts.db"
    async with services() as svc:
        svc.pd.hang()  # hold the trigger's request while the disk fills
        sink = sink_for(path, svc)
        await sink.start()
        try:
            await sink.consume(result(Status.CRITICAL))
            await wait_until("the held request", lambda: svc.pd.attempts == 1)
            small_fs.fill()
            svc.pd.release()  # answered 503: a retry that cannot be recorded either
            await wait_until("a retry", lambda: svc.pd.attempts == 2 and svc.pd.state_changes, timeout=5)
            await asyncio.sleep(1.5)
            assert svc.pd.state_changes == [(KEY, "triggered")] and len(svc.pd.events) == 1  # once
            small_fs.free()
            for _ in range(2):
                await sink.consume(result(Status.OK))
            await wait_until(
                "the resolve", lambda: svc.pd.state_changes == [(KEY, "triggered"), (KEY, "resolved")]
            )
        finally:
            await sink.aclose()
        assert [e["event_action"] for e in svc.pd.events] == ["trigger", "resolve"]


def note(i: int, event: Event, key: str, route: str = "pd") -> Notification:
    return Notification(f"n{i}", route, event, key, "down", Severity.CRITICAL, "s", {}, None, float(i))


async def test_memory_is_bounded_and_reminders_go_first(
    small_fs: SmallFs, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_fs.path / "alerts.db"
    AlertStore(path).close()
    sink = AlertSink(config(path), {}, "host1")
    small_fs.fill()
    first = [note(0, Event.TRIGGER, "k0"), note(1, Event.REMIND, "k0")]
    filler = [note(i, Event.TRIGGER, f"x{i}") for i in range(2, PENDING_LIMIT)]
    with caplog.at_level(logging.ERROR, logger="mamori.alerts"):
        assert sink._commit(first + filler) is False
        assert len(sink._pending) == PENDING_LIMIT
        # One more: the reminder goes first.
        assert sink._commit([note(PENDING_LIMIT, Event.TRIGGER, "y")]) is False
        assert [n.id for n in sink._pending[:2]] == ["n0", "n2"]
    assert sink.dropped == {("pd", "disk_full"): 1}
    assert len([r for r in caplog.records if "notifications wait: dropping" in r.getMessage()]) == 1
    small_fs.free()
    assert sink._commit([]) is True
    assert sink.store.pending("pd") == PENDING_LIMIT
    await sink.aclose()


def many_config(state_file: Path) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "state_file": str(state_file),
            "rules": [{"name": "down", "check": "*", "status": "critical"}],
            "routes": {"critical": ["pd"]},
            "group_wait": 0,
        }
    )


def failing(check: str, status: Status = Status.CRITICAL) -> CheckResult:
    reason = Reason.OK if status is Status.OK else Reason.REFUSED
    return CheckResult(check, "http", f"https://{check}/", status, 0.0, 0.1, reason=reason)


@pytest.mark.parametrize("recovers_meanwhile", [True, False])
async def test_a_trigger_dropped_past_the_bound_is_forgotten_never_resolved_alone(
    small_fs: SmallFs, recovers_meanwhile: bool
) -> None:
    """Past PENDING_LIMIT the oldest trigger is dropped with its incident, and the engine forgets
    it told anyone: a check that recovered meanwhile sends nothing at all (no lone resolve, even
    after a restart); one still failing is paged afresh once the file can be written."""
    path = small_fs.path / "alerts.db"
    AlertStore(path).close()
    sink = AlertSink(many_config(path), {}, "host1")
    small_fs.fill()
    await sink.consume(failing("first"))
    for i in range(PENDING_LIMIT):  # pushes the trigger of "first" out
        await sink.consume(failing(f"c{i}"))
    first_key = "mamori:host1:down:first"
    assert all(n.dedup_key != first_key for n in sink._pending)
    assert sink.dropped == {("pd", "disk_full"): 1}
    if recovers_meanwhile:
        await sink.consume(failing("first", Status.OK))
    small_fs.free()
    assert sink._commit(sink.engine.tick()) is True
    waiting = [(i.notification.event.value, i.notification.dedup_key) for i in sink.store.head("pd", 3000)]
    await sink.aclose()
    restarted = AlertSink(many_config(path), {}, "host1")
    [record] = [r for r in restarted.engine.records() if r.check == "first"]
    await restarted.aclose()
    about_first = [w for w in waiting if w[1] == first_key]
    if recovers_meanwhile:
        assert about_first == []  # nothing was told, nothing is resolved
        assert (record.state.value, record.told) == ("resolved", False)
    else:
        assert about_first == [("trigger", first_key)]  # paged afresh
        assert (record.state.value, record.told) == ("firing", True)
