"""`agentctl` as a user runs it: real processes against real local servers."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

from lab.ports import free_port
from tests.servers import serve_http


async def agentctl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_adhoc_http_prints_a_nagios_line_with_perfdata() -> None:
    async with serve_http() as web:
        code, out, err = await agentctl("check", web.url("/health"))
    assert (code, err) == (0, "")
    line = out.rstrip("\n")
    assert "\n" not in line
    text, _, perf = line.partition(" | ")
    assert re.fullmatch(r"HTTP OK - 200 OK, \d+ bytes in [0-9.]+s", text), text
    labels = re.findall(r"'([a-z_]+)'=", perf)
    assert labels == [
        "time",
        "time_resolve",
        "time_connect",
        "time_tls",
        "time_processing",
        "time_transfer",
        "size",
    ]
    assert re.search(r"'time'=[0-9.e-]+s;", perf)


async def test_adhoc_exit_codes_follow_the_status() -> None:
    async with serve_http() as web:
        code, out, _ = await agentctl("check", web.url("/status/503"))
        assert code == 2 and out.startswith("HTTP CRITICAL - ")
    code, out, _ = await agentctl("check", f"tcp://127.0.0.1:{free_port()}")
    assert code == 2 and out.startswith("TCP CRITICAL - connection refused")
    assert "'time_connect'=" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["check", "ftp://x/"],
            "agentctl: cannot check 'ftp://x/': use an http://, https://, tcp:// or tls:// URL,"
            " or a check name with -c\n",
        ),
        (["check", "tcp://127.0.0.1"], None),
        (["check", "nope", "-c", "{cfg}"], "agentctl: no check named 'nope' in {cfg} (known: a, b)\n"),
        (["check", "-c", "{cfg}", "--tag", "zzz"], "agentctl: no check in {cfg} matches the selection\n"),
        (
            ["check", "http://127.0.0.1/", "a", "-c", "{cfg}"],
            "agentctl: give either URLs to check ad hoc, or check names with -c FILE, not both\n",
        ),
        (["check", "-c", "{missing}"], "{missing}: (file): cannot read: No such file or directory\n"),
        # A password (or a token as the user) in the URL is never echoed (issue 12, item 12).
        (
            ["check", "http://user:SECRET@127.0.0.1:99999/"],
            "agentctl: invalid target 'http://user:***@127.0.0.1:99999/': URL has an invalid port\n",
        ),
        (
            ["check", "https://SECRET@[::1/"],
            "agentctl: invalid target 'https://***@[::1/': Invalid IPv6 URL\n",
        ),
        (
            ["check", "ftp://user:SECRET@127.0.0.1/"],
            "agentctl: cannot check 'ftp://user:***@127.0.0.1/': use an http://, https://, tcp:// or tls://"
            " URL, or a check name with -c\n",
        ),
        (
            ["check", "tcp://user:SECRET@127.0.0.1:99999"],
            "agentctl: invalid target 'tcp://user:***@127.0.0.1:99999': expected tcp://HOST:PORT or"
            " tls://HOST:PORT\n",
        ),
    ],
)
async def test_user_errors_are_one_line_and_exit_3(
    tmp_path: Path, args: list[str], message: str | None
) -> None:
    cfg = tmp_path / "agent.yml"
    cfg.write_text(
        "checks:\n  - {name: a, type: tcp, host: 127.0.0.1, port: 1, tags: [db]}\n"
        "  - {name: b, type: tcp, host: 127.0.0.1, port: 2}\n"
    )
    subst = {"{cfg}": str(cfg), "{missing}": str(tmp_path / "missing.yml")}
    args = [subst.get(a, a) for a in args]
    code, out, err = await agentctl(*args)
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    if message is not None:
        for key, value in subst.items():
            message = message.replace(key, value)
        assert err == message
    assert "SECRET" not in err


async def test_config_checks_as_table_json_and_by_tag(tmp_path: Path) -> None:
    async with serve_http() as web:
        cfg = tmp_path / "agent.yml"
        cfg.write_text(
            "checks:\n"
            f"  - {{name: api, type: http, url: '{web.url('/health')}', tags: [app]}}\n"
            f"  - {{name: broken, type: http, url: '{web.url('/status/500')}', tags: [app]}}\n"
            f"  - {{name: port, type: tcp, host: 127.0.0.1, port: {web.port}, tags: [net]}}\n"
        )
        code, out, _ = await agentctl("check", "-c", str(cfg))
        assert code == 2
        rows = [line.split()[:5] for line in out.splitlines()]
        assert rows[0] == ["CHECK", "TYPE", "STATUS", "TIME", "REASON"]
        assert [(r[0], r[2], r[4]) for r in rows[1:]] == [
            ("api", "OK", "ok"),
            ("broken", "CRITICAL", "status_mismatch"),
            ("port", "OK", "ok"),
        ]
        code, out, _ = await agentctl("check", "api", "port", "-c", str(cfg), "--json")
        assert code == 0
        data = json.loads(out)
        assert [(d["check"], d["status"]) for d in data] == [("api", "OK"), ("port", "OK")]
        assert {s["name"] for s in data[0]["samples"]} >= {
            "probe_http_status_code",
            "probe_http_duration_seconds",
        }
        code, out, _ = await agentctl("check", "-c", str(cfg), "--tag", "net", "-v")
        assert code == 0
        assert "port (127.0.0.1:" in out and 'mamori_tcp_duration_seconds{phase="connect"}' in out


async def test_list_shows_every_check(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yml"
    cfg.write_text(
        "agent: {interval: 20s}\nchecks:\n"
        "  - {name: api, type: http, tags: [app, lb],\n"
        "     url: 'https://user:pw@example.test/health?token=secret'}\n"
        "  - {name: db, type: tcp, host: db.internal, port: 5432, timeout: 2s}\n"
    )
    code, out, err = await agentctl("list", "-c", str(cfg))
    assert (code, err) == (0, "")
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "TYPE", "INTERVAL", "TIMEOUT", "TAGS", "TARGET"],
        ["api", "http", "20s", "10s", "app,lb", "https://example.test/health"],
        ["db", "tcp", "20s", "2s", "-", "db.internal:5432"],
    ]
    assert "secret" not in out and "pw" not in out


@pytest.mark.parametrize(
    ("args", "code", "last_line"),
    [
        (
            ["check", "--timeout", "soon", "http://127.0.0.1/"],
            3,
            "agentctl check: error: argument --timeout: "
            "invalid duration 'soon': expected a duration like 10s, 1m30s or 250ms",
        ),
        (["check", "--bogus"], 3, "agentctl check: error: unrecognized arguments: --bogus"),
        (["validate"], 2, "agentctl validate: error: the following arguments are required: FILE"),
        (
            ["run", "--listen", "nowhere"],
            1,
            "agentctl: invalid listen address 'nowhere': expected HOST:PORT, e.g. 0.0.0.0:9630",
        ),
    ],
)
async def test_bad_arguments_exit_with_usage_codes(args: list[str], code: int, last_line: str) -> None:
    rc, out, err = await agentctl(*args)
    assert (rc, out) == (code, "")
    assert err.splitlines()[-1] == last_line
    assert "Traceback" not in err
