"""The docker check: are the selected containers running, healthy, and not crash-looping?

One run lists the containers selected by labels (exited ones too, unless `include_stopped` is
off), inspects each of them, and grades what the engine reports: health, OOM kills, exits,
restarts since the previous run, and how many are running against `expect_running`.

Guarantees:
- `run()` never raises for anything the engine does: an unreachable, slow, failing or garbled
  engine is UNKNOWN with reason `unavailable` and a one-line message naming the socket.
- One deadline (`timeout`) covers the list and every inspect.
- Only GET requests reach the engine (see `checks/docker_api.py`).
- The worst problem decides the status; among equally bad ones the most specific cause is the
  reason (oom_killed, exited, restarting, unhealthy, missing); every problem container is named.
- Restarts are counted per container id between consecutive runs, so the first run after the
  agent starts never reports restarts that happened before it (a container restarting right now
  is reported anyway), and a re-created container starts from its own count.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from agent.model import CheckResult, Reason, Sample, Status
from checks.base import Check, CheckConfig, CheckOutcome, PerfDatum
from checks.docker_api import ContainerSelector, DockerClient, DockerError, container_name, integer, obj, text

# The engine's container states (State.Status), in lifecycle order: the `state` label's values.
STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")

# The clock that tells a retry from the next run (a module global so tests can move it).
_clock = time.monotonic

# Sample names (agent/catalog.py).
RUNNING = "mamori_container_running"
HEALTHY = "mamori_container_healthy"
RESTARTS = "mamori_container_restarts_total"
OOM_KILLED = "mamori_container_oom_killed"
EXIT_CODE = "mamori_container_exit_code"
CONTAINERS = "mamori_containers"

# Among problems of the same status, the first in this order names the result: an OOM kill
# explains an exit, an exit explains a restart loop, and all of them explain a missing container.
_PRECEDENCE = (
    Reason.CONTAINER_OOM_KILLED,
    Reason.CONTAINER_EXITED,
    Reason.CONTAINER_RESTARTING,
    Reason.CONTAINER_UNHEALTHY,
    Reason.CONTAINER_MISSING,
)


class DockerConfig(CheckConfig, ContainerSelector):
    type: Literal["docker"] = "docker"
    include_stopped: bool = True
    restart_warning: int = Field(default=1, ge=1)
    restart_critical: int = Field(default=3, ge=1)
    expect_running: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _warning_below_critical(self) -> DockerConfig:
        if self.restart_warning > self.restart_critical:
            default = "" if "restart_critical" in self.model_fields_set else ", its default"
            raise ValueError(
                f"restart_warning ({self.restart_warning}) must not exceed "
                f"restart_critical ({self.restart_critical}{default})"
            )
        return self


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What one inspect says, read defensively (a missing or mistyped key reads as its default)."""

    id: str
    name: str
    status: str  # State.Status: created, running, paused, restarting, removing, exited, dead
    health: str | None  # State.Health.Status; None when the container has no healthcheck
    oom_killed: bool
    exit_code: int
    restart_count: int
    restarting: bool

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> ContainerState:
        state = obj(data.get("State"))
        health = text(obj(state.get("Health")).get("Status")) or None
        return cls(
            id=text(data.get("Id")),
            name=container_name(data),
            status=text(state.get("Status")) or "unknown",
            # API 1.44+ reports "none" for a container without a healthcheck; older ones omit Health.
            health=None if health == "none" else health,
            oom_killed=state.get("OOMKilled") is True,
            exit_code=integer(state.get("ExitCode")),
            restart_count=integer(data.get("RestartCount")),
            restarting=state.get("Restarting") is True,
        )


@dataclass(frozen=True, slots=True)
class _Problem:
    status: Status
    reason: Reason
    text: str


@dataclass
class _Grades:
    problems: list[tuple[str, list[_Problem]]] = field(default_factory=list)  # per container name
    notes: list[str] = field(default_factory=list)

    def all(self) -> list[_Problem]:
        return [p for _, ps in self.problems for p in ps]


