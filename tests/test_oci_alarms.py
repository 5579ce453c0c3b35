"""`agentctl oci-alarms` through the real `oci` SDK (signing, pagination, models) against the
strict alarms fake (tests/fakes/oci_alarms.py), and the alarms file deploy/oci/alarms.yaml."""

from __future__ import annotations

import asyncio
import importlib
import io
import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import main
from agent.errors import ConfigError
from agent.model import Reason
from exporters.oci_alarms import model, mql
from exporters.oci_alarms.client import AlarmsApi, ApiError, Connection, make_client
from exporters.oci_alarms.reconcile import Reconciler
from tests.fakes.oci_alarms import BASE, FakeOciAlarms, fake_oci_alarms, mql_problem
from tests.fakes.oci_monitoring import ApiKey, ocid

ROOT = Path(__file__).parents[1]
ALARMS = ROOT / "deploy" / "oci" / "alarms.yaml"
RUNBOOK_URL = "https://github.com/mamori/mamori/blob/main/"


@dataclass
class Env:
    fake: FakeOciAlarms
    key: ApiKey
    compartment: str
    topic: str
    tmp: Path

    def args(self, action: str, *extra: str, file: Path | None = ALARMS) -> list[str]:
        out = ["oci-alarms", action]
        if file is not None:
            out += ["-f", str(file)]
        out += ["--compartment", self.compartment, "--topic", self.topic]
        out += ["--config-file", str(self.key.config_file), "--endpoint", self.fake.base_url]
        return [*out, "--max-tps", "1000", *extra]

    def variables(self, **more: str) -> dict[str, str]:
        return {"OCI_COMPARTMENT_ID": self.compartment, "OCI_TOPIC_ID": self.topic, **more}

    def spec(self, path: Path = ALARMS) -> model.AlarmsFile:
        return model.load(path, self.variables())

    def api(self, **kwargs: Any) -> AlarmsApi:
        client, endpoint = make_client(
            Connection(config_file=str(self.key.config_file), endpoint=self.fake.base_url)
        )
        kwargs.setdefault("max_tps", 0)
        return AlarmsApi(client, endpoint, **kwargs)

    def seed(self, name: str, managed: bool = False, **over: Any) -> str:
        fields: dict[str, Any] = {
            "displayName": name,
            "compartmentId": self.compartment,
            "metricCompartmentId": self.compartment,
            "namespace": "oci_computeagent",
            "query": "CpuUtilization[1m].mean() > 80",
            "severity": "WARNING",
            "destinations": [self.topic],
            "isEnabled": True,
            "freeformTags": {"managed-by": "mamori"} if managed else {},
        }
        return self.fake.seed(**{**fields, **over})

    def writes(self) -> list[tuple[str, str]]:
        return [(c.method, c.path) for c in self.fake.writes()]


@asynccontextmanager
async def alarms_env(tmp_path: Path) -> AsyncIterator[Env]:
    key = ApiKey.create(tmp_path / "oci")
    compartment = ocid("compartment")
    async with fake_oci_alarms() as fake:
        fake.register(key.key_id, key.public_key)
        fake.authorize(compartment)
        yield Env(fake, key, compartment, ocid("onstopic", region="iad"), tmp_path)


