"""`agentctl check` as a Nagios plugin (issue 17, item 4): one check prints `TYPE STATUS - message |
perfdata` and exits 0/1/2/3, for every check type, against real local targets; the perfdata parses
with the guidelines' grammar; ad hoc thresholds; bad arguments are one line and exit 3."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from agent.adhoc import json_condition
from agent.model import CheckResult, Sample, Status
from checks.base import PerfDatum
from checks.fleet import FleetCheck, FleetCheckConfig
from lab.certs import Certs, make_certs, server_context
from lab.ports import free_port
from lab.postgres import PgLab
from lab.web import web_lab
from tests.agent.test_cli import agentctl
from tests.fakes.docker_engine import fake_docker
from tests.pg import fixture_pg_cluster, fixture_pg_pair  # noqa: F401  (pytest finds them)
from tests.servers import banner, respond, serve_http, serve_tcp, slow

# One perfdata item, as the Nagios plugin guidelines define it (and Icinga, PNP4Nagios parse it):
# 'label'=value[UOM];[warn];[crit];[min];[max]; a value is plain decimal notation or U.
_NUM = r"-?[0-9]+(?:\.[0-9]+)?"
_RANGE = rf"@?(?:~|{_NUM})?:?(?:{_NUM})?"
PERF_ITEM = re.compile(
    rf"(?:'(?P<ql>(?:[^']|'')+)'|(?P<l>[^'= ]+))=(?P<value>{_NUM}|U)(?P<uom>s|ms|us|%|B|KB|MB|TB|c)?"
    rf"(?:;(?P<warn>{_RANGE})?(?:;(?P<crit>{_RANGE})?(?:;(?P<min>{_NUM})?(?:;(?P<max>{_NUM})?)?)?)?)?"
)
LINE = re.compile(
    r"(?P<type>[A-Z_]+) (?P<status>OK|WARNING|CRITICAL|UNKNOWN) - (?P<text>[^|\n]+?)(?: \| (?P<perf>.+))?"
)


def perfdata(perf: str) -> dict[str, dict[str, str | None]]:
    """The items of a perfdata string by label; fails the test on anything the grammar rejects."""
    items: dict[str, dict[str, str | None]] = {}
    for token in re.findall(r"(?:'(?:[^']|'')+'|[^' ])+", perf):
        m = PERF_ITEM.fullmatch(token)
        assert m, f"not Nagios perfdata: {token!r}"
        label = (m["ql"] or "").replace("''", "'") or m["l"] or ""
        items[label] = m.groupdict()
    return items


def plugin_line(out: str) -> tuple[re.Match[str], dict[str, dict[str, str | None]]]:
    first = out.splitlines()[0]
    m = LINE.fullmatch(first)
    assert m, first
    return m, perfdata(m["perf"] or "")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def write(tmp_path: Path, checks: str) -> str:
    cfg = tmp_path / "agent.yml"
    cfg.write_text(f"checks:\n{checks}")
    return str(cfg)


# --- one configured check: the plugin line by default ---------------------------------------


async def test_one_http_check_from_a_config_prints_the_plugin_line(tmp_path: Path) -> None:
    async with serve_http() as web:
        cfg = write(
            tmp_path,
            f"  - {{name: api, type: http, url: '{web.url('/health')}',\n"
            "     latency_warning: 5s, latency_critical: 9s}\n"
            f"  - {{name: gone, type: http, url: '{web.url('/status/503')}'}}\n",
        )
        code, out, err = await agentctl("check", "api", "-c", cfg)
        assert (code, err) == (0, "")
        m, perf = plugin_line(out)
        assert out.count("\n") == 1
        assert (m["type"], m["status"]) == ("HTTP", "OK")
        assert re.fullmatch(r"200 OK, \d+ bytes in [0-9.]+s", m["text"])
        assert list(perf) == [
            "time",
            "time_resolve",
            "time_connect",
            "time_tls",
            "time_processing",
            "time_transfer",
            "size",
        ]
        assert (perf["time"]["uom"], perf["time"]["warn"], perf["time"]["crit"], perf["time"]["min"]) == (
            "s",
            "5",
            "9",
            "0",
        )
        assert (perf["size"]["uom"], perf["size"]["value"]) == ("B", "40")

        code, out, _ = await agentctl("check", "gone", "-c", cfg)
        assert code == 2
        m, _ = plugin_line(out)
        assert (m["status"], m["text"]) == ("CRITICAL", "status 503 Service Unavailable, expected 2xx")


async def test_one_tcp_check_from_a_config(tmp_path: Path) -> None:
    async with serve_tcp(banner(b"220 ready\r\n")) as srv:
        cfg = write(
            tmp_path,
            f"  - {{name: smtp, type: tcp, host: 127.0.0.1, port: {srv.port}, expect: '^220'}}\n"
            f"  - {{name: closed, type: tcp, host: 127.0.0.1, port: {free_port()}}}\n",
        )
        code, out, _ = await agentctl("check", "smtp", "-c", cfg)
        assert code == 0
        m, perf = plugin_line(out)
        assert (m["type"], m["status"]) == ("TCP", "OK")
        assert list(perf) == ["time", "time_connect"]
        code, out, _ = await agentctl("check", "closed", "-c", cfg)
        assert code == 2 and plugin_line(out)[0]["text"].startswith("connection refused")


async def test_one_host_check(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "  - {name: box, type: host, memory_warning: 0.98, memory_critical: 0.99}\n",
    )
    code, out, _ = await agentctl("check", "-c", cfg)
    m, perf = plugin_line(out)
    assert m["type"] == "HOST" and code == {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[m["status"]]
    assert {"time", "cpu", "mem", "load1", "disk_/"} <= set(perf)
    assert (perf["mem"]["uom"], perf["mem"]["warn"], perf["mem"]["crit"], perf["mem"]["max"]) == (
        "%",
        "98",
        "99",
        "100",
    )


async def test_one_pg_backup_check(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "base-1").write_text("x")
    cfg = write(tmp_path, f"  - {{name: backups, type: pg_backup, directory: '{backups}', max_age: 1h}}\n")
    code, out, _ = await agentctl("check", "-c", cfg)
    assert code == 0
    m, perf = plugin_line(out)
    assert (m["type"], m["status"]) == ("PG_BACKUP", "OK")
    assert perf["backup_age"]["crit"] == "3600" and perf["backup_age"]["uom"] == "s"


async def test_one_docker_check(tmp_path: Path) -> None:
    async with fake_docker(tmp_path) as engine:
        engine.add("app-1", {"mamori.probe.port": "8080"}, health="healthy")
        cfg = write(tmp_path, f"  - {{name: containers, type: docker, socket: '{engine.socket}'}}\n")
        code, out, _ = await agentctl("check", "-c", cfg)
    assert code == 0, out
    m, perf = plugin_line(out)
    assert (m["type"], m["status"]) == ("DOCKER", "OK")
    assert perf["running"]["value"] == "1" and perf["running"]["uom"] is None


async def test_one_postgres_check_on_the_real_lab(tmp_path: Path, pg_pair: PgLab) -> None:
    cfg = write(
        tmp_path,
        f"""  - name: db
    type: postgres
    password: {pg_pair.monitoring_password}
    expected_standbys: [standby1]
    nodes:
      - {{name: primary, host: 127.0.0.1, port: {pg_pair.primary.port}}}
      - {{name: standby, host: 127.0.0.1, port: {pg_pair.standby.port}, application_name: standby1}}
