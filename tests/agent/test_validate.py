"""`agentctl validate --offline` (CI: no secret, no host file is read) and `validate` refusing a
config whose exporter needs an extra that is not installed, with the hint `run` gives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent import cli, config, extras
from agent.config import ConfigError
from agent.files import offline

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "deploy/examples").glob("*.yml"))

OCI_AND_OTEL = """
checks:
  - {name: db, type: tcp, host: 127.0.0.1, port: 5432}
exporters:
  - {name: oci, type: oci, compartment_id: "ocid1.tenancy.oc1..aaaa", namespace: m, auth: resource_principal}
  - {name: traces, type: otel, endpoint: "http://127.0.0.1:4318"}
"""


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_shipped_examples_pass_validate_offline(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "--offline", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK (") and out.count("\n") == 1
    # What it did not read is said, by key and path.
    assert "offline, not read: procfs /host/proc, rootfs /host, password_file /run/secrets/" in out


def test_offline_reads_no_secret_and_no_host_file_and_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.yml"
    path.write_text(
        "checks:\n"
        "  - {name: host, type: host, procfs: /nonexistent/proc, rootfs: /nonexistent}\n"
        "  - {name: api, type: http, url: 'https://127.0.0.1/', tls: {ca_file: /nonexistent/ca.pem}}\n"
        "notifiers:\n"
        "  - {name: pd, type: pagerduty, routing_key_file: /nonexistent/pd}\n"
        "  - {name: chat, type: slack, webhook_url_file: /nonexistent/slack}\n"
    )
    assert cli.main(["validate", str(path)]) == 1
    online = capsys.readouterr()
    assert online.out == "" and online.err.count("cannot read") == 3  # procfs and the two secrets
    assert cli.main(["validate", "--offline", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"{path}: OK (2 checks; offline, not read: procfs /nonexistent/proc, rootfs /nonexistent, "
        "tls file /nonexistent/ca.pem, routing_key_file /nonexistent/pd, "
        "webhook_url_file /nonexistent/slack)\n"
    )


def test_offline_still_reports_every_other_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yml"
    path.write_text("checks:\n  - {name: host, type: host, procfs: relative/proc, interval: soon}\n")
    assert cli.main(["validate", "--offline", str(path)]) == 1
    err = capsys.readouterr().err
    assert "checks[0].procfs: 'relative/proc' is not an absolute path" in err
    assert "checks[0].interval:" in err


def test_offline_ends_with_its_block(tmp_path: Path) -> None:
    path = tmp_path / "agent.yml"
    path.write_text("notifiers:\n  - {name: pd, type: pagerduty, routing_key_file: /nonexistent/pd}\n")
    with offline() as skipped:
        config.load(path)
    assert skipped == ["routing_key_file /nonexistent/pd"]
    with pytest.raises(ConfigError, match="routing_key_file: cannot read /nonexistent/pd"):
        config.load(path)


def test_validate_refuses_an_exporter_whose_extra_is_missing_with_the_hint_run_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.yml"
    path.write_text(OCI_AND_OTEL)
    assert cli.main(["validate", str(path)]) == 0  # both extras are installed for the tests
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "oci", None)  # import oci -> ImportError
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    assert cli.main(["validate", "--offline", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{path}: exporter oci (type oci) needs the OCI SDK, which is not installed: "
        "pip install 'mamori[oci]' (the container image: build it with --build-arg EXTRAS=oci)\n"
        f"{path}: exporter traces (type otel) needs the OpenTelemetry SDK, which is not installed: "
        "pip install 'mamori[otel]' (the container image: build it with --build-arg EXTRAS=otel)\n"
    )
    # `make run CONFIG=…` installs what `python -m agent.extras` names.
    assert extras.main([str(path)]) == 0
    assert capsys.readouterr().out == "oci,otel\n"


def test_run_refuses_with_the_same_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.yml"
    path.write_text(OCI_AND_OTEL.replace("exporters:", f"outbox: {{path: {tmp_path / 'o.db'}}}\nexporters:"))
    monkeypatch.setitem(sys.modules, "oci", None)
    assert cli.main(["validate", str(path)]) == 1
    line = capsys.readouterr().err.splitlines()[0].removeprefix(f"{path}: ")
    assert cli.main(["run", "-c", str(path), "--listen", "127.0.0.1:0"]) == 1
    assert line in capsys.readouterr().err


def test_extras_prints_nothing_for_a_config_that_needs_none_or_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yml"
    good.write_text("checks:\n  - {name: db, type: tcp, host: 127.0.0.1, port: 5432}\n")
    assert extras.main([str(good)]) == 0
    assert extras.main([str(tmp_path / "missing.yml")]) == 0
    assert capsys.readouterr().out == "\n\n"


def test_a_google_service_account_without_the_google_extra_is_refused_by_validate_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.yml"
    path.write_text(
        "checks:\n"
        "  - name: cal\n"
        "    type: http\n"
        "    url: https://www.googleapis.com/calendar/v3/calendars/x\n"
        "    google_service_account:\n"
        "      key_file: /nonexistent/key.json\n"
        "      scopes: [https://www.googleapis.com/auth/calendar.readonly]\n"
    )
    assert cli.main(["validate", "--offline", str(path)]) == 0  # cryptography is installed for the tests
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.padding", None)
    assert cli.main(["validate", "--offline", str(path)]) == 1
    line = (
        "check cal (type http, google_service_account) needs the cryptography package, which is not"
        " installed: pip install 'mamori[google]' (the container image: build it with"
        " --build-arg EXTRAS=google)"
    )
    assert capsys.readouterr().err == f"{path}: {line}\n"
    assert extras.main([str(path)]) == 0
    assert capsys.readouterr().out == "google\n"
    # `run` refuses with the same line (the key is read at load, its RSA key is not checked then).
    key = {"type": "service_account", "client_email": "m@p.iam.gserviceaccount.com", "private_key": "-"}
    (tmp_path / "key.json").write_text(json.dumps(key))
    path.write_text(path.read_text().replace("/nonexistent/key.json", str(tmp_path / "key.json")))
    assert cli.main(["run", "-c", str(path), "--listen", "127.0.0.1:0"]) == 1
    err = capsys.readouterr().err
    assert line in err and "Traceback" not in err