async def agentctl(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    """`agentctl ARGS` in a worker thread (the SDK blocks; the fake serves on this loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, args)
    out, err = capsys.readouterr()
    return code, out, err


def names() -> list[str]:
    return [
        a.display_name
        for a in model.load(
            ALARMS, {"OCI_COMPARTMENT_ID": ocid("compartment"), "OCI_TOPIC_ID": ocid("onstopic")}
        ).alarms
    ]


# --- apply: create, idempotence, updates ----------------------------------------------------------


async def test_first_apply_creates_every_alarm_as_declared_and_a_second_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        code, out, err = await agentctl(capsys, env.args("apply"))
        assert (code, err) == (0, "")
        spec = env.spec()
        n = len(spec.alarms)
        lines = out.splitlines()
        assert len(lines) == n + 1
        for line, alarm in zip(lines, spec.alarms, strict=False):
            assert re.fullmatch(rf"created +{re.escape(alarm.display_name)}  ocid1\.alarm\.oc1\.\S+", line), (
                line
            )
        assert lines[-1] == f"{ALARMS}: {n} alarms: {n} created, 0 updated, 0 unchanged"
        assert [m for m, _ in env.writes()] == ["POST"] * n

        stored = env.fake.active()
        assert sorted(stored) == sorted(a.display_name for a in spec.alarms)
        for alarm in spec.alarms:
            got = stored[alarm.display_name]
            assert got["query"] == alarm.query
            assert got["severity"] == alarm.severity
            assert got["pendingDuration"] == alarm.pending_duration
            assert got["namespace"] == "mamori"
            assert got["compartmentId"] == got["metricCompartmentId"] == env.compartment
            assert got["destinations"] == [env.topic]
            assert got["resolution"] == "1m"
            assert got["messageFormat"] == "ONS_OPTIMIZED"
            assert got["repeatNotificationDuration"] == "PT4H"
            assert got["isNotificationsPerMetricDimensionEnabled"] is True
            assert got["freeformTags"] == {"managed-by": "mamori"}
            assert got["body"].endswith(f"\n\nRunbook: {alarm.runbook}")
        # The failover trigger counts agents by default; its fleet-quorum form is there, disabled.
        assert stored["mamori: PostgresFailoverRecommended"]["isEnabled"] is True
        assert stored["mamori: PostgresFailoverRecommended (fleet)"]["isEnabled"] is False
        # Every request was signed with the config file's key and verified by the fake.
        assert {c.status for c in env.fake.calls} == {200}

        code, out, err = await agentctl(capsys, env.args("apply"))
        assert (code, err) == (0, "")
        assert len(env.writes()) == n  # nothing more
        lines = out.splitlines()
        assert [line.split()[0] for line in lines[:-1]] == ["unchanged"] * n
        assert lines[-1] == f"{ALARMS}: {n} alarms: 0 created, 0 updated, {n} unchanged"


async def test_changing_one_alarm_in_the_file_updates_exactly_that_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        assert (await agentctl(capsys, env.args("apply")))[0] == 0
        before = len(env.writes())
        target = env.fake.active()["mamori: LoadBalancerDown"]
        old = "mirrors: [LoadBalancerDown]\n    severity: CRITICAL\n    pendingDuration: PT2M\n"
        text = ALARMS.read_text()
        assert text.count(old) == 1
        changed = tmp_path / "alarms.yaml"
        changed.write_text(text.replace(old, old.replace("PT2M", "PT3M")))

        code, out, err = await agentctl(capsys, env.args("plan", file=changed))
        assert (code, err) == (0, "")
        assert len(env.writes()) == before
        assert (
            "would update   mamori: LoadBalancerDown  (pendingDuration)\n"
            "    pendingDuration: 'PT2M' -> 'PT3M'\n" in out
        )
        n = len(names())
        assert out.splitlines()[-1].endswith(
            f"0 to create, 1 to update, {n - 1} unchanged (dry run: nothing was changed)"
        )

        code, out, err = await agentctl(capsys, env.args("apply", file=changed))
        assert (code, err) == (0, "")
        assert env.writes()[before:] == [("PUT", f"{BASE}/{target['id']}")]
        assert "updated        mamori: LoadBalancerDown  (pendingDuration)\n" in out
        assert sum(line.startswith("unchanged") for line in out.splitlines()) == n - 1
        assert env.fake.active()["mamori: LoadBalancerDown"]["pendingDuration"] == "PT3M"

        assert (await agentctl(capsys, env.args("apply", file=changed)))[0] == 0
        assert len(env.writes()) == before + 1


async def test_a_change_made_in_the_console_is_put_back_and_foreign_tags_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        assert (await agentctl(capsys, env.args("apply")))[0] == 0
        alarm = env.fake.active()["mamori: PostgresSplitBrain"]
        alarm.update(
            severity="INFO", query=alarm["query"].replace("> 1", "> 5"), destinations=[ocid("onstopic")]
        )
        alarm["freeformTags"]["team"] = "db"
        alarm["body"] = "edited"
        code, out, _ = await agentctl(capsys, env.args("apply"))
        assert code == 0
        assert "updated        mamori: PostgresSplitBrain  (query, severity, body, destinations)\n" in out
        assert alarm["severity"] == "CRITICAL" and alarm["query"].endswith("> 1")
        assert alarm["destinations"] == [env.topic]
        assert alarm["freeformTags"] == {"managed-by": "mamori", "team": "db"}
        assert alarm["body"].startswith("More than one node")


async def test_alarms_not_in_the_file_are_reported_and_kept_unless_pruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        foreign = env.seed("someone: CpuHigh")
        old = env.seed("mamori: OldAlarm", managed=True)
        code, out, _ = await agentctl(capsys, env.args("apply"))
        assert code == 0
        assert (
            f"kept           someone: CpuHigh  {foreign} not in the file; kept "
            "(not tagged managed-by=mamori: never deleted)\n" in out
        )
        assert (
            f"kept           mamori: OldAlarm  {old} not in the file; kept "
            "(--prune deletes it: tagged managed-by=mamori)\n" in out
        )
        assert out.splitlines()[-1].endswith(
            f"{len(names())} created, 0 updated, 0 unchanged; 2 other alarms in the compartment kept"
        )
        assert "DELETE" not in {m for m, _ in env.writes()}

        writes = len(env.writes())
        code, out, _ = await agentctl(capsys, env.args("apply", "--prune", "--dry-run"))
        assert code == 0 and len(env.writes()) == writes
        assert f"would delete   mamori: OldAlarm  {old} (not in the file, tagged managed-by=mamori)\n" in out

        code, out, _ = await agentctl(capsys, env.args("apply", "--prune"))
        assert code == 0
        assert env.writes()[writes:] == [("DELETE", f"{BASE}/{old}")]
        assert f"deleted        mamori: OldAlarm  {old}" in out
        assert "someone: CpuHigh" in env.fake.active() and "mamori: OldAlarm" not in env.fake.active()


async def test_a_compartment_with_more_alarms_than_a_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        env.fake.page_size = 4
        for i in range(9):
            env.seed(f"other-{i}")
        n = len(names())
        code, out, _ = await agentctl(capsys, env.args("apply"))
        assert code == 0 and f"{n} created" in out
        lists = [c for c in env.fake.calls if c.method == "GET" and c.path == BASE]
        assert len(lists) == math.ceil(9 / 4)
        assert [("page" in c.query) for c in lists] == [False, True, True]

        env.fake.calls.clear()
        code, out, _ = await agentctl(capsys, env.args("apply"))
        assert code == 0 and env.writes() == []
        assert f"0 created, 0 updated, {n} unchanged; 9 other alarms" in out
        assert len([c for c in env.fake.calls if c.path == BASE]) == math.ceil((n + 9) / 4)

        # A second alarm of a managed name on the last page is found, and refused.
        dup = env.seed("mamori: BackendDown", managed=True)
        first = next(a["id"] for a in env.fake.alarms.values() if a["displayName"] == "mamori: BackendDown")
        code, out, err = await agentctl(capsys, env.args("apply"))
        assert (code, out) == (1, "")
        assert err == (
            f"agentctl: compartment {env.compartment} has 2 alarms named 'mamori: BackendDown' "
            f"({first}, {dup}): "
            "delete or rename all but one; nothing was changed\n"
        )
        assert env.writes() == []


# --- errors ---------------------------------------------------------------------------------------


async def test_an_alarm_the_service_refuses_fails_alone_and_the_exit_code_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        path = tmp_path / "alarms.yaml"
        # Our parser tolerates a space before `.max()`; the fake, like a strict service, does not.
        path.write_text(
            GOOD.replace(
                "compartmentId: ocid1.compartment.oc1..aaaaaaaaexample", f"compartmentId: {env.compartment}"
            )
            .replace("ocid1.onstopic.oc1.iad.aaaaaaaaexample", env.topic)
            .replace(
                "max() < 1",
                "max() < 1\n  - {displayName: b, severity: INFO, query: 'probe_success[1m] .max() < 1'}",
            )
        )
        code, out, err = await agentctl(capsys, env.args("apply", file=path))
        assert (code, err) == (1, "")
        lines = out.splitlines()
        assert re.fullmatch(r"created +a  ocid1\.alarm\.\S+", lines[0])
        assert re.fullmatch(
            r"failed +b  400 InvalidParameter: Invalid query: expected metric\[interval\]\{dimensions\}"
            r"\.statistic\(\) and a comparison\. \(opc-request-id \w+\)",
            lines[1],
        )
        assert lines[2] == f"{path}: 2 alarms: 1 created, 0 updated, 0 unchanged, 1 failed"
        assert sorted(env.fake.active()) == ["a"]


async def test_a_key_the_service_does_not_know_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        stranger = ApiKey.create(tmp_path / "other")
        args = env.args("apply")
        args[args.index("--config-file") + 1] = str(stranger.config_file)
        code, out, err = await agentctl(capsys, args)
        assert (code, out) == (1, "")
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(
            f"agentctl: listing the alarms of {env.compartment}: OCI Monitoring refused the request's "
            "signature (401 NotAuthenticated: The required information to complete authentication was "
            "not provided or was incorrect. (opc-request-id "
        )
        assert err.endswith(
            "check the API key, its fingerprint, the user and tenancy OCIDs, and this host's clock\n"
        )
        assert env.fake.writes() == [] and [c.status for c in env.fake.calls] == [401]

        args[args.index("--config-file") + 1] = str(tmp_path / "missing")
        code, out, err = await agentctl(capsys, args)
        assert (code, out) == (1, "")
        assert re.fullmatch(r"agentctl: cannot authenticate \(config_file\): ConfigFileNotFound: .*\n", err)

        other = ocid("compartment")  # a compartment the principal may not see
        code, out, err = await agentctl(capsys, [*env.args("list"), "--compartment", other])
        assert (code, out) == (1, "")
        assert err.startswith(f"agentctl: listing the alarms of {other}: 404 NotAuthorizedOrNotFound: ")
        assert err.endswith("(manage alarms in the compartment, read metrics in the metric compartment)\n")


async def test_throttling_and_server_errors_are_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    async with alarms_env(tmp_path) as env:
        spec = env.spec()
        slept: list[float] = []
        api = env.api(sleep=slept.append)
        env.fake.throttle(3, retry_after=7)  # 429 with Retry-After: 7, three times
        summary = await asyncio.to_thread(Reconciler(api, io.StringIO()).apply, spec)
        assert len(summary.created) == len(spec.alarms)
        assert slept == [7, 7, 7]  # the service's Retry-After, not our backoff

        slept.clear()
        env.fake.fail_next(2, 500)
        summary = await asyncio.to_thread(Reconciler(api, io.StringIO()).apply, spec)
        assert len(summary.unchanged) == len(spec.alarms)
        assert len(slept) == 2 and 0.25 <= slept[0] <= 0.5 and 0.5 <= slept[1] <= 1.0  # backoff with jitter

        # Past 5 attempts the run stops with one line; running it again finishes the job.
        env.fake.fail_next(5, 503)
        with pytest.raises(ApiError) as failure:
            await asyncio.to_thread(Reconciler(api, io.StringIO()).apply, spec)
        assert failure.value.fatal
        assert re.fullmatch(
            rf"listing the alarms of {env.compartment}: still 503 ServiceUnavailable: "
            r"The service is currently "
            r"unavailable\. \(opc-request-id \w+\) after 5 attempts; stopped \(run again later: apply is "
            r"idempotent\)",
            str(failure.value),
        )
        summary = await asyncio.to_thread(Reconciler(api, io.StringIO()).apply, spec)
        assert len(summary.unchanged) == len(spec.alarms)


async def test_a_create_whose_answer_is_lost_is_retried_without_a_second_alarm(tmp_path: Path) -> None:
    async with alarms_env(tmp_path) as env:
        spec = env.spec()
        env.fake.lose_next_answers(1)  # the first create happens, its answer is a 500
        api = env.api(sleep=lambda _: None)
        summary = await asyncio.to_thread(Reconciler(api, io.StringIO()).apply, spec)
        assert len(summary.created) == len(spec.alarms) and api.retries == 1
        assert len(env.fake.alarms) == len(spec.alarms)  # the retry carried the same opc-retry-token
        posts = [c for c in env.fake.calls if c.method == "POST"]
        assert [c.status for c in posts[:2]] == [500, 200] and posts[0].body == posts[1].body


async def test_an_unreachable_endpoint_is_one_fatal_error_after_bounded_attempts(tmp_path: Path) -> None:
    async with alarms_env(tmp_path) as env:
        await env.fake.down()
        slept: list[float] = []
        api = env.api(sleep=slept.append)
        with pytest.raises(ApiError) as failure:
            await asyncio.to_thread(api.list, env.compartment)
        assert failure.value.fatal and len(slept) == 4
        assert str(failure.value) == (
            f"listing the alarms of {env.compartment}: cannot connect (ConnectionError) to "
            f"{env.fake.base_url} after 5 attempts"
        )


async def test_429_through_the_cli_is_waited_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with alarms_env(tmp_path) as env:
        env.fake.throttle(2, retry_after=0.05)
        code, out, err = await agentctl(capsys, env.args("apply"))
        assert (code, err) == (0, "")
        assert out.splitlines()[-1].endswith(f"{len(names())} created, 0 updated, 0 unchanged")
        assert [c.status for c in env.fake.calls[:3]] == [429, 429, 200]


def test_calls_are_paced_under_the_tenancy_limit() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    api = AlarmsApi(object(), max_tps=5, sleep=sleep, clock=lambda: now[0])
    for _ in range(4):
        api.call("a call", lambda: None)
    assert slept == pytest.approx([0.2, 0.2, 0.2])


# --- dry run, list, validate, usage -----------------------------------------------------------------


async def test_dry_run_and_plan_make_no_write_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        n = len(names())
        for action in (["apply", "--dry-run"], ["plan"], ["diff"]):
            code, out, err = await agentctl(capsys, env.args(*action))
            assert (code, err) == (0, "")
            lines = out.splitlines()
            assert [line.split("  ")[0] for line in lines[:-1]] == ["would create"] * n
            assert (
                lines[-1] == f"{ALARMS}: {n} alarms: {n} to create, 0 to update, 0 unchanged "
                "(dry run: nothing was changed)"
            )
        assert {c.method for c in env.fake.calls} == {"GET"} and env.fake.alarms == {}


async def test_list_shows_the_compartment_and_what_the_file_manages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        code, out, _ = await agentctl(capsys, env.args("list", file=None))
        assert (code, out) == (0, f"no alarms in {env.compartment}\n")
        foreign = env.seed("someone: CpuHigh")
        assert (await agentctl(capsys, env.args("apply")))[0] == 0
        code, out, _ = await agentctl(capsys, env.args("list"))
        assert code == 0
        lines = out.splitlines()
        assert re.fullmatch(r"DISPLAY NAME +SEVERITY +ENABLED +MANAGED +IN FILE +ID", lines[0])
        assert len(lines) == 1 + len(names()) + 1
        assert re.fullmatch(
            rf"someone: CpuHigh +WARNING +yes +no +no +{foreign}", next(x for x in lines if "CpuHigh" in x)
        )
        fleet = next(x for x in lines if "FailoverRecommended (fleet)" in x)
        assert re.fullmatch(
            r"mamori: PostgresFailoverRecommended \(fleet\) +CRITICAL +no +yes +yes +ocid1\.alarm\.\S+", fleet
        )


def test_validate_needs_no_oci(capsys: pytest.CaptureFixture[str]) -> None:
    compartment, topic = ocid("compartment"), ocid("onstopic")
    code = main(["oci-alarms", "validate", "-f", str(ALARMS), "--compartment", compartment, "--topic", topic])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == f"{ALARMS}: OK ({len(names())} alarms, compartment {compartment})\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--auth", "instance_principal", "--profile", "X"],
            "--config-file and --profile are for --auth config_file, not instance_principal",
        ),
        (["--region", "tokyo"], "--region 'tokyo': expected a region identifier like ap-tokyo-1"),
        (
            ["--endpoint", "http://example.com"],
            "--endpoint 'http://example.com': expected https://host[:port] (http only for loopback)",
        ),
        (["--var", "NOVALUE"], "--var 'NOVALUE': expected NAME=VALUE"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_3(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = [
        "oci-alarms",
        "apply",
        "-f",
        str(ALARMS),
        "--compartment",
        ocid("compartment"),
        "--topic",
        ocid("onstopic"),
    ]
    assert main([*args, *extra]) == 3
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"agentctl: {message}\n")


@pytest.mark.parametrize(
    "args",
    [
        ["oci-alarms", "apply"],  # -f is required
        ["oci-alarms", "apply", "-f", "x", "--region", "ap-tokyo-1", "--endpoint", "https://x"],
        ["oci-alarms", "apply", "-f", "x", "--max-tps", "0"],
        ["oci-alarms", "nope"],
        ["oci-alarms", "list", "--bogus"],
    ],
)
def test_argparse_errors_exit_3(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 3
    assert "agentctl oci-alarms" in capsys.readouterr().err


def test_list_needs_a_compartment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["oci-alarms", "list", "--endpoint", "http://127.0.0.1:9"]) == 3
    assert capsys.readouterr().err == "agentctl: list needs --compartment OCID or -f FILE\n"


# --- the file: golden errors ---------------------------------------------------------------------------

GOOD = """\
defaults:
  compartmentId: ocid1.compartment.oc1..aaaaaaaaexample
  destinations: [ocid1.onstopic.oc1.iad.aaaaaaaaexample]
alarms:
  - displayName: a
    severity: CRITICAL
    query: probe_success[1m].max() < 1
"""
REASONS = ", ".join(r.value for r in Reason)


@pytest.mark.parametrize(
    ("edit", "errors"),
    [
        (
            ("probe_success[1m].max() < 1", "mamori_pg_heartbeat_delay[1m].max() > 900"),
            [
                "7: alarms[0].query: unknown metric 'mamori_pg_heartbeat_delay': not a per-check metric of "
                "agent/catalog.py (docs/metrics.md); did you mean mamori_pg_heartbeat_delay_seconds? "
                "(column 1)"
            ],
        ),
        (
            ("probe_success[1m].max() < 1", "mamori_outbox_depth[1m].max() > 0"),
            [
                "7: alarms[0].query: unknown metric 'mamori_outbox_depth': an agent metric: the OCI exporter "
                "sends only per-check metrics (column 1)"
            ],
        ),
        (
            ("probe_success[1m].max() < 1", 'mamori_member_success[1m]{node = "db-1"}.max() < 1'),
            [
                "7: alarms[0].query: mamori_member_success has no dimension 'node' "
                "(it has: check, host, member, "
                "role, target) (column 27)"
            ],
        ),
        (
            ("probe_success[1m].max() < 1", 'mamori_check_status[1m]{reason = "backend_dwn"}.max() >= 2'),
            [
                "7: alarms[0].query: mamori_check_status{reason} is never 'backend_dwn', so the alarm could "
                f"never fire (values: {REASONS}) (column 25)"
            ],
        ),
        (
            ("probe_success[1m].max() < 1", "probe_success[1m].groupBy(host).max()"),
            [
                "7: alarms[0].query: max() needs a comparison (e.g. > 0, in (1, 2)) or absent() "
                "for an alarm (column 33)"
            ],
        ),
        (
            ("probe_success[1m].max() < 1", "probe_success[90m].max() < 1"),
            ["7: alarms[0].query: invalid interval [90m]: 1m-60m, 1h-24h or 1d (column 15)"],
        ),
        (
            (
                "probe_success[1m].max() < 1",
                "(mamori_pg_failover_recommended[1m].groupBy(cluster, host).count() >= 1)"
                ".groupBy(node).sum() >= 2",
            ),
            [
                "7: alarms[0].query: groupBy(node): not a dimension of the nested query's result (it has: "
                "cluster, host) (column 74)"
            ],
        ),
        (
            (
                "    severity: CRITICAL\n",
                "    severity: SEVERE\n    pendingDuration: PT2H\n    pendingDurtion: PT1M\n",
            ),
            [
                "6: alarms[0].severity: Input should be 'CRITICAL', 'ERROR', 'WARNING' or 'INFO'",
                "7: alarms[0].pendingDuration: PT2H is outside PT1M..PT1H",
                "8: alarms[0].pendingDurtion: unknown key",
            ],
        ),
        (
            # A bad default is reported once, where it is written, not once per alarm.
            (
                "[ocid1.onstopic.oc1.iad.aaaaaaaaexample]",
                "[ocid1.topic.oc1.iad.aaaaaaaaexample]\n  namespace: oci_mine",
            ),
            [
                "3: defaults.destinations: 'ocid1.topic.oc1.iad.aaaaaaaaexample' is not a "
                "Notifications topic (ocid1.onstopic.…) or stream OCID",
                "4: defaults.namespace: namespace 'oci_mine': oci_ and oracle_ are Oracle's; the agent's "
                "metrics cannot be there",
            ],
        ),
        (
            (
                "alarms:\n",
                "alarms:\n  - {displayName: a, severity: INFO, query: 'probe_success[1m].absent()'}\n",
            ),
            ["6: alarms[1].displayName: duplicate displayName 'a' (first at alarms[0])"],
        ),
        (
            ("ocid1.compartment.oc1..aaaaaaaaexample", "${MY_COMPARTMENT}"),
            [
                "2: defaults.compartmentId: variable MY_COMPARTMENT is not set: "
                "give --var MY_COMPARTMENT=VALUE or set it in the environment"
            ],
        ),
        (
            ("defaults:", "extra: 1\ndefaults:"),
            ["1: extra: unknown key (expected one of: defaults, dimensions, alarms)"],
        ),
    ],
)
def test_invalid_files_give_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], errors: list[str]
) -> None:
    assert GOOD.count(edit[0]) == 1
    path = tmp_path / "alarms.yaml"
    path.write_text(GOOD.replace(*edit))
    code = main(["oci-alarms", "validate", "-f", str(path)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == "".join(f"{path}:{e}\n" for e in errors)


async def test_an_invalid_file_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with alarms_env(tmp_path) as env:
        path = tmp_path / "bad.yaml"
        path.write_text(GOOD.replace("max() < 1", "max() <"))
        code, out, err = await agentctl(capsys, env.args("apply", file=path))
        assert (code, out) == (1, "")
        assert err == f"{path}:7: alarms[0].query: expected a number after < (column 26)\n"
        assert env.fake.calls == []


@pytest.mark.parametrize(
    "query",
    [
        'probe_success[1m]{check = "web"}.min() < 1',
        "mamori_check_status[1m].groupBy(host, check).max() >= 2",
        "probe_success[5m].groupBy(host).absent()",
        "probe_success[5m].groupBy(host).absent(20)",
        "probe_duration_seconds[5m].grouping().percentile(0.9) > 1",
        "probe_success[1m].mean() in (0.2, 0.8)",
        "probe_success[1m].mean() not in (0, 1)",
        'mamori_pg_failover_ready[1m]{reason =~ "standby_*|replay_paused"}.groupBy(cluster).max() == 1',
        "(probe_success[1m].groupBy(host).max() < 1).grouping().sum() >= 2 || probe_success[10m].absent()",
        'mamori_member_success[1m]{site = "tokyo"}.max() < 1',  # a declared dimension
    ],
)
def test_queries_both_parsers_accept(query: str) -> None:
    mql.check_query(query, ["site"])
    assert mql_problem(query) is None


# --- the shipped file -----------------------------------------------------------------------------------


def test_the_shipped_alarms_mirror_existing_alerts_and_runbooks() -> None:
    spec = model.load(ALARMS, {"OCI_COMPARTMENT_ID": ocid("compartment"), "OCI_TOPIC_ID": ocid("onstopic")})
    alerts = set()
    for rules in (ROOT / "alerts" / "rules").glob("*.yml"):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            alerts |= {r["alert"] for r in group["rules"] if "alert" in r}
    mirrored = {m for a in spec.alarms for m in a.mirrors}
    assert mirrored <= alerts, mirrored - alerts
    for key in (
        "PostgresFailoverRecommended",
        "PostgresPrimaryDownConfirmed",
        "LoadBalancerDown",
        "BackendsBelowQuorum",
        "PostgresReplicationLagAboveRPO",
        "PostgresRPOExposureHigh",
        "PostgresArchivingFailing",
        "PostgresSplitBrain",
        "CertificateExpiringSoon",
        "CertificateExpiringCritical",
        "MamoriAgentAbsent",
    ):
        assert key in mirrored
    for alarm in spec.alarms:
        assert alarm.runbook and alarm.runbook.startswith(RUNBOOK_URL)
        assert (ROOT / alarm.runbook.removeprefix(RUNBOOK_URL)).is_file(), alarm.runbook
        assert mql_problem(alarm.query) is None  # the fake's independent check agrees
    # The docs name every alarm and every alert the file does not mirror.
    docs = (ROOT / "docs" / "oci-alarms.md").read_text()
    for alarm in spec.alarms:
        assert f"`{alarm.display_name}`" in docs, alarm.display_name
    for alert in sorted(alerts - mirrored):
        assert f"`{alert}`" in docs, alert


def test_variables_fill_the_thresholds_and_are_checked_with_the_query() -> None:
    env = {
        "OCI_COMPARTMENT_ID": ocid("compartment"),
        "OCI_TOPIC_ID": ocid("onstopic"),
        "MAMORI_RPO_SECONDS": "300",
        "MAMORI_ALARMS_FLEET": "true",
        "MAMORI_ALARMS_WITNESSES": "false",
        "MAMORI_PRIMARY_DOWN_MIN_ZONES": "3",
        "OCI_METRIC_COMPARTMENT_ID": ocid("compartment"),
    }
    spec = model.load(ALARMS, env)
    by_name = {a.display_name: a for a in spec.alarms}
    assert by_name["mamori: PostgresReplicationLagAboveRPO"].query.endswith("min() > 300")
    assert by_name["mamori: PostgresFailoverRecommended (fleet)"].is_enabled
    assert not by_name["mamori: PostgresFailoverRecommended"].is_enabled
    assert ".groupBy(cluster).sum() >= 3 && " in by_name["mamori: PostgresFailoverRecommended"].query
    assert 'witness[1m]{state = "reachable"}' in by_name["mamori: PostgresFailoverRecommended"].query
    assert (
        by_name["mamori: LoadBalancerDown"].details()["metric_compartment_id"]
        == env["OCI_METRIC_COMPARTMENT_ID"]
    )
    with pytest.raises(ConfigError) as bad:
        model.load(ALARMS, {**env, "MAMORI_RPO_SECONDS": "15m"})
    assert [line.split(": ", 1)[1] for line in str(bad.value).splitlines()] == [
        "alarms[5].query: unexpected 'm' (column 76)",
        "alarms[6].query: unexpected 'm' (column 76)",
    ]


# --- the fake is strict ---------------------------------------------------------------------------------


async def test_the_fake_refuses_what_the_service_refuses(tmp_path: Path) -> None:
    async with alarms_env(tmp_path) as env:
        client = env.api().client
        oci: Any = importlib.import_module("oci")
        good: dict[str, Any] = {
            "displayName": "x",
            "compartmentId": env.compartment,
            "metricCompartmentId": env.compartment,
            "namespace": "mamori",
            "query": "probe_success[1m].max() < 1",
            "severity": "CRITICAL",
            "destinations": [env.topic],
            "isEnabled": True,
        }

        def create(body: Any) -> tuple[int, str, str]:
            try:
                client.create_alarm(body)
            except oci.exceptions.ServiceError as exc:
                return int(exc.status), str(exc.code), str(exc.message)
            return 200, "", ""

        cases: list[tuple[Callable[[dict[str, Any]], dict[str, Any]], tuple[int, str, str]]] = [
            (
                lambda d: {**d, "severity": "SEVERE"},
                (400, "InvalidParameter", "Invalid severity: must be one of CRITICAL, ERROR, WARNING, INFO."),
            ),
            (
                lambda d: {**d, "pendingDuration": "PT2H"},
                (400, "InvalidParameter", "Invalid pendingDuration: an ISO 8601 duration from PT1M to PT1H."),
            ),
            (
                lambda d: {**d, "query": "probe_success[1m].max()"},
                (400, "InvalidParameter", "Invalid query: an alarm query needs a comparison or absent()."),
            ),
            (
                lambda d: {**d, "destinations": [env.compartment]},
                (
                    400,
                    "InvalidParameter",
                    f"Invalid destination {env.compartment!r}: "
                    "a Notifications topic or Streaming stream OCID.",
                ),
            ),
            (
                lambda d: {k: v for k, v in d.items() if k != "isEnabled"},
                (400, "InvalidParameter", "Missing required field(s): isEnabled."),
            ),
            (
                lambda d: {"display_name": "x"},
                (400, "CannotParseRequest", "Unrecognized field(s): ['display_name']"),
            ),
            (
                lambda d: {**d, "compartmentId": ocid("compartment")},
                (404, "NotAuthorizedOrNotFound", "Authorization failed or requested resource not found."),
            ),
        ]
        for change, expected in cases:
            assert await asyncio.to_thread(create, change(good)) == expected
        assert env.fake.alarms == {}
        assert await asyncio.to_thread(create, good) == (200, "", "")

        alarm_id = next(iter(env.fake.alarms))
        models = oci.monitoring.models

        def update(**kwargs: Any) -> int:
            try:
                client.update_alarm(alarm_id, models.UpdateAlarmDetails(severity="INFO"), **kwargs)
            except oci.exceptions.ServiceError as exc:
                return int(exc.status)
            return 200

        assert await asyncio.to_thread(update, if_match="stale") == 412
        assert await asyncio.to_thread(update) == 200
        env.fake.alarms[alarm_id]["lifecycleState"] = "DELETING"
        assert await asyncio.to_thread(update) == 409
