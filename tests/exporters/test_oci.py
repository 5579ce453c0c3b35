"""The OCI Monitoring exporter through the real `oci` SDK against the strict fake
(tests/fakes/oci_monitoring.py), and through the real Pump and Outbox where delivery matters."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import itertools
import json
import logging
import math
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import config
from agent.delivery.outcome import PushResult
from agent.delivery.pump import Pump
from agent.errors import StartupError
from agent.model import CheckResult, Reason, Sample, Status
from agent.outbox import Outbox, Record
from exporters.base import ExportContext, OutboxSink
from exporters.config import ExtraMissing, validate_exporter
from exporters.oci import AGE_MARGIN, MAX_AGE, OciConfig, OciExporter, build, fix_value
from exporters.samples import flatten
from lab.ports import free_port
from tests.fakes.oci_monitoring import (
    NOT_AUTHENTICATED,
    ApiKey,
    FakeOciMonitoring,
    fake_oci_identity,
    fake_oci_monitoring,
    new_key,
    ocid,
    private_pem,
    session_token,
)

CONTEXT = ExportContext(agent="host-1", labels={"site": "tokyo", "role": "app"}, interval=15.0)
BASE_STREAMS = 4  # probe_success, probe_duration_seconds, mamori_check_status, mamori_check_attempts


class Clock:
    """A clock a test moves by hand (the pump, the exporter and the fake all read it); `sleep`
    moves it too (the exporter's pacing)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


def result(check: str, t: float, *samples: Sample, status: Status = Status.OK) -> CheckResult:
    return CheckResult(
        check=check,
        check_type="tcp",
        target=f"127.0.0.1:{5000 + len(check)}",
        status=status,
        started_at=t,
        duration=0.012,
        samples=samples,
        reason=Reason.OK if status is Status.OK else Reason.REFUSED,
    )


def dns_sample(v: float = 0.003) -> Sample:
    return Sample("probe_dns_lookup_time_seconds", v)


@dataclass
class Env:
    fake: FakeOciMonitoring
    key: ApiKey
    compartment: str
    tmp: Path

    def config(self, **over: Any) -> OciConfig:
        raw: dict[str, Any] = {
            "type": "oci",
            "compartment_id": self.compartment,
            "namespace": "mamori",
            "config_file": str(self.key.config_file),
            "endpoint": self.fake.base_url + "/",
            "dimensions": {"env": "test"},
            "timeout": 2,
        }
        raw.update(over)
        return OciConfig.model_validate(raw)

    def exporter(self, clock: Callable[[], float] = time.time, **over: Any) -> OciExporter:
        """Requests are paced on `clock` when it is a Clock (the fake sees that rate), else on a
        clock of their own: no test sleeps for the pacing."""
        exporter = build(self.config(**over), CONTEXT)
        exporter.clock = clock
        pace = clock if isinstance(clock, Clock) else Clock(0.0)
        exporter.monotonic, exporter.sleep = pace, pace.sleep
        return exporter

    def outbox(self, name: str = "oci") -> Outbox:
        return Outbox(self.tmp / "outbox.db", 64 * 2**20, [name])


@asynccontextmanager
async def oci_env(tmp_path: Path) -> AsyncIterator[Env]:
    key = ApiKey.create(tmp_path / "oci")
    compartment = ocid("compartment")
    async with fake_oci_monitoring() as fake:
        fake.register(key.key_id, key.public_key)
        fake.authorize(compartment)
        yield Env(fake, key, compartment, tmp_path)


def records(*results: CheckResult) -> list[Record]:
    return [Record(i + 1, r) for i, r in enumerate(results)]


async def drain(pump: Pump[Record], clock: Clock, limit: int = 1000) -> list[float]:
    """Step the pump until nothing waits, moving the fake clock over every wait. The delays."""
    delays: list[float] = []
    for _ in range(limit):
        delay = await pump.step()
        if delay is None:
            return delays
        delays.append(delay)
        clock.t += delay
    raise AssertionError("the outbox never drained")


# --- mapping -----------------------------------------------------------------------------------


async def test_points_land_with_their_dimensions_units_and_original_timestamps(tmp_path: Path) -> None:
    async with oci_env(tmp_path) as env:
        now = float(int(time.time()))
        outbox = env.outbox()
        outbox.append([result("web", now - 60, dns_sample()), result("db", now - 45, status=Status.CRITICAL)])
        exporter = env.exporter()
        pump = Pump(exporter, outbox)
        assert await pump.step() == 0.0
        assert await pump.step() is None
        await exporter.aclose()

    # The request was signed with the API key of the config file, and verified.
    assert [p.key_id for p in env.fake.posts] == [env.key.key_id]
    assert env.fake.posts[0].atomicity == "NON_ATOMIC"
    points = {(p.name, p.labels["check"]): p for p in env.fake.points}
    assert len(points) == len(env.fake.points) == 2 * BASE_STREAMS + 1
    web = points[("probe_success", "web")]
    assert web.labels == {
        "check": "web",
        "target": "127.0.0.1:5003",
        "host": "host-1",
        "site": "tokyo",
        "role": "app",
        "env": "test",
    }
    assert (web.value, web.timestamp, web.namespace, web.compartment_id) == (
        1.0,
        now - 60,
        "mamori",
        env.compartment,
    )
    status = points[("mamori_check_status", "db")]
    assert (status.value, status.labels["reason"], status.labels["type"]) == (2.0, "refused", "tcp")
    assert points[("probe_success", "db")].timestamp == now - 45
    assert dict(points[("probe_duration_seconds", "web")].metadata) == {"unit": "seconds"}
    assert dict(points[("probe_dns_lookup_time_seconds", "web")].metadata) == {"unit": "seconds"}
    assert points[("mamori_check_attempts", "web")].metadata == ()
    assert (pump.sent, outbox.depth("oci")) == (2, 0)


async def test_nan_is_skipped_and_counted_empty_and_long_label_values_are_made_acceptable(
    tmp_path: Path,
) -> None:
    long = "x" * 600
    async with oci_env(tmp_path) as env:
        exporter = env.exporter()
        now = time.time()
        r = result(
            "odd",
            now,
            Sample("probe_http_duration_seconds", math.nan, (("phase", "tls"),)),
            Sample("probe_http_duration_seconds", math.inf, (("phase", "connect"),)),
            Sample("probe_http_duration_seconds", 0.2, (("phase", ""),)),
            Sample("probe_http_duration_seconds", 0.3, (("phase", long),)),
            Sample("probe_http_duration_seconds", 0.4, (("phase", long + "y"),)),
        )
        env.fake.fail_for(3600, status=503)
        assert (await exporter.push(records(r))).handled == 0
        assert exporter.skipped == {}  # counted when the result is done with, not per attempt
        env.fake.fail_for(0)
        outcome = await exporter.push(records(r))
        await exporter.aclose()
    assert outcome == PushResult(1)
    assert exporter.skipped == {"non_finite": 2}
    phases = {p.labels["phase"]: p.value for p in env.fake.points if p.name == "probe_http_duration_seconds"}
    assert phases["(empty)"] == 0.2
    long_ones = sorted(k for k in phases if k.startswith("xxx"))
    assert len(long_ones) == 2 and all(len(k) == 512 for k in long_ones)  # still two streams
    assert env.fake.errors == [] and env.fake.posts[0].failed == []
    assert fix_value("") == "(empty)" and fix_value("a" * 512) == "a" * 512


# --- config at load ----------------------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path) -> ApiKey:
    return ApiKey.create(tmp_path / "oci")


def load(key: ApiKey, extra: str) -> config.AgentConfig:
    """Lines 1-5 are fixed, `extra` starts on line 6."""
    text = f"""agent: {{name: h1}}
exporters:
  - type: oci
    config_file: {key.config_file}
    endpoint: http://127.0.0.1:9/
{extra}"""
    if "compartment_id" not in extra:
        text += "    compartment_id: ocid1.compartment.oc1..aaaaaaaabbbbcccc\n"
    return config.parse(text, "oci.yml", env={})


def load_error(key: ApiKey, extra: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        load(key, extra)
    return str(info.value).replace(str(key.config_file.parent), "DIR")


DIMS_15 = "{" + ", ".join(f"d{i}: v" for i in range(15)) + "}"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            "    namespace: oci_custom\n",
            "oci.yml:6: exporters[0].namespace: invalid namespace 'oci_custom': the prefixes oci_ and "
            "oracle_ are reserved",
        ),
        (
            "    namespace: Oracle_x\n",
            "oci.yml:6: exporters[0].namespace: invalid namespace 'Oracle_x': the prefixes oci_ and "
            "oracle_ are reserved",
        ),
        (
            "    namespace: 9lives\n",
            "oci.yml:6: exporters[0].namespace: invalid namespace '9lives': must start with a letter and "
            "contain only letters, digits and _",
        ),
        (
            "    namespace: my-app\n",
            "oci.yml:6: exporters[0].namespace: invalid namespace 'my-app': must start with a letter and "
            "contain only letters, digits and _",
        ),
        (
            "    namespace: m\n    resource_group: 'front end'\n",
            "oci.yml:7: exporters[0].resource_group: invalid resource_group 'front end': must start with a "
            "letter and contain only letters, digits, ., _, - and $",
        ),
        (
            "    namespace: m\n    compartment_id: ocid1.instance.oc1..aaaa\n",
            "oci.yml:7: exporters[0].compartment_id: not a compartment or tenancy OCID (expected "
            "ocid1.compartment.<realm>.<region>.<id> or ocid1.tenancy.<realm>.<region>.<id>)",
        ),
        (
            "    namespace: m\n    dimensions: {'a b': x}\n",
            "oci.yml:7: exporters[0].dimensions: dimension key 'a b': 1-256 printable ASCII characters "
            "without spaces",
        ),
        (
            "    namespace: m\n    dimensions: {env: ''}\n",
            "oci.yml:7: exporters[0].dimensions: dimension 'env': the value must not be empty",
        ),
        (
            f"    namespace: m\n    dimensions: {{env: {'v' * 513}}}\n",
            "oci.yml:7: exporters[0].dimensions: dimension 'env': the value is 513 characters; at most 512",
        ),
        (
            f"    namespace: m\n    dimensions: {{{'k' * 257}: v}}\n",
            f"oci.yml:7: exporters[0].dimensions: dimension key '{'k' * 257}': 1-256 printable ASCII "
            "characters without spaces",
        ),
        (
            "    namespace: m\n    dimensions: {host: web1}\n",
            "oci.yml:7: exporters[0].dimensions: dimension 'host' is set by the agent itself (host, check, "
            "target and the metrics' labels): choose another name",
        ),
        (
            "    namespace: m\n    dimensions: {phase: x}\n",
            "oci.yml:7: exporters[0].dimensions: dimension 'phase' is set by the agent itself (host, "
            "check, target and the metrics' labels): choose another name",
        ),
        (
            f"    namespace: m\n    dimensions: {DIMS_15}\n",
            "oci.yml:7: exporters[0].dimensions: 15 static dimensions + host + 0 agent labels + the labels "
            "of mamori_pg_primary_witness (check, cluster, state, target, witness, zone) make 22 dimensions; "
            "OCI Monitoring allows 20 per metric stream",
        ),
        (
            "    namespace: m\n    profile: PROD\n",
            "oci.yml:7: exporters[0].profile: no profile [PROD] in DIR/config",
        ),
        (
            "    namespace: m\n    region: Tokyo\n",
            "oci.yml:7: exporters[0].region: invalid region 'Tokyo': expected a region identifier like "
            "ap-tokyo-1",
        ),
        (
            "    namespace: m\n    auth: instance_principal\n",
            "oci.yml:4: exporters[0].config_file: only used with auth: config_file (auth is "
            "instance_principal)",
        ),
        (
            "    namespace: m\n    endpoint_url: x\n",
            "oci.yml:7: exporters[0].endpoint_url: unknown key",
        ),
        ("    timeout: 5s\n", "oci.yml:3: exporters[0].namespace: required key is missing"),
        (
            "    namespace: m\n    linger: 30s\n",
            "oci.yml:7: exporters[0].linger: 30s is too long: at most 10s (a short wait for a fuller "
            "request; OCI Monitoring alarms evaluate every minute)",
        ),
        (
            "    namespace: m\n    linger: -1\n",
            "oci.yml:7: exporters[0].linger: Input should be greater than or equal to 0",
        ),
        (
            "    namespace: m\n    max_requests_per_second: 60\n",
            "oci.yml:7: exporters[0].max_requests_per_second: 60 is more than OCI Monitoring allows a "
            "whole tenancy (50 requests a second, shared by every agent)",
        ),
        (
            "    namespace: m\n    max_requests_per_second: 0\n",
            "oci.yml:7: exporters[0].max_requests_per_second: Input should be greater than 0",
        ),
    ],
)
def test_config_rules_are_enforced_at_load_with_file_line_and_path(
    key: ApiKey, extra: str, error: str
) -> None:
    assert load_error(key, extra) == error


