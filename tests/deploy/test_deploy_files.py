"""The deploy files: the image, the Compose service, the systemd unit and the example configs.

The image is built and run for real on the lab's Docker Engine, under the shipped Compose file
(tests/docker/test_image.py). What stays here is cheap and static: invariants of the Dockerfile,
`.dockerignore` and the Compose service, `docker-compose config` (no engine needed), `agentctl
validate` of every example, and the unit, checked by systemd-analyze and systemd-sysusers, which
need no running systemd.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy/docker/Dockerfile"
COMPOSE = REPO / "deploy/docker/compose.agent.yml"
COMPOSE_BUILD = REPO / "deploy/docker/compose.build.yml"
UNIT = REPO / "deploy/systemd/mamori-agent.service"
SYSUSERS = REPO / "deploy/systemd/mamori.sysusers.conf"
EXAMPLES = sorted((REPO / "deploy/examples").glob("*.yml"))
PRODUCTION = REPO / "deploy/examples/production.yml"
DEV = REPO / "deploy/examples/dev-compose.yml"

IMAGE_CONFIG = "/etc/mamori/agent.yml"
SECRET_REF = re.compile(r"\$\{CREDENTIALS_DIRECTORY:-/run/secrets\}/([A-Za-z0-9_.-]+)")


def secrets_read_by(config: Path) -> set[str]:
    """The secret files a config reads, commented-out keys left out."""
    lines = config.read_text(encoding="utf-8").splitlines()
    return {name for line in lines if not line.lstrip().startswith("#") for name in SECRET_REF.findall(line)}


def _service_account_key() -> str:
    """A Google service account's JSON key, as the Cloud console hands it out, with a fresh RSA key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "example-ops",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": pem,
            "client_email": "mamori-monitor@example-ops.iam.gserviceaccount.com",
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
        },
        indent=2,
    )


# Shapes the notifiers validate at load; the values are never sent anywhere.
FAKE_SECRETS = {
    "pagerduty_routing_key": "0123456789abcdef0123456789abcdef",
    "slack_webhook_url": "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
    "postgres_password": "not-a-real-password",
    "sendgrid_api_key": "SG.not-a-real-key",
    "stripe_restricted_key": "rk_live_not_a_real_key",
    "line_channel_access_token": "not-a-real-channel-access-token",
    "s3_monitor_secret_key": "not/a/real/secret/access/key",
    "google_calendar_service_account": _service_account_key(),
}


# --- a small Dockerfile reader ------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name or self.base}, got {len(found)}"
        return found[0]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuation lines joined and comment lines dropped, as Docker does."""
    logical: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("#") or (not pending and not raw.strip()):
            continue
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending.append(raw.rstrip()[:-1])
            continue
        pending.append(raw)
        keyword, _, args = "".join(pending).strip().partition(" ")
        logical.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in logical:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may come before the first FROM"
            key, _, value = ins.args.partition("=")
            global_args[key] = _unquote(value)
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages)


def _unquote(value: str) -> str:
    parts = shlex.split(value)
    return parts[0] if parts else ""


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def stage_args(stage: Stage) -> dict[str, str]:
    out = {}
    for ins in stage.all("ARG"):
        key, _, value = ins.args.partition("=")
        out[key] = _unquote(value)
    return out


def stage_env(stage: Stage, env: Mapping[str, str]) -> dict[str, str]:
    """`env` updated by the stage's ENV instructions, each value expanded as Docker does."""
    out = dict(env)
    for ins in stage.all("ENV"):
        for token in shlex.split(ins.args):
            key, sep, value = token.partition("=")
            assert sep, f"line {ins.line}: use ENV KEY=VALUE"
            out[key] = _expand(value, out)
    return out


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"line {ins.line}"
    return [str(v) for v in value]


