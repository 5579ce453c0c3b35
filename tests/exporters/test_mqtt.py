"""The MQTT exporter (exporters/mqtt.py) against a real Mosquitto 2.0 on 127.0.0.1 (lab/mosquitto.py):
topics, QoS, retain and payloads as a subscriber sees them; the last will on an unclean disconnect and
`online` again on reconnect; a broker restart while results keep coming (buffered in the durable
outbox, then every one delivered in order); a wrong password (one clear log line, no secret); TLS
with verification, the wrong CA, server_name and a client certificate; and the config, validated
at load. The exporter runs behind the real outbox and pump (exporters/base.py), as in the agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from agent import config
from agent.delivery.pump import Pump
from agent.errors import ConfigError, StartupError
from agent.model import CheckResult, Reason, Sample, Status
from agent.outbox import Outbox, Record
from agent.runtime import Agent
from exporters import mqtt
from exporters.base import ExportContext
from lab.certs import Certs, make_certs
from lab.mosquitto import Mosquitto
from lab.ports import free_port
from lab.proxy import LinkProxy
from lab.wait import wait_until
from tests.servers import banner, serve_tcp

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENT_PASSWORD = "agent-pw-5f1c2b"  # never in a log line
WATCHER_PASSWORD = "watcher-pw-77ad"
CONTEXT = ExportContext(agent="h1", labels={"site": "lab", "role": "db"}, interval=1.0)


@dataclass
class Broker:
    mosquitto: Mosquitto
    certs: Certs
    directory: Path

    @property
    def port(self) -> int:
        return self.mosquitto.port

    @property
    def tls_port(self) -> int:
        assert self.mosquitto.tls_port is not None
        return self.mosquitto.tls_port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Broker]:
    """One broker for the module: passwords required, a plain and a TLS listener."""
    directory = tmp_path_factory.mktemp("mosquitto")
    certs = make_certs(directory)
    broker = Mosquitto(
        directory / "broker", users={"agent": AGENT_PASSWORD, "watcher": WATCHER_PASSWORD}, tls=certs.valid
    )
    async with broker:
        yield Broker(broker, certs, directory)


def result(i: int, check: str = "web", status: Status = Status.OK) -> CheckResult:
    return CheckResult(
        check=check,
        check_type="http",
        target="https://shop.example.test/health",
        status=status,
        started_at=1_700_000_000.0 + i,
        duration=0.012,
        samples=(
            Sample("probe_http_status_code", 200.0),
            Sample("probe_http_duration_seconds", 0.004, (("phase", "tls"),)),
        ),
        message=f"run {i}",
        reason=Reason.OK if status == Status.OK else Reason.TIMEOUT,
    )


def exporter_config(port: int, **extra: Any) -> mqtt.MqttConfig:
    raw: dict[str, Any] = {
        "name": "bus",
        "type": "mqtt",
        "host": "127.0.0.1",
        "port": port,
        "username": "agent",
        "password": AGENT_PASSWORD,
        "reconnect_delay": 0.05,
        "reconnect_max": 0.2,
        "timeout": 2,
    }
    raw.update(extra)
    return mqtt.MqttConfig.model_validate(raw)


@dataclass
class Pumped:
    exporter: mqtt.MqttExporter
    outbox: Outbox
    pump: Pump[Record]

    def send(self, results: Iterable[CheckResult]) -> None:
        """What the agent's OutboxSink does with each result."""
        self.outbox.append(list(results))
        self.pump.wake()


@contextlib.asynccontextmanager
async def pumped(
    cfg: mqtt.MqttConfig, directory: Path, context: ExportContext = CONTEXT
) -> AsyncIterator[Pumped]:
    exporter = mqtt.build(cfg, context)
    assert isinstance(exporter, mqtt.MqttExporter)
    outbox = Outbox(directory / f"outbox-{cfg.name}-{time.monotonic_ns()}.db", 10 * 2**20, [cfg.name])
    pump = Pump(exporter, outbox)
    pump.start()
    try:
        yield Pumped(exporter, outbox, pump)
    finally:
        await pump.stop()
        await exporter.aclose()
        outbox.close()
    # Nothing of it keeps running (connected or not when closed).
    assert [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("mqtt")] == []