""",
    )
    code, out, err = await agentctl("check", "-c", cfg)
    m, perf = plugin_line(out)
    assert (
        m["type"] == "POSTGRES" and code == {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[m["status"]]
    )
    assert next(iter(perf)) == "time" and {"standby_gap", "rpo_exposure"} <= set(perf)
    # The replication report follows as the plugin's long output; never a second perfdata separator.
    assert len(out.splitlines()) > 2 and all("|" not in line for line in out.splitlines()[1:])
    assert pg_pair.monitoring_password not in out + err


async def test_one_lb_check_on_real_haproxy(tmp_path: Path) -> None:
    async with web_lab(tmp_path / "lab", apps=2) as lab:
        backends = ", ".join(f"{{name: {a.name}, address: '127.0.0.1:{a.port}'}}" for a in lab.apps)
        cfg = write(
            tmp_path,
            f"  - {{name: web, type: lb, url: '{lab.url}', tls: {{ca_file: '{lab.ca_file}'}},\n"
            f"     backends: [{backends}]}}\n",
        )
        code, out, _ = await agentctl("check", "-c", cfg)
    assert code == 0, out
    m, perf = plugin_line(out)
    assert (m["type"], m["status"]) == ("LB", "OK")
    assert list(perf) == ["time", "backends_healthy", "backends"]
    assert (perf["backends_healthy"]["value"], perf["backends"]["value"]) == ("2", "2")


# --- formats ---------------------------------------------------------------------------------


async def test_formats(tmp_path: Path) -> None:
    async with serve_http() as web:
        cfg = write(
            tmp_path,
            f"  - {{name: api, type: http, url: '{web.url('/health')}'}}\n"
            f"  - {{name: broken, type: http, url: '{web.url('/status/500')}'}}\n"
            f"  - {{name: port, type: tcp, host: 127.0.0.1, port: {web.port}}}\n",
        )
        code, out, _ = await agentctl("check", "api", "-c", cfg, "--format", "table")
        assert code == 0 and out.split()[:2] == ["CHECK", "TYPE"]
        code, out, _ = await agentctl("check", "api", "-c", cfg, "--format", "json")
        assert code == 0 and out.startswith("[")
        # Several checks: a table by default; as a plugin, one line for all, then one per check.
        code, out, _ = await agentctl("check", "-c", cfg, "--format", "nagios")
    assert code == 2
    first, *rest = out.splitlines()
    text, _, perf = first.partition(" | ")
    assert text == "MAMORI CRITICAL - 3 checks: 1 CRITICAL, 2 OK"
    labels = perfdata(perf)
    assert {"api::time", "broken::time", "port::time_connect"} <= set(labels)
    assert rest[0].startswith("broken: CRITICAL - status 500") and len(rest) == 3
    assert all("|" not in line for line in rest)


# --- ad hoc thresholds -----------------------------------------------------------------------


async def test_adhoc_thresholds_map_onto_the_http_check() -> None:
    health = respond(200, b'{"db": {"status": "up"}, "queue": 7, "v": "2.1"}')
    # The latency case needs an answer slower than its warning for sure: a local one can come in
    # under a millisecond.
    async with serve_http({"/health": health, "/slow": slow(0.05, health)}) as web:
        url = web.url("/health")
        cases = [
            ([], 0, "OK"),
            (["--json-path", "db.status==up", "--json-path", "queue<10", "--json-path", "v=~^2\\."], 0, "OK"),
            (["--json-path", "db.status==down"], 2, 'json db.status is "up", expected "down"'),
            (["--json-path", "!db"], 2, "json db is present, expected absent"),
            (["--json-path", "queue>10"], 2, "json queue is 7, expected > 10"),
            (["--expect-status", "3xx"], 2, "status 200 OK, expected 3xx"),
            (["--body-matches", "down|fail"], 2, "body does not match /down¦fail/"),
            (["--body-not-matches", "queue"], 2, None),
            (["--latency-warning", "10ms", "--latency-critical", "10s"], 1, None),
        ]
        for args, code, text in cases:
            target = web.url("/slow") if "--latency-warning" in args else url
            rc, out, err = await agentctl("check", target, *args)
            assert (rc, err) == (code, ""), (args, out, err)
            m, perf = plugin_line(out)
            assert m["type"] == "HTTP" and out.count("\n") == 1
            if text == "OK":
                assert m["status"] == "OK"
            elif text is not None:
                assert m["text"] == text, args
        _, perf = plugin_line(out)
        assert (perf["time"]["warn"], perf["time"]["crit"]) == ("0.01", "10")


async def test_adhoc_https_certificate_days(certs: Certs) -> None:
    async with (
        serve_http(ssl_context=server_context(certs.valid)) as valid,
        serve_http(ssl_context=server_context(certs.self_signed)) as self_signed,
        serve_http(ssl_context=server_context(certs.expiring_10d)) as expiring,
    ):
        ca = ["--ca-file", str(certs.ca_file)]
        rc, out, _ = await agentctl("check", valid.url("/health"), *ca)
        m, perf = plugin_line(out)
        assert (rc, m["status"]) == (0, "OK")
        days = (certs.valid.not_after.timestamp() - time.time()) / 86400
        cert = perf["cert_days"]
        assert abs(float(cert["value"] or "") - days) < 0.1
        assert (cert["warn"], cert["crit"], cert["uom"]) == ("14:", "7:", None)
        # The valid certificate has 90 days: a 100-day warning band turns it WARNING.
        rc, out, _ = await agentctl(
            "check", valid.url("/health"), *ca, "--tls-expiry-warning", "100", "--tls-expiry-critical", "30"
        )
        m, perf = plugin_line(out)
        assert (rc, m["status"]) == (1, "WARNING") and m["text"].startswith("certificate CN=")
        assert (perf["cert_days"]["warn"], perf["cert_days"]["crit"]) == ("100:", "30:")
        rc, out, _ = await agentctl("check", expiring.url("/health"), *ca)
        assert (rc, plugin_line(out)[0]["status"]) == (1, "WARNING")
        rc, out, _ = await agentctl("check", self_signed.url("/health"))
        assert (rc, plugin_line(out)[0]["status"]) == (2, "CRITICAL")
        assert "self-signed" in out
        rc, out, _ = await agentctl("check", self_signed.url("/health"), "--insecure")
        m, perf = plugin_line(out)
        assert (rc, m["status"]) == (0, "OK") and "cert_days" in perf


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--format", "table", "--json"],
            "agentctl: --json is --format json: give --format table or --json, not both",
        ),
        (["--json-path", "queue<lots"], "agentctl: invalid --json-path 'queue<lots': < needs a number"),
        (
            ["--json-path", "!a==b"],
            "agentctl: invalid --json-path '!a==b': !PATH takes no operator (it means absent)",
        ),
        (
            ["--json-path", "a..b"],
            "agentctl: invalid threshold for '{url}': invalid json path 'a..b':"
            " expected e.g. db.status or items[0].name",
        ),
        (["--expect-status", "abc"], None),
        (
            ["--latency-warning", "2s", "--latency-critical", "1s"],
            "agentctl: invalid threshold for '{url}': --latency-warning (2s) must be less than"
            " --latency-critical (1s)",
        ),
        (
            ["--tls-expiry-warning", "3"],
            "agentctl: invalid threshold for '{url}': --tls-expiry-warning (3) must be greater than"
            " --tls-expiry-critical (7)",
        ),
        (["--body-matches", "("], None),
        (["--ca-file", "/nonexistent/ca.pem"], None),
        (["--tls-expiry-critical", "-1"], None),
        (["--format", "xml"], None),
    ],
)
async def test_bad_thresholds_are_one_line_and_unknown(args: list[str], message: str | None) -> None:
    url = "http://127.0.0.1:9/health"
    code, out, err = await agentctl("check", url, *args)
    assert (code, out) == (3, "") and "Traceback" not in err
    last = err.splitlines()[-1]
    if message is not None:
        assert last == message.replace("{url}", url)
    assert err.count("\n") == 1  # one line, not argparse's usage first


async def test_thresholds_need_an_http_url(tmp_path: Path) -> None:
    cfg = write(tmp_path, "  - {name: a, type: tcp, host: 127.0.0.1, port: 1}\n")
    code, out, err = await agentctl("check", "a", "-c", cfg, "--latency-warning", "1s")
    assert (code, out) == (3, "")
    assert (
        err == "agentctl: --latency-warning applies to an ad hoc URL; a configured check has its thresholds\n"
    )
    code, out, err = await agentctl("check", "tcp://127.0.0.1:1", "--expect-status", "200")
    assert (code, out) == (3, "")
    assert (
        err
        == "agentctl: --expect-status applies to http:// and https:// URLs only, not 'tcp://127.0.0.1:1'\n"
    )


# --- units -----------------------------------------------------------------------------------


def test_perfdatum_renders_what_nagios_parses() -> None:
    assert PerfDatum("time", 4.2e-05, "s", min=0).render() == "'time'=0.000042s;;;0"
    assert PerfDatum("time", 1e-9, "s").render() == "'time'=0s"
    assert PerfDatum("size", 2.5e9, "B").render() == "'size'=2500000000B"
    assert PerfDatum("it's=odd", 1.0).render() == "'it''s_odd'=1"
    assert PerfDatum("x", float("nan"), "s", 1, 2).render() == "'x'=U;1;2"
    assert PerfDatum("cert_days", 30.25, "", 14, 7, alert_below=True).render() == "'cert_days'=30.25;14:;7:"
    for datum in (PerfDatum("a b", -0.5, "%", 1.5, 2, 0, 100), PerfDatum("it's", 1e-7)):
        assert perfdata(datum.render())


def test_json_conditions() -> None:
    assert json_condition("db.status==up") == {"path": "db.status", "equals": "up"}
    assert json_condition('code=="3"') == {"path": "code", "equals": "3"}
    assert json_condition("ready==true") == {"path": "ready", "equals": True}
    assert json_condition("n != 3") == {"path": "n", "not_equals": 3}
    assert json_condition("items[0].v=~^a|b$") == {"path": "items[0].v", "matches": "^a|b$"}
    assert json_condition("lag<1.5") == {"path": "lag", "lt": 1.5}
    assert json_condition("up>0") == {"path": "up", "gt": 0.0}
    assert json_condition("db") == {"path": "db", "exists": True}
    assert json_condition("!error") == {"path": "error", "exists": False}


def test_fleet_perfdata() -> None:
    config = FleetCheckConfig.model_validate(
        {
            "name": "fleet:db",
            "type": "fleet",
            "cluster": "db",
            "host": "127.0.0.1",
            "interval": 1,
            "timeout": 1,
        }
    )
    labels = (("cluster", "db"),)
    samples = tuple(
        Sample(f"mamori_fleet_{name}", value, labels)
        for name, value in (
            ("agents", 3),
            ("primary_down_votes", 2),
            ("quorum", 2),
            ("primary_down_zones", 1),
        )
    )
    result = CheckResult("fleet:db", "fleet", "mamori/+/fleet/pg/db", Status.CRITICAL, 0.0, 0.25, samples)
    rendered = " ".join(p.render() for p in FleetCheck(config).perfdata(result))
    assert rendered == "'time'=0.25s;;;0 'agents'=3;;;0 'down_votes'=2;;;0 'quorum'=2;;;0 'down_zones'=1;;;0"
    assert perfdata(rendered)
