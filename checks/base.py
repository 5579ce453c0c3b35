"""The one interface every check implements.

A check is constructed from its validated, frozen config and answers `run()` with an `Outcome`.
The harness (`agent.runner.execute`) owns timing, the overall timeout and the conversion of an
escaping exception into an UNKNOWN result: a check never measures its own total duration and
never needs a try/except around its whole body. A failing *target* is an Outcome with a reason;
an exception is a bug in the check.

Do not derive a check from another check: share helpers (see `checks/tls.py`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from pydantic import Field

from agent.model import Reason, Sample, Status
from agent.types import Duration, Model


class CheckConfig(Model):
    """Keys every check has. `interval` and `timeout` are filled from the `agent` section's
    defaults before validation, so they are always set on a loaded config. The harness
    (`agent.runner.execute`) applies `timeout` and `retries`; a check never retries itself."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/-]+$")
    type: str
    interval: Duration
    timeout: Duration
    tags: tuple[str, ...] = ()
    # Retries happen inside `timeout`: a failed attempt is retried after retry_backoff, doubling
    # each time, while a tenth of the timeout is still left.
    retries: int = Field(default=0, ge=0, le=10)
    retry_backoff: Duration = 0.2


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    reason: Reason = Reason.OK
    message: str = ""
    samples: tuple[Sample, ...] = ()
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class PerfDatum:
    """One Nagios perfdata item: 'label'=value[uom];warn;crit;min;max."""

    label: str
    value: float
    uom: str = ""
    warn: float | None = None
    crit: float | None = None
    min: float | None = None
    max: float | None = None

    def render(self) -> str:
        def num(v: float | None) -> str:
            return "" if v is None else f"{v:.6g}"

        tail = ";".join(num(v) for v in (self.warn, self.crit, self.min, self.max)).rstrip(";")
        return f"'{self.label}'={self.value:.6g}{self.uom}" + (f";{tail}" if tail else "")


ConfigT = TypeVar("ConfigT", bound=CheckConfig)


class Check(Generic[ConfigT]):
    """Base class. Subclasses set `type_name` and `config_model` and implement `run`."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[CheckConfig]]

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def target(self) -> str:
        """What is probed, for the `target` label: no credentials, no query string, bounded."""
        return ""

    async def run(self) -> Outcome:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release resources. Safe to call twice, and without `run` ever having been called."""

    def summary(self, outcome: Outcome) -> str | None:
        """A readable multi-line report of one run for `agentctl check NAME`, or None to print the
        usual table. For checks whose one-line message cannot say enough (e.g. replication)."""
        return None

    def perfdata(self, duration: float, outcome: Outcome) -> list[PerfDatum]:
        """Nagios perfdata for the CLI; the default reports the run time."""
        return [PerfDatum("time", duration, "s", min=0)]
