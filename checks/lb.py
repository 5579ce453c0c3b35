"""`lb`: a load balancer, every address its name resolves to, and every backend behind it.

A probe of the load balancer's name alone hides a dead backend; a probe of the containers alone
hides a broken load balancer. This check probes, in one run and concurrently:

- the load balancer through its public URL (member `lb`);
- every address the URL's name resolves to, when there is more than one (members `address-1`…,
  numbered in address order; the addresses themselves appear in messages, never in labels);
- every backend, static or discovered from Docker, directly, keeping the public Host header and
  TLS server name so that certificate checks stay correct (members named after the backend).

Each member is an `http` check of its own (composition, not inheritance), built from this
check's HTTP options. The group's verdict then says which side is at fault:

- the load balancer is unreachable (refused, timeout, TLS…) → its own reason;
- it answers wrongly while every backend is healthy → `lb_misconfigured`;
- it answers wrongly while some backends are down → `lb_routes_to_down_backend` (its health
  checks have not taken them out yet);
- every backend is down → `app_outage`;
- it answers, but fewer backends are healthy than the policy needs → CRITICAL `backend_down`;
  some are down but the policy is met → WARNING `backend_down`.

With `persistence`, the check also holds one client session through the load balancer, kept
from run to run as a user's browser keeps it: the first answer must set the persistence cookie
(else `lb_cookie_missing`), and every request carrying it must land on the backend it names
(else `lb_session_moved`). Only a pinned backend that is down may be left: the load balancer
then redispatches the session, which the message says next to `backend_down`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator

from agent.fields import Model, check_host
from agent.fleetview import witness_samples
from agent.model import CheckResult, Reason, Sample, Status
from checks.base import Check, CheckConfig, CheckOutcome, PerfDatum
from checks.http.check import Answer, HttpCheck
from checks.http.config import LABEL_VALUE, HttpConfig
from checks.net import Regex, printable

if TYPE_CHECKING:
    from checks.docker_api import DiscoveryConfig, DockerClient

# Failures that mean "the load balancer itself could not be talked to". A timeout is not one of
# them: a load balancer waiting on a dead backend times out too (HAProxy retries a refused
# connection for seconds), so a timeout is judged with the backends' state.
_UNREACHABLE = {
    Reason.DNS, Reason.REFUSED, Reason.UNREACHABLE, Reason.TLS_HANDSHAKE,
    Reason.TLS_VERIFY, Reason.TLS_HOSTNAME, Reason.TLS_VERSION, Reason.CERT_EXPIRED,
    Reason.CERT_NOT_YET_VALID,
}  # fmt: skip
_MEMBER_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_WITNESS = "mamori_pg_primary_witness"


class StaticBackend(Model):
    name: str = Field(pattern=_MEMBER_NAME)
    address: str  # host:port
    zone: str | None = Field(default=None, pattern=LABEL_VALUE)  # where it runs, for db_witness

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid backend address {value!r}: expected HOST:PORT")
        try:
            check_host(host.removeprefix("[").removesuffix("]") if host.startswith("[") else host)
        except ValueError as exc:
            raise ValueError(f"invalid backend address {value!r}: {exc}") from None
        return value


class Quorum(Model):
    quorum: int = Field(ge=1)


class Persistence(Model):
    """Session persistence: which cookie pins a session, how an answer names its backend."""

    cookie: str = Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # a cookie name is a token
    backend_header: str | None = Field(default=None, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
    backend_regex: Regex | None = None  # its first group (else the whole match) names the backend
    requests: int = Field(default=3, ge=1, le=20)  # requests carrying the cookie, per run

    @model_validator(mode="after")
    def _one_way(self) -> Persistence:
        if (self.backend_header is None) == (self.backend_regex is None):
            raise ValueError("persistence needs exactly one of backend_header or backend_regex")
        return self

    def backend(self, answer: Answer) -> str | None:
        """The backend that sent `answer`, as it names itself (printable, bounded), or None."""
        if self.backend_header is not None:
            found = next((v.strip() for v in answer.headers(self.backend_header) if v.strip()), None)
        else:
            assert self.backend_regex is not None
            m = self.backend_regex.search(answer.text())
            found = (m.group(1) if m.re.groups else m.group()) if m else None
        return printable(found[:64]) if found else None

    def cookie_value(self, answer: Answer) -> str | None:
        """The value the answer sets for the persistence cookie, or None (not set, or deleted)."""
        for header in answer.headers("set-cookie"):
            name, eq, rest = header.partition("=")
            if eq and name.strip() == self.cookie:
                value = rest.split(";", 1)[0].strip()
                return value or None
        return None


class LbConfig(HttpConfig):
    """The HTTP options of `http` apply to every member; these keys say who the members are."""

    type: Literal["lb"] = "lb"  # type: ignore[assignment]
    resolve_all: bool = True
    backends: tuple[StaticBackend, ...] = ()
    docker: DiscoveryConfig | None = None
    backend_scheme: Literal["http", "https"] = "http"
    backend_path: str | None = None  # default: a discovered backend's path label, else the URL's path
    verdict: Literal["all", "any"] | Quorum = "all"
    # Members probed at once. Probes are CPU-bound in the agent: with all 50 at once, each
    # member's timings would include the others' CPU (~15 ms at 50 here), not the backend's.
    parallel: int = Field(default=8, ge=1, le=256)
    persistence: Persistence | None = None

    @field_validator("backends")
    @classmethod
    def _unique(cls, backends: tuple[StaticBackend, ...]) -> tuple[StaticBackend, ...]:
        names = [b.name for b in backends]
        dupes = sorted({n for n in names if names.count(n) > 1} | ({"lb"} & set(names)))
        if dupes:
            raise ValueError(f"backend names must be unique and not 'lb': {', '.join(dupes)}")
        return backends

    @field_validator("backend_path")
    @classmethod
    def _path(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError(f"backend_path must start with '/': {path!r}")
        return path

    @model_validator(mode="after")
    def _quorum_reachable(self) -> LbConfig:
        # With docker discovery the number of backends is known only at run time.
        if isinstance(self.verdict, Quorum) and self.docker is None:
            quorum, count = self.verdict.quorum, len(self.backends)
            if quorum > count:
                raise ValueError(
                    f"verdict: a quorum of {quorum} can never be met by {count} backend"
                    f"{'' if count == 1 else 's'} (the check would always be CRITICAL)"
                )
        return self

    def needed(self, total: int) -> int:
        """How many healthy backends the verdict needs out of `total`."""
        if self.verdict == "all":
            return total
        if self.verdict == "any":
            return min(1, total)
        assert isinstance(self.verdict, Quorum)
        return self.verdict.quorum


def _rebuild_with_docker() -> None:
    """`DiscoveryConfig` lives in the docker module; resolve the forward reference lazily so that
    an agent without `docker:` in any check never imports it (nor aiohttp)."""
    from checks.docker_api import DiscoveryConfig

    LbConfig.model_rebuild(_types_namespace={"DiscoveryConfig": DiscoveryConfig})


_rebuild_with_docker()


@dataclass(frozen=True)
class _Target:
    role: Literal["lb", "address", "backend"]
    name: str
    url: str
    shown: str  # what the message calls it (may be an IP; never a label)
    zone: str = ""  # where the app that answers runs, as far as this check knows (db_witness)


@dataclass(frozen=True)
class _Probe:
    target: _Target
    outcome: CheckOutcome
    duration: float


class LbCheck(Check[LbConfig]):
    type_name: ClassVar[str] = "lb"
    config_model: ClassVar[type[CheckConfig]] = LbConfig

    def __init__(self, config: LbConfig) -> None:
        super().__init__(config)
        self._url = urlsplit(config.url)
        self._lb = HttpCheck(self._member_config("lb", config.url, public=False))
        self._members: dict[_Target, HttpCheck] = {}
        self._docker: DockerClient | None = None
        self._discovered: list[_Target] | None = None
        # The session held through the load balancer: (cookie value, backend it pins), and the
        # check that sends that cookie.
        self._pin: tuple[str, str] | None = None
        self._session: tuple[str | None, HttpCheck] | None = None

    @property
    def target(self) -> str:
        return self._lb.target

    # --- members ---

    def _member_config(
        self, name: str, url: str, *, public: bool = True, cookie: str | None = None
    ) -> HttpConfig:
        values: dict[str, Any] = {
            key: getattr(self.config, key)
            for key in HttpConfig.model_fields
            if key not in ("type", "name", "url")
        }
        values["json"] = values.pop("json_conditions")
        values.update(name=f"{self.config.name}/{name}", type="http", url=url)
        if public:
            # Probed by address: keep the public name for Host, SNI and certificate verification.
            host = self._url.hostname or ""
            tls = self.config.tls.model_dump(exclude_unset=True)
            tls.setdefault("server_name", host)
            values["tls"] = tls
            values["headers"] = {**self.config.headers, "Host": self._url.netloc.rpartition("@")[2]}
        if cookie is not None:
            values["headers"] = {**values["headers"], "Cookie": cookie}
        return HttpConfig.model_validate(values)

    def _member(self, target: _Target) -> HttpCheck:
        check = self._members.get(target)
        if check is None:
            check = self._members[target] = HttpCheck(self._member_config(target.name, target.url))
        return check

    async def _addresses(self) -> list[_Target]:
        host = self._url.hostname or ""
        if not self.config.resolve_all or _is_ip(host):
            return []
        port = self._url.port or (443 if self._url.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []  # the lb member reports the dns failure
        want = socket.AF_INET6 if self.config.preferred_ip_protocol == "ip6" else socket.AF_INET
        ips = sorted(
            {str(info[4][0]) for info in infos if info[0] == want or self.config.ip_protocol_fallback},
            key=ipaddress.ip_address,
        )
        if len(ips) < 2:
            return []  # one address: the lb member already probes it
        return [
            _Target("address", f"address-{i}", self._with_host(ip, port, self._url.scheme), ip)
            for i, ip in enumerate(ips, 1)
        ]

    def _with_host(self, host: str, port: int, scheme: str, path: str | None = None) -> str:
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return urlunsplit((scheme, netloc, path or self._url.path or "/", self._url.query, ""))

    async def _backends(self) -> tuple[list[_Target], str | None]:
        """Static and discovered backends, and a note when discovery failed."""
        scheme, path = self.config.backend_scheme, self.config.backend_path
        # A static backend may run anywhere: its zone is its own, else the check's, else unknown.
        zone = self._witness_zone("")
        targets = [
            _Target(
                "backend",
                b.name,
                self._with_host(*_split(b.address), scheme, path),
                b.address,
                b.zone if b.zone is not None else zone,
            )
            for b in self.config.backends
        ]
        note = None
        if self.config.docker is not None:
            found, note = await self._discover(self.config.docker)
            targets += found
        return targets, note

    async def _discover(self, cfg: DiscoveryConfig) -> tuple[list[_Target], str | None]:
        from checks.docker_api import DockerClient, DockerError, discover

        if self._docker is None:
            self._docker = DockerClient(cfg.socket, timeout=max(1.0, self.config.timeout / 2))
        try:
            backends, _notes = await discover(self._docker, cfg)
        except DockerError as exc:
            if self._discovered is None:
                raise _DiscoveryFailed(str(exc)) from None
            return self._discovered, f"discovery failed, using the last known backends: {exc}"
        scheme = self.config.backend_scheme
        zone = self._witness_zone(self.config.agent_zone)  # the local engine's apps run on this host
        self._discovered = [
            _Target(
                "backend",
                b.name,
                self._with_host(b.host, b.port, scheme, self.config.backend_path or b.path),
                f"{b.host}:{b.port}",
                zone,
            )
            for b in backends
        ]
        return self._discovered, None

    # --- run ---

    async def run(self) -> CheckOutcome:
        try:
            addresses, (backends, note) = await asyncio.gather(self._addresses(), self._backends())
        except _DiscoveryFailed as exc:
            return CheckOutcome(Status.UNKNOWN, Reason.UNAVAILABLE, f"cannot discover backends: {exc}")
        # The answer through the load balancer may come from an app in any zone.
        lb_target = _Target("lb", "lb", self.config.url, "load balancer", self._witness_zone(""))
        targets = [*addresses, *backends]
        # Members that vanished (containers gone) are dropped with their connections' state.
        for gone in set(self._members) - set(targets):
            del self._members[gone]
        slots = asyncio.Semaphore(self.config.parallel)
        probes = await asyncio.gather(
            _probe(lb_target, self._lb, slots), *(_probe(t, self._member(t), slots) for t in targets)
        )
        lb, rest = probes[0], probes[1:]
        status, reason, message = self._verdict(
            lb,
            [p for p in rest if p.target.role == "address"],
            [p for p in rest if p.target.role == "backend"],
            expects_backends=bool(self.config.backends or self.config.docker),
        )
        if self.config.persistence is not None and _ok(lb):
            down = {p.target.name for p in rest if p.target.role == "backend" and not _ok(p)}
            status, reason, message = await self._persistence(
                self.config.persistence, down, (status, reason, message)
            )
        elif self.config.persistence is not None:
            self._pin = None  # the load balancer failed: start a new session when it is back
        if note:
            message = f"{message}; {note}"
        return CheckOutcome(status, reason, message, self._samples(probes))

    # --- session persistence ---

    async def _persistence(
        self, cfg: Persistence, down: set[str], verdict: tuple[Status, Reason, str]
    ) -> tuple[Status, Reason, str]:
        """The group's verdict with the session's: a persistence failure wins over OK and
        WARNING; a CRITICAL group verdict stays, and says what the session saw."""
        status, reason, message = verdict
        session_status, session_reason, text = await self._hold_session(cfg, down)
        if session_status is Status.OK:
            return status, reason, f"{message}; {text}"
        if status is Status.CRITICAL:
            return status, reason, f"{message}; session: {text}"
        return session_status, session_reason, f"{text} ({message})"

    async def _hold_session(self, cfg: Persistence, down: set[str]) -> tuple[Status, Reason, str]:
        fresh = self._pin is None
        if self._pin is None:
            outcome, answer = await self._session_check(None).probe()
            if answer is None or not _outcome_ok(outcome):
                return Status.CRITICAL, outcome.reason, f"request without a session: {outcome.message}"
            cookie = cfg.cookie_value(answer)
            if cookie is None:
                return (
                    Status.CRITICAL,
                    Reason.LB_COOKIE_MISSING,
                    f"the load balancer set no {cfg.cookie} cookie: session persistence is off",
                )
            backend = cfg.backend(answer)
            if backend is None:
                return Status.UNKNOWN, Reason.LB_BACKEND_UNKNOWN, self._unnamed(cfg)
            self._pin = (cookie, backend)
        cookie, pinned = self._pin
        for i in range(1, cfg.requests + 1):
            outcome, answer = await self._session_check(f"{cfg.cookie}={cookie}").probe()
            if answer is None or not _outcome_ok(outcome):
                self._pin = None
                return (
                    Status.CRITICAL,
                    outcome.reason,
                    f"request {i} of the session pinned to {pinned}: {outcome.message}",
                )
            seen = cfg.backend(answer)
            if seen is None:
                self._pin = None
                return Status.UNKNOWN, Reason.LB_BACKEND_UNKNOWN, self._unnamed(cfg)
            if seen == pinned:
                continue
            new_cookie = cfg.cookie_value(answer)
            if pinned in down:
                # The load balancer took the dead backend out and moved the session: what it is
                # meant to do. The session now lives on the new backend, if it was given a cookie.
                self._pin = (new_cookie, seen) if new_cookie is not None else None
                return (
                    Status.OK,
                    Reason.OK,
                    f"the session pinned to {pinned} was redispatched to {seen} ({pinned} is down)",
                )
            self._pin = None
            again = "; the load balancer set a new cookie" if new_cookie is not None else ""
            return (
                Status.CRITICAL,
                Reason.LB_SESSION_MOVED,
                f"request {i} carrying the {cfg.cookie} cookie of {pinned} landed on {seen}, "
                f"while {pinned} is not known to be down{again}",
            )
        how = "new session" if fresh else "session"
        return Status.OK, Reason.OK, f"{how} stayed on {pinned} ({cfg.requests} requests)"

    def _session_check(self, cookie: str | None) -> HttpCheck:
        if self._session is None or self._session[0] != cookie:
            config = self._member_config("session", self.config.url, public=False, cookie=cookie)
            self._session = (cookie, HttpCheck(config))
        return self._session[1]

    @staticmethod
    def _unnamed(cfg: Persistence) -> str:
        how = (
            f"no {cfg.backend_header} header"
            if cfg.backend_header is not None
            else f"its body does not match /{cfg.backend_regex.pattern if cfg.backend_regex else ''}/"
        )
        return f"an answer through the load balancer does not say which backend sent it: {how}"

    def _witness_zone(self, otherwise: str) -> str:
        witness = self.config.db_witness
        return witness.zone if witness is not None and witness.zone is not None else otherwise

    def _verdict(
        self, lb: _Probe, addresses: list[_Probe], backends: list[_Probe], expects_backends: bool
    ) -> tuple[Status, Reason, str]:
        down = [p for p in backends if not _ok(p)]
        healthy, total = len(backends) - len(down), len(backends)
        needed = self.config.needed(total)
        counts = f"{healthy}/{total} backends healthy"
        down_text = "; ".join(f"{p.target.name}: {_why(p)}" for p in down)
        if not _ok(lb):
            lb_text = f"load balancer: {_why(lb)}"
            if lb.outcome.reason in _UNREACHABLE:
                return Status.CRITICAL, lb.outcome.reason, f"{lb_text} ({counts})" if total else lb_text
            if total and not healthy:
                return Status.CRITICAL, Reason.APP_OUTAGE, f"every backend is down ({down_text}); {lb_text}"
            if total and down:
                return (
                    Status.CRITICAL,
                    Reason.LB_ROUTES_TO_DOWN_BACKEND,
                    f"{lb_text} while {down_text} — the load balancer still routes to a backend that is down",
                )
            if total and lb.outcome.reason is not Reason.TIMEOUT:
                return Status.CRITICAL, Reason.LB_MISCONFIGURED, f"{lb_text} while {counts}"
            return lb.outcome.status, lb.outcome.reason, f"{lb_text} ({counts})" if total else lb_text
        if expects_backends and not total:
            return Status.CRITICAL, Reason.APP_OUTAGE, "no backends found"
        if total and not healthy:
            return Status.CRITICAL, Reason.APP_OUTAGE, f"every backend is down ({down_text})"
        bad_addresses = [p for p in addresses if not _ok(p)]
        if bad_addresses:
            text = "; ".join(f"{p.target.name} ({p.target.shown}): {_why(p)}" for p in bad_addresses)
            return (
                Status.CRITICAL,
                Reason.LB_ADDRESS_DOWN,
                f"{len(bad_addresses)}/{len(addresses)} load balancer addresses down: {text}",
            )
        if healthy < needed:
            return Status.CRITICAL, Reason.BACKEND_DOWN, f"{counts}, {needed} needed: {down_text}"
        if down:
            return Status.WARNING, Reason.BACKEND_DOWN, f"{counts} ({needed} needed): {down_text}"
        warned = [p for p in (lb, *addresses, *backends) if p.outcome.status is Status.WARNING]
        if warned:
            first = warned[0]
            text = "; ".join(f"{p.target.name}: {p.outcome.message}" for p in warned)
            return Status.WARNING, first.outcome.reason, f"{text} ({counts})"
        return (
            Status.OK,
            Reason.OK,
            f"load balancer: {lb.outcome.message}; {counts}" if total else lb.outcome.message,
        )

    def _samples(self, probes: list[_Probe]) -> tuple[Sample, ...]:
        lb = probes[0]
        # The lb keeps blackbox_exporter's names; its witness is named after this check, below.
        out = [s for s in lb.outcome.samples if s.name != _WITNESS]
        for role in ("address", "backend"):
            members = [p for p in probes if p.target.role == role]
            out.append(Sample("mamori_group_members", float(len(members)), (("role", role),)))
            out.append(
                Sample("mamori_group_members_healthy", float(sum(_ok(p) for p in members)), (("role", role),))
            )
        backends = [p for p in probes if p.target.role == "backend"]
        out.append(Sample("mamori_group_healthy_needed", float(self.config.needed(len(backends)))))
        for p in probes:
            labels = (("member", p.target.name), ("role", p.target.role))
            out.append(Sample("mamori_member_success", 1.0 if _ok(p) else 0.0, labels))
            out.append(
                Sample(
                    "mamori_member_status",
                    float(p.outcome.status),
                    (*labels, ("reason", p.outcome.reason.value)),
                )
            )
            out.append(Sample("mamori_member_duration_seconds", p.duration, labels))
            for s in p.outcome.samples:
                if s.name == "probe_http_status_code":
                    out.append(Sample("mamori_member_http_status_code", s.value, labels))
                elif s.name == "probe_http_duration_seconds":
                    out.append(Sample("mamori_member_http_duration_seconds", s.value, (*labels, *s.labels)))
        if (witness := self.config.db_witness) is not None:
            # The answer through the load balancer and each backend's: what the app tells users
            # and what each instance sees. The addresses are the load balancer again: no witness.
            for p in probes:
                if p.target.role == "address":
                    continue
                name = f"app:{self.config.name}" + ("" if p.target.role == "lb" else f"/{p.target.name}")
                out.extend(witness_samples(witness.cluster, name, p.target.zone, _witness_state(p)))
        return tuple(out)

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        values = {(s.name, s.labels): s.value for s in result.samples}
        backend = (("role", "backend"),)
        return [
            PerfDatum("time", result.duration, "s", min=0),
            PerfDatum("backends_healthy", values.get(("mamori_group_members_healthy", backend), 0.0), min=0),
            PerfDatum("backends", values.get(("mamori_group_members", backend), 0.0), min=0),
        ]

    async def aclose(self) -> None:
        """Close the Docker client if one was opened. Safe to call twice."""
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.aclose()


class _DiscoveryFailed(Exception):
    pass


async def _probe(target: _Target, check: HttpCheck, slots: asyncio.Semaphore) -> _Probe:
    async with slots:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        outcome = await check.run()
        return _Probe(target, outcome, loop.time() - t0)


def _witness_state(probe: _Probe) -> str:
    """What the member's own db_witness read in its answer (its sample at 1)."""
    states = [dict(s.labels)["state"] for s in probe.outcome.samples if s.name == _WITNESS and s.value]
    return states[0] if states else "unknown"


def _ok(probe: _Probe) -> bool:
    return _outcome_ok(probe.outcome)


def _outcome_ok(outcome: CheckOutcome) -> bool:
    return outcome.status in (Status.OK, Status.WARNING)


def _why(probe: _Probe) -> str:
    return probe.outcome.message or probe.outcome.reason.value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return re.sub(r"^\[|\]$", "", host), int(port)