class DockerCheck(Check[DockerConfig]):
    type_name: ClassVar[str] = "docker"
    config_model: ClassVar[type[CheckConfig]] = DockerConfig

    def __init__(self, config: DockerConfig) -> None:
        super().__init__(config)
        self._client = DockerClient(config.socket, timeout=config.timeout)
        # RestartCount by container id: at the previous run (the baseline), and at the last reading
        # with its monotonic time. They differ when the harness retries within a run.
        self._baseline: dict[str, int] | None = None
        self._last: tuple[float, dict[str, int]] | None = None

    @property
    def target(self) -> str:
        return f"docker:{self.config.socket}"

    async def aclose(self) -> None:
        """Close the engine connection. Safe to call twice, and before any run."""
        await self._client.aclose()

    async def run(self) -> CheckOutcome:
        cfg = self.config
        try:
            async with asyncio.timeout(self.time_left()):
                containers, vanished = await self._read()
        except TimeoutError:
            return self._unavailable(
                f"no answer from the Docker engine at {cfg.socket} within {cfg.timeout:g}s"
            )
        except DockerError as exc:
            return self._unavailable(exc.message)
        self._advance_baseline({c.id: c.restart_count for c in containers})
        return self._outcome(containers, vanished)

    def _advance_baseline(self, counts: dict[str, int]) -> None:
        """Make the previous run's reading the baseline for restarts. A reading less than half an
        interval after the last one is a retry within the same run (runs start an interval apart):
        it keeps the baseline, so a retry cannot turn "restarted 3 times" into "restarted 0 times"."""
        now = _clock()
        if self._last is not None and now - self._last[0] >= self.config.interval / 2:
            self._baseline = self._last[1]
        self._last = (now, counts)

    @staticmethod
    def _unavailable(message: str) -> CheckOutcome:
        return CheckOutcome(Status.UNKNOWN, Reason.UNAVAILABLE, message)

    async def _read(self) -> tuple[list[ContainerState], int]:
        """Every selected container, inspected, sorted by name; and how many vanished between the
        list and their inspect (they are gone, so they are not graded)."""
        entries = await self._client.list_containers(self.config.selector(), all_=self.config.include_stopped)
        ids = [i for i in (text(e.get("Id")) for e in entries) if i]
        # return_exceptions: a failed inspect must not leave the others running past this run.
        answers = await asyncio.gather(*(self._client.inspect(i) for i in ids), return_exceptions=True)
        containers: list[ContainerState] = []
        vanished = 0
        for id_, answer in zip(ids, answers, strict=True):
            if isinstance(answer, DockerError) and answer.status == 404:
                vanished += 1
            elif isinstance(answer, BaseException):
                raise answer
            else:
                # The id asked for stands in for a missing one, so the container keeps an identity.
                data = answer if text(answer.get("Id")) else {**answer, "Id": id_}
                containers.append(ContainerState.from_inspect(data))
        containers.sort(key=lambda c: (c.name, c.id))
        return containers, vanished

    def _grade(self, c: ContainerState) -> tuple[list[_Problem], str | None]:
        """(problems, a note for what is worth saying but not a problem)."""
        cfg = self.config
        problems: list[_Problem] = []
        note: str | None = None
        if c.oom_killed:
            problems.append(_Problem(Status.CRITICAL, Reason.CONTAINER_OOM_KILLED, "OOM-killed"))
        if c.status in ("exited", "dead"):
            if c.exit_code != 0 or c.status == "dead":
                what = "dead" if c.status == "dead" else "exited"
                text = f"{what} with code {c.exit_code}"
                if c.exit_code == 137 and not c.oom_killed:
                    # SIGKILL. On cgroup v2 the engine flags OOMKilled only when the kernel's OOM
                    # event beats the exit to it: a memory-limit kill may show as this alone.
                    text += " (SIGKILL: docker kill, or an OOM kill the engine did not flag)"
                problems.append(_Problem(Status.CRITICAL, Reason.CONTAINER_EXITED, text))
            else:
                note = f"{c.name} exited with code 0"
        if c.restarting or c.status == "restarting":
            problems.append(
                _Problem(
                    Status.CRITICAL,
                    Reason.CONTAINER_RESTARTING,
                    f"restarting (restart count {c.restart_count}, last exit code {c.exit_code})",
                )
            )
        previous = None if self._baseline is None else self._baseline.get(c.id)
        if previous is not None:
            # A count lower than before was reset (e.g. a manual restart): count from zero.
            delta = c.restart_count - previous if c.restart_count >= previous else c.restart_count
            if delta >= cfg.restart_warning:
                status = Status.CRITICAL if delta >= cfg.restart_critical else Status.WARNING
                times = "once" if delta == 1 else f"{delta} times"
                problems.append(
                    _Problem(status, Reason.CONTAINER_RESTARTING, f"restarted {times} since the last run")
                )
        # Only a running container's health is news: the engine marks every container with a
        # healthcheck "unhealthy" when it stops (FailingStreak 0), so a job that finished with 0
        # would otherwise page, and an exit would be reported twice.
        if c.status == "running" and c.health == "unhealthy":
            problems.append(_Problem(Status.CRITICAL, Reason.CONTAINER_UNHEALTHY, "unhealthy"))
        elif c.status == "running" and c.health == "starting" and not problems:
            note = f"{c.name} health starting"
        if c.status in ("paused", "created", "removing") and not problems:
            note = f"{c.name} {c.status}"
        return problems, note

    def _outcome(self, containers: list[ContainerState], vanished: int) -> CheckOutcome:
        cfg = self.config
        grades = _Grades()
        for c in containers:
            problems, note = self._grade(c)
            if problems:
                grades.problems.append((c.name, problems))
            if note:
                grades.notes.append(note)
        running = sum(1 for c in containers if c.status == "running")
        missing: _Problem | None = None
        if cfg.expect_running is not None and running < cfg.expect_running:
            missing = _Problem(
                Status.CRITICAL,
                Reason.CONTAINER_MISSING,
                f"{running} running, expected at least {cfg.expect_running}",
            )
        problems = grades.all() + ([missing] if missing else [])

        parts = [f"{name}: {', '.join(p.text for p in ps)}" for name, ps in grades.problems]
        if missing is not None:
            parts.append(missing.text)
        parts.append(self._summary(containers))
        if vanished:
            parts.append(f"{vanished} removed while being inspected")
        parts.extend(grades.notes)
        message = "; ".join(parts)
        samples = self._samples(containers)
        if not problems:
            return CheckOutcome(Status.OK, Reason.OK, message, samples)
        status = max(p.status for p in problems)
        reason = min((p.reason for p in problems if p.status == status), key=_PRECEDENCE.index)
        return CheckOutcome(status, reason, message, samples)

    def _summary(self, containers: list[ContainerState]) -> str:
        if not containers:
            selector = ", ".join(k if v is None else f"{k}={v}" for k, v in self.config.selector().items())
            return f"no containers match the labels {selector}" if selector else "no containers"
        counts: dict[str, int] = {}
        for c in containers:
            counts[c.status] = counts.get(c.status, 0) + 1
        order = {s: i for i, s in enumerate(STATES)}
        by_state = ", ".join(
            f"{n} {s}"
            for s, n in sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
        )
        healthy = sum(1 for c in containers if c.health == "healthy")
        noun = "container" if len(containers) == 1 else "containers"
        return f"{len(containers)} {noun}: {by_state}" + (f" ({healthy} healthy)" if healthy else "")

    @staticmethod
    def _samples(containers: list[ContainerState]) -> tuple[Sample, ...]:
        samples: list[Sample] = []
        for c in containers:
            label = (("container", c.name),)
            healthy = {"healthy": 1.0, None: -1.0}.get(c.health, 0.0)
            samples += [
                Sample(RUNNING, 1.0 if c.status == "running" else 0.0, label),
                Sample(HEALTHY, healthy, label),
                Sample(RESTARTS, float(c.restart_count), label),
                Sample(OOM_KILLED, 1.0 if c.oom_killed else 0.0, label),
                Sample(EXIT_CODE, float(c.exit_code), label),
            ]
        # Every state always, so a state's series does not vanish when its count drops to zero.
        for state in STATES:
            count = sum(1 for c in containers if c.status == state)
            samples.append(Sample(CONTAINERS, float(count), (("state", state),)))
        return tuple(samples)

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        running = next(
            (s.value for s in result.samples if s.name == CONTAINERS and s.labels == (("state", "running"),)),
            0.0,
        )
        return [
            PerfDatum("time", result.duration, "s", min=0),
            PerfDatum("running", running, min=0),
        ]
