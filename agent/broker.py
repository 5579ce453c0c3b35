"""What every MQTT client of the agent shares — the mqtt exporter (exporters/mqtt.py) and the
`fleet` check (checks/fleet.py): the broker's address and TLS settings, topic levels, and the
handling of paho-mqtt's own log lines. No I/O at import; aiomqtt is imported by its users."""

from __future__ import annotations

import logging
import re
import ssl
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator

from agent.errors import StartupError
from agent.fields import Model

_HOST = re.compile(r"^[A-Za-z0-9_.:-]+$")  # a name or an IPv4/IPv6 address, no scheme or port


def topic_level_problem(value: str, what: str) -> str | None:
    """Why `value` cannot be one MQTT topic level (None if it can)."""
    if not value:
        return f"{what} is empty"
    bad = sorted({c for c in value if c in "+#/" or c == "\0"})
    if bad:
        shown = ", ".join("NUL" if c == "\0" else repr(c) for c in bad)
        return f"{what} {value!r} cannot be an MQTT topic level: it contains {shown}"
    if len(value.encode()) > 1024:
        return f"{what} is longer than 1024 bytes"
    return None


def _broker_host(host: str) -> str:
    if not _HOST.match(host):
        raise ValueError(f"invalid host {host!r}: expected a host name or an IP address (no scheme, no port)")
    return host


def _topic_prefix(prefix: str) -> str:
    if not prefix:
        raise ValueError("topic_prefix is empty")
    for level in prefix.split("/"):
        problem = topic_level_problem(level, "a level of topic_prefix")
        if problem is not None:
            raise ValueError(f"{problem} (topic_prefix {prefix!r}: levels separated by /, none empty)")
    return prefix


BrokerHost = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_broker_host)]
"""The broker's host name or IP address (no scheme, no port)."""

TopicPrefix = Annotated[str, AfterValidator(_topic_prefix)]
"""The first levels of every topic (`mamori`, `acme/mamori`)."""


class TlsOptions(Model):
    """`tls:` of an MQTT client. Present (even `tls: {}`) means MQTT over TLS."""

    verify: bool = True  # the broker's chain and name; off only for a lab
    ca_file: Path | None = None  # default: the system's CAs
    cert_file: Path | None = None  # client certificate (with key_file)
    key_file: Path | None = None
    server_name: str | None = None  # the name to verify and send as SNI; default: `host`

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"file not found: {path}")
        return path

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, name: str | None) -> str | None:
        if name is not None and not re.match(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$", name):
            raise ValueError(f"invalid server_name {name!r}: expected a host name such as mqtt.example.com")
        return name

    @model_validator(mode="after")
    def _pairs(self) -> TlsOptions:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if not self.verify and (self.ca_file is not None or self.server_name is not None):
            raise ValueError("ca_file and server_name are for verification: remove them or set verify: true")
        return self


class _NamedContext(ssl.SSLContext):
    """A client context that verifies (and sends as SNI) a fixed name rather than the host it
    connects to: paho-mqtt passes its `host` as server_hostname and has no option for this."""

    server_name: str | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.server_name is not None:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(options: TlsOptions, what: str = "mqtt exporter") -> ssl.SSLContext:
    """The client context for `options`. Reads the files now (StartupError if they are bad)."""
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if options.verify:
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
            if options.ca_file is not None:
                ctx.load_verify_locations(cafile=str(options.ca_file))
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if options.cert_file is not None and options.key_file is not None:
            ctx.load_cert_chain(str(options.cert_file), str(options.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"{what}: cannot load the TLS files: {exc}") from None
    ctx.server_name = options.server_name
    return ctx


class ClientLog(logging.Handler):
    """paho-mqtt's own log lines (aiomqtt passes them to the logger it is given). They stay out
    of the agent's log, except at debug level: the client's owner logs each failure itself, once
    per streak. The last error is kept, as it says why a connection dropped (e.g. "failed to
    receive on socket: [Errno 104] Connection reset by peer") where the disconnect reason code
    says only "Unspecified error"."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__(logging.WARNING)
        self.last_error = ""
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.last_error = message
        self._log.debug("mqtt client: %s", message)

    def logger(self) -> logging.Logger:
        """A logger for aiomqtt that writes only here. Not from logging.getLogger(): a private
        logger with no parent, so nothing propagates to the root logger and nothing is
        registered for the life of the process."""
        logger = logging.Logger(f"{self._log.name}.client", logging.WARNING)
        logger.addHandler(self)
        return logger
