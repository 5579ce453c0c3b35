"""The one interface every check implements.

A check is constructed from its validated, frozen config and answers `run()` with a `CheckOutcome`.
The harness (`agent.runner.execute`) owns timing, the overall timeout and the conversion of an
escaping exception into an UNKNOWN result: a check never measures its own total duration and
never needs a try/except around its whole body. A failing *target* is a CheckOutcome with a reason;
an exception is a bug in the check.

Do not derive a check from another check: share helpers (see `checks/tls.py`) instead.
"""

from __future__ import annotations

import asyncio
import math
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Generic, Literal, TypeVar

from pydantic import Field, model_validator

from agent.fields import Duration, Model
from agent.model import CheckResult, Reason, Sample, Status
from agent.secrets import Secrets, secrets_of


class CheckConfig(Model):
    """Keys every check has. `interval` and `timeout` are filled from the `agent` section's
    defaults before validation, so they are always set on a loaded config. The harness
    (`agent.runner.execute`) applies `timeout` and `retries`; a check never retries itself."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/-]+$")
    type: str
    interval: Duration
    timeout: Duration
    tags: tuple[str, ...] = ()
    # "basic" leaves out the detailed series (agent.catalog.DETAIL_METRICS: per-phase timings,
    # protocol details) for an agent probing thousands of targets; filled from `agent.series`.
    series: Literal["full", "basic"] = "full"
    # Retries happen inside `timeout`: a failed attempt is retried after retry_backoff, doubling
    # each time, while a tenth of the timeout is still left; each attempt gets what is left of
    # that one budget (`Check.time_left`).
    retries: int = Field(default=0, ge=0, le=10)
    retry_backoff: Duration = 0.2

    @model_validator(mode="after")
    def _retries_possible(self) -> CheckConfig:
        # The harness retries only while a tenth of the timeout is left after the backoff
        # (agent/runner.py): past that, `retries` is a promise that is never kept.
        if self.retries and self.retry_backoff >= 0.9 * self.timeout:
            raise ValueError(
                f"retry_backoff ({self.retry_backoff:g}s) leaves no time for a retry within timeout"
                f" ({self.timeout:g}s): a retry needs a tenth of the timeout left after the backoff"
            )
        return self

    def require(self) -> None:
        """Raises agent.errors.ExtraMissing when an option of this check needs an extra that is not
        installed: the check `agentctl validate` and `run` make (agent/extras.py). Most checks
        need none."""


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    status: Status
    reason: Reason = Reason.OK
    message: str = ""
    samples: tuple[Sample, ...] = ()
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class PerfDatum:
    """One Nagios perfdata item: 'label'=value[uom];warn;crit;min;max (Nagios plugin guidelines).

    `warn` and `crit` are upper limits (the value alerts above them); with `alert_below` they are
    lower limits, rendered as the range `N:` (alerts below N), e.g. the days a certificate has left.
    """

    label: str
    value: float
    uom: str = ""
    warn: float | None = None
    crit: float | None = None
    min: float | None = None
    max: float | None = None
    alert_below: bool = False

    def render(self) -> str:
        """Always parseable: the label quoted (a quote in it doubled, `=` replaced, as the
        guidelines ask), numbers in plain decimal notation (no exponent, which Nagios, PNP4Nagios
        and Icinga's parsers reject), `U` for a value that is not a number."""
        label = self.label.replace("=", "_").replace("'", "''")
        tail = ";".join(
            [
                *(_threshold(v, self.alert_below) for v in (self.warn, self.crit)),
                _number(self.min),
                _number(self.max),
            ]
        ).rstrip(";")
        value = _number(self.value) or "U"
        return f"'{label}'={value}{self.uom if value != 'U' else ''}" + (f";{tail}" if tail else "")


def _number(value: float | None) -> str:
    """A perfdata number: at most 6 decimals and no exponent; "" for None or a non-finite value."""
    if value is None or not math.isfinite(value):
        return ""
    if value == int(value) and abs(value) < 1e18:
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _threshold(value: float | None, below: bool) -> str:
    text = _number(value)
    return f"{text}:" if below and text else text


ConfigT = TypeVar("ConfigT", bound=CheckConfig)

# The end of the run's budget (event-loop time), set by the harness around each attempt: with
# retries, a later attempt has only what the earlier ones left of `timeout`. A context variable,
# so that the members a group check (`lb`) runs inside its attempt share that budget too.
_budget_end: ContextVar[float | None] = ContextVar("mamori_budget_end", default=None)


class _Budget:
    """The context manager of `budget_until`: a class, not a generator (contextlib), since the
    harness enters one around every attempt of every check."""

    __slots__ = ("_end", "_token")

    def __init__(self, end: float) -> None:
        self._end = end

    def __enter__(self) -> None:
        self._token = _budget_end.set(self._end)

    def __exit__(self, *exc_info: object) -> None:
        _budget_end.reset(self._token)


def budget_until(end: float) -> _Budget:
    """Run the checks inside with `end` (loop time) as the end of their budget. For the harness."""
    return _Budget(end)


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

    @cached_property
    def secrets(self) -> Secrets:
        """The credentials in this check's config: the harness masks them in every message, since a
        target may echo what it was sent (agent/secrets.py)."""
        return secrets_of(self.config)

    def time_left(self) -> float:
        """The seconds this attempt may still take: `timeout` for a first attempt, what is left of
        it on a retry. A check bounds its own run with this (not with `config.timeout`), so a slow
        target ends as the check's own timeout, naming its phase, before the harness cuts it."""
        end = _budget_end.get()
        timeout = float(self.config.timeout)
        if end is None:
            return timeout
        return max(0.0, min(timeout, end - asyncio.get_running_loop().time()))

    async def run(self) -> CheckOutcome:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release resources. Safe to call twice, and without `run` ever having been called."""

    def summary(self, result: CheckResult) -> str | None:
        """A readable multi-line report of one run for `agentctl check NAME`, or None to print the
        usual table. For checks whose one-line message cannot say enough (e.g. replication)."""
        return None

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        """Nagios perfdata of a result of this check for the CLI; the default reports the run time."""
        return [PerfDatum("time", result.duration, "s", min=0)]