@dataclass
class Seen:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Watcher:
    """A subscriber (aiomqtt) recording every message, reconnecting if the broker goes away.

    `persistent`: a fixed client id with clean_session=False, subscribed once: the broker keeps
    the subscription and queues QoS 1 messages while the watcher is away (and across its own
    restart, with persistence)."""

    port: int
    topics: tuple[str, ...]
    persistent: bool = False
    seen: list[Seen] = field(default_factory=list)
    connects: int = 0
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def _run(self) -> None:
        subscribed = False
        while True:
            client = aiomqtt.Client(
                "127.0.0.1",
                self.port,
                username="watcher",
                password=WATCHER_PASSWORD,
                identifier=f"watcher-{id(self)}" if self.persistent else None,
                clean_session=False if self.persistent else None,
            )
            try:
                async with client:
                    self.connects += 1
                    if not (self.persistent and subscribed):
                        await client.subscribe([(t, 1) for t in self.topics])
                        subscribed = True
                    self._ready.set()
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else b""
                        self.seen.append(Seen(m.topic.value, payload, m.qos, m.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    async def __aenter__(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(5):
            await self._ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def on(self, topic: str) -> list[Seen]:
        return [s for s in self.seen if s.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [s.payload for s in self.on(topic)]


async def retained(port: int, topic_filter: str, settle: float = 0.3) -> dict[str, Seen]:
    """What a newcomer gets on subscribing: the retained message of every matching topic."""
    async with Watcher(port, (topic_filter,)) as newcomer:
        await asyncio.sleep(settle)
    return {s.topic: s for s in newcomer.seen if s.retain}


# --- publishing ----------------------------------------------------------------------------------------


async def test_results_are_published_as_json_with_qos1_and_retained(broker: Broker, tmp_path: Path) -> None:
    results = [result(1), result(2, status=Status.CRITICAL), result(3, check="api/orders")]
    async with (
        Watcher(broker.port, ("mamori/lab/h1/#",)) as live,
        pumped(exporter_config(broker.port), tmp_path) as p,
    ):
        await wait_until("online", lambda: p.exporter.connected)
        p.send(results)
        await wait_until(
            "3 results",
            lambda: len(live.on("mamori/lab/h1/web")) == 2 and live.on("mamori/lab/h1/api/orders"),
        )
        for seen, r in zip(
            [*live.on("mamori/lab/h1/web"), *live.on("mamori/lab/h1/api/orders")], results, strict=True
        ):
            assert seen.qos == 1
            assert not seen.retain  # a live delivery; the retained copy is checked below
            assert json.loads(seen.payload) == {**r.to_json(), "agent": "h1", "site": "lab", "host": "h1"}
        assert live.payloads("mamori/lab/h1/status")[-1] == b"online"
        await wait_until("the PUBACKs acked in the outbox", lambda: p.outbox.depth("bus") == 0)
        assert p.pump.sent == 3 and p.pump.failures == 0

        # A newcomer sees the latest result of every check, and the agent online, at once.
        latest = await retained(broker.port, "mamori/lab/#")
        assert set(latest) == {"mamori/lab/h1/status", "mamori/lab/h1/web", "mamori/lab/h1/api/orders"}
        assert latest["mamori/lab/h1/status"].payload == b"online"
        assert json.loads(latest["mamori/lab/h1/web"].payload)["status"] == "CRITICAL"
        assert json.loads(latest["mamori/lab/h1/web"].payload)["message"] == "run 2"
        assert all(s.qos == 1 for s in latest.values())

    # A clean shutdown says offline itself (the broker sends no will after a DISCONNECT).
    latest = await retained(broker.port, "mamori/lab/h1/status")
    assert latest["mamori/lab/h1/status"].payload == b"offline"


async def test_qos0_a_prefix_and_a_reserved_check_name(broker: Broker, tmp_path: Path) -> None:
    context = ExportContext(agent="h2", labels={}, interval=1.0)  # no site label: "default"
    cfg = exporter_config(broker.port, qos=0, topic_prefix="acme/mon", client_id="agent-h2-test")
    async with Watcher(broker.port, ("acme/mon/default/h2/#",)) as live, pumped(cfg, tmp_path, context) as p:
        await wait_until("online", lambda: p.exporter.connected)
        p.send([result(1, check="status"), result(2, check="fleet/pg/db"), result(3)])
        await wait_until("the web result", lambda: live.on("acme/mon/default/h2/web"))
        assert live.on("acme/mon/default/h2/web")[0].qos == 0
        assert json.loads(live.on("acme/mon/default/h2/web")[0].payload)["site"] == "default"
        await wait_until("all handled", lambda: p.outbox.depth("bus") == 0)
        # The two reserved names took no topic: dropped, counted, the status untouched.
        assert p.outbox.dropped[("bus", "invalid")] == 2
        assert live.payloads("acme/mon/default/h2/status") == [b"online"]
        assert not live.on("acme/mon/default/h2/fleet/pg/db")


async def test_push_while_disconnected_says_why_at_once(tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    exporter = mqtt.build(exporter_config(port), CONTEXT)
    await exporter.start()
    try:
        await asyncio.sleep(0.2)
        began = time.monotonic()
        answer = await exporter.push([])  # never empty in the pump; checks the state only
        assert time.monotonic() - began < 0.1
        assert answer.handled == 0
        assert answer.error.startswith(f"cannot connect to 127.0.0.1:{port}: ") and "refused" in answer.error
    finally:
        await exporter.aclose()
        await exporter.aclose()  # safe twice


# --- the last will -------------------------------------------------------------------------------------


async def test_last_will_on_an_unclean_disconnect_then_online_again(broker: Broker, tmp_path: Path) -> None:
    proxy = LinkProxy(broker.port)  # the agent's TCP path to the broker, which the test can break
    try:
        cfg = exporter_config(proxy.port, client_id="mamori-h3")
        context = ExportContext(agent="h3", labels={"site": "lab"}, interval=1.0)
        async with (
            Watcher(broker.port, ("mamori/lab/h3/status",)) as live,
            pumped(cfg, tmp_path, context) as p,
        ):
            await wait_until("online", lambda: live.payloads("mamori/lab/h3/status") == [b"online"])
            # Both sides get a TCP RST: the broker never saw a DISCONNECT, so it sends the will.
            await asyncio.to_thread(proxy.reset)
            await wait_until("the last will", lambda: b"offline" in live.payloads("mamori/lab/h3/status"))
            await wait_until(
                "online again", lambda: live.payloads("mamori/lab/h3/status")[-1:] == [b"online"]
            )
            assert live.payloads("mamori/lab/h3/status") == [b"online", b"offline", b"online"]
            # `online` is published first thing on a connect, before the exporter counts it.
            await wait_until("the second connect counted", lambda: p.exporter.connects == 2)
            latest = await retained(broker.port, "mamori/lab/h3/status")
            assert latest["mamori/lab/h3/status"].payload == b"online"

            # Gone for good (the link cut, then reset): the will stays as the retained status.
            await asyncio.to_thread(proxy.cut)
            await asyncio.to_thread(proxy.reset)
            await wait_until(
                "the last will again", lambda: live.payloads("mamori/lab/h3/status")[-1:] == [b"offline"]
            )
            latest = await retained(broker.port, "mamori/lab/h3/status")
            assert latest["mamori/lab/h3/status"].payload == b"offline"
            assert not p.exporter.connected
            answer = await p.exporter.push([])
            assert answer.handled == 0 and answer.error, answer
    finally:
        await asyncio.to_thread(proxy.close)


# --- a broker restart ----------------------------------------------------------------------------------


async def test_a_broker_restart_loses_nothing(tmp_path: Path) -> None:
    """Results keep coming while the broker is down: they wait in the outbox, and once it is back
    on the same port every one of them reaches a (persistent) subscriber, in order."""
    broker = Mosquitto(tmp_path / "broker", users={"agent": AGENT_PASSWORD, "watcher": WATCHER_PASSWORD})
    topic = "mamori/lab/h1/seq"
    sent: list[int] = []
    async with (
        broker,
        Watcher(broker.port, (topic,), persistent=True) as live,
        pumped(exporter_config(broker.port), tmp_path) as p,
    ):

        async def feed(n: int) -> None:
            for _ in range(n):
                i = len(sent)
                sent.append(i)
                p.send([result(i, check="seq")])
                await asyncio.sleep(0.02)

        def runs() -> list[str]:
            return [json.loads(s.payload)["message"] for s in live.on(topic)]

        await wait_until("online", lambda: p.exporter.connected)
        await feed(20)
        await wait_until("the first 20", lambda: len(runs()) >= 20)
        await broker.stop()  # SIGTERM: the broker saves the watcher's session and exits
        await feed(30)  # ~0.6 s without a broker
        assert not p.exporter.connected
        waiting = p.outbox.depth("bus")
        assert waiting >= 25, waiting  # (a few may have gone before the exporter noticed)
        await broker.start()  # the same port
        await feed(20)
        await wait_until("every result", lambda: len(set(runs())) == 70, timeout=15)
        assert p.pump.failures >= 1
        await wait_until("every PUBACK acked", lambda: p.outbox.depth("bus") == 0)
    first_seen = list(dict.fromkeys(runs()))
    assert first_seen == [f"run {i}" for i in sent]  # all of them, in order (a resend may repeat one)
    assert live.connects >= 2


# --- authentication ------------------------------------------------------------------------------------


async def test_a_wrong_password_is_one_clear_error_without_the_secret(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-pw-8e2d93"
    caplog.set_level(logging.DEBUG)
    cfg = exporter_config(broker.port, password=wrong)
    async with pumped(cfg, tmp_path) as p:
        p.send([result(1)])
        await wait_until("several attempts", lambda: p.exporter.failures >= 5)
        answer = await p.exporter.push([])
        assert p.outbox.depth("bus") == 1  # waiting, not lost
    errors = [r for r in caplog.records if r.name == "mamori.exporters.mqtt" and r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in errors] == [
        f"mqtt exporter bus: cannot connect to 127.0.0.1:{broker.port}: [code:135] Not authorized; "
        "reconnecting with backoff, results wait in the outbox"
    ]
    assert answer.handled == 0 and "Not authorized" in answer.error
    assert wrong not in caplog.text and AGENT_PASSWORD not in caplog.text
    assert wrong not in repr(cfg) and wrong not in str(cfg.model_dump())


async def test_password_from_a_file(broker: Broker, tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(AGENT_PASSWORD + "\n")
    cfg = config.parse(
        f"""
agent: {{name: h4, labels: {{site: lab}}}}
outbox: {{path: {tmp_path / "o.db"}}}
exporters:
  - {{name: bus, type: mqtt, host: 127.0.0.1, port: {broker.port}, username: agent, password_file: {secret}}}
""",
        "t.yml",
        env={},
    )
    (exporter_cfg,) = cfg.exporters
    async with pumped(exporter_cfg, tmp_path, ExportContext("h4", {"site": "lab"}, 1.0)) as p:
        await wait_until("online", lambda: p.exporter.connected)


# --- TLS -----------------------------------------------------------------------------------------------


async def test_tls_verified_and_its_failures(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Verified against the test CA; the certificate names 127.0.0.1.
    cfg = exporter_config(broker.tls_port, tls={"ca_file": str(broker.certs.ca_file)})
    async with pumped(cfg, tmp_path) as p:
        await wait_until("online over TLS", lambda: p.exporter.connected)
        p.send([result(1, check="tls-web")])
        await wait_until("delivered", lambda: p.pump.sent == 1)
    latest = await retained(broker.port, "mamori/lab/h1/tls-web")
    assert json.loads(latest["mamori/lab/h1/tls-web"].payload)["message"] == "run 1"

    # server_name: the name verified (and sent as SNI) instead of the address connected to.
    cfg = exporter_config(
        broker.tls_port, tls={"ca_file": str(broker.certs.ca_file), "server_name": "app.example.test"}
    )
    async with pumped(cfg, tmp_path) as p:
        await wait_until("online by name", lambda: p.exporter.connected)

    # Another CA, a name the certificate does not have, TLS to the plain port: never connected.
    other = make_certs(tmp_path)
    cases = [
        ({"ca_file": str(other.ca_file)}, broker.tls_port, "CERTIFICATE_VERIFY_FAILED"),
        (
            {"ca_file": str(broker.certs.ca_file), "server_name": "other.example.test"},
            broker.tls_port,
            "Hostname mismatch",
        ),
        # the plain listener takes the ClientHello for a broken packet and drops the connection
        ({"ca_file": str(broker.certs.ca_file)}, broker.port, "Connection reset by peer"),
    ]
    for tls, port, error in cases:
        caplog.clear()
        async with pumped(exporter_config(port, tls=tls), tmp_path) as p:
            p.send([result(1)])
            await wait_until("a failed attempt", lambda: p.exporter.failures >= 2)
            assert not p.exporter.connected and p.pump.sent == 0
            answer = await p.exporter.push([])
            assert error in answer.error, (tls, answer.error)
        errors = [
            r for r in caplog.records if r.name == "mamori.exporters.mqtt" and r.levelno >= logging.ERROR
        ]
        assert len(errors) == 1 and error in errors[0].getMessage(), [r.getMessage() for r in errors]

    # Without verification the wrong CA does not matter (a lab setting, off only when asked).
    async with pumped(exporter_config(broker.tls_port, tls={"verify": False}), tmp_path) as p:
        await wait_until("online unverified", lambda: p.exporter.connected)


async def test_a_client_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    mtls = Mosquitto(
        tmp_path / "mtls",
        users={"agent": AGENT_PASSWORD},
        tls=certs.valid,
        ca_file=certs.ca_file,
        require_certificate=True,
    )
    async with mtls:
        tls = {"ca_file": str(certs.ca_file)}
        async with pumped(exporter_config(mtls.tls_port or 0, tls=tls, timeout=0.5), tmp_path) as p:
            await wait_until("refused without a certificate", lambda: p.exporter.failures >= 1)
            assert not p.exporter.connected
        tls |= {"cert_file": str(certs.client.cert_file), "key_file": str(certs.client.key_file)}
        async with pumped(exporter_config(mtls.tls_port or 0, tls=tls), tmp_path) as p:
            await wait_until("online with a certificate", lambda: p.exporter.connected)


# --- a real agent ----------------------------------------------------------------------------------------


async def test_a_running_agent_publishes_its_checks(broker: Broker, tmp_path: Path) -> None:
    """The wiring in agent/runtime.py: config → outbox → pump → this exporter → the broker."""
    async with serve_tcp(banner(b"220 ready\r\n"), None) as tcp:
        cfg = config.parse(
            f"""
agent:
  {{name: edge-1, listen: "127.0.0.1:{free_port()}", labels: {{site: osaka}}, interval: 0.2s, timeout: 0.2s}}
checks:
  - {{name: smtp, type: tcp, host: 127.0.0.1, port: {tcp.port}, expect: "^220"}}
outbox: {{path: {tmp_path / "outbox.db"}}}
exporters:
  - name: bus
    type: mqtt
    host: 127.0.0.1
    port: {broker.port}
    username: agent
    password: {AGENT_PASSWORD}
""",
            "agent.yml",
            env={},
        )
        async with Watcher(broker.port, ("mamori/osaka/edge-1/#",)) as live:
            agent = Agent(cfg, None)
            task = asyncio.create_task(agent.run())
            try:
                await wait_until("two runs", lambda: len(live.on("mamori/osaka/edge-1/smtp")) >= 2)
            finally:
                agent.stop()
                assert await task == 0
            body = json.loads(live.on("mamori/osaka/edge-1/smtp")[0].payload)
            assert body["check"] == "smtp" and body["type"] == "tcp" and body["status"] == "OK"
            assert (body["agent"], body["site"], body["host"]) == ("edge-1", "osaka", "edge-1")
            await wait_until(
                "offline", lambda: live.payloads("mamori/osaka/edge-1/status")[-1:] == [b"offline"]
            )
            assert live.payloads("mamori/osaka/edge-1/status") == [b"online", b"offline"]


# --- config --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{name: b, type: mqtt, host: x, topic_prefix: 'a/+/b'}",
            "exporters[0].topic_prefix: a level of topic_prefix '+' cannot be an MQTT topic level: "
            "it contains '+'",
        ),
        (
            "{name: b, type: mqtt, host: x, topic_prefix: 'a//b'}",
            "exporters[0].topic_prefix: a level of topic_prefix is empty",
        ),
        (
            "{name: b, type: mqtt, host: x, topic_prefix: 'a/#'}",
            "exporters[0].topic_prefix: a level of topic_prefix '#' cannot be an MQTT topic level: "
            "it contains '#'",
        ),
        ("{name: b, type: mqtt, host: x, password: p}", "exporters[0].password: password needs username"),
        (
            "{name: b, type: mqtt, host: 'mqtt://x:1883'}",
            "exporters[0].host: invalid host 'mqtt://x:1883': "
            "expected a host name or an IP address (no scheme, no port)",
        ),
        ("{name: b, type: mqtt, host: x, qos: 2}", "exporters[0].qos: Input should be 0 or 1"),
        (
            "{name: b, type: mqtt, host: x, port: 0}",
            "exporters[0].port: Input should be greater than or equal to 1",
        ),
        (
            "{name: b, type: mqtt, host: x, tls: {cert_file: /etc/hostname}}",
            "exporters[0].tls.cert_file: cert_file and key_file must be given together",
        ),
        (
            "{name: b, type: mqtt, host: x, tls: {ca_file: /nonexistent}}",
            "exporters[0].tls.ca_file: file not found: /nonexistent",
        ),
        (
            "{name: b, type: mqtt, host: x, tls: {verify: false, ca_file: /etc/hostname}}",
            "exporters[0].tls.ca_file: ca_file and server_name are for verification: "
            "remove them or set verify: true",
        ),
        (
            "{name: b, type: mqtt, host: x, tls: {server_name: 'a b'}}",
            "exporters[0].tls.server_name: invalid server_name 'a b'",
        ),
        (
            "{name: b, type: mqtt, host: x, keepalive: 0.5s}",
            "exporters[0].keepalive: keepalive must be between 1s and 65535s",
        ),
        (
            "{name: b, type: mqtt, host: x, reconnect_delay: 10s, reconnect_max: 1s}",
            "exporters[0].reconnect_max: reconnect_max (1s) must not be less than reconnect_delay (10s)",
        ),
        (
            "{name: b, type: mqtt, host: x, username: u, password: p, password_file: /etc/hostname}",
            "exporters[0]: give either password or password_file, not both",
        ),
        (
            "{name: b, type: mqtt, host: x, username: u, password_file: /nonexistent}",
            "exporters[0].password_file: cannot read /nonexistent: No such file or directory",
        ),
        ("{name: b, type: mqtt, host: x, clientid: a}", "exporters[0].clientid: unknown key"),
        (  # the quorum's keys moved to the fleet check (tests/checks/test_fleet.py)
            "{name: b, type: mqtt, host: x, fleet: {enabled: true, quorum: majority, min_votes: 2}}",
            "exporters[0].fleet: quorum, min_votes: the fleet quorum is a check now — move these keys"
            " to a check of type fleet (docs/checks/fleet.md); here only `enabled` remains",
        ),
        ("{name: b, type: mqtt, host: x, fleet: {enable: true}}", "exporters[0].fleet.enable: unknown key"),
    ],
)
async def test_config_is_validated_at_load(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(f"exporters:\n  - {entry}\n", "t.yml", env={})
    assert str(err.value) == f"t.yml:2: {message}" or str(err.value).startswith(f"t.yml:2: {message}"), str(
        err.value
    )


async def test_defaults_and_topic_levels_of_the_agent() -> None:
    cfg = mqtt.MqttConfig.model_validate({"name": "b", "type": "mqtt", "host": "broker.example.test"})
    assert (cfg.port_number, cfg.qos, cfg.topic_prefix, cfg.keepalive, cfg.fleet.enabled) == (
        1883,
        1,
        "mamori",
        60.0,
        False,
    )
    assert (
        mqtt.MqttConfig.model_validate({"name": "b", "type": "mqtt", "host": "h", "tls": {}}).port_number
        == 8883
    )
    exporter = mqtt.build(cfg, CONTEXT)
    assert isinstance(exporter, mqtt.MqttExporter)
    assert (exporter.client_id, exporter.status_topic) == ("mamori-h1", "mamori/lab/h1/status")
    # The agent's name and site become topic levels: checked before anything connects.
    for agent, labels, problem in [
        ("web/1", {}, "agent.name 'web/1' cannot be an MQTT topic level: it contains '/'"),
        ("h1", {"site": "#"}, "agent.labels.site '#' cannot be an MQTT topic level: it contains '#'"),
        ("h1", {"site": ""}, "agent.labels.site is empty"),
    ]:
        with pytest.raises(StartupError) as err:
            mqtt.build(cfg, ExportContext(agent, labels, 1.0))
        assert str(err.value) == f"mqtt exporter b: {problem}"
