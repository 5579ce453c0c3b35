"""Secrets (issue 12, items 8–12): the masking rule, `<key>_file` secrets that are not regular
files, and a hostile target echoing its credentials through a whole agent — check messages,
`/api/v1/results`, `/metrics`, the state files, notifier and exporter payloads, logs."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from agent import config
from agent.runtime import Agent
from agent.secrets import MAX_SECRET_FILE, Secrets, read_secret_file, redact_url, secrets_of
from alerts.notifiers.config import SlackConfig
from checks.http.config import BasicAuth, HttpConfig
from lab.ports import free_port
from lab.wait import wait_until
from tests.agent.test_agent import aget
from tests.fakes.otlp_receiver import otlp_receiver
from tests.servers import Request, response_bytes, serve_http


def parts_of(secret: str, n: int = 8) -> list[str]:
    return [secret[i : i + n] for i in range(len(secret) - n + 1)]


def assert_no_part_of(secret: str, text: str | bytes, what: str = "") -> None:
    """Not the secret, nor any 8 characters of it (what a truncated quote would leave)."""
    data = text.encode() if isinstance(text, str) else text
    found = [p for p in parts_of(secret) if p.encode() in data]
    assert not found, f"{what}: {found}"


# --- the masking rule -----------------------------------------------------------------------------


def test_a_long_secret_and_every_part_of_it_of_8_characters_are_masked() -> None:
    s = Secrets(["abcdefghijklmnop"])
    assert s.mask("token abcdefghijklmnop here") == "token *** here"
    assert s.mask("cut: abcdefgh...") == "cut: ***..."  # a prefix, as a truncated quote leaves it
    assert s.mask("tail ijklmnop") == "tail ***"
    assert s.mask("xyzabcdefghijk!") == "xyz***!"
    assert s.mask("abcdefg is short of 8") == "abcdefg is short of 8"  # 7 characters identify nothing
    assert s.mask("abcdefghijklmnop abcdefghijklmnop") == "*** ***"
    assert s.mask("") == "" and Secrets().mask("abcdefghijklmnop") == "abcdefghijklmnop"


def test_a_short_secret_is_masked_only_where_it_stands_alone() -> None:
    s = Secrets(["hunter2"])
    assert s.mask("password hunter2 refused") == "password *** refused"
    assert s.mask("user:hunter2@host") == "user:***@host"
    assert s.mask("hunter22 and xhunter2") == "hunter22 and xhunter2"  # part of another word: kept


def test_the_encodings_a_peer_may_echo_are_masked() -> None:
    secret = 'p@ss/w0rd+"quoted"é'
    s = Secrets([secret])
    for form in (
        "p%40ss%2Fw0rd%2B%22quoted%22%C3%A9",  # URL-encoded
        "p%40ss/w0rd%2B%22quoted%22%C3%A9",
        "p%40ss%2Fw0rd%2B%22quoted%22%C3%A9".replace("%20", "+"),
        'p@ss/w0rd+\\"quoted\\"\\u00e9',  # JSON-escaped
    ):
        assert s.mask(f"echo {form} end") == "echo *** end", form


def test_secrets_of_a_config_collects_credentials_not_addresses() -> None:
    http = HttpConfig.model_validate(
        {
            "name": "t",
            "type": "http",
            "interval": 60,
            "timeout": 5,
            "url": "http://bob:url%2Fsecret@example.com/x?api_key=Zx81hfgsdkfj&format=prometheus",
            "headers": {"X-Api-Key": "k-0123456789", "Accept": "application/json-seq"},
        }
    )
    s = secrets_of(http)
    basic = base64.b64encode(b"bob:url/secret").decode()
    text = f"url/secret url%2Fsecret {basic} Zx81hfgsdkfj k-0123456789"
    assert s.mask(text) == "*** *** *** *** ***"
    kept = "http://example.com/x?format=prometheus application/json-seq bob"
    assert s.mask(kept) == kept

    slack = SlackConfig(
        type="slack",
        name="ops",
        webhook_url="https://hooks.slack.com/services/T0123ABCD/B0123ABCD/zQ8vN2kLp0",
    )
    assert (
        secrets_of(slack).mask("POST https://hooks.slack.com/services/T0123ABCD/B0123ABCD/zQ8vN2kLp0 failed")
        == "POST https://hooks.slack.com/services/***/***/*** failed"
    )


def test_a_passphrase_is_masked_whole_and_only_the_credential_of_an_auth_header() -> None:
    s = secrets_of(BasicAuth(username="alice", password="correct horse battery"))
    assert s.mask("got correct horse battery, correct horse") == "got ***, ***"
    otel = secrets_of({"headers": {"Authorization": SecretStr("Bearer tok-81b2c3d4e5")}})
    assert otel.mask("Authorization: Bearer tok-81b2c3d4e5") == "Authorization: Bearer ***"


def test_redact_url_hides_userinfo_only() -> None:
    assert redact_url("http://user:SECRET@127.0.0.1:99999/") == "http://user:***@127.0.0.1:99999/"
    assert redact_url("https://TOKEN@host/a@b") == "https://***@host/a@b"
    assert redact_url("https://p:a@b@host/") == "https://p:***@host/"
    assert redact_url("http://host/a@b") == "http://host/a@b"
    assert redact_url("not a url") == "not a url"


# --- `<key>_file` secrets ----------------------------------------------------------------------------


def test_read_secret_file_takes_a_regular_file_and_strips_one_newline(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"tok\r\n")
    assert read_secret_file(path) == "tok"
    path.write_bytes(b"tok\n\n")
    assert read_secret_file(path) == "tok\n"  # the second newline is the config's to refuse
    link = tmp_path / "link"
    link.symlink_to(path)  # Kubernetes secret mounts are symlinks
    assert read_secret_file(link) == "tok\n"


def test_read_secret_file_refuses_what_is_not_a_small_regular_text_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_FILE + 1))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    cases = {
        fifo: "a FIFO, not a regular file",
        Path("/dev/zero"): "a character device, not a regular file",
        tmp_path: "a directory, not a regular file",
        big: "larger than 64 KiB: not a secret file",
        binary: "not UTF-8 text",
        tmp_path / "missing": "No such file or directory",
    }
    for path, message in cases.items():
        t0 = time.monotonic()
        with pytest.raises(ValueError) as info:
            read_secret_file(path)
        assert str(info.value) == message
        assert time.monotonic() - t0 < 1  # never waits on a FIFO nor reads a device


def test_validate_refuses_a_fifo_secret_file_at_once_in_one_line(tmp_path: Path) -> None:
    """It used to hang for ever (and, on SIGHUP, freeze the agent)."""
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    path = tmp_path / "agent.yml"
    path.write_text(
        f"checks:\n  - name: api\n    type: http\n    url: http://127.0.0.1/\n    bearer_token_file: {fifo}\n"
    )
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env={})
    assert (
        str(info.value)
        == f"{path}:5: checks[0].bearer_token_file: cannot read {fifo}: a FIFO, not a regular file"
    )


# --- a hostile target, through a whole agent -------------------------------------------------------
TOKEN = "Tk-4f9c1e7a2b8d3f60a5c9e1d7b3f8a2c4e6d0b9a7f5e3c1"
PASSWORD = "pw-Xq81Lz0Rk3Vt-Mm27"
OTEL_TOKEN = "otel-6c2b9e4f1a7d3c8e5b0f2a9d"


def echo_credentials() -> Any:
    """Quotes the Authorization header (and the whole request) in its reason phrase, headers and body."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        auth = request.headers.get("authorization", "")
        body = json.dumps({"auth": auth, "request": request.headers}).encode()
        headers = {"Content-Type": "application/json", "X-Echo": auth, "WWW-Authenticate": auth}
        writer.write(response_bytes(401, body, headers, reason=f"Denied {auth}"))

    return handler


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []

    async def handle(request: web.BaseRequest) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=200, text="ok")

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", bodies
    finally:
        await runner.cleanup()


