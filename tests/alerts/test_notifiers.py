"""Notifiers against their strict fakes (PagerDuty, Slack), a real Alertmanager 0.25 binary
(skipped when `prometheus-alertmanager` is not installed) and a recording HTTP server (webhook)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from alerts.model import Delivery, Event, Notification, Outcome, Severity
from alerts.notifiers import REGISTRY, build
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.config import (
    AlertmanagerConfig,
    NotifierConfig,
    PagerDutyConfig,
    SlackConfig,
    WebhookConfig,
)
from alerts.notifiers.pagerduty import PagerDutyNotifier, dedup_key
from alerts.notifiers.slack import SlackNotifier
from alerts.notifiers.webhook import WebhookNotifier
from lab.ports import free_port
from tests.fakes.pagerduty import FakePagerDuty, fake_pagerduty
from tests.fakes.slack import FakeSlack, fake_slack

RUNBOOK = "https://runbooks.example.com/disk-full"
DETAILS = {
    "check": "db-disk",
    "target": "db1:/var/lib/postgresql",
    "reason": "threshold",
    "value": "97.2%",
    "agent": "mamori-db1",
    "cluster": "shop",
}
SUMMARY = "db-disk CRITICAL on db1:/var/lib/postgresql: threshold, used 97.2% (> 95%)"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def note(event: Event = Event.TRIGGER, **changes: Any) -> Notification:
    fields: dict[str, Any] = {
        "id": f"n-{event.value}",
        "route": "oncall",
        "event": event,
        "dedup_key": "disk_full/db-disk/db1",
        "alert": "disk_full",
        "severity": Severity.CRITICAL,
        "summary": SUMMARY,
        "details": dict(DETAILS),
        "runbook_url": RUNBOOK,
        "created_at": T0,
    }
    fields.update(changes)
    return Notification(**fields)


# --- config and registry ----------------------------------------------------------------------
def test_registry_builds_each_type(tmp_path: Path) -> None:
    key_file = tmp_path / "pd.key"
    key_file.write_text("a" * 32 + "\n")
    adapter: TypeAdapter[Any] = TypeAdapter(NotifierConfig)
    configs = [
        {"type": "pagerduty", "name": "pd", "routing_key_file": str(key_file)},
        {"type": "slack", "name": "sl", "webhook_url": "https://hooks.slack.com/services/T1/B1/x"},
        {"type": "alertmanager", "name": "am", "url": "http://am:9093/"},
        {"type": "webhook", "name": "wh", "url": "https://example.com/hook"},
    ]
    built = [build(adapter.validate_python(c)) for c in configs]
    assert [type(n) for n in built] == [
        PagerDutyNotifier,
        SlackNotifier,
        AlertmanagerNotifier,
        WebhookNotifier,
    ]
    assert sorted(REGISTRY) == ["alertmanager", "pagerduty", "slack", "webhook"]
    assert isinstance(built[0], PagerDutyNotifier)
    assert built[0].config.routing_key.get_secret_value() == "a" * 32
    assert built[0].config.url == "https://events.pagerduty.com/v2/enqueue"
    assert isinstance(built[1], SlackNotifier) and built[1].config.min_interval == 1.0
    assert isinstance(built[2], AlertmanagerNotifier) and built[2].endpoint == "http://am:9093/api/v2/alerts"
    assert built[0].config.timeout == 10.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"type": "pagerduty", "name": "pd", "routing_key": "tooshort-SECRET"},
            "routing_key must be 32 letters or digits (got 15 characters)",
        ),
        (
            {"type": "slack", "name": "sl", "webhook_url": "http://hooks.slack.com/services/T/B/SECRET"},
            "webhook_url must use https:// (plain http is allowed only for a loopback host)",
        ),
        (
            {"type": "slack", "name": "sl", "webhook_url": "hooks.slack.com/services/T/B/SECRET"},
            "webhook_url must be an absolute http:// or https:// URL",
        ),
        (
            {
                "type": "webhook",
                "name": "wh",
                "url": "https://x.example/h",
                "headers": {"Authorization": "SECRET"},
            },
            "headers: Authorization is set by the notifier (use bearer_token for Authorization)",
        ),
        (
            {"type": "webhook", "name": "wh", "url": "https://x.example/h", "bearer_token": "SECRET\nX: 1"},
            "the token contains a line break",
        ),
        (
            {"type": "webhook", "name": "wh", "url": "https://x.example/h", "bearer_token": ""},
            "the token is empty",
        ),
        (
            {"type": "webhook", "name": "wh", "url": "https://x/h", "headers": {"X-K": "SECRET\u00e9"}},
            "headers: the value of X-K contains a non-ASCII character "
            "(percent-encode it, or use its ASCII form)",
        ),
        (
            {"type": "webhook", "name": "wh", "url": "https://x.example/h", "headers": {"X-K": "SECRET\x01"}},
            "headers: the value of X-K contains a control character",
        ),
        (
            {"type": "slack", "name": "sl", "webhook_url": "https://hooks.slack.com/services/T/B/SECRET\n"},
            "webhook_url must be printable ASCII without spaces (percent-encode other characters)",
        ),
    ],
)
def test_invalid_config_names_the_error_without_the_secret(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(NotifierConfig).validate_python(config)
    assert [e["msg"] for e in info.value.errors()] == [f"Value error, {message}"]
    # Validated on its own, the model also keeps the input out of the exception's text (inside
    # the agent config, whose error report uses only `msg`, the message alone matters).
    models: dict[str, type[BaseModel]] = {"pagerduty": PagerDutyConfig, "slack": SlackConfig}
    model = models.get(config["type"], WebhookConfig)
    with pytest.raises(ValidationError) as direct:
        model.model_validate(config)
    assert "SECRET" not in str(direct.value)


def test_alertmanager_label_keys_are_label_names() -> None:
    with pytest.raises(ValidationError) as info:
        AlertmanagerConfig(type="alertmanager", name="am", url="http://am:9093", label_keys=("bad-label",))
    assert [e["msg"] for e in info.value.errors()] == [
        "Value error, label_keys: 'bad-label' is not a usable Prometheus label name"
    ]


def test_slack_allows_plain_http_only_on_loopback() -> None:
    for url in ("http://127.0.0.1:1/services/a", "http://localhost:1/x", "http://[::1]:1/x"):
        SlackConfig(type="slack", name="sl", webhook_url=url)


# --- PagerDuty --------------------------------------------------------------------------------
@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with fake_pagerduty() as fake:
        yield fake


def pd_notifier(fake: FakePagerDuty, *, key: str | None = None, timeout: float = 10.0) -> PagerDutyNotifier:
    config = PagerDutyConfig(
        type="pagerduty",
        name="pd",
        routing_key=key or fake.routing_key,
        url=fake.url,
        timeout=timeout,
    )
    return PagerDutyNotifier(config)


async def test_pagerduty_incident_lifecycle_each_state_change_once(pd: FakePagerDuty) -> None:
    notifier = pd_notifier(pd)
    try:
        deliveries = [await notifier.send(note(e)) for e in (Event.TRIGGER, Event.REMIND, Event.RESOLVE)]
    finally:
        await notifier.aclose()
    assert deliveries == [
        Delivery(Outcome.DELIVERED, f"pagerduty {e} disk_full: 202 dedup_key=disk_full/db-disk/db1")
        for e in ("trigger", "remind", "resolve")
    ]
    assert pd.state_changes == [("disk_full/db-disk/db1", "triggered"), ("disk_full/db-disk/db1", "resolved")]
    assert len(pd.incidents) == 1 and len(pd.incidents[0].triggers) == 2
    assert pd.events[0] == {
        "routing_key": pd.routing_key,
        "dedup_key": "disk_full/db-disk/db1",
        "event_action": "trigger",
        "client": "Mamori",
        "payload": {
            "summary": SUMMARY,
            "source": "mamori-db1",
            "severity": "critical",
            "timestamp": "2023-11-14T22:13:20.000Z",
            "component": "db-disk",
            "group": "shop",
            "class": "threshold",
            "custom_details": {"alert": "disk_full", "event": "trigger", **DETAILS, "runbook_url": RUNBOOK},
        },
        "links": [{"href": RUNBOOK, "text": "Runbook"}],
    }
    assert pd.events[2] == {
        "routing_key": pd.routing_key,
        "dedup_key": "disk_full/db-disk/db1",
        "event_action": "resolve",
    }


async def test_pagerduty_truncates_summary_and_long_dedup_key(pd: FakePagerDuty) -> None:
    long_key = "k" * 300
    notifier = pd_notifier(pd)
    try:
        first = await notifier.send(note(summary="x" * 2000, dedup_key=long_key, details={}))
        second = await notifier.send(note(Event.RESOLVE, dedup_key=long_key))
    finally:
        await notifier.aclose()
    assert first.outcome is Outcome.DELIVERED and second.outcome is Outcome.DELIVERED
    payload = pd.events[0]["payload"]
    assert payload["summary"] == "x" * 1023 + "…"
    assert payload["source"] == "mamori"  # no agent in the details
    assert "component" not in payload and "class" not in payload
    sent_key = dedup_key(note(dedup_key=long_key))
    assert len(sent_key) == 255 and sent_key.startswith("k" * 190)
    assert pd.state_changes == [(sent_key, "triggered"), (sent_key, "resolved")]


async def test_pagerduty_400_is_rejected_once_with_the_errors(pd: FakePagerDuty) -> None:
    notifier = pd_notifier(pd, key="b" * 32)  # well-formed, but not the fake's integration key
    try:
        delivery = await notifier.send(note())
    finally:
        await notifier.aclose()
    assert delivery == Delivery(
        Outcome.REJECTED, "pagerduty trigger disk_full: 400 invalid event: Invalid routing key"
    )
    assert pd.attempts == 1 and pd.events == []


@pytest.mark.parametrize(
    ("retry_after", "detail"),
    [
        (7.0, "pagerduty trigger disk_full: 429 throttled, retry after 7s: "),
        (None, "pagerduty trigger disk_full: 429 throttled: "),
    ],
)
async def test_pagerduty_429_is_retry_with_retry_after(
    pd: FakePagerDuty, retry_after: float | None, detail: str
) -> None:
    pd.throttle(1, retry_after=retry_after)
    notifier = pd_notifier(pd)
    try:
        throttled = await notifier.send(note())
        after = await notifier.send(note())
    finally:
        await notifier.aclose()
    body = '{"status": "throttle event", "message": "Requests for this service are arriving too quickly."}'
    assert throttled == Delivery(Outcome.RETRY, detail + body, retry_after)
    assert after.outcome is Outcome.DELIVERED
    assert pd.state_changes == [("disk_full/db-disk/db1", "triggered")]


async def test_pagerduty_5xx_refused_and_timeout_are_retry(pd: FakePagerDuty) -> None:
    notifier = pd_notifier(pd, timeout=0.3)
    try:
        pd.fail_for(60, status=503)
        unavailable = await notifier.send(note())
        pd.fail_for(0)
        pd.hang()
        started = time.monotonic()
        timed_out = await notifier.send(note())
        waited = time.monotonic() - started
        pd.release()
        await pd.down()
        refused = await notifier.send(note())
        await pd.up()
        recovered = await notifier.send(note())
    finally:
        await notifier.aclose()
    assert unavailable == Delivery(Outcome.RETRY, "pagerduty trigger disk_full: 503: Internal Server Error")
    assert timed_out == Delivery(
        Outcome.RETRY, "pagerduty trigger disk_full: no answer within 0.3s (timeout)"
    )
    assert 0.3 <= waited < 2.0
    assert refused == Delivery(
        Outcome.RETRY, "pagerduty trigger disk_full: cannot connect: Connection refused"
    )
    assert recovered.outcome is Outcome.DELIVERED
    assert pd.state_changes == [("disk_full/db-disk/db1", "triggered")]


async def test_pagerduty_routing_key_never_in_details_or_logs(
    pd: FakePagerDuty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = pd_notifier(pd, timeout=0.3)
    wrong = pd_notifier(pd, key="c" * 32)
    deliveries = []
    try:
        deliveries.append(await notifier.send(note()))
        deliveries.append(await wrong.send(note()))
        pd.throttle(1)
        deliveries.append(await notifier.send(note()))
        pd.fail_for(60)
        deliveries.append(await notifier.send(note()))
        pd.fail_for(0)
        pd.hang()
        deliveries.append(await notifier.send(note()))
        pd.release()
        await pd.down()
        deliveries.append(await notifier.send(note()))
    finally:
        await notifier.aclose()
        await notifier.aclose()  # safe twice
        await wrong.aclose()
    assert [d.outcome for d in deliveries] == [Outcome.DELIVERED, Outcome.REJECTED] + [Outcome.RETRY] * 4
    for secret in (pd.routing_key, "c" * 32):
        assert all(secret not in d.detail for d in deliveries)
        assert secret not in caplog.text
    assert [r.levelname for r in caplog.records if r.name == "mamori.notifiers"] == ["WARNING"] + ["INFO"] * 4


async def test_aclose_before_any_send_is_a_no_op() -> None:
    notifier = PagerDutyNotifier(PagerDutyConfig(type="pagerduty", name="pd", routing_key="d" * 32))
    await notifier.aclose()
    await notifier.aclose()


# --- Slack ------------------------------------------------------------------------------------
@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with fake_slack() as fake:
        yield fake


def slack_notifier(url: str, timeout: float = 10.0) -> SlackNotifier:
    return SlackNotifier(SlackConfig(type="slack", name="ops", webhook_url=url, timeout=timeout))


async def test_slack_message_shape(slack: FakeSlack) -> None:
    url = slack.add_webhook("#ops")
    notifier = slack_notifier(url)
    try:
        delivery = await notifier.send(note(details={**DETAILS, "target": "db1 <primary> & co"}))
    finally:
        await notifier.aclose()
    assert delivery == Delivery(Outcome.DELIVERED, "slack ops trigger disk_full: 200")
    [message] = slack.messages
    assert message.channel == "#ops"
    assert message.body == {
        "text": f"[CRITICAL] FIRING: {SUMMARY}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "[CRITICAL] FIRING: disk_full"}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": SUMMARY.replace(">", "&gt;")},
                "fields": [
                    {"type": "mrkdwn", "text": "*Check*\ndb-disk"},
                    {"type": "mrkdwn", "text": "*Target*\ndb1 &lt;primary&gt; &amp; co"},
                    {"type": "mrkdwn", "text": "*Reason*\nthreshold"},
                    {"type": "mrkdwn", "text": "*Value*\n97.2%"},
                    {"type": "mrkdwn", "text": "*Agent*\nmamori-db1"},
                ],
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"<{RUNBOOK}|Runbook>"},
                    {"type": "mrkdwn", "text": "severity *critical* · alert `disk_full`"},
                ],
            },
        ],
        "attachments": [{"color": "danger", "fallback": f"[CRITICAL] FIRING: {SUMMARY}"}],
    }


async def test_slack_markers_per_event(slack: FakeSlack) -> None:
    slack.min_interval = 0.0
    notifier = SlackNotifier(
        SlackConfig(type="slack", name="ops", webhook_url=slack.add_webhook(), min_interval="1ms")
    )
    try:
        for event in (Event.REMIND, Event.RESOLVE, Event.TEST):
            assert (await notifier.send(note(event, severity=Severity.WARNING))).outcome is Outcome.DELIVERED
    finally:
        await notifier.aclose()
    assert [m.body["text"].split(":")[0] for m in slack.messages] == [
        "[WARNING] STILL FIRING",
        "[RESOLVED]",
        "[TEST]",
    ]
    assert [m.body["attachments"][0]["color"] for m in slack.messages] == ["warning", "good", "warning"]


async def test_slack_rate_limit_spaces_sends_by_one_second(slack: FakeSlack) -> None:
    notifier = slack_notifier(slack.add_webhook())
    try:
        first, second = await asyncio.gather(notifier.send(note()), notifier.send(note(Event.RESOLVE)))
        third = await notifier.send(note(Event.REMIND))
    finally:
        await notifier.aclose()
    assert [first.outcome, second.outcome, third.outcome] == [Outcome.DELIVERED] * 3
    assert [status for status, _ in slack.answers] == [200, 200, 200]  # the fake never had to say 429
    gaps = [b.at - a.at for a, b in zip(slack.messages, slack.messages[1:], strict=False)]
    assert len(gaps) == 2 and all(1.0 <= gap < 1.5 for gap in gaps)


async def test_slack_fake_enforces_the_limit_itself(slack: FakeSlack) -> None:
    fast = SlackNotifier(
        SlackConfig(type="slack", name="ops", webhook_url=slack.add_webhook(), min_interval="1ms")
    )
    try:
        first = await fast.send(note())
        second = await fast.send(note())
    finally:
        await fast.aclose()
    assert first.outcome is Outcome.DELIVERED
    assert second == Delivery(
        Outcome.RETRY, "slack ops trigger disk_full: 429 throttled, retry after 1s: rate_limited", 1.0
    )


SLACK = "slack ops trigger disk_full"


@pytest.mark.parametrize(
    ("setup", "delivery"),
    [
        ("archive", Delivery(Outcome.REJECTED, f"{SLACK}: 410 rejected: channel_is_archived")),
        ("unknown", Delivery(Outcome.REJECTED, "slack ops trigger disk_full: 404 rejected: no_service")),
        ("400", Delivery(Outcome.REJECTED, "slack ops trigger disk_full: 400 rejected: invalid_payload")),
        ("403", Delivery(Outcome.REJECTED, "slack ops trigger disk_full: 403 rejected: invalid_token")),
        ("throttle", Delivery(Outcome.RETRY, f"{SLACK}: 429 throttled, retry after 3s: rate_limited", 3.0)),
        ("500", Delivery(Outcome.RETRY, "slack ops trigger disk_full: 500: rollup_error")),
        ("hang", Delivery(Outcome.RETRY, "slack ops trigger disk_full: no answer within 0.3s (timeout)")),
        ("down", Delivery(Outcome.RETRY, "slack ops trigger disk_full: cannot connect: Connection refused")),
    ],
)  # fmt: skip
async def test_slack_failures_are_classified_without_leaking_the_url(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture, setup: str, delivery: Delivery
) -> None:
    caplog.set_level(logging.DEBUG)
    url = slack.add_webhook()
    actions: dict[str, Callable[[], None]] = {
        "archive": lambda: slack.archive(url),
        "400": lambda: slack.fail_for(60, status=400),
        "403": lambda: slack.fail_for(60, status=403),
        "throttle": lambda: slack.throttle(1, retry_after=3),
        "500": lambda: slack.fail_for(60, status=500),
        "hang": slack.hang,
    }
    if setup in actions:
        actions[setup]()
    elif setup == "down":
        await slack.down()
    target = url.replace("/services/", "/services/X") if setup == "unknown" else url
    notifier = slack_notifier(target, timeout=0.3)
    try:
        assert await notifier.send(note()) == delivery
    finally:
        await notifier.aclose()
    secret = url.rsplit("/", 1)[1]
    assert secret not in delivery.detail and secret not in caplog.text
    assert slack.messages == []
    assert slack.attempts == (0 if setup == "down" else 1)  # one attempt: the notifier never retries itself


# --- Alertmanager (the real binary) -----------------------------------------------------------
AM_BIN = shutil.which("prometheus-alertmanager")


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if AM_BIN is None:
        pytest.skip("prometheus-alertmanager not installed (bash .ci/ensure-debs prometheus-alertmanager)")
    work = tmp_path_factory.mktemp("am")
    (work / "am.yml").write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    proc = subprocess.Popen(
        [
            AM_BIN,
            f"--config.file={work / 'am.yml'}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"alertmanager did not start: {proc.stderr.read() if proc.stderr else ''!r}"
                )
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def am_alerts(base: str, alertname: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(
        f"{base}/api/v2/alerts?filter=alertname%3D%22{alertname}%22", timeout=5
    ) as resp:
        alerts: list[dict[str, Any]] = json.load(resp)
    return alerts


async def test_alertmanager_real_trigger_then_resolve(alertmanager: str) -> None:
    notifier = AlertmanagerNotifier(
        AlertmanagerConfig(type="alertmanager", name="am", url=alertmanager, generator_url="http://db1:9108/")
    )
    try:
        fired = await notifier.send(note(created_at=time.time() - 5))
        [alert] = await asyncio.to_thread(am_alerts, alertmanager, "disk_full")
        resolved = await notifier.send(note(Event.RESOLVE, details={**DETAILS, "value": "71%"}))
        after = await asyncio.to_thread(am_alerts, alertmanager, "disk_full")
    finally:
        await notifier.aclose()
    assert fired == Delivery(Outcome.DELIVERED, f"alertmanager {alertmanager} trigger disk_full: 200")
    assert resolved.outcome is Outcome.DELIVERED
    assert alert["labels"] == {
        "alertname": "disk_full",
        "severity": "critical",
        "check": "db-disk",
        "target": "db1:/var/lib/postgresql",
        "reason": "threshold",
        "agent": "mamori-db1",
        "cluster": "shop",
    }
    assert alert["annotations"] == {
        "summary": SUMMARY,
        "description": (
            "value: 97.2%\ncheck: db-disk\ntarget: db1:/var/lib/postgresql\nreason: threshold\n"
            "agent: mamori-db1\ncluster: shop"
        ),
        "value": "97.2%",
        "runbook_url": RUNBOOK,
    }
    assert alert["generatorURL"] == "http://db1:9108/" and alert["status"]["state"] == "active"
    assert after == []  # resolved: the same labels with endsAt = now end it


class _BadLabelNotifier(AlertmanagerNotifier):
    """Sends a label name Alertmanager refuses (the real notifier cannot: label_keys are validated)."""

    def alerts(self, notification: Notification, now: float | None = None) -> list[dict[str, Any]]:
        [alert] = super().alerts(notification, now)
        alert["labels"]["bad-name"] = "x"
        return [alert]


async def test_alertmanager_real_400_is_rejected(alertmanager: str) -> None:
    notifier = _BadLabelNotifier(AlertmanagerConfig(type="alertmanager", name="am", url=alertmanager))
    try:
        delivery = await notifier.send(note(alert="bad_alert"))
    finally:
        await notifier.aclose()
    assert delivery == Delivery(
        Outcome.REJECTED,
        f"alertmanager {alertmanager} trigger bad_alert: 400 rejected: "
        '"invalid label set: invalid name \\"bad-name\\""',
    )
    assert await asyncio.to_thread(am_alerts, alertmanager, "bad_alert") == []


# --- a recording server for the generic webhook and Alertmanager's failures -------------------
@asynccontextmanager
async def recorder(status: int = 200, headers: dict[str, str] | None = None) -> AsyncIterator[list[Any]]:
    """Records (headers, JSON body) of each POST and answers `status`."""
    seen: list[Any] = []

    async def handle(request: web.BaseRequest) -> web.Response:
        seen.append((dict(request.headers), json.loads(await request.read())))
        return web.Response(status=status, text=f"answer {status}", headers=headers)

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    seen.append(f"http://127.0.0.1:{port}")
    try:
        yield seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "outcome", "retry_after"),
    [
        (500, Outcome.RETRY, None),
        (503, Outcome.RETRY, 30.0),
        (429, Outcome.RETRY, 30.0),
        (422, Outcome.REJECTED, None),
    ],
)
async def test_alertmanager_status_classification(
    status: int, outcome: Outcome, retry_after: float | None
) -> None:
    async with recorder(status, {"Retry-After": "30"} if retry_after else None) as seen:
        notifier = AlertmanagerNotifier(AlertmanagerConfig(type="alertmanager", name="am", url=seen.pop(0)))
        try:
            delivery = await notifier.send(note())
        finally:
            await notifier.aclose()
    assert (delivery.outcome, delivery.retry_after) == (outcome, retry_after)
    assert f": {status}" in delivery.detail and f"answer {status}" in delivery.detail
    [(_headers, body)] = seen
    assert [set(a) for a in body] == [{"labels", "annotations", "startsAt"}]


async def test_alertmanager_refused_is_retry() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    notifier = AlertmanagerNotifier(AlertmanagerConfig(type="alertmanager", name="am", url=url))
    try:
        delivery = await notifier.send(note())
    finally:
        await notifier.aclose()
    assert delivery == Delivery(
        Outcome.RETRY, f"alertmanager {url} trigger disk_full: cannot connect: Connection refused"
    )


async def test_webhook_posts_the_documented_shape() -> None:
    async with recorder(204) as seen:
        config = WebhookConfig(
            type="webhook",
            name="hook",
            url=seen.pop(0) + "/in",
            headers={"X-Team": "db"},
            bearer_token="tok-SECRET",
        )
        notifier = WebhookNotifier(config)
        try:
            delivery = await notifier.send(note(Event.TEST))
        finally:
            await notifier.aclose()
    assert delivery == Delivery(Outcome.DELIVERED, "webhook hook test disk_full: 204")
    [(headers, body)] = seen
    assert headers["Authorization"] == "Bearer tok-SECRET" and headers["X-Team"] == "db"
    assert headers["Content-Type"] == "application/json"
    assert body == {
        "version": "1",
        "id": "n-test",
        "route": "oncall",
        "event": "test",
        "dedup_key": "disk_full/db-disk/db1",
        "alert": "disk_full",
        "severity": "critical",
        "summary": SUMMARY,
        "details": DETAILS,
        "runbook_url": RUNBOOK,
        "created_at": T0,
        "created_at_iso": "2023-11-14T22:13:20.000Z",
    }


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.DELIVERED), (400, Outcome.REJECTED), (404, Outcome.REJECTED), (429, Outcome.RETRY),
     (302, Outcome.RETRY), (502, Outcome.RETRY)],
)  # fmt: skip
async def test_webhook_classification(
    status: int, outcome: Outcome, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with recorder(status, {"Location": "/elsewhere"} if status == 302 else None) as seen:
        config = WebhookConfig(type="webhook", name="hook", url=seen.pop(0), bearer_token="tok-SECRET")
        notifier = WebhookNotifier(config)
        try:
            delivery = await notifier.send(note())
        finally:
            await notifier.aclose()
    assert delivery.outcome is outcome
    assert len(seen) == 1  # never retried, redirects not followed
    assert "SECRET" not in delivery.detail and "SECRET" not in caplog.text


def test_docs_config_example_is_valid(tmp_path: Path) -> None:
    """The YAML example of docs/notifiers.md validates (its `_file` secrets given real files)."""
    import yaml

    text = (Path(__file__).parents[2] / "docs" / "notifiers.md").read_text()
    example = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    secrets = {"routing_key_file": "e" * 32, "webhook_url_file": "https://hooks.slack.com/services/T/B/x"}
    adapter: TypeAdapter[Any] = TypeAdapter(NotifierConfig)
    types = []
    for item in example["notifiers"]:
        for key in [k for k in item if k.endswith("_file")]:
            path = tmp_path / key
            path.write_text(secrets.get(key, "token") + "\n")
            item[key] = str(path)
        types.append(type(build(adapter.validate_python(item))).__name__)
    assert types == ["PagerDutyNotifier", "SlackNotifier", "AlertmanagerNotifier", "WebhookNotifier"]


def test_slack_resolve_from_the_engine_says_resolved_once_and_what_recovered() -> None:
    from agent.model import CheckResult, Status
    from alerts.config import AlertsConfig
    from alerts.engine import AlertEngine
    from alerts.notifiers.slack import message

    clock = [1_700_000_000.0]
    cfg = AlertsConfig.model_validate(
        {
            "rules": [{"name": "down", "check": "*", "status": "critical"}],
            "routes": {"critical": ["chat"]},
            "group_wait": 0,
        }
    )
    engine = AlertEngine(cfg, "host1", lambda: clock[0])

    def result(status: Status, message: str) -> CheckResult:
        return CheckResult("api", "http", "https://api", status, clock[0], 0.1, message=message)

    assert [n.event for n in engine.observe(result(Status.CRITICAL, "503"))] == [Event.TRIGGER]
    clock[0] += 60
    [resolve] = engine.observe(result(Status.OK, "200 OK"))
    body = message(resolve)
    assert body["text"] == "[RESOLVED]: api on https://api recovered after 1m00s: 200 OK"
    assert body["blocks"][0]["text"]["text"] == "[RESOLVED]: down"
    shown = json.dumps(body)
    assert "RESOLVED: RESOLVED" not in shown and "]: RESOLVED" not in shown
    fields = [f["text"] for f in body["blocks"][1]["fields"]]
    assert fields == ["*Check*\napi", "*Target*\nhttps://api", "*Agent*\nhost1"]  # no failure fields


async def test_alertmanager_real_grouped_incident_resolves_under_its_trigger(alertmanager: str) -> None:
    """The engine's own notifications to a real Alertmanager: a grouped incident (a, b) whose
    reason changes while it fires, a reminder, and b recovering last. Reminders and the resolve
    carry the trigger's labels, so Alertmanager sees one alert, and nothing stays active."""
    from agent.model import CheckResult, Reason, Status
    from alerts.config import AlertsConfig
    from alerts.engine import AlertEngine

    clock = [time.time() - 3600]
    cfg = AlertsConfig.model_validate(
        {
            "rules": [{"name": "grouped_down", "check": "*", "status": "critical"}],
            "routes": {"critical": ["am"]},
            "group_wait": "10s",
            "reminder_interval": "5m",
        }
    )
    engine = AlertEngine(cfg, "host1", lambda: clock[0])

    def result(check: str, status: Status, reason: Reason = Reason.OK) -> CheckResult:
        return CheckResult(check, "http", f"https://{check}", status, clock[0], 0.1, reason=reason)

    notes = engine.observe(result("a", Status.CRITICAL, Reason.TIMEOUT))
    notes += engine.observe(result("b", Status.CRITICAL, Reason.REFUSED))
    clock[0] += 10
    notes += engine.tick()  # the group's trigger names a
    clock[0] += 200
    notes += engine.observe(result("a", Status.CRITICAL, Reason.REFUSED))  # the reason moves on
    clock[0] += 200
    notes += engine.tick()  # a reminder
    notes += engine.observe(result("a", Status.OK))
    notes += engine.observe(result("b", Status.OK))  # b recovers last: the resolve
    assert [n.event for n in notes] == [Event.TRIGGER, Event.REMIND, Event.RESOLVE]
    notifier = AlertmanagerNotifier(AlertmanagerConfig(type="alertmanager", name="am", url=alertmanager))
    seen = []
    try:
        for n in notes:
            assert (await notifier.send(n)).outcome is Outcome.DELIVERED
            seen.append(await asyncio.to_thread(am_alerts, alertmanager, "grouped_down"))
    finally:
        await notifier.aclose()
    [[fired], [reminded], after] = seen
    assert fired["labels"] == {
        "alertname": "grouped_down",
        "severity": "critical",
        "check": "a",
        "target": "https://a",
        "reason": "timeout",
        "agent": "host1",
    }
    assert reminded["labels"] == fired["labels"]  # not forked by the new reason
    assert after == []  # the resolve (made by b) matched the trigger (which named a)