def test_config_file_problems_are_reported_at_load(key: ApiKey, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    text = f"""exporters:
  - type: oci
    compartment_id: ocid1.compartment.oc1..aaaa
    namespace: m
    config_file: {missing}
"""
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, "oci.yml", env={})
    assert str(info.value) == (
        f"oci.yml:5: exporters[0].config_file: cannot read {missing}: No such file or directory"
    )
    key.config_file.write_text(
        f"[DEFAULT]\nuser={key.user}\ntenancy={key.tenancy}\nkey_file={key.key_file}\n"
    )
    assert load_error(key, "    namespace: m\n") == (
        "oci.yml:3: exporters[0]: profile: [DEFAULT] in DIR/config lacks fingerprint (API key authentication)"
    )
    key.key_file.unlink()
    key.config_file.write_text(
        f"[DEFAULT]\nuser={key.user}\ntenancy={key.tenancy}\nkey_file={key.key_file}\nfingerprint=aa\n"
    )
    assert load_error(key, "    namespace: m\n") == (
        "oci.yml:3: exporters[0]: profile: the key_file of [DEFAULT] in DIR/config is not readable"
    )


def test_a_valid_config_loads_and_defaults_are_sensible(key: ApiKey) -> None:
    cfg = load(key, "    namespace: mamori\n    dimensions: {env: prod}\n    resource_group: fleet-1\n")
    (oci,) = cfg.exporters
    assert (oci.name, oci.batch, oci.auth, oci.profile, oci.timeout) == (
        "oci",
        100,
        "config_file",
        "DEFAULT",
        10.0,
    )
    assert oci.endpoint == "http://127.0.0.1:9"  # a trailing slash would make //20180401/metrics
    assert (oci.linger, oci.max_requests_per_second) == (2.0, 10.0)


