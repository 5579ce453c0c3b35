"""`series: basic` (issue 16): the one flatten of a result leaves out the detailed series, for
every exporter at once; the default keeps blackbox_exporter's set; the result keeps its samples."""

from __future__ import annotations

import pytest

from agent.catalog import CHECK_METRICS, DETAIL_METRICS
from agent.config import parse
from agent.errors import ConfigError
from agent.model import CheckResult, Sample, Status, result_from_json
from agent.runner import execute
from checks.http.check import HttpCheck
from exporters.samples import flatten
from tests.servers import json_ok, serve_http

PHASES = ("resolve", "connect", "tls", "processing", "transfer")
HTTP = (
    *(Sample("probe_http_duration_seconds", 0.001, (("phase", p),)) for p in PHASES),
    Sample("probe_http_status_code", 200.0),
    Sample("probe_http_version", 1.1),
    Sample("probe_http_redirects", 0.0),
    Sample("probe_http_ssl", 1.0),
    Sample("probe_http_content_length", 12.0),
    Sample("probe_failed_due_to_regex", 0.0),
    Sample("probe_dns_lookup_time_seconds", 0.0),
    Sample("probe_ip_protocol", 4.0),
    Sample("probe_ssl_earliest_cert_expiry", 2e9),
    Sample("probe_ssl_last_chain_expiry_timestamp_seconds", 2e9),
    Sample("probe_tls_version_info", 1.0, (("version", "TLS 1.3"),)),
)
TCP = (
    *(Sample("mamori_tcp_duration_seconds", 0.001, (("phase", p),)) for p in ("resolve", "connect")),
    Sample("probe_dns_lookup_time_seconds", 0.0),
    Sample("probe_ip_protocol", 4.0),
)
MEMBER = (("member", "app1"), ("role", "backend"))
LB = (
    Sample("mamori_group_members", 1.0, (("role", "backend"),)),
    Sample("mamori_group_members_healthy", 1.0, (("role", "backend"),)),
    Sample("mamori_group_healthy_needed", 1.0),
    Sample("mamori_member_success", 1.0, MEMBER),
    Sample("mamori_member_status", 0.0, (*MEMBER, ("reason", "ok"))),
    Sample("mamori_member_duration_seconds", 0.01, MEMBER),
    Sample("mamori_member_http_status_code", 200.0, MEMBER),
    *(Sample("mamori_member_http_duration_seconds", 0.001, (*MEMBER, ("phase", p))) for p in PHASES),
)


def result(check_type: str, samples: tuple[Sample, ...], series: str) -> CheckResult:
    return CheckResult("c", check_type, "t", Status.OK, 1.0, 0.1, samples=samples, series=series)


def names(r: CheckResult) -> list[str]:
    return [s.name for s in flatten(r)]


def test_the_detailed_series_are_per_check_metrics_of_the_catalogue() -> None:
    assert CHECK_METRICS.keys() >= DETAIL_METRICS


@pytest.mark.parametrize(
    ("check_type", "samples", "basic"),
    [
        ("http", HTTP, ["probe_http_status_code", "probe_ssl_earliest_cert_expiry"]),
        ("tcp", TCP, []),
        (
            "lb",
            LB,
            [
                "mamori_group_members",
                "mamori_group_members_healthy",
                "mamori_group_healthy_needed",
                "mamori_member_success",
                "mamori_member_status",
            ],
        ),
    ],
)
def test_basic_leaves_out_the_detailed_series_and_full_keeps_all(
    check_type: str, samples: tuple[Sample, ...], basic: list[str]
) -> None:
    harness = ["probe_success", "probe_duration_seconds", "mamori_check_status", "mamori_check_attempts"]
    assert names(result(check_type, samples, "full")) == harness + [s.name for s in samples]
    assert names(result(check_type, samples, "basic")) == harness + basic


def test_a_result_keeps_its_series_setting_through_its_encoding() -> None:
    r = result("http", HTTP, "basic")
    assert result_from_json(r.to_json()) == r
    old = r.to_json()
    del old["series"]  # an outbox row written before results had it
    assert result_from_json(old).series == "full"


CONFIG = """
agent:
  series: basic
checks:
  - name: a
    type: http
    url: http://127.0.0.1:1/
  - name: b
    type: http
    url: http://127.0.0.1:1/
    series: full
"""


def test_the_agent_default_applies_to_every_check_and_a_check_may_override_it() -> None:
    cfg = parse(CONFIG, "agent.yml", env={})
    assert [c.series for c in cfg.checks] == ["basic", "full"]
    default = parse("checks: [{name: a, type: tcp, host: h, port: 1}]", "agent.yml", env={})
    assert default.checks[0].series == "full"


def test_an_unknown_series_setting_names_the_line_and_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        parse(CONFIG.replace("series: full", "series: minimal"), "agent.yml", env={})
    assert str(err.value) == "agent.yml:11: checks[1].series: Input should be 'full' or 'basic'"


async def test_the_harness_puts_the_checks_setting_on_a_real_result() -> None:
    async with serve_http({"/": json_ok({})}) as srv:
        full = await execute(HttpCheck.from_url(srv.url("/")))
        basic = await execute(HttpCheck.from_url(srv.url("/"), series="basic"))
    assert (full.series, basic.series) == ("full", "basic")
    assert [s.name for s in basic.samples] == [s.name for s in full.samples]  # kept for alert rules
    assert len(flatten(full)) == 4 + 13  # the harness's 4 (+ the timestamp on /metrics) and http's 13
    assert names(basic)[4:] == ["probe_http_status_code"]
