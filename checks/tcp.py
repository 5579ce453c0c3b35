"""TCP probe: connect (optionally TLS), optionally send a line, optionally expect a pattern back.

Guarantees:
- `run()` never raises for anything a target does; every failure is a `CheckOutcome` with a reason.
- One deadline (`timeout`) covers every phase; a timeout names the phase it interrupted.
- `expect` reads at most `MAX_EXPECT_BYTES`: a peer that talks forever without matching is an
  expect_mismatch, not a memory problem. A peer that sent something but not the pattern before
  the deadline is an expect_mismatch (with what it sent); one that sent nothing is a timeout.
- Failure precedence: connect, tls, expect, certificate expiry.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError
from pydantic_core import InitErrorDetails

from agent.fields import Host, Port
from agent.model import CheckResult, Reason, Sample, Status
from checks.base import Check, CheckConfig, CheckOutcome, PerfDatum
from checks.net import (
    READ_SIZE,
    Failure,
    IpProtocol,
    Phases,
    ProbeError,
    Regex,
    abort,
    connection_lost,
    host_port,
    open_connection,
    resolve,
    timeout_failure,
    write,
)
from checks.tls import TlsConfig, TlsReport, build_context, cert_days_perfdata, handshake, ssl_failure

PHASES = ("resolve", "connect", "tls", "expect")
_DOING = {
    "resolve": "resolving the host name",
    "connect": "connecting",
    "tls": "in the TLS handshake",
    "expect": "waiting for the expected response",
}
MAX_EXPECT_BYTES = 64 * 1024


class TcpConfig(CheckConfig):
    type: Literal["tcp"] = "tcp"
    host: Host
    port: Port
    send: str | None = None
    expect: Regex | None = None
    tls: TlsConfig | None = None
    preferred_ip_protocol: IpProtocol = "ip4"
    ip_protocol_fallback: bool = True


@dataclass
class _State:
    phases: Phases = field(default_factory=lambda: Phases(PHASES))
    deadline: float | None = None
    ip_version: int = 0
    tls: TlsReport | None = None
    received: bytearray = field(default_factory=bytearray)
    regex_failed: bool = False


def _url_error(url: str, message: str) -> ValidationError:
    error = InitErrorDetails(type="value_error", loc=("url",), input=url, ctx={"error": ValueError(message)})
    return ValidationError.from_exception_data(TcpConfig.__name__, [error])


def _shown(data: bytes) -> str:
    text = data[:60].decode("utf-8", errors="replace")
    return repr(text + ("..." if len(data) > 60 else ""))


class TcpCheck(Check[TcpConfig]):
    type_name: ClassVar[str] = "tcp"
    config_model: ClassVar[type[CheckConfig]] = TcpConfig

    def __init__(self, config: TcpConfig) -> None:
        super().__init__(config)
        # Built once per check: loading CA files is the expensive part of a TLS probe.
        self._ssl_context: ssl.SSLContext | None = build_context(config.tls) if config.tls else None

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> TcpCheck:
        """`tcp://host:port`, or `tls://host:port` for TLS with default options; interval 60s, timeout 10s.

        Raises pydantic.ValidationError (a ValueError) for a bad URL or override, like config loading.
        """
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None:
            raise _url_error(url, "expected tcp://HOST:PORT or tls://HOST:PORT")
        name = f"{parts.hostname}:{port}".replace("%", "_")
        values: dict[str, Any] = {
            "name": name,
            "type": "tcp",
            "host": parts.hostname,
            "port": port,
            "interval": 60.0,
            "timeout": 10.0,
        }
        if parts.scheme == "tls":
            values["tls"] = {}
        return cls(TcpConfig.model_validate({**values, **overrides}))

    @property
    def target(self) -> str:
        return host_port(self.config.host, self.config.port)

    async def run(self) -> CheckOutcome:
        state = _State()
        try:
            async with asyncio.timeout(self.time_left()) as scope:
                state.deadline = scope.when()
                await self._probe(state)
        except TimeoutError:
            failure: Failure | None = self._timeout(state)
        except ProbeError as exc:
            failure = exc.failure
        else:
            failure = state.tls.verdict(self.config.tls) if state.tls and self.config.tls else None
        return self._outcome(state, failure)

    def _timeout(self, state: _State) -> Failure:
        expect, timeout = self.config.expect, self.config.timeout
        if state.phases.current == "expect" and state.received and expect is not None:
            state.regex_failed = True
            got = _shown(bytes(state.received))
            message = f"expected /{expect.pattern}/ within {timeout:g}s, got {got}"
            return Failure(Status.CRITICAL, Reason.EXPECT_MISMATCH, message)
        return timeout_failure(self.config.timeout, _DOING[state.phases.current])

    async def _probe(self, state: _State) -> None:
        cfg, phases = self.config, state.phases
        with phases.phase("resolve"):
            address = await resolve(cfg.host, cfg.port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
        writer: asyncio.StreamWriter | None = None
        try:
            with phases.phase("connect"):
                reader, writer = await open_connection(address)
            state.ip_version = address.ip_version
            if self._ssl_context is not None and cfg.tls is not None:
                sni = cfg.tls.server_name or cfg.host
                with phases.phase("tls"):
                    state.tls = await handshake(writer, self._ssl_context, sni, address, state.deadline)
            if cfg.send is not None or cfg.expect is not None:
                with phases.phase("expect"):
                    await self._converse(reader, writer, state)
        finally:
            abort(writer)

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: _State
    ) -> None:
        cfg = self.config
        try:
            if cfg.send is not None:
                # With a zero high-water mark drain() returns only once the kernel has every byte:
                # the connection is aborted afterwards, which would drop anything still buffered.
                writer.transport.set_write_buffer_limits(high=0)
                write(writer, cfg.send.encode())
                await writer.drain()
            if cfg.expect is not None:
                await self._expect(reader, cfg.expect, state)
        except ssl.SSLError as exc:
            raise ssl_failure(exc, "after the handshake") from None
        except OSError as exc:
            got = f" after {_shown(bytes(state.received))}" if state.received else ""
            raise connection_lost(exc, f"in the conversation{got}") from None

    @staticmethod
    async def _expect(reader: asyncio.StreamReader, regex: re.Pattern[str], state: _State) -> None:
        """Read until `regex` matches what was received; raise expect_mismatch at EOF or the bound."""
        pattern = regex.pattern
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            state.received += data[: MAX_EXPECT_BYTES - len(state.received)]
            # The whole buffer is searched again each time, so a match split across reads is found;
            # it is at most MAX_EXPECT_BYTES, and a peer dribbling single bytes is cut off by the deadline.
            if regex.search(state.received.decode("utf-8", errors="replace")):
                return
            if len(state.received) >= MAX_EXPECT_BYTES:
                break
        state.regex_failed = True
        if not state.received:
            raise ProbeError(Reason.EXPECT_MISMATCH, f"connection closed without data, expected /{pattern}/")
        raise ProbeError(Reason.EXPECT_MISMATCH, f"expected /{pattern}/, got {_shown(bytes(state.received))}")

    def _outcome(self, state: _State, failure: Failure | None) -> CheckOutcome:
        samples = self._samples(state)
        if failure is not None:
            return CheckOutcome(failure.status, failure.reason, failure.message, samples)
        tls = f" over {state.tls.version}" if state.tls else ""
        matched = f", matched /{self.config.expect.pattern}/" if self.config.expect else ""
        return CheckOutcome(
            Status.OK, Reason.OK, f"connected{tls}{matched} in {state.phases.total:.3f}s", samples
        )

    def _samples(self, state: _State) -> tuple[Sample, ...]:
        samples = [
            *state.phases.samples("mamori_tcp_duration_seconds"),
            Sample("probe_dns_lookup_time_seconds", round(state.phases.seconds["resolve"], 9)),
            Sample("probe_ip_protocol", float(state.ip_version)),
            Sample("probe_failed_due_to_regex", 1.0 if state.regex_failed else 0.0),
        ]
        if state.tls is not None:
            samples.extend(state.tls.samples())
        return tuple(samples)

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        connect = next(
            (
                s.value
                for s in result.samples
                if s.name == "mamori_tcp_duration_seconds" and s.labels == (("phase", "connect"),)
            ),
            0.0,
        )
        return [
            PerfDatum("time", result.duration, "s", min=0),
            PerfDatum("time_connect", connect, "s", min=0),
            *(cert_days_perfdata(result, self.config.tls) if self.config.tls else ()),
        ]