def healthcheck_command(ins: Instruction) -> tuple[list[str], dict[str, str]]:
    options: dict[str, str] = {}
    rest = ins.args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        rest = rest.lstrip()
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD", f"line {ins.line}: HEALTHCHECK without CMD"
    command = command.strip()
    argv = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
    return argv, options


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out + "$")

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = regex(pattern.removeprefix("!"))
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def read_dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# --- the Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_invariants() -> None:
    df = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(df.stages) >= 2, "multi-stage: a builder and the image"
    builder, final = df.stage("builder"), df.final
    base = df.global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    assert {s.base for s in df.stages} == {"${PYTHON_IMAGE}"}, "both stages on the slim base"

    # The builder builds a wheel of the project and installs it, with $EXTRAS, into a venv.
    runs = " ".join(i.args for i in builder.all("RUN"))
    assert "pip wheel" in runs and "--no-deps" in runs
    assert re.search(r"\$\{EXTRAS[:+}]", runs), "the EXTRAS build arg must reach pip install"
    assert "EXTRAS" in stage_args(builder) and stage_args(builder)["EXTRAS"] == ""

    # The image: only the builder's venv, no compiler, no build tools, no pip install.
    final_runs = " ".join(i.args for i in final.all("RUN"))
    for tool in ("gcc", "g++", "build-essential", "make ", "clang", "-dev ", "pip install", "pip wheel"):
        assert tool not in final_runs, f"{tool!r} in the image's RUN"
    assert stage_args(final).get("APT_PACKAGES") == "", "no Debian package unless asked for"
    copies = final.all("COPY")
    assert [c.args.split()[0] for c in copies] == ["--from=builder"], "the image copies only from the builder"
    venv = stage_env(builder, {})["VIRTUAL_ENV"]
    assert copies[0].args.split()[1:] == [venv, venv]

    # A non-root numeric user that owns the state volume.
    uid, _, gid = final.one("USER").args.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0 and int(gid) != 0
    assert re.search(rf"useradd .*--uid {uid} --gid {gid}", final_runs)
    assert re.search(rf"groupadd .*--gid {gid}", final_runs)
    assert re.search(rf"install -d -o {uid} -g {gid} -m 0750 /var/lib/mamori", final_runs)
    assert json.loads(final.one("VOLUME").args) == ["/var/lib/mamori"]
    assert final.one("STOPSIGNAL").args == "SIGTERM"
    env = stage_env(final, {"PATH": "/usr/bin"})
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{venv}/bin:")

    # Entry point, command and health check through agentctl.
    assert exec_form(final.one("ENTRYPOINT")) == ["agentctl"]
    assert exec_form(final.one("CMD")) == ["run", "-c", IMAGE_CONFIG]
    argv, options = healthcheck_command(final.one("HEALTHCHECK"))
    assert argv[:2] == ["/bin/sh", "-c"] and argv[2].startswith("agentctl check ")
    assert argv[2].endswith("|| exit 1"), "Docker reserves exit code 2; agentctl check uses 2 and 3"
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    health_url = env["MAMORI_HEALTHCHECK_URL"]
    port = final.one("EXPOSE").args
    assert health_url == f"http://127.0.0.1:{port}/healthz"

    # OCI image-spec labels; the version is the project's.
    labels = " ".join(i.args for i in final.all("LABEL"))
    for key in ("title", "description", "source", "documentation", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert stage_args(final)["VERSION"] == version


def test_dockerignore_keeps_what_the_builder_copies_and_nothing_big() -> None:
    patterns = read_dockerignore()
    builder = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")).stage("builder")
    assert [c.args.split()[0] for c in builder.all("COPY")] == ["."], "the builder copies the context"
    for kept in ("pyproject.toml", "README.md", "agent/cli.py", "checks", "exporters", "alerts"):
        assert (REPO / kept).exists(), kept
        assert not dockerignore_excludes(patterns, kept), f"{kept} is built but .dockerignore drops it"
    for dropped in (".venv", ".git", "tests", "lab", "bench", "agent/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(patterns, dropped), dropped


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir uid 10001 can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="mamori-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_secrets(directory: Path, owner: int | None = None) -> None:
    directory.mkdir(mode=0o755)
    for name, value in FAKE_SECRETS.items():
        path = directory / name
        path.write_text(value + "\n", encoding="utf-8")
        if owner is not None:
            os.chown(path, owner, owner)
        path.chmod(0o400)  # as docs/deploy.md says: owned by the agent's uid, mode 0400


# --- the lab stays out of the product ------------------------------------------------------------

SHIPPED = ("agent", "checks", "exporters", "alerts")


def _lab_code(names: list[str]) -> list[str]:
    """Paths (relative to site-packages or the wheel's root) that are lab or demo code."""
    return [
        n
        for n in names
        if n.split("/")[0] in ("lab", "tests", "bench") or Path(n).name.startswith(("demo", "lab_stack"))
    ]


def test_shipped_packages_never_import_the_lab() -> None:
    import ast

    offenders = []
    for package in SHIPPED:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    if module.split(".")[0] in ("lab", "tests", "bench"):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}")
    assert offenders == []


def test_pyproject_ships_no_lab() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == [f"{p}*" for p in SHIPPED]


# --- Compose --------------------------------------------------------------------------------------


def compose_service() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert list(doc["services"]) == ["agent"], "one service"
    service: dict[str, Any] = doc["services"]["agent"]
    return service


def compose_memory_limit_mib() -> int:
    memory = str(compose_service()["deploy"]["resources"]["limits"]["memory"])
    match = re.fullmatch(r"(\d+)([MG])", memory)
    assert match, memory
    return int(match.group(1)) * (1024 if match.group(2) == "G" else 1)


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool, dict[str, Any]]]:
    """target → (source, read-only, long-syntax options)."""
    out = {}
    for volume in service["volumes"]:
        if isinstance(volume, str):
            match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::([^:]+))?", volume)
            assert match, volume
            source, target, mode = match.groups()
            options = mode.split(",") if mode else []
            out[target] = (source, "ro" in options, {"options": options})
        else:
            out[volume["target"]] = (volume["source"], bool(volume.get("read_only")), volume)
    return out