async def test_alertmanager_real_test_alert_resolves_itself(alertmanager: str) -> None:
    from alerts.notifiers.alertmanager import TEST_LIFETIME

    notifier = AlertmanagerNotifier(AlertmanagerConfig(type="alertmanager", name="am", url=alertmanager))
    try:
        sent_at = time.time()
        test = note(Event.TEST, alert="notify_test", dedup_key="mamori:h:notify_test:am:1234abcd")
        assert (await notifier.send(test)).outcome is Outcome.DELIVERED
        [alert] = await asyncio.to_thread(am_alerts, alertmanager, "notify_test")
    finally:
        await notifier.aclose()
    assert alert["status"]["state"] == "active"  # routed like a real alert...
    ends = dt.datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00")).timestamp()
    assert abs(ends - (sent_at + TEST_LIFETIME)) < 5  # ...and resolved by Alertmanager itself


# --- a service echoing the secret it was sent (issue 12, item 10) -------------------------------
def _pieces(secret: str, n: int = 8) -> list[str]:
    """Every `n`-character part of `secret`: none may be left anywhere."""
    return [secret[i : i + n] for i in range(len(secret) - n + 1)]


def _assert_absent(secret: str, *texts: str) -> None:
    for text in texts:
        found = [p for p in _pieces(secret) if p in text]
        assert not found, (found, text)


