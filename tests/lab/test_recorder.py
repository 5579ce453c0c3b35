"""The lab's recorder and the demo's lines for the agent's own pages (issue 17, item 6): they are
labelled as the agent's, not Alertmanager's, and two rules paging on one fault stay apart."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
from pathlib import Path

from lab.demo import _Demo
from lab.recorder import Recorder


def _post(url: str, payload: dict[str, str]) -> None:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


async def test_the_agents_pages_show_rule_and_severity(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "notifications.jsonl")
    demo = _Demo(None, None, prometheus=False)
    demo.out = io.StringIO()
    recorder.listeners.append(demo._notified)
    await recorder.start()
    try:
        summary = "postgres CRITICAL: primary down"  # what both rules say of one fault
        for rule in ("pg_primary_down", "fleet_primary_down"):
            page = {"route": "lab-webhook", "event": "trigger", "alert": rule, "severity": "critical"}
            await asyncio.to_thread(_post, f"{recorder.base_url}/agent-webhook", {**page, "summary": summary})
    finally:
        await recorder.stop()
    lines = [line.split("  ", 1)[1] for line in demo.out.getvalue().splitlines()]
    assert lines == [
        "agent → lab-webhook: trigger pg_primary_down (critical): postgres CRITICAL: primary down",
        "agent → lab-webhook: trigger fleet_primary_down (critical): postgres CRITICAL: primary down",
    ]