def test_compose_service() -> None:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = compose_service()
    assert service["network_mode"] == "host"
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    for forbidden in ("pid", "privileged", "cap_add", "user"):
        assert forbidden not in service, f"{forbidden} is not needed (see the comments)"
    assert re.fullmatch(r"\$\{DOCKER_GID:\?.+\}", service["group_add"][0])

    mounts = _mounts(service)
    assert mounts["/var/run/docker.sock"][:2] == ("/var/run/docker.sock", True)
    assert mounts["/host/proc"][:2] == ("/proc", True)
    source, read_only, options = mounts["/host"]
    assert (source, read_only) == ("/", True) and options["bind"]["propagation"] == "rslave"
    assert mounts[IMAGE_CONFIG][1], "the config is mounted read-only"
    assert mounts["/var/lib/mamori"][0] in doc["volumes"], "the state is a named volume"
    for target, (source, read_only, _) in mounts.items():
        assert read_only or target == "/var/lib/mamori", f"{source}:{target} is writable"

    # Every secret the production config reads is mounted, from a file.
    wanted = secrets_read_by(PRODUCTION)
    assert set(service["secrets"]) == wanted == set(doc["secrets"])
    for name in wanted:
        assert doc["secrets"][name]["file"].endswith(f"/{name}")

    limits = service["deploy"]["resources"]["limits"]
    assert 0 < float(limits["cpus"]) <= 1
    # ~93 MiB measured with the OCI exporter (docs/deploy.md); twice that and some is the floor.
    assert 192 <= compose_memory_limit_mib() <= 1024
    assert int(service["pids_limit"]) >= 64
    assert service["logging"]["driver"] == "json-file"
    assert set(service["logging"]["options"]) == {"max-size", "max-file"}
    assert service["init"] is True

    listen = re.fullmatch(r"\$\{MAMORI_LISTEN:-(.+)\}", service["environment"]["MAMORI_LISTEN"])
    health = re.fullmatch(
        r"\$\{MAMORI_HEALTHCHECK_URL:-(.+)\}", service["environment"]["MAMORI_HEALTHCHECK_URL"]
    )
    assert listen and health
    assert health.group(1) == f"http://127.0.0.1:{listen.group(1).rpartition(':')[2]}/healthz"
    # The file is copied to the hosts, where a build context relative to it is not the repository.
    assert "build" not in service
    build = yaml.safe_load(COMPOSE_BUILD.read_text(encoding="utf-8"))["services"]["agent"]["build"]
    assert (COMPOSE_BUILD.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert re.fullmatch(r"\$\{MAMORI_EXTRAS:?-oci,google\}", build["args"]["EXTRAS"])


def test_compose_config_with_docker_compose(shared_tmp: Path) -> None:
    """`docker-compose config` (Debian's 1.29, no engine needed; `make test` installs it)."""
    binary = shutil.which("docker-compose")
    assert binary is not None, "docker-compose is not installed (Debian package docker-compose)"
    write_secrets(shared_tmp / "secrets")
    (shared_tmp / "agent.yml").write_text("{}\n", encoding="utf-8")
    env = {
        "PATH": os.environ["PATH"],
        "DOCKER_GID": "999",
        "MAMORI_SECRETS": str(shared_tmp / "secrets"),
        "MAMORI_CONFIG": str(shared_tmp / "agent.yml"),
    }
    done = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "network_mode: host" in done.stdout
    missing = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        env={k: v for k, v in env.items() if k != "DOCKER_GID"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "DOCKER_GID" in missing.stderr


# --- systemd --------------------------------------------------------------------------------------


def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_hardening() -> None:
    d = unit_directives()
    assert d["User"] == ["mamori"] and d["Group"] == ["mamori"]
    assert d["ExecStart"] == ["/opt/mamori/bin/agentctl run -c /etc/mamori/agent.yml"]
    assert d["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert d["Restart"] == ["on-failure"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "StateDirectory": "mamori",
        "CapabilityBoundingSet": "",  # the agent opens no raw socket and binds above 1024
        "AmbientCapabilities": "",
    }
    for key, value in expected.items():
        assert d[key] == [value], key
    assert "AF_PACKET" not in d["RestrictAddressFamilies"][0]
    # The examples read MAMORI_PROCFS/MAMORI_ROOTFS; systemd provides the credentials and state dirs.
    env = dict(kv.split("=", 1) for line in d["Environment"] for kv in line.split())
    assert env["MAMORI_PROCFS"] == "/proc" and env["MAMORI_ROOTFS"] == "/"
    credentials = {c.partition(":")[0] for c in d["LoadCredential"]}
    assert credentials == secrets_read_by(PRODUCTION)
    memory = d["MemoryMax"][0]
    assert memory == f"{compose_memory_limit_mib()}M", "the same limit as the container"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    # verify wants ExecStart's program to exist: point it at this checkout's agentctl.
    agentctl = Path(sys.executable).parent / "agentctl"
    assert agentctl.exists()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/mamori/bin/agentctl", str(agentctl)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on unknown keys and bad values too, printing them: any output is a problem.
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout)
    assert level, done.stdout[-500:]
    assert float(level.group(1)) <= 2.0, done.stdout


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_snippet_creates_the_unit_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    passwd = (tmp_path / "etc/passwd").read_text(encoding="utf-8").splitlines()
    user = next(line.split(":") for line in passwd if line.startswith("mamori:"))
    assert user[5] == "/var/lib/mamori" and user[6] == "/usr/sbin/nologin"
    assert 0 < int(user[2]) < 1000, "a system user"


# --- the example configs ----------------------------------------------------------------------------


def validate_example(path: Path, tmp_path: Path) -> Any:
    """`agentctl validate` as the docs say (systemd's variables), then the loaded config."""
    from agent.config import load

    secrets, state = tmp_path / "secrets", tmp_path / "state"
    if not secrets.exists():
        write_secrets(secrets)
        state.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "MAMORI_PROCFS": "/proc",
        "MAMORI_ROOTFS": "/",
        "CREDENTIALS_DIRECTORY": str(secrets),
        "STATE_DIRECTORY": str(state),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "validate", str(path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"{path}: OK")
    cfg = load(path, env)
    # Nothing is written outside the state directory (ProtectSystem=strict, a read-only container).
    assert cfg.alerts.state_file.parent == state
    if cfg.outbox is not None:
        assert Path(cfg.outbox.path).parent == state
    return cfg


def _by_type(cfg: Any, kind: str) -> list[Any]:
    return [c for c in cfg.checks if c.type == kind]


def test_examples_are_the_two_documented_ones() -> None:
    assert EXAMPLES == [DEV, PRODUCTION]


def test_production_example_uses_every_feature(tmp_path: Path) -> None:
    cfg = validate_example(PRODUCTION, tmp_path)
    raw = PRODUCTION.read_text(encoding="utf-8")
    assert cfg.agent.labels["site"]
    assert cfg.agent.listen == "0.0.0.0:9630", "the container's default; Prometheus scrapes it"
    lb = _by_type(cfg, "lb")
    assert lb and lb[0].docker is not None and lb[0].docker.service, "app containers by Docker discovery"
    assert lb[0].url.startswith("https://")
    assert _by_type(cfg, "docker")
    (pg,) = _by_type(cfg, "postgres")
    assert len(pg.nodes) == 2, "primary + standby"
    assert pg.rpo == 15 * 60 and pg.password is not None
    witness = lb[0].db_witness
    assert witness is not None and witness.cluster == pg.cluster_name, "the app as a witness"
    (backup,) = _by_type(cfg, "pg_backup")
    assert backup.pitr_window == 7 * 86400 and backup.pgbackrest is not None
    assert len(_by_type(cfg, "host")) == 1
    assert "${MAMORI_PROCFS:-/host/proc}" in raw and "${MAMORI_ROOTFS:-/host}" in raw
    (oci,) = [e for e in cfg.exporters if e.type == "oci"]
    assert oci.auth == "instance_principal"
    assert re.search(r"^  # - name: bus\n  #   type: mqtt", raw, re.M), "MQTT, commented"
    assert {n.type for n in cfg.notifiers} == {"pagerduty", "slack"}
    for key in ("routing_key_file", "webhook_url_file", "password_file"):
        assert re.search(rf"{key}: \"\$\{{CREDENTIALS_DIRECTORY:-/run/secrets\}}/", raw), key
    routes = {str(k): v for k, v in cfg.alerts.routes.items()}
    assert set(routes["critical"]) == {"pagerduty", "slack"} and routes["warning"] == ("slack",)
    rules = {r.name: r for r in cfg.alerts.rules}
    confirmed = rules["pg_primary_down_confirmed"]
    assert confirmed.check == "fleet:*" and [str(r) for r in confirmed.reason] == ["primary_down_confirmed"]
    # Issue 15: the page goes out with the verdict (no `for:`, the rule's own group_wait 0s); an
    # inconclusive verdict pages a person (critical: PagerDuty and Slack), never as a failover.
    assert (confirmed.for_, confirmed.group_wait) == (0.0, 0.0)
    inconclusive = rules["pg_primary_down_inconclusive"]
    assert inconclusive.check == "fleet:*" and inconclusive.severity.value == "critical"
    assert [str(r) for r in inconclusive.reason] == ["primary_down_inconclusive"]
    assert inconclusive.group_wait == 0.0 and "{message}" in inconclusive.summary
    recommended = rules["pg_failover_recommended"]
    assert recommended.sample == "mamori_pg_failover_recommended"
    # The value, not a reason label: that series vanishes when the reason changes (no data).
    assert recommended.labels == {} and (recommended.op, recommended.value) == ("==", 1)


def test_dev_example_is_local_only(tmp_path: Path) -> None:
    cfg = validate_example(DEV, tmp_path)
    assert cfg.agent.listen.startswith("127.0.0.1:")
    lb = _by_type(cfg, "lb")
    assert lb and lb[0].docker is not None, "the app container by Docker discovery"
    assert lb[0].url.startswith("http://127.0.0.1:")
    (pg,) = _by_type(cfg, "postgres")
    assert [n.host for n in pg.nodes] == ["127.0.0.1"] and pg.password is not None
    assert not cfg.exporters, "no OCI in development"
    assert [n.type for n in cfg.notifiers] == ["webhook"]
    assert cfg.notifiers[0].url.startswith("http://127.0.0.1:")
    assert cfg.alerts.routes and cfg.alerts.rules


def test_deploy_docs_links_resolve() -> None:
    for doc in (REPO / "docs/deploy.md", REPO / "deploy/docker/README.md", REPO / "README.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)}: {target}"


def test_compose_file_copied_to_a_host_as_docs_say_uses_what_is_beside_it(shared_tmp: Path) -> None:
    """docs/deploy.md: compose.agent.yml, agent.yml, secrets/ and .env in one directory of the
    host, far from any checkout; `docker-compose config` there (no MAMORI_* variable set)."""
    binary = shutil.which("docker-compose")
    assert binary is not None, "docker-compose is not installed (Debian package docker-compose)"
    host = shared_tmp / "srv-mamori"
    host.mkdir()
    shutil.copy(COMPOSE, host / "compose.agent.yml")
    write_secrets(host / "secrets")
    (host / "agent.yml").write_text("{}\n", encoding="utf-8")
    (host / ".env").write_text("DOCKER_GID=999\n", encoding="utf-8")
    done = subprocess.run(
        [binary, "-p", "mamori", "-f", "compose.agent.yml", "config"],
        cwd=host,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    service = config["services"]["agent"]
    assert "build" not in service, "a build context relative to the copy would be the host's /"
    assert service["image"] == "mamori-agent:latest"
    # docker-compose 1.29 prints a mount as "source:target:mode", Compose v2 as a mapping.
    mounts = [
        v.split(":")[:2] if isinstance(v, str) else [v.get("source"), v["target"]] for v in service["volumes"]
    ]
    assert [str(host / "agent.yml"), IMAGE_CONFIG] in mounts
    for secret in config["secrets"].values():
        assert Path(secret["file"]).parent == host / "secrets"


def test_dev_compose_header_keeps_secrets_out_of_the_checkout_and_names_what_exists() -> None:
    header = "".join(
        line.removeprefix("#").strip() + "\n"
        for line in DEV.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    )
    # Secrets are written under $MAMORI_SECRETS, outside the repository, and only there.
    writes = re.findall(r">\s*(\S+)", header)
    assert writes and all(w.startswith('"$MAMORI_SECRETS/') for w in writes), writes
    assert re.search(r"MAMORI_SECRETS=\$HOME/", header)
    # `--build` needs the file with `build:` (compose.agent.yml has none); every file it names exists.
    assert "-f compose.agent.yml -f compose.build.yml up -d --build" in header
    for name in re.findall(r"-f (\S+\.yml)", header):
        assert (COMPOSE.parent / name).exists(), name
    # scripts/docker-dev.sh is the application's, not this repository's: said so.
    assert not (REPO / "scripts/docker-dev.sh").exists()
    assert "its `scripts/docker-dev.sh up`,\nnot a script of this one" in header