async def test_slack_webhook_token_echoed_in_a_500_reaches_no_log_store_or_notify_test(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A proxy answering 500 (then 400) with the webhook URL: the detail, the log, the alert state
    file (retries' last error, the dead letters) and `agentctl notify-test` show `***` instead."""
    from alerts.delivery import Deliverer
    from alerts.store import AlertStore

    caplog.set_level(logging.DEBUG)
    url = slack.add_webhook()
    token = url.rsplit("/", 1)[1]
    slack.echo_url(500)
    notifier = slack_notifier(url, timeout=2.0)
    store = AlertStore(tmp_path / "state" / "alerts.db")
    store.commit([], [note(id="n1", route="ops")])
    deliverer = Deliverer("ops", notifier, store, clock=lambda: T0)
    try:
        assert await deliverer.step() is not None  # 500: a retry, its detail stored as last_error
        [item] = store.head("ops")
        assert item.attempts == 1 and "/services/***/***/*** failed" in item.last_error, item.last_error
        slack.echo_url(400)
        deliverer.clock = lambda: T0 + 3600.0
        assert await deliverer.step() is None  # 400: rejected, moved to the dead letters
        [(_, reason)] = store.dead()
        assert reason.startswith("slack ops trigger disk_full: 400 rejected: upstream error: POST http"), (
            reason
        )
        _assert_absent(token, item.last_error, reason, caplog.text)
    finally:
        await notifier.aclose()
        store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())
    assert token.encode() not in raw and b"/services/***/***/***" in raw

    cfg = tmp_path / "agent.yml"
    cfg.write_text(
        "agent: {name: box1}\n"
        f"notifiers:\n  - {{name: ops, type: slack, webhook_url: {url!r}}}\n"
        f"alerts:\n  state_file: {tmp_path / 'cli' / 'alerts.db'}\n  routes: {{critical: [ops]}}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "notify-test", "-c", str(cfg), "ops",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert out.decode().startswith("ops: rejected: slack ops test notify_test: 400 rejected: upstream error")
    assert "/services/***/***/*** failed" in out.decode()
    _assert_absent(token, out.decode(), err.decode())


async def test_webhook_bearer_token_echoed_by_the_receiver_is_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "wh-token-5b1e0c9d7a3f48e2b6c1d0f9a8e7"

    async def echo(request: web.BaseRequest) -> web.Response:
        # The token cut short, as a receiver truncating its log line would quote it.
        return web.Response(status=503, text=f"denied {request.headers['Authorization'][:30]}")

    runner = web.ServerRunner(web.Server(echo, access_log=None))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    notifier = WebhookNotifier(
        WebhookConfig(type="webhook", name="wh", url=f"http://127.0.0.1:{port}/hook", bearer_token=token)
    )
    try:
        delivery = await notifier.send(note())
    finally:
        await notifier.aclose()
        await runner.cleanup()
    assert delivery.outcome is Outcome.RETRY
    assert delivery.detail == "webhook wh trigger disk_full: 503: denied Bearer ***"
    _assert_absent(token, delivery.detail, caplog.text)