async def test_credentials_echoed_by_a_target_appear_nowhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    state = tmp_path / "state"
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    async with (
        serve_http({"/": echo_credentials()}) as target,
        webhook_receiver() as (hook_url, notifications),
        otlp_receiver(required_headers={"Authorization": f"Bearer {OTEL_TOKEN}"}) as rx,
    ):
        # The collector quotes the header it got in its partial-success message (logged).
        rx.partial(0, f"dropped: Authorization=Bearer {OTEL_TOKEN}")
        cfg = config.parse(
            f"""
agent: {{name: box1, listen: "127.0.0.1:{port}", interval: 500ms, timeout: 500ms}}
checks:
  - name: bearer
    type: http
    url: {target.url("/")}
    bearer_token: {TOKEN}
  - name: basic
    type: http
    url: {target.url("/")}
    basic_auth: {{username: alice, password: {PASSWORD}}}
    expected_status: [401]
    json: [{{path: auth, equals: x}}]
  - name: header
    type: http
    url: {target.url("/")}
    bearer_token: {TOKEN}
    expected_status: [401]
    headers_match: [{{name: WWW-Authenticate, matches: "^Basic"}}]
notifiers:
  - {{name: hook, type: webhook, url: "{hook_url}"}}
alerts:
  state_file: {state / "alerts.db"}
  group_wait: 0s
  rules: [{{name: down, check: "*", status: critical, summary: "{{check}}: {{message}}"}}]
  routes: {{critical: [hook]}}
outbox: {{path: {state / "outbox.db"}}}
exporters:
  - name: otel
    type: otel
    endpoint: {rx.endpoint}
    traces: true
    headers: {{Authorization: "Bearer {OTEL_TOKEN}"}}
  - {{name: stuck, type: otel, endpoint: "http://127.0.0.1:{free_port()}"}}
""",
            "agent.yml",
            env={},
        )
        agent = Agent(cfg, None)
        task = asyncio.create_task(agent.run())
        base = f"http://127.0.0.1:{port}"

        async def everything_seen() -> bool:
            status, body = await aget(f"{base}/api/v1/results")
            ran = status == 200 and len(json.loads(body)["results"]) == 3
            return ran and len(notifications) >= 3 and len({s.status_message for s in rx.spans}) >= 3

        try:
            await wait_until("every secret-bearing message", everything_seen, timeout=20)
            _, results = await aget(f"{base}/api/v1/results")
            _, metrics = await aget(f"{base}/metrics")
        finally:
            agent.stop()
            assert await asyncio.wait_for(task, 15) == 0
    messages = {r["check"]: r["message"] for r in json.loads(results)["results"]}
    assert messages == {
        "bearer": "status 401 Denied Bearer ***, expected 2xx",
        "basic": 'json auth is "Basic ***", expected "x"',
        "header": "header WWW-Authenticate: 'Bearer ***' does not match /^Basic/",
    }
    assert "dropped: Authorization=Bearer ***" in caplog.text  # the exporter's log of the collector
    files = sorted(state.iterdir())
    assert {p.name for p in files} >= {"alerts.db", "outbox.db"}
    texts: dict[str, str | bytes] = {
        "/api/v1/results": results,
        "/metrics": metrics,
        "log": caplog.text,
        "notifications": b"\n".join(notifications),
        "spans": "\n".join(s.status_message for s in rx.spans),
        **{p.name: p.read_bytes() for p in files},  # with -wal: every page ever written
    }
    for secret in (TOKEN, PASSWORD, basic, OTEL_TOKEN):
        for what, text in texts.items():
            assert_no_part_of(secret, text, what)
    assert all(b"Bearer ***" in n or b"Basic ***" in n for n in notifications)


