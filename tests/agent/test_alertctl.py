"""`agentctl alerts`, `silence` and `notify-test` as a user runs them: real processes, a real
sqlite state file, and the strict PagerDuty and Slack fakes on 127.0.0.1."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.config import load
from agent.model import CheckResult, Reason, Status
from alerts.sink import AlertSink
from tests.agent.test_cli import agentctl
from tests.fakes.pagerduty import fake_pagerduty
from tests.fakes.slack import fake_slack

ROUTING_KEY = "0123456789abcdef0123456789abcdef"


def write_config(tmp_path: Path, notifiers: list[dict[str, Any]] | None = None) -> Path:
    notifiers = notifiers or [
        {"name": "pd", "type": "pagerduty", "routing_key": ROUTING_KEY, "url": "http://127.0.0.1:9/x"}
    ]
    config = {
        "agent": {"name": "box1"},
        "checks": [
            {"name": "web", "type": "http", "url": "http://127.0.0.1:9/"},
            {"name": "api", "type": "http", "url": "http://127.0.0.1:9/api"},
        ],
        "alerts": {
            "state_file": str(tmp_path / "state" / "alerts.db"),
            "group_wait": 0,
            "routes": {"critical": [n["name"] for n in notifiers]},
            "rules": [
                {"name": "web_down", "check": "web", "status": "critical"},
                {"name": "api_down", "check": "api", "status": "critical", "failure_threshold": 3},
            ],
        },
        "notifiers": notifiers,
    }
    path = tmp_path / "mamori.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


async def test_silence_add_list_expire(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    code, out, err = await agentctl(
        "silence", "add", "-c", cfg, "--match", "check=web*", "--match", "rule=web_down",
        "--duration", "2h", "--comment", "deploy 42",
    )  # fmt: skip
    assert (code, err) == (0, "")
    silence_id = out.strip()
    assert silence_id and "\n" not in silence_id

    code, out, err = await agentctl("silence", "list", "-c", cfg)
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == [
        "ID", "STATE", "STARTS", "ENDS", "CREATED_BY", "MATCHERS", "COMMENT"
    ]  # fmt: skip
    assert silence_id in out and "check=web*,rule=web_down" in out and "deploy 42" in out
    assert " active " in out

    code, out, err = await agentctl("silence", "list", "-c", cfg, "--json")
    assert code == 0
    [item] = json.loads(out)
    assert item["id"] == silence_id
    assert item["matchers"] == ["check=web*", "rule=web_down"]
    assert item["state"] == "active"

    code, out, err = await agentctl("silence", "expire", "-c", cfg, silence_id)
    assert (code, err) == (0, "")
    code, out, err = await agentctl("silence", "list", "-c", cfg, "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, err = await agentctl("silence", "list", "-c", cfg)
    assert out == "no active or future silences\n"

    code, out, err = await agentctl("silence", "expire", "-c", cfg, silence_id)
    assert (code, out) == (1, "")
    assert err == f"agentctl: no silence {silence_id!r} in {tmp_path / 'state' / 'alerts.db'}\n"


async def test_a_future_silence_is_listed_as_pending(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    code, out, err = await agentctl(
        "silence", "add", "-c", cfg, "--match", "tag=db", "--duration", "1h",
        "--start", "2999-01-01T00:00:00", "--comment", "later",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = await agentctl("silence", "list", "-c", cfg, "--json")
    [item] = json.loads(out)
    assert (item["state"], item["starts_at"], item["ends_at"]) == (
        "pending",
        "2999-01-01T00:00:00Z",
        "2999-01-01T01:00:00Z",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--match", "nope=x"], "unknown --match key 'nope': use check, rule, severity, tag, target"),
        (["--match", "check"], "invalid --match 'check': expected KEY=GLOB, e.g. check=web-*"),
        (["--match", "check=a", "--start", "soon"], "invalid --start 'soon': expected ISO 8601"),
        (["--match", "check=a", "--start", "2000-01-01T00:00:00Z"], "the silence would end in the past"),
    ],
)
async def test_silence_add_user_errors_are_one_line_exit_1(
    tmp_path: Path, args: list[str], message: str
) -> None:
    cfg = str(write_config(tmp_path))
    code, out, err = await agentctl("silence", "add", "-c", cfg, "--duration", "1h", "--comment", "c", *args)
    assert (code, out) == (1, "")
    assert err.startswith(f"agentctl: {message}") and err.count("\n") == 1, err


async def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    code, _, err = await agentctl("silence", "add", "-c", cfg, "--match", "check=a", "--comment", "c")
    assert code == 2 and "--duration" in err
    code, _, err = await agentctl("silence", "frobnicate", "-c", cfg)
    assert code == 2


async def test_no_alerts_section_is_one_line_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "plain.yml"
    path.write_text('checks: [{name: web, type: http, url: "http://127.0.0.1:9/"}]\n')
    for args in (["alerts"], ["silence", "list"], ["silence", "expire", "x"]):
        code, out, err = await agentctl(*args, "-c", str(path))
        assert (code, out, err) == (1, "", f"agentctl: no alerts section in {path}\n"), args


async def test_alerts_with_no_state_yet(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path))
    code, out, err = await agentctl("alerts", "-c", cfg)
    assert (code, err) == (0, "")
    assert out == "no firing, held or pending alerts\n\noutbox: pd=0\ndead letters: 0\n"
    assert not (tmp_path / "state" / "alerts.db").exists()  # read-only: not created
    code, out, err = await agentctl("alerts", "-c", cfg, "--json")
    assert json.loads(out) == {"alerts": [], "outbox": {"pd": 0}, "dead_letters": 0}


def critical(check: str) -> CheckResult:
    return CheckResult(
        check,
        "http",
        f"http://127.0.0.1:9/{check}",
        Status.CRITICAL,
        1_700_000_000.0,
        0.1,
        message="connection refused",
        reason=Reason.REFUSED,
    )


async def test_alerts_shows_what_the_engine_wrote(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = load(path)
    clock = iter([1_700_000_000.0 + i for i in range(100)])
    # No notifiers: the triggers stay in the outbox, as when PagerDuty is down.
    sink = AlertSink(config.alerts, {}, "box1", clock=lambda: next(clock))
    await sink.consume(critical("web"))  # fires at once (group_wait 0)
    await sink.consume(critical("api"))  # pending: failure_threshold 3
    await sink.aclose()

    code, out, err = await agentctl("alerts", "-c", str(path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["RULE", "CHECK", "STATE", "SINCE", "SEVERITY", "SUMMARY"]
    assert lines[1].split()[:5] == ["web_down", "web", "firing", "2023-11-14T22:13:21Z", "critical"]
    assert "web on http://127.0.0.1:9/web: refused connection refused" in lines[1]
    assert lines[2].split()[:5] == ["api_down", "api", "pending", "2023-11-14T22:13:22Z", "critical"]
    assert lines[-2:] == ["outbox: pd=1", "dead letters: 0"]

    code, out, err = await agentctl("alerts", "-c", str(path), "--json")
    data = json.loads(out)
    assert [(a["rule"], a["state"]) for a in data["alerts"]] == [
        ("web_down", "firing"),
        ("api_down", "pending"),
    ]
    assert data["outbox"] == {"pd": 1} and data["dead_letters"] == 0


def ok(check: str, at: float) -> CheckResult:
    return CheckResult(check, "http", f"http://127.0.0.1:9/{check}", Status.OK, at, 0.1)


async def test_alerts_shows_incidents_held_open_by_flap_detection_and_why(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = load(path)
    assert config.alerts is not None
    t = [time.time() - 200]
    sink = AlertSink(config.alerts, {}, "box1", clock=lambda: t[0])
    for bad in (True, False, True, False, True, False):  # six flips in 3 min: the 5th is flapping
        await sink.consume(replace(critical("web"), started_at=t[0]) if bad else ok("web", t[0]))
        t[0] += 30
    await sink.aclose()
    [record] = [r for r in AlertSink(config.alerts, {}, "box1").engine.records() if r.check == "web"]
    assert (record.state.value, record.told, record.flapping) == ("resolved", True, True)
    last_flip = max(record.flips)

    code, out, err = await agentctl("alerts", "-c", str(path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["web_down", "web", "held"]
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_flip + 600))
    assert lines[2] == (
        f"  web_down/web: flapping (6 state changes in 10m00s): kept open; resolves at {until}"
        " if no change before"
    )
    code, out, err = await agentctl("alerts", "-c", str(path), "--json")
    [row] = json.loads(out)["alerts"]
    assert (row["state"], row["notified"], row["until"]) == ("held", True, until)


async def test_alerts_says_why_a_firing_alert_was_not_paged(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = load(path)
    assert config.alerts is not None
    code, silence_id, _ = await agentctl(
        "silence", "add", "-c", str(path), "--match", "check=api", "--duration", "1h", "--comment", "x"
    )
    assert code == 0
    sink = AlertSink(config.alerts, {}, "box1")
    for _ in range(3):  # api_down's failure_threshold
        await sink.consume(replace(critical("api"), started_at=time.time()))
    await sink.aclose()
    code, out, err = await agentctl("alerts", "-c", str(path), "--json")
    assert (code, err) == (0, "")
    [row] = json.loads(out)["alerts"]
    assert (row["rule"], row["state"], row["notified"]) == ("api_down", "firing", False)
    assert row["note"] == f"not paged: silence {silence_id.strip()} until {row['until']}"


async def test_notify_test_pagerduty_delivered_and_resolved_leaving_nothing_open(tmp_path: Path) -> None:
    async with fake_pagerduty() as pd:
        cfg = write_config(
            tmp_path, [{"name": "pd", "type": "pagerduty", "routing_key": pd.routing_key, "url": pd.url}]
        )
        runs = [await agentctl("notify-test", "-c", str(cfg), "pd") for _ in range(2)]
    keys = []
    for code, out, err in runs:
        assert (code, err) == (0, "")
        match = re.fullmatch(
            r"pd: delivered: pagerduty test notify_test: 202"
            r" dedup_key=(mamori:box1:notify_test:pd:[0-9a-f]{8}), then resolved\n",
            out,
        )
        assert match, out
        keys.append(match.group(1))
        assert pd.routing_key not in out + err
    assert keys[0] != keys[1]  # a second test is not appended to the first one's incident
    assert [(e["event_action"], e["dedup_key"]) for e in pd.events] == [
        ("trigger", keys[0]),
        ("resolve", keys[0]),
        ("trigger", keys[1]),
        ("resolve", keys[1]),
    ]
    assert pd.events[0]["payload"]["summary"] == "Mamori test notification from box1 via pd"
    assert [i.status for i in pd.incidents] == ["resolved", "resolved"]  # nothing left open


async def test_notify_test_pagerduty_resolve_refused_says_the_incident_is_open(tmp_path: Path) -> None:
    async with fake_pagerduty() as pd:
        cfg = write_config(
            tmp_path, [{"name": "pd", "type": "pagerduty", "routing_key": pd.routing_key, "url": pd.url}]
        )
        pd.fail_after(1, 503)
        code, out, err = await agentctl("notify-test", "-c", str(cfg), "pd")
    assert (code, err) == (1, "")
    assert out.startswith("pd: retry: pagerduty test notify_test: 202 dedup_key=mamori:box1:notify_test:pd:")
    assert out.endswith(
        ", but its resolve failed (pagerduty resolve notify_test: 503: Internal Server Error):"
        " resolve it by hand\n"
    )
    assert [i.status for i in pd.incidents] == ["triggered"]


async def test_notify_test_pagerduty_rejected(tmp_path: Path) -> None:
    unknown_key = secrets.token_hex(16)  # well-formed, but not one the fake knows: 400
    async with fake_pagerduty() as pd:
        cfg = write_config(
            tmp_path, [{"name": "pd", "type": "pagerduty", "routing_key": unknown_key, "url": pd.url}]
        )
        code, out, err = await agentctl("notify-test", "-c", str(cfg), "pd")
    assert (code, err) == (1, "")
    assert out == "pd: rejected: pagerduty test notify_test: 400 invalid event: Invalid routing key\n"
    assert pd.events == [] and len(pd.rejected) == 1
    assert unknown_key not in out + err


async def test_notify_test_slack_delivered_and_rejected(tmp_path: Path) -> None:
    async with fake_slack() as slack:
        url = slack.add_webhook("#ops")
        cfg = write_config(tmp_path, [{"name": "chat", "type": "slack", "webhook_url": url}])
        code, out, err = await agentctl("notify-test", "-c", str(cfg), "chat")
        assert (code, err) == (0, "")
        assert out == "chat: delivered: slack chat test notify_test: 200\n"
        [message] = slack.messages
        assert "Mamori test notification from box1 via chat" in json.dumps(message.body)

        slack.fail_for(60, 400)
        code, out, err = await agentctl("notify-test", "-c", str(cfg), "chat")
    assert (code, err) == (1, "")
    assert out == "chat: rejected: slack chat test notify_test: 400 rejected: invalid_payload\n"
    secret_path = url.rpartition("/")[2]
    assert secret_path not in out + err and url not in out + err


async def test_notify_test_unknown_route(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    code, out, err = await agentctl("notify-test", "-c", str(cfg), "nope")
    assert (code, out) == (1, "")
    assert err == f"agentctl: no notifier 'nope' in {cfg} (known: pd)\n"