def test_every_config_key_is_in_the_docs_table() -> None:
    doc = (Path(__file__).parents[2] / "docs/exporters/oci.md").read_text()
    table = doc.split("## Configuration", 1)[1].split("###", 1)[0]
    documented = {
        key for cell in re.findall(r"^\| ([^|]+) \|", table, re.M) for key in re.findall(r"`(\w+)`", cell)
    }
    assert set(OciConfig.model_fields) - {"type"} <= documented


def test_plain_http_only_to_loopback_and_a_missing_default_profile(key: ApiKey) -> None:
    raw = {"type": "oci", "compartment_id": "ocid1.tenancy.oc1..aaaa", "namespace": "m"}
    raw["config_file"] = str(key.config_file)
    with pytest.raises(ValueError, match=r"'http://telemetry.example.com' must use https://"):
        OciConfig.model_validate(raw | {"endpoint": "http://telemetry.example.com"})
    assert OciConfig.model_validate(raw | {"endpoint": "https://telemetry.example.com/"}).endpoint == (
        "https://telemetry.example.com"
    )
    text = key.config_file.read_text().replace("[DEFAULT]", "[PROD]")
    key.config_file.write_text(text)
    with pytest.raises(ValueError, match=r"profile: no profile \[DEFAULT\] in "):
        OciConfig.model_validate(raw)
    assert OciConfig.model_validate(raw | {"profile": "PROD"}).profile == "PROD"


async def test_an_encrypted_key_with_its_passphrase_from_a_file(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    async with oci_env(tmp_path) as env:
        env.key.key_file.write_bytes(
            env.key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"s3cret pass"),
            )
        )
        secret = tmp_path / "passphrase"
        secret.write_text("s3cret pass\n")
        exporter = env.exporter(pass_phrase_file=str(secret))
        assert "s3cret" not in repr(exporter.config)
        assert await exporter.push(records(result("a", time.time()))) == PushResult(1)
        await exporter.aclose()
    assert [p.key_id for p in env.fake.posts] == [env.key.key_id]


def test_the_20_dimension_limit_counts_the_agent_labels() -> None:
    raw = {
        "type": "oci",
        "compartment_id": "ocid1.tenancy.oc1..aaaa",
        "namespace": "m",
        "auth": "instance_principal",
        "dimensions": {f"d{i}": "v" for i in range(10)},
    }
    labels = {f"l{i}": "v" for i in range(5)}
    with pytest.raises(ValueError, match=r"10 static dimensions \+ host \+ 5 agent labels .* make 22"):
        OciConfig.model_validate(raw, context={"agent_labels": labels})
    cfg = OciConfig.model_validate(raw)  # without the agent section the loader cannot know...
    with pytest.raises(StartupError, match="exporter oci: 10 static dimensions \\+ host \\+ 5 agent labels"):
        build(cfg, ExportContext(agent="h", labels=labels, interval=15))  # ...so the agent refuses to start
    with pytest.raises(StartupError, match="agent label 'host' collides"):
        build(cfg, ExportContext(agent="h", labels={"host": "x"}, interval=15))
    with pytest.raises(StartupError, match="d1: both a static dimension and an agent label"):
        build(cfg, ExportContext(agent="h", labels={"d1": "x"}, interval=15))
    # An agent label that a metric also has ("zone", on the widest metric: the witnesses of
    # issue 15) is overridden by the sample's label for that stream, so it does not count twice.
    ok = {f"l{i}": "v" for i in range(3)} | {"zone": "ad1"}
    assert isinstance(build(cfg, ExportContext(agent="h", labels=ok, interval=15)), OciExporter)


@pytest.mark.skipif(
    "context" not in inspect.signature(validate_exporter).parameters,
    reason="agent/config.py does not pass the agent section to exporter models yet",
)
def test_agent_labels_count_at_load_when_the_loader_passes_them(key: ApiKey) -> None:
    labels = ", ".join(f"l{i}: v" for i in range(5))
    dims = "{" + ", ".join(f"d{i}: v" for i in range(10)) + "}"
    text = f"""agent: {{name: h1, labels: {{{labels}}}}}
exporters:
  - type: oci
    compartment_id: ocid1.compartment.oc1..aaaa
    namespace: m
    config_file: {key.config_file}
    dimensions: {dims}
"""
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, "oci.yml", env={})
    assert str(info.value) == (
        "oci.yml:7: exporters[0].dimensions: 10 static dimensions + host + 5 agent labels + the labels "
        "of mamori_pg_primary_witness (check, cluster, state, target, witness, zone) make 22 dimensions; "
        "OCI Monitoring allows 20 per metric stream"
    )


def test_build_without_the_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = OciConfig.model_validate(
        {
            "type": "oci",
            "compartment_id": "ocid1.tenancy.oc1..aaaa",
            "namespace": "m",
            "auth": "resource_principal",
        }
    )
    monkeypatch.setitem(sys.modules, "oci", None)  # import oci -> ImportError
    with pytest.raises(ExtraMissing, match=r"pip install 'mamori\[oci\]'"):
        build(cfg, CONTEXT)