async def test_the_state_files_of_a_running_agent_are_private(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "var" / "lib" / "mamori"
    cfg = config.parse(
        f"""
agent: {{listen: "127.0.0.1:{port}"}}
checks: [{{name: a, type: tcp, host: 127.0.0.1, port: {free_port()}, interval: 200ms, timeout: 100ms}}]
notifiers: [{{name: hook, type: webhook, url: "http://127.0.0.1:{free_port()}/"}}]
alerts:
  state_file: {state / "alerts.db"}
  rules: [{{name: down, check: a, status: critical}}]
  routes: {{critical: [hook]}}
outbox: {{path: {state / "outbox.db"}}}
exporters: [{{name: stuck, type: otel, endpoint: "http://127.0.0.1:{free_port()}"}}]
""",
        "agent.yml",
        env={},
    )
    old = os.umask(0o022)  # the usual umask: sqlite alone would make these 0644 in 0755
    try:
        agent = Agent(cfg, None)
        task = asyncio.create_task(agent.run())

        async def ready() -> bool:
            return (await aget(f"http://127.0.0.1:{port}/ready"))[0] == 200

        await wait_until("the agent to be ready", ready)
        await asyncio.sleep(0.5)  # results written: -wal and -shm exist while the agent runs
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in state.iterdir()}
        agent.stop()
        assert await asyncio.wait_for(task, 15) == 0
    finally:
        os.umask(old)
    names = {f"{db}{suffix}" for db in ("alerts.db", "outbox.db") for suffix in ("", "-wal", "-shm")}
    assert modes == dict.fromkeys(names, "0o600"), modes
    for directory in (state, state.parent, state.parent.parent):
        assert oct(directory.stat().st_mode & 0o777) == "0o700", directory


def test_a_config_without_secrets_shares_one_empty_set_of_them() -> None:
    from agent.secrets import NO_SECRETS
    from checks.http.config import HttpConfig

    plain = HttpConfig(name="a", type="http", url="http://h/", interval=60.0, timeout=10.0)
    assert secrets_of(plain) is NO_SECRETS and secrets_of(plain, {}) is NO_SECRETS
    assert not NO_SECRETS and NO_SECRETS.mask("any text") == "any text"
