"""The one way Mamori builds an OCI Monitoring client, for the exporter (exporters/oci.py, on the
telemetry-ingestion endpoint) and for `agentctl oci-alarms` (exporters/oci_alarms/, on telemetry):
a signer for the chosen auth, the region from config or the signer, and the SDK's own retries
and circuit breaker off — the callers retry in their own way (the pump; the alarms reconciler).
The `oci` module is passed in: callers import it lazily (it is an optional extra), through
`import_sdk()`."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Literal

Auth = Literal["config_file", "instance_principal", "resource_principal"]
INGESTION_TEMPLATE = "https://telemetry-ingestion.{region}.{secondLevelDomain}"


def import_sdk() -> Any:
    """The `oci` package (untyped). Raises ImportError when the extra is not installed.

    Importing it logs, at INFO, "Default Auth client Circuit breaker strategy enabled"
    (oci/circuit_breaker/__init__.py, oci 2.189): the SDK's default for the federation client of
    instance principals, read from OCI_SDK_AUTH_CLIENT_CIRCUIT_BREAKER_ENABLED at import. It is
    not ours: `signer_for` gives that client NoCircuitBreakerStrategy and `monitoring_client`
    gives the service client one too, so the line would only mislead an operator at every start.
    That logger says nothing else above DEBUG, so it is kept to warnings; setting the variable
    instead would still log "... disabled" and change a process-wide SDK default."""
    logging.getLogger("oci.circuit_breaker").setLevel(logging.WARNING)
    return importlib.import_module("oci")


class NoRegion(ValueError):
    """No region in the config, the OCI config file or the signer, and no explicit endpoint."""


def signer_for(
    oci: Any,
    auth: Auth,
    *,
    config_file: str | Path = "~/.oci/config",
    profile: str = "DEFAULT",
    pass_phrase: str | None = None,
    region: str | None = None,
    federation_endpoint: str | None = None,
) -> tuple[Any, dict[str, Any], str | None]:
    """(signer, SDK config dict, region). Raises the SDK's errors for bad credentials."""
    no_retry = oci.retry.NoneRetryStrategy()
    sdk_config: dict[str, Any] = {}
    signer: Any
    if auth == "config_file":
        sdk_config = oci.config.from_file(str(Path(config_file).expanduser()), profile)
        if pass_phrase is not None:
            sdk_config["pass_phrase"] = pass_phrase
        region = region or sdk_config.get("region")
        if region:
            sdk_config["region"] = region  # validate_config wants one even with an endpoint
        signer = oci.signer.Signer(
            tenancy=sdk_config["tenancy"],
            user=sdk_config["user"],
            fingerprint=sdk_config["fingerprint"],
            private_key_file_location=sdk_config["key_file"],
            pass_phrase=sdk_config.get("pass_phrase"),
        )
    elif auth == "instance_principal":
        kwargs: dict[str, Any] = {
            "retry_strategy": no_retry,
            "federation_client_retry_strategy": no_retry,
            "federation_client_circuit_breaker_strategy": oci.circuit_breaker.NoCircuitBreakerStrategy(),
        }
        if federation_endpoint:
            kwargs["federation_endpoint"] = federation_endpoint
        signer = oci.auth.signers.InstancePrincipalsSecurityTokenSigner(**kwargs)
        region = region or signer.region
    else:
        signer = oci.auth.signers.get_resource_principals_signer()
        region = region or getattr(signer, "region", None)
    return signer, sdk_config, region


def monitoring_client(
    oci: Any,
    signer: Any,
    sdk_config: dict[str, Any],
    *,
    region: str | None,
    endpoint: str | None,
    timeout: float,
    ingestion: bool,
) -> tuple[Any, str]:
    """(MonitoringClient, its endpoint). `ingestion`: the telemetry-ingestion endpoint
    (PostMetricData) rather than telemetry (alarms). Raises NoRegion."""
    if endpoint is None:
        if not region:
            raise NoRegion("no region")
        template = {"service_endpoint_template": INGESTION_TEMPLATE} if ingestion else {}
        endpoint = oci.regions.endpoint_for("monitoring", region=region, **template)
    endpoint = endpoint.rstrip("/")
    client = oci.monitoring.MonitoringClient(
        sdk_config,
        signer=signer,
        service_endpoint=endpoint,
        retry_strategy=oci.retry.NoneRetryStrategy(),
        circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
        timeout=(min(timeout, 10.0), timeout),
    )
    return client, endpoint