def test_the_client_has_no_sdk_retries_no_circuit_breaker_and_the_regional_endpoint(key: ApiKey) -> None:
    import oci  # type: ignore[import-untyped]

    def client(**over: Any) -> Any:
        raw = {"type": "oci", "compartment_id": "ocid1.tenancy.oc1..aaaa", "namespace": "m"}
        raw |= {"config_file": str(key.config_file)} | over
        return build(OciConfig.model_validate(raw), CONTEXT)._make_client()

    tokyo = client(region="ap-tokyo-1")  # built only: nothing is sent
    assert tokyo.base_client.endpoint == "https://telemetry-ingestion.ap-tokyo-1.oraclecloud.com/20180401"
    assert isinstance(tokyo.retry_strategy, oci.retry.NoneRetryStrategy)
    assert isinstance(
        tokyo.base_client.circuit_breaker_strategy, oci.circuit_breaker.NoCircuitBreakerStrategy
    )
    ashburn = "https://telemetry-ingestion.us-ashburn-1.oraclecloud.com/20180401"  # the config file's
    assert client().base_client.endpoint == ashburn
    assert client(region="us-langley-1").base_client.endpoint.endswith(".oraclegovcloud.com/20180401")
    assert client(endpoint="http://127.0.0.1:9/x/").base_client.endpoint == "http://127.0.0.1:9/x/20180401"


# --- batching ----------------------------------------------------------------------------------


async def test_a_request_carries_at_most_50_streams_taking_results_in_outbox_order(tmp_path: Path) -> None:
    async with oci_env(tmp_path) as env:
        now = float(int(time.time()))
        outbox = env.outbox()
        # 12 checks x 5 streams = 60 streams, twice (the second round adds datapoints, not streams).
        outbox.append(
            [result(f"c{i:02}", now - 30 + 15 * k, dns_sample()) for k in range(2) for i in range(12)]
        )
        exporter = env.exporter()
        pump = Pump(exporter, outbox)
        assert await drain(pump, Clock(now)) == [0.0, 0.0, 0.0]
        await exporter.aclose()
    # Results in order: 10 results (50 streams), then c10, c11 of round 1 with c00..c07 of round 2
    # (10 + 40 streams), then the rest.
    assert [(p.streams, p.datapoints) for p in env.fake.posts] == [(50, 50), (50, 50), (20, 20)]
    assert env.fake.duplicates() == [] and len(env.fake.points) == 120
    assert pump.sent == 24


async def test_a_backlog_of_few_streams_goes_many_points_per_stream_up_to_1000_per_request(
    tmp_path: Path,
) -> None:
    async with oci_env(tmp_path) as env:
        now = float(int(time.time()))
        exporter = env.exporter(batch=500)
        batch = records(
            *(result(f"c{i}", now - 3000 + 15 * k, dns_sample()) for k in range(30) for i in range(10))
        )
        first = await exporter.push(batch)
        second = await exporter.push(batch[first.handled :])
        await exporter.aclose()
    assert (first, second) == (PushResult(200), PushResult(100))  # 200 results x 5 = 1000 points
    assert [(p.streams, p.datapoints) for p in env.fake.posts] == [(50, 1000), (50, 500)]
    assert env.fake.duplicates() == []


async def test_one_result_with_more_than_50_streams_is_split_and_resumed_without_resending(
    tmp_path: Path,
) -> None:
    members = [
        Sample("mamori_member_success", 1.0, (("member", f"m{i:03}"), ("role", "app"))) for i in range(116)
    ]
    async with oci_env(tmp_path) as env:
        now = time.time()
        exporter = env.exporter()
        big = records(result("lb", now, *members), result("after", now))
        env.fake.fail_after(1, status=500)  # the second request of the split fails
        first = await exporter.push(big)
        assert (first.handled, first.error.split(" (")[0]) == (0, "500 InternalServerError")
        assert len(env.fake.points) == 50
        second = await exporter.push(big)  # the pump retries the same records
        await exporter.aclose()
    # The last 20 streams of the big result share their request with the next result.
    assert second == PushResult(2)
    assert [p.streams for p in env.fake.posts] == [50, 50, 20 + BASE_STREAMS]
    assert env.fake.duplicates() == [] and len(env.fake.points) == 120 + BASE_STREAMS


# --- steady state: fuller requests (linger), paced requests ---------------------------------------

HTTP_SAMPLES = 13  # a plain-HTTP http check: 5 phases, status, version... (17 streams a result)


def http_result(check: str, t: float, *, status: Status = Status.OK) -> CheckResult:
    samples = tuple(Sample(f"probe_http_sample_{k}_seconds", k / 1000) for k in range(HTTP_SAMPLES))
    return result(check, t, *samples, status=status)


