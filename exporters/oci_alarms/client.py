"""The alarm operations on OCI Monitoring: the SDK client (retries and circuit breaker off), and
our own bounded retry and pacing of each call (see exporters/oci_alarms/__init__.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent.backoff import backoff, retry_after_header
from exporters.oci_client import NoRegion, import_sdk, monitoring_client, signer_for

DEFAULT_MAX_TPS = 5.0
ATTEMPTS = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0


class AlarmsError(Exception):
    """Configuration, authentication or service trouble: one line per problem, exit 1."""


def _sdk() -> Any:
    try:
        return import_sdk()
    except ImportError:
        raise AlarmsError("oci-alarms needs the OCI SDK: pip install 'mamori[oci]'") from None


@dataclass(frozen=True)
class Connection:
    """How to reach and authenticate to OCI Monitoring (the alarms API is on `telemetry.<region>`)."""

    auth: Literal["config_file", "instance_principal", "resource_principal"] = "config_file"
    config_file: str = "~/.oci/config"
    profile: str = "DEFAULT"
    region: str | None = None
    endpoint: str | None = None
    timeout: float = 30.0


def make_client(conn: Connection) -> tuple[Any, str]:
    """A MonitoringClient with the SDK's retries and circuit breaker off, and its endpoint.
    Raises AlarmsError (one line, no secret) when the credentials cannot be set up."""
    oci = _sdk()
    try:
        signer, config, region = signer_for(
            oci, conn.auth, config_file=conn.config_file, profile=conn.profile, region=conn.region
        )
    except Exception as exc:  # the SDK's config, key and metadata errors: one line each
        first = (str(exc).splitlines() or [""])[0][:200]
        raise AlarmsError(f"cannot authenticate ({conn.auth}): {type(exc).__name__}: {first}") from None
    try:
        return monitoring_client(
            oci, signer, config, region=region, endpoint=conn.endpoint, timeout=conn.timeout, ingestion=False
        )
    except NoRegion:
        raise AlarmsError(
            "no region: give --region (or set region in the profile of the OCI config file)"
        ) from None


class ApiError(AlarmsError):
    """A call that failed for good. `fatal`: the run stops (authentication, the service still
    throttling or failing after every attempt, unreachable); otherwise only that alarm failed."""

    def __init__(self, message: str, status: int = 0, fatal: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.fatal = fatal


class AlarmsApi:
    """The alarm operations with a bounded retry and pacing of our own (see the module doc).
    Raises only ApiError, never an SDK exception: `oci.pagination` wraps every page in the SDK's
    DEFAULT_RETRY_STRATEGY (8 attempts, up to 10 min) whatever the client says, and would retry an
    SDK error again on top of ours."""

    def __init__(
        self,
        client: Any,
        endpoint: str = "",
        *,
        max_tps: float = DEFAULT_MAX_TPS,
        attempts: int = ATTEMPTS,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.gap = 1.0 / max_tps if max_tps > 0 else 0.0
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.clock = clock
        self.requests = 0
        self.retries = 0
        self._next = 0.0

    def _pace(self) -> None:
        now = self.clock()
        if self._next > now:
            self.sleep(self._next - now)
        self._next = max(now, self._next) + self.gap

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        oci = _sdk()
        for attempt in range(1, self.attempts + 1):
            self._pace()
            self.requests += 1
            try:
                return fn(*args, **kwargs)
            except oci.exceptions.ServiceError as exc:
                status, code = int(exc.status), str(exc.code)
                message = (str(exc.message or "").splitlines() or [""])[0][:300]
                answer = f"{status} {code}: {message} (opc-request-id {exc.request_id or '-'})"
                if status in RETRY_STATUSES and attempt < self.attempts:
                    self._wait(attempt, retry_after_header(exc.headers))
                    continue
                if status == 401:
                    raise ApiError(
                        f"{what}: OCI Monitoring refused the request's signature ({answer}); check the "
                        "API key, its fingerprint, the user and tenancy OCIDs, and this host's clock",
                        status,
                        fatal=True,
                    ) from None
                if status in RETRY_STATUSES:
                    raise ApiError(
                        f"{what}: still {answer} after {self.attempts} attempts; stopped (run again "
                        "later: apply is idempotent)",
                        status,
                        fatal=True,
                    ) from None
                if status == 404:
                    raise ApiError(
                        f"{what}: {answer}: check the compartment OCID and the IAM policy "
                        "(manage alarms in the compartment, read metrics in the metric compartment)",
                        status,
                    ) from None
                raise ApiError(f"{what}: {answer}", status) from None
            except (oci.exceptions.RequestException, oci.exceptions.ConnectTimeout) as exc:
                inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
                if attempt < self.attempts:
                    self._wait(attempt, None)
                    continue
                kind = "timed out" if "Timeout" in type(inner).__name__ else "cannot connect"
                raise ApiError(
                    f"{what}: {kind} ({type(inner).__name__}) to {self.endpoint or 'OCI Monitoring'} "
                    f"after {self.attempts} attempts",
                    fatal=True,
                ) from None
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        self.retries += 1
        if retry_after is not None:
            delay = min(retry_after, MAX_RETRY_AFTER)
        else:
            delay = backoff(attempt, base=self.backoff, cap=self.max_backoff)
        self.sleep(delay)
        self._next = max(self._next, self.clock())

    # --- operations -----------------------------------------------------------------------------
    def list(self, compartment_id: str) -> list[Any]:
        """Every ACTIVE alarm (AlarmSummary) of the compartment, following `opc-next-page`."""
        oci = _sdk()

        def page(*args: Any, **kwargs: Any) -> Any:
            return self.call(
                f"listing the alarms of {compartment_id}", self.client.list_alarms, *args, **kwargs
            )

        response = oci.pagination.list_call_get_all_results(page, compartment_id)
        return list(response.data)

    def get(self, alarm_id: str, name: str) -> tuple[Any, str | None]:
        """The alarm and its etag."""
        response = self.call(f"reading alarm {name!r}", self.client.get_alarm, alarm_id)
        return response.data, response.headers.get("etag")

    def create(self, details: Mapping[str, Any]) -> Any:
        oci = _sdk()
        body = oci.monitoring.models.CreateAlarmDetails(**details)
        token = uuid.uuid4().hex  # the same for every attempt: a retried create is not a second alarm
        name = details["display_name"]
        return self.call(
            f"creating alarm {name!r}", self.client.create_alarm, body, opc_retry_token=token
        ).data

    def update(self, alarm_id: str, details: Mapping[str, Any], etag: str | None) -> Any:
        oci = _sdk()
        body = oci.monitoring.models.UpdateAlarmDetails(**details)
        name = details["display_name"]
        kwargs = {"if_match": etag} if etag else {}
        return self.call(f"updating alarm {name!r}", self.client.update_alarm, alarm_id, body, **kwargs).data

    def delete(self, alarm_id: str, name: str) -> None:
        self.call(f"deleting alarm {name!r}", self.client.delete_alarm, alarm_id)