class Running:
    """A started Pump behind the real OutboxSink, on a fake clock, and a way to let it settle:
    `settle()` returns once the pump waits for new results (held back or idle), not mid-push."""

    def __init__(self, env: Env, clock: Clock, **over: Any) -> None:
        self.clock = clock
        self.outbox = env.outbox()
        self.exporter = env.exporter(clock, **over)
        self.pump = Pump(self.exporter, self.outbox, clock=clock, rand=lambda: 0.0)
        self.sink = OutboxSink(self.outbox, [self.pump])
        self.idle = asyncio.Event()  # no push in progress
        self.idle.set()
        push = self.exporter.push

        async def watched(records: Any) -> PushResult:
            self.idle.clear()
            try:
                return await push(records)
            finally:
                self.idle.set()

        self.exporter.push = watched  # type: ignore[method-assign]
        self.pump.start()

    async def consume(self, r: CheckResult) -> None:
        await self.sink.consume(r)
        await self.settle()

    async def settle(self) -> None:
        """Until no push is in progress and the pump waits on its wake event (held back or idle).
        Counting loop turns alone is not enough on a loaded machine: between two pushes the pump
        acks, reads and decodes a page, and a worker thread may finish late."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for _ in range(20):
                await asyncio.sleep(0)
            if self.idle.is_set() and self.pump._wake._waiters:
                return
            if not self.idle.is_set():
                await self.idle.wait()
            else:
                await asyncio.sleep(0.01)
        raise AssertionError("the pump did not settle within 10 s")

    async def close(self) -> float:
        """The shutdown drain; its real duration."""
        t0 = time.monotonic()
        await self.sink.aclose()
        return time.monotonic() - t0


async def test_steady_state_40_checks_at_2s_send_full_requests_at_a_third_of_the_rate(
    tmp_path: Path,
) -> None:
    """40 http checks (17 streams a result) every 2 s, each at its phase: before, one request per
    result (20/s, 17 streams); now 50 streams a request (6.8/s), nothing lost or sent twice, and
    the shutdown drain sends the rest at once."""
    async with oci_env(tmp_path) as env:
        t0 = float(int(time.time()))
        clock = Clock(t0)
        env.fake.clock = env.fake.wall = clock
        run = Running(env, clock)
        for k in range(10):
            for i in range(40):
                clock.t = max(clock.t, t0 + 2 * k + i * 0.05)
                await run.consume(http_result(f"web-{i:02}", clock.t))
        steady = list(env.fake.posts)
        seconds = clock.t - t0
        await run.consume(http_result("late", clock.t))  # 17 streams: held back for more...
        assert len(env.fake.posts) == len(steady)
        assert await run.close() < 1.0  # ...but not when the agent stops: sent at once
    assert len(steady) == 400 * 17 // 50 == 136  # was 400 (one a result)
    assert len(steady) / seconds < 7.0  # requests per second, for the 20 results a second
    assert [p.streams for p in env.fake.posts] == [50] * 136 + [17]  # every steady one full
    assert env.fake.duplicates() == [] and len(env.fake.points) == 401 * 17
    assert run.outbox.dropped == {} and run.pump.sent == 401


async def test_a_result_arriving_as_the_agent_stops_is_flushed_and_the_pump_stops(tmp_path: Path) -> None:
    """The pump holds a result back; another arrives (waking it) in the same turn as the stop:
    the stop is not lost (asyncio.wait_for would swallow it on 3.11 and hang the shutdown), and
    the drain sends both at once."""
    async with oci_env(tmp_path) as env:
        clock = Clock(float(int(time.time())))
        env.fake.clock = env.fake.wall = clock
        run = Running(env, clock)
        await run.consume(http_result("a", clock.t))
        assert env.fake.posts == []  # held back
        await run.sink.consume(http_result("b", clock.t))  # wakes the pump; no await in between
        assert await asyncio.wait_for(run.close(), 5) < 1.0
    assert [p.streams for p in env.fake.posts] == [34]
    assert env.fake.duplicates() == [] and run.pump.sent == 2


async def test_a_backlog_drains_at_once_paced_under_max_requests_per_second_and_a_lone_tail_lingers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """5 minutes of 40 checks at 15 s waiting when the service comes back: the pump does not
    linger over a backlog, requests start at least 1/rate apart (fake time), every one but the
    last carries 50 streams; the last, alone, waits for the linger, then goes."""
    async with oci_env(tmp_path) as env:
        t0 = float(int(time.time()))
        clock = Clock(t0)
        env.fake.clock = env.fake.wall = clock
        run = Running(env, clock, max_requests_per_second=4, linger="1500ms")
        backlog = [result(f"c{i:02}", t0 - 300 + 15 * k, dns_sample()) for k in range(20) for i in range(40)]
        backlog.append(result("late", t0))  # 4 streams more: a tail that does not fill a request
        with caplog.at_level(logging.WARNING, "mamori.exporters.oci"):
            run.outbox.append(backlog)
            run.pump.wake()
            await run.settle()
            drained = clock.t - t0
            assert run.outbox.depth("oci") == 1  # the tail, held back
            clock.t += 1.0
            run.pump.wake()
            await run.settle()
            assert run.outbox.depth("oci") == 1  # 1.0 s of 1.5
            clock.t += 0.6
            run.pump.wake()
            await run.settle()
            assert run.outbox.depth("oci") == 0
        await run.close()
    posts = env.fake.posts
    assert [p.streams for p in posts] == [50] * 80 + [BASE_STREAMS]
    gaps = [b.at - a.at for a, b in itertools.pairwise(posts)]
    assert min(gaps[:-1]) >= 0.25 - 1e-9  # 4 a second at most
    assert drained == pytest.approx(79 * 0.25)  # at the rate, not lingering between requests
    assert (
        env.fake.throttled == 0
        and env.fake.duplicates() == []
        and len(env.fake.points) == 4000 + BASE_STREAMS
    )
    assert not caplog.records  # catching up: no "falling behind" warning


async def test_pacing_that_cannot_keep_up_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with oci_env(tmp_path) as env:
        t0 = float(int(time.time()))
        clock = Clock(t0)
        env.fake.clock = env.fake.wall = clock
        exporter = env.exporter(clock, max_requests_per_second=1)
        with caplog.at_level(logging.WARNING, "mamori.exporters.oci"):
            for n in range(150):  # a result every 0.5 s, sent one request a second
                assert (await exporter.push([Record(n, result(f"c{n % 5}", t0 + n / 2))])).handled == 1
        await exporter.aclose()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "sending at max_requests_per_second (1) for 60 s and the oldest waiting result got older" in line
    assert "raise max_requests_per_second (the tenancy allows 50 for all agents together)" in line
    assert env.fake.throttled == 0 and len(env.fake.posts) == 150


async def test_a_result_cut_at_the_end_of_a_request_is_finished_next_and_counted_once(
    tmp_path: Path,
) -> None:
    """Results of 17 streams: a request takes two and 16 streams of the third; the next one
    starts with its last stream. A stream refused in either part counts its result once."""
    async with oci_env(tmp_path) as env:
        now = float(int(time.time()))
        outbox = env.outbox()
        outbox.append(
            [
                http_result("a", now),
                http_result("b", now),
                http_result("ahead", now + 1200),  # the service refuses its streams (20 min ahead)
                http_result("c", now),
            ]
        )
        exporter = env.exporter()
        pump = Pump(exporter, outbox)
        assert await drain(pump, Clock(now)) == [0.0, 0.0]
        await exporter.aclose()
    assert [(p.streams, len(p.failed)) for p in env.fake.posts] == [(50, 16), (18, 1)]
    assert outbox.dropped == {("oci", "invalid"): 1}
    assert pump.sent == 3 and exporter.refused_streams == 17
    assert env.fake.duplicates() == [] and len(env.fake.points) == 3 * 17


def test_fills_counts_streams_not_results(key: ApiKey) -> None:
    raw = {"type": "oci", "compartment_id": "ocid1.tenancy.oc1..aaaa", "namespace": "m"}
    exporter = build(OciConfig.model_validate(raw | {"config_file": str(key.config_file)}), CONTEXT)
    now = time.time()
    assert exporter.linger == 2.0 and exporter.config.max_requests_per_second == 10
    assert not exporter.fills(records(*(http_result(f"c{i}", now) for i in range(2))))  # 34 streams
    assert exporter.fills(records(*(http_result(f"c{i}", now) for i in range(3))))  # 51
    assert not exporter.fills(records(*(result(f"c{i}", now) for i in range(12))))  # 48
    assert exporter.fills(records(result("old", now - MAX_AGE)))  # expired: dropped at once


# --- refusals and failures ---------------------------------------------------------------------


async def test_non_atomic_refused_streams_are_counted_and_never_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with oci_env(tmp_path) as env:
        now = float(int(time.time()))
        outbox = env.outbox()
        # A result stamped 20 min ahead (a clock that jumped): the service refuses its streams.
        outbox.append([result("ok", now), result("ahead", now + 1200), result("ok2", now + 1)])
        exporter = env.exporter()
        pump = Pump(exporter, outbox)
        with caplog.at_level(logging.ERROR, "mamori.exporters.oci"):
            assert await drain(pump, Clock(now)) == [0.0]
        await exporter.aclose()
    assert len(env.fake.posts) == 1 and len(env.fake.posts[0].failed) == BASE_STREAMS
    assert {p.labels["check"] for p in env.fake.points} == {"ok", "ok2"}
    assert outbox.dropped[("oci", "invalid")] == 1
    assert (pump.sent, pump.failures, exporter.refused_streams) == (2, 0, BASE_STREAMS)
    (line,) = [r.getMessage() for r in caplog.records]
    assert (
        "refused 4 of 12 streams (not retried; e.g. probe_success: Datapoint timestamp out of range" in line
    )
    assert str(env.key.key_file) not in line and env.key.fingerprint not in line


async def test_429_waits_retry_after_500_backs_off_and_a_hung_request_times_out(tmp_path: Path) -> None:
    async with oci_env(tmp_path) as env:
        clock = Clock(float(int(time.time())))
        env.fake.clock = clock
        outbox = env.outbox()
        outbox.append([result("a", clock.t - 10), result("b", clock.t - 5)])
        exporter = env.exporter(clock, timeout=1.0)
        pump = Pump(exporter, outbox, clock=clock, rand=lambda: 0.0)
        env.fake.throttle(1, retry_after=7)
        assert await pump.step() == 7.0  # the service's Retry-After
        env.fake.fail_for(60, status=500)
        assert await pump.step() == 1.0  # backoff: 2 s x [0.5, 1) on the second failure in a row
        clock.t += 61
        env.fake.hang()
        assert await pump.step() == 2.0  # the read timeout (1 s): 4 s x 0.5
        assert "timeout" in pump.last_error
        env.fake.release()  # the held request is answered 503 and never processed
        assert await drain(pump, clock) == [0.0]
        await exporter.aclose()
    assert (pump.failures, pump.sent, outbox.depth("oci")) == (3, 2, 0)
    assert env.fake.duplicates() == [] and len(env.fake.points) == 2 * BASE_STREAMS
    assert env.fake.attempts == 4


async def test_many_failures_in_a_row_never_open_a_circuit_breaker(tmp_path: Path) -> None:
    async with oci_env(tmp_path) as env:
        exporter = env.exporter()
        batch = records(result("a", time.time()))
        env.fake.fail_for(3600, status=503)
        for _ in range(12):  # the SDK's default breaker opens after 10 failures for 30 s
            assert (await exporter.push(batch)).handled == 0
        env.fake.fail_for(0)
        assert await exporter.push(batch) == PushResult(1)  # reaches the service at once
        await exporter.aclose()
    assert env.fake.attempts == 13


async def test_a_bad_key_is_401_logged_retried_and_nothing_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with oci_env(tmp_path) as env:
        right = env.fake.keys[env.key.key_id]
        env.fake.register(env.key.key_id, new_key().public_key())  # the console holds another key
        clock = Clock(float(int(time.time())))
        outbox = env.outbox()
        outbox.append([result("a", clock.t), result("b", clock.t)])
        exporter = env.exporter(clock)
        pump = Pump(exporter, outbox, clock=clock, rand=lambda: 0.0)
        with caplog.at_level(logging.WARNING):
            assert await pump.step() == 0.5
            assert await pump.step() == 1.0
        assert (env.fake.unauthenticated, outbox.depth("oci"), pump.last_error.split(" (")[0]) == (
            2,
            2,
            "401 NotAuthenticated",
        )
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1  # once per distinct problem, not per retry
        assert "answered 401 NotAuthenticated" in errors[0] and "results are kept" in errors[0]
        assert "check the key, its fingerprint" in errors[0]
        env.fake.register(env.key.key_id, right)  # fixed
        assert await drain(pump, clock) == [0.0]
        await exporter.aclose()
    assert (pump.sent, len(env.fake.points)) == (2, 2 * BASE_STREAMS)
    assert env.fake.duplicates() == []


async def test_the_fake_refuses_a_skewed_clock_a_tampered_body_and_an_unsigned_request(
    tmp_path: Path,
) -> None:
    import oci

    async with oci_env(tmp_path) as env:
        exporter = env.exporter()
        env.fake.date_clock = lambda: time.time() + 301  # the host's clock is 5 min behind
        assert (await exporter.push(records(result("a", time.time())))).error.startswith(
            "401 NotAuthenticated"
        )
        env.fake.date_clock = time.time
        cfg = oci.config.from_file(str(env.key.config_file))
        signer = oci.signer.Signer(cfg["tenancy"], cfg["user"], cfg["fingerprint"], cfg["key_file"])

        def post(body: bytes, tamper: bytes | None = None, sign: bool = True) -> tuple[int, dict[str, Any]]:
            from oci._vendor import requests  # type: ignore[import-untyped]

            req = requests.Request(
                "POST",
                f"{env.fake.base_url}/20180401/metrics",
                data=body,
                headers={"content-type": "application/json"},
            ).prepare()
            if sign:
                signer(req)
            if tamper is not None:
                req.body = tamper
            with requests.Session() as s:
                resp = s.send(req, timeout=5)
            assert resp.headers.get("opc-request-id")
            return resp.status_code, resp.json()

        body = json.dumps({"metricData": [], "batchAtomicity": "NON_ATOMIC"}).encode()
        tampered = body.replace(b"NON_ATOMIC", b"ATOMIC_ZZ_")  # same length, another hash
        assert await asyncio.to_thread(post, body, tampered) == (
            401,
            {"code": "NotAuthenticated", "message": NOT_AUTHENTICATED},
        )
        assert (await asyncio.to_thread(post, body, None, False))[0] == 401
        assert await asyncio.to_thread(post, body) == (
            400,
            {"code": "MissingParameter", "message": "metricData is required and must not be empty."},
        )
        await exporter.aclose()
    assert env.fake.points == []


async def test_the_fake_refuses_what_the_sdk_would_send_wrong(tmp_path: Path) -> None:
    """Why the exporter uses the SDK's models and skips NaN: a dict is sent as given (snake_case),
    and a NaN is serialised as bare NaN (not JSON)."""
    import oci

    async with oci_env(tmp_path) as env:
        exporter = env.exporter()
        client = exporter._make_client()
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stream = {"namespace": "m", "compartment_id": env.compartment, "name": "x", "dimensions": {"a": "b"}}
        snake = {"metric_data": [stream | {"datapoints": [{"timestamp": ts, "value": 1}]}]}
        with pytest.raises(oci.exceptions.ServiceError) as info:
            await asyncio.to_thread(client.post_metric_data, snake)
        assert (info.value.status, info.value.code) == (400, "CannotParseRequest")
        m = oci.monitoring.models
        nan = m.PostMetricDataDetails(
            metric_data=[
                m.MetricDataDetails(
                    namespace="m",
                    compartment_id=env.compartment,
                    name="x",
                    dimensions={"a": "b"},
                    datapoints=[m.Datapoint(timestamp=dt.datetime.now(dt.UTC), value=math.nan)],
                )
            ]
        )
        with pytest.raises(oci.exceptions.ServiceError) as info:
            await asyncio.to_thread(client.post_metric_data, nan)
        assert (info.value.status, info.value.code) == (400, "CannotParseRequest")
        too_many = m.PostMetricDataDetails(
            metric_data=[
                m.MetricDataDetails(
                    namespace="m",
                    compartment_id=env.compartment,
                    name=f"x{i}",
                    dimensions={"a": "b"},
                    datapoints=[m.Datapoint(timestamp=dt.datetime.now(dt.UTC), value=1.0)],
                )
                for i in range(51)
            ]
        )
        with pytest.raises(oci.exceptions.ServiceError) as info:
            await asyncio.to_thread(client.post_metric_data, too_many)
        assert (info.value.status, info.value.code) == (400, "InvalidParameter")
        await exporter.aclose()
    assert env.fake.points == []


async def test_an_unauthorized_compartment_is_404_kept_and_sent_once_the_policy_exists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with oci_env(tmp_path) as env:
        other = ocid("compartment")
        exporter = env.exporter(compartment_id=other)
        batch = records(result("a", time.time()))
        with caplog.at_level(logging.ERROR):
            failed = await exporter.push(batch)
        assert (failed.handled, failed.error.split(" (")[0]) == (0, "404 NotAuthorizedOrNotFound")
        assert "IAM policy" in caplog.records[0].getMessage()
        env.fake.authorize(other)
        assert await exporter.push(batch) == PushResult(1)
        await exporter.aclose()


async def test_a_request_refused_as_a_whole_is_retried_one_result_at_a_time(tmp_path: Path) -> None:
    async with oci_env(tmp_path) as env:
        clock = Clock(float(int(time.time())))
        env.fake.clock = clock
        outbox = env.outbox()
        outbox.append([result(f"c{i}", clock.t) for i in range(3)])
        exporter = env.exporter(clock)
        pump = Pump(exporter, outbox, clock=clock, rand=lambda: 0.0)
        env.fake.fail_for(0.4, status=400)
        assert await drain(pump, clock) == [0.5, 0.0, 0.0]
        await exporter.aclose()
    # After the 400: one result alone, then (it went through) the rest together again.
    assert [p.streams for p in env.fake.posts] == [BASE_STREAMS, 2 * BASE_STREAMS]
    assert pump.sent == 3 and env.fake.duplicates() == []


# --- outages -----------------------------------------------------------------------------------


async def test_ten_minute_outage_and_a_restart_every_point_inside_the_window_exactly_once(
    tmp_path: Path,
) -> None:
    """10 checks every 15 s; the service answers 503 for 10 minutes; the agent restarts 5 minutes
    in (outbox reopened, exporter and pump new). Afterwards every datapoint is there once."""
    async with oci_env(tmp_path) as env:
        t0 = float(int(time.time()))
        clock = Clock(t0)
        env.fake.clock = env.fake.wall = clock
        env.fake.fail_for(600, status=503)
        outbox = env.outbox()
        exporter = env.exporter(clock)
        pump = Pump(exporter, outbox, clock=clock, rand=lambda: 0.0)
        produced: list[CheckResult] = []
        next_run, restarted, waits = t0, False, []
        while clock.t < t0 + 900 or outbox.depth("oci"):
            while next_run <= clock.t and next_run < t0 + 900:
                batch = [result(f"c{i}", next_run, dns_sample(i / 1000)) for i in range(10)]
                outbox.append(batch)
                produced += batch
                next_run += 15
            if not restarted and clock.t >= t0 + 300:
                restarted = True
                await exporter.aclose()
                outbox.close()
                outbox = env.outbox()
                exporter = env.exporter(clock)
                pump = Pump(exporter, outbox, clock=clock, rand=lambda: 0.0)
            delay = await pump.step()
            if delay is None:
                clock.t = next_run
            elif delay:
                waits.append(delay)
                clock.t += delay
        await exporter.aclose()
    expected = {(s.name, s.timestamp, s.labels[0][1]) for r in produced for s in flatten(r)}
    got = env.fake.datapoints()
    assert env.fake.duplicates() == []
    assert {(name, t, dict(dims)["check"]) for name, dims, t in got} == expected
    assert len(got) == len(produced) * (BASE_STREAMS + 1) == 60 * 10 * 5
    assert outbox.dropped == {}
    # The outage cost the backoff schedule (doubling, x 0.5 here), twice as the restart starts it
    # over, not a request per result: 0, .5, 1.5, 3.5 ... 255.5, then again after the restart.
    failed_attempts = env.fake.attempts - len(env.fake.posts)
    assert failed_attempts <= 20, waits
    # The backlog goes 10 intervals (the batch of 100 results) per request: 50 streams x 10 points.
    assert max(p.datapoints for p in env.fake.posts) == 500


async def test_results_older_than_the_window_are_dropped_and_counted_the_rest_delivered_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with oci_env(tmp_path) as env:
        t0 = float(int(time.time()))
        clock = Clock(t0)
        env.fake.wall = clock
        outbox = env.outbox()
        produced = [result(f"c{i}", t0 - 3 * 3600 + 60 * k) for k in range(180) for i in range(2)]
        outbox.append(produced)
        exporter = env.exporter(clock)
        pump = Pump(exporter, outbox, clock=clock)
        with caplog.at_level(logging.WARNING, "mamori.exporters.oci"):
            await drain(pump, clock)
        await exporter.aclose()
    cutoff = t0 - (MAX_AGE - AGE_MARGIN)
    too_old = [r for r in produced if r.started_at <= cutoff]
    assert len(too_old) == 2 * 66  # 3 h back, one a minute, up to 115 min ago
    assert outbox.dropped[("oci", "expired")] == len(too_old)
    assert pump.sent == len(produced) - len(too_old)
    assert {p.timestamp for p in env.fake.points} == {r.started_at for r in produced if r.started_at > cutoff}
    assert env.fake.duplicates() == [] and env.fake.errors == []
    assert any("older than 115 min dropped" in r.getMessage() for r in caplog.records)


# --- principals --------------------------------------------------------------------------------


async def test_resource_principal_rpst_v2_2_signs_with_the_session_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with oci_env(tmp_path) as env:
        session_key = new_key()
        key_file = tmp_path / "rp.pem"
        key_file.write_bytes(private_pem(session_key))
        token = session_token(env.key.tenancy, res_compartment=env.compartment, res_type="fnfunc")
        monkeypatch.setenv("OCI_RESOURCE_PRINCIPAL_VERSION", "2.2")
        monkeypatch.setenv("OCI_RESOURCE_PRINCIPAL_RPST", token)
        monkeypatch.setenv("OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM", str(key_file))
        monkeypatch.setenv("OCI_RESOURCE_PRINCIPAL_REGION", "us-ashburn-1")
        env.fake.register(f"ST${token}", session_key.public_key())
        cfg = OciConfig.model_validate(
            {
                "type": "oci",
                "compartment_id": env.compartment,
                "namespace": "mamori",
                "auth": "resource_principal",
                "endpoint": env.fake.base_url,
            }
        )
        exporter = build(cfg, CONTEXT)
        assert await exporter.push(records(result("a", time.time()))) == PushResult(1)
        await exporter.aclose()
    assert [p.key_id for p in env.fake.posts] == [f"ST${token}"]


async def test_resource_principal_without_its_environment_is_an_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("OCI_RESOURCE_PRINCIPAL_VERSION", raising=False)
    cfg = OciConfig.model_validate(
        {
            "type": "oci",
            "compartment_id": "ocid1.tenancy.oc1..aaaa",
            "namespace": "m",
            "auth": "resource_principal",
            "endpoint": f"http://127.0.0.1:{free_port()}",
        }
    )
    exporter = build(cfg, CONTEXT)
    with caplog.at_level(logging.ERROR):
        outcome = await exporter.push(records(result("a", time.time())))
    assert outcome.handled == 0 and outcome.error.startswith("cannot authenticate (resource_principal)")
    assert "cannot authenticate (resource_principal)" in caplog.records[0].getMessage()


async def test_instance_principal_through_the_metadata_service_and_federation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with oci_env(tmp_path) as env, fake_oci_identity(env.fake) as identity:
        # The metadata service is down first: the push fails (no exception, nothing lost).
        monkeypatch.setenv("OCI_METADATA_BASE_URL", f"http://127.0.0.1:{free_port()}/opc/v2")
        cfg = OciConfig.model_validate(
            {
                "type": "oci",
                "compartment_id": env.compartment,
                "namespace": "mamori",
                "auth": "instance_principal",
                "endpoint": env.fake.base_url,
                "federation_endpoint": identity.federation_url,
            }
        )
        exporter = build(cfg, CONTEXT)
        batch = records(result("a", time.time()))
        down = await exporter.push(batch)
        assert (down.handled, down.error) == (0, "cannot authenticate (instance_principal): ConnectionError")
        monkeypatch.setenv("OCI_METADATA_BASE_URL", identity.metadata_url)
        assert await exporter.push(batch) == PushResult(1)
        assert await exporter.push(batch) == PushResult(1)  # the token is reused
        await exporter.aclose()
    assert len(identity.tokens) == 1
    assert [p.key_id for p in env.fake.posts] == [f"ST${identity.tokens[0]}"] * 2


# --- the whole agent ---------------------------------------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def test_a_running_agent_exports_its_checks_and_reports_the_outbox(tmp_path: Path) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    port = free_port()
    async with oci_env(tmp_path) as env:
        cfg = config.parse(
            f"""
agent: {{name: agent-7, listen: "127.0.0.1:{port}", labels: {{site: osaka}}, interval: 1s, timeout: 1s}}
outbox: {{path: {tmp_path / "outbox.db"}}}
exporters:
  - type: oci
    compartment_id: {env.compartment}
    namespace: mamori
    config_file: {env.key.config_file}
    endpoint: {env.fake.base_url}
checks:
  - name: port
    type: tcp
    host: 127.0.0.1
    port: {target_port}
""",
            "agent.yml",
            env={},
        )
        from agent.runtime import Agent

        agent = Agent(cfg, None)
        task = asyncio.create_task(agent.run())
        try:
            deadline = time.monotonic() + 15
            while not any(p.name == "probe_success" for p in env.fake.points):
                assert time.monotonic() < deadline, "no point reached the fake"
                await asyncio.sleep(0.05)
            page = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        finally:
            agent.stop()
            assert await task == 0
            server.close()
            await server.wait_closed()
    point = next(p for p in env.fake.points if p.name == "probe_success")
    assert point.labels == {
        "check": "port",
        "target": f"127.0.0.1:{target_port}",
        "host": "agent-7",
        "site": "osaka",
    }
    assert point.value == 1.0
    families = {f.name: f for f in text_string_to_metric_families(page)}
    depth = [s for s in families["mamori_outbox_depth"].samples if s.labels == {"sink": "oci"}]
    sent = [s for s in families["mamori_export_sent"].samples if s.labels == {"sink": "oci"}]
    assert len(depth) == 1 and depth[0].value >= 0
    assert len(sent) == 1 and sent[0].value >= 1


async def test_the_agent_does_not_log_the_sdks_circuit_breaker_line_at_start(tmp_path: Path) -> None:
    """`import oci` logs "Default Auth client Circuit breaker strategy enabled" at INFO (a default
    of the SDK that the exporter's clients do not use): `agentctl run`, at its default log level,
    starts the exporter, sends, stops, and that line is not in its log."""
    control = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import logging; logging.basicConfig(level=logging.INFO); import oci",
        stderr=asyncio.subprocess.PIPE,
    )
    _, plain = await control.communicate()
    assert "Circuit breaker strategy enabled" in plain.decode()  # what the SDK does on its own

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    async with oci_env(tmp_path) as env:
        path = tmp_path / "agent.yml"
        path.write_text(
            f"""agent: {{name: agent-1, listen: "127.0.0.1:{free_port()}", interval: 500ms, timeout: 400ms}}
outbox: {{path: {tmp_path / "outbox.db"}}}
exporters:
  - {{type: oci, compartment_id: {env.compartment}, namespace: mamori, config_file: {env.key.config_file},
     endpoint: {env.fake.base_url}, linger: 0s}}
checks:
  - {{name: port, type: tcp, host: 127.0.0.1, port: {server.sockets[0].getsockname()[1]}}}
"""
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "-c", str(path), stderr=asyncio.subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 20
            while not env.fake.points:
                assert time.monotonic() < deadline and proc.returncode is None, "nothing reached the fake"
                await asyncio.sleep(0.05)
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            server.close()
            await server.wait_closed()
    log = err.decode()
    assert proc.returncode == 0 and "stopped" in log, log
    assert "ircuit breaker" not in log and "Traceback" not in log, log
