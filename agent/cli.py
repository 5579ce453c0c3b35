"""`agentctl`: run checks ad hoc, validate and list configs, run the agent, manage its alerting.

Exit codes: `check` exits with the worst status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; a usage
or config error is 3, as for any Nagios plugin). `validate`, `list` and `run` exit 1 on an
invalid config or a start-up failure, 2 on bad arguments. `alerts`, `silence add|list|expire` and
`notify-test` (agent/alertctl.py) exit 1 on a user error (one line on stderr) and `notify-test`
also when the notification was not delivered; 2 on bad arguments. `oci-alarms`
(exporters/oci_alarms/) exits 1 on a bad alarms file, credentials or a service error (one line
each), 3 on bad arguments.

Each command imports only what it needs: `agentctl check URL` must start fast (see bench/), so
the modules for the server, the scheduler and unused check types are imported inside commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from agent import __version__
from agent.errors import ConfigError, StartupError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.eventloop import EventLoop
    from agent.model import CheckResult
    from checks.base import Check

UNKNOWN = 3
T = TypeVar("T")


class UsageError(Exception):
    """A user error with a one-line explanation."""


def _load_config(path: str | None) -> AgentConfig:
    from agent import config

    return config.load(Path(path) if path else None)


def _print_config_error(exc: Exception) -> None:
    for line in str(exc).splitlines():
        print(line, file=sys.stderr)


# --- check -----------------------------------------------------------------------------------


def _adhoc_check(target: str, timeout: float | None, options: argparse.Namespace) -> Check[Any]:
    from pydantic import ValidationError

    from agent import adhoc
    from agent.secrets import redact_url

    overrides: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    shown = redact_url(target)  # never echo a password (or a token) given in the URL
    scheme = target.partition("://")[0].lower()
    thresholds = adhoc.given(options)
    if thresholds and scheme not in ("http", "https"):
        raise UsageError(f"{thresholds[0]} applies to http:// and https:// URLs only, not {shown!r}")
    try:
        if scheme in ("http", "https"):
            from checks.http.check import HttpCheck

            try:
                overrides.update(adhoc.http_overrides(options))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            return HttpCheck.from_url(target, **overrides)
        if scheme in ("tcp", "tls"):
            from checks.tcp import TcpCheck

            return TcpCheck.from_url(target, **overrides)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["loc"][:1] == ("url",) or not thresholds:
            raise UsageError(f"invalid target {shown!r}: {msg}") from None
        for word, flag in adhoc.CONFIG_WORDS.items():
            msg = msg.replace(word, flag)
        raise UsageError(f"invalid threshold for {shown!r}: {msg}") from None
    raise UsageError(
        f"cannot check {shown!r}: use an http://, https://, tcp:// or tls:// URL, or a check name with -c"
    )


def _select(cfg: AgentConfig, names: list[str], tags: list[str]) -> list[Any]:
    known = {c.name: c for c in cfg.checks}
    missing = [n for n in names if n not in known]
    if missing:
        raise UsageError(
            f"no check named {', '.join(map(repr, missing))} in {cfg.source} (known: {', '.join(known)})"
        )
    selected = [known[n] for n in names] if names else list(cfg.checks)
    if tags:
        selected = [c for c in selected if set(tags) & set(c.tags)]
    if not selected:
        raise UsageError(f"no check in {cfg.source} matches the selection")
    return selected


async def _run_once(checks: list[Check[Any]]) -> list[CheckResult]:
    from agent.runner import execute

    return list(await asyncio.gather(*(execute(c) for c in checks)))


async def _closing(checks: list[Check[Any]], work: Awaitable[T]) -> T:
    try:
        return await work
    finally:
        await asyncio.gather(*(c.aclose() for c in checks), return_exceptions=True)


def _event_loop(env: Mapping[str, str]) -> EventLoop:
    """The loop MAMORI_EVENT_LOOP asks for (agent/eventloop.py); a bad value is a usage error."""
    from agent.eventloop import EventLoopError, choose

    try:
        return choose(env)
    except EventLoopError as exc:
        raise UsageError(str(exc)) from None


def _table(results: list[CheckResult], verbose: bool) -> str:
    rows = [("CHECK", "TYPE", "STATUS", "TIME", "REASON", "MESSAGE")]
    for r in results:
        rows.append((r.check, r.check_type, r.status.name, f"{r.duration:.3f}s", r.reason.value, r.message))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[5] for row in rows
    ]
    if verbose:
        for r in results:
            lines.append(f"\n{r.check} ({r.target}):")
            for s in r.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in s.labels)
                lines.append(f"  {s.name}{{{labels}}} {s.value:g}")
    return "\n".join(line.rstrip() for line in lines)


def _output_format(args: argparse.Namespace) -> str | None:
    """nagios, table or json; None for the default, which depends on how many checks run."""
    fmt: str | None = args.format
    if args.json:
        if fmt not in (None, "json"):
            raise UsageError(f"--json is --format json: give --format {fmt} or --json, not both")
        fmt = "json"
    return fmt


def cmd_check(args: argparse.Namespace) -> int:
    from agent.model import worst

    loop = _event_loop(os.environ)
    fmt = _output_format(args)
    adhoc = [t for t in args.targets if "://" in t]
    if adhoc and (len(adhoc) != len(args.targets) or args.config):
        raise UsageError("give either URLs to check ad hoc, or check names with -c FILE, not both")
    if adhoc:
        # With --wait-healthy, --timeout is how long to wait, not one probe's timeout.
        checks = [_adhoc_check(t, None if args.wait_healthy else args.timeout, args) for t in adhoc]
    else:
        from agent.adhoc import given

        if thresholds := given(args):
            raise UsageError(
                f"{thresholds[0]} applies to an ad hoc URL; a configured check has its thresholds"
            )
        from checks import check_class

        cfg = _load_config(args.config)
        configs = _select(cfg, args.targets, args.tag)
        checks = [check_class(c.type)(c) for c in configs]
    if args.wait_healthy:
        from agent.gate import wait_healthy

        wait = args.timeout if args.timeout is not None else 300.0
        results, healthy = loop.run(_closing(checks, wait_healthy(checks, wait, args.poll, sys.stderr)))
    else:
        results = loop.run(_closing(checks, _run_once(checks)))
    if fmt is None:  # a Nagios plugin prints its line; several checks, or samples, read better as a table
        fmt = "nagios" if len(checks) == 1 and not args.verbose else "table"
    if fmt == "json":
        print(json.dumps([r.to_json() for r in results], indent=1))
    elif fmt == "nagios":
        from agent.nagios import nagios_output

        print(nagios_output(checks, results))
    elif len(checks) == 1 and results and (summary := checks[0].summary(results[0])):
        print(summary)
    else:
        print(_table(results, args.verbose))
    if args.wait_healthy and not healthy:
        return 2  # the gate failed, whatever the last round said
    return int(worst([r.status for r in results]))


# --- validate / list / run -------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    """Each file as `agentctl run` would load it, and whether this installation can run its
    exporters (`agent.extras`, the check `run` makes). With --offline, no file that the config
    names is read (secrets, the host's /proc and /, CA bundles, the OCI config file): the OK line
    says which were skipped."""
    from contextlib import nullcontext

    from agent.config import load
    from agent.extras import missing_extras
    from agent.files import offline

    failed = False
    for path in args.files:
        skipped: list[str] = []
        try:
            with offline() if args.offline else nullcontext(skipped) as skipped:
                cfg = load(Path(path))
        except ConfigError as exc:
            _print_config_error(exc)
            failed = True
            continue
        missing = missing_extras(cfg)
        for problem in missing:
            print(f"{path}: {problem}", file=sys.stderr)
        failed = failed or bool(missing)
        for warning in cfg.warnings:  # valid, but probably not what was meant
            print(warning, file=sys.stderr)
        if missing:
            continue
        note = f"; offline, not read: {', '.join(skipped)}" if skipped else ""
        print(f"{path}: OK ({len(cfg.checks)} checks{note})")
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from checks import check_class

    cfg = _load_config(args.config)
    configs = _select(cfg, [], args.tag) if args.tag else list(cfg.checks)
    rows = [("NAME", "TYPE", "INTERVAL", "TIMEOUT", "TAGS", "TARGET")]
    for c in configs:
        target = check_class(c.type)(c).target
        rows.append((c.name, c.type, f"{c.interval:g}s", f"{c.timeout:g}s", ",".join(c.tags) or "-", target))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from agent import config, logs
    from agent.runtime import Agent

    env = dict(os.environ)
    loop = _event_loop(env)
    if args.listen:
        try:
            host, port = config.parse_listen(args.listen)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        env["MAMORI_LISTEN"] = args.listen
        # The embedded config probes the agent's own /healthz at the listen address.
        env["MAMORI_SELF_ADDRESS"] = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    cfg = config.load(Path(args.config) if args.config else None, env)
    logs.setup(args.log_level or cfg.agent.log_level, args.log_format or cfg.agent.log_format)
    agent = Agent(cfg, Path(args.config) if args.config else None, env, listen=args.listen, freeze_gc=True)
    logging.getLogger("mamori.agent").info("event loop: %s", loop.name)
    return loop.run(agent.run())


# --- alerts / silence / notify-test (agent/alertctl.py) ---------------------------------------


def _alertctl(name: str, args: argparse.Namespace) -> int:
    from agent import alertctl

    try:
        code: int = getattr(alertctl, name)(args)
    except alertctl.AlertctlUsageError as exc:
        raise UsageError(str(exc)) from None
    return code


def cmd_alerts(args: argparse.Namespace) -> int:
    return _alertctl("cmd_alerts", args)


def cmd_silence_add(args: argparse.Namespace) -> int:
    return _alertctl("cmd_silence_add", args)


def cmd_silence_list(args: argparse.Namespace) -> int:
    return _alertctl("cmd_silence_list", args)


def cmd_silence_expire(args: argparse.Namespace) -> int:
    return _alertctl("cmd_silence_expire", args)


def cmd_notify_test(args: argparse.Namespace) -> int:
    return _alertctl("cmd_notify_test", args)


# --- oci-alarms (exporters/oci_alarms/) -------------------------------------------------------


def cmd_oci_alarms(args: argparse.Namespace) -> int:
    from exporters.oci_alarms.cli import AlarmsUsageError, command
    from exporters.oci_alarms.client import AlarmsError

    try:
        return command(args, sys.stdout)
    except AlarmsUsageError as exc:
        raise UsageError(str(exc)) from None
    except ConfigError as exc:
        _print_config_error(exc)
        return 1
    except AlarmsError as exc:
        for line in str(exc).splitlines():
            print(f"agentctl: {line}", file=sys.stderr)
        return 1


def _tps_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: requests per second, e.g. 5")
    return value


def _oci_alarms_parser(sub: Any) -> None:
    p = sub.add_parser("oci-alarms", help="OCI Monitoring alarms as code: validate, plan, apply, list")
    p.set_defaults(error_code=UNKNOWN)
    p.usage_exit_code = UNKNOWN
    actions = p.add_subparsers(dest="oci_alarms_action", required=True, metavar="ACTION")
    for name, text in (
        ("apply", "create or update the file's alarms, by displayName (idempotent)"),
        ("plan", "what apply would change, field by field; changes nothing"),
        ("diff", "the same as plan"),
        ("list", "list the alarms of the compartment(s)"),
        ("validate", "check the file only, without contacting OCI"),
    ):
        s = actions.add_parser(name, help=text)
        s.usage_exit_code = UNKNOWN
        s.set_defaults(func=cmd_oci_alarms, error_code=UNKNOWN)
        s.add_argument("-f", "--file", required=name != "list", help="alarms file (deploy/oci/alarms.yaml)")
        s.add_argument(
            "--compartment", metavar="OCID", help="sets ${OCI_COMPARTMENT_ID} (list: the compartment)"
        )
        s.add_argument("--topic", metavar="OCID", help="sets ${OCI_TOPIC_ID}")
        s.add_argument(
            "--var", action="append", default=[], metavar="NAME=VALUE", help="sets ${NAME} (repeatable)"
        )
        if name == "validate":
            continue
        s.add_argument("--auth", choices=["config_file", "instance_principal", "resource_principal"])
        s.add_argument("--config-file", metavar="PATH", help="OCI config file (default ~/.oci/config)")
        s.add_argument("--profile", metavar="NAME", help="profile in it (default DEFAULT)")
        where = s.add_mutually_exclusive_group()
        where.add_argument("--region", help="e.g. ap-tokyo-1 (default: the profile's or the instance's)")
        where.add_argument(
            "--endpoint", metavar="URL", help="the Monitoring endpoint itself (private, tests)"
        )
        s.add_argument(
            "--max-tps", type=_tps_arg, default=5.0, help="alarm API calls per second at most (default 5)"
        )
        if name != "list":
            s.add_argument(
                "--prune", action="store_true", help="delete alarms tagged managed-by=mamori not in the file"
            )
        if name == "apply":
            s.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    p.subcommands = dict(actions.choices)


# --- entry point -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but `check`'s usage errors exit 3 (UNKNOWN) and are one line (no usage first: a
    monitoring system shows the first line), as a Nagios plugin's must."""

    usage_exit_code = 2
    one_line_errors = False
    subcommands: dict[str, _Parser]

    def error(self, message: str) -> NoReturn:
        if not self.one_line_errors:
            self.print_usage(sys.stderr)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {message}\n")


def build_parser() -> _Parser:
    parser = _Parser(prog="agentctl", description="Mamori monitoring agent")
    parser.add_argument("--version", action="version", version=f"mamori {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="run checks once and print the results")
    p.add_argument(
        "targets",
        nargs="*",
        metavar="URL|NAME",
        help="http(s):// or tcp:// URLs to check ad hoc, or names of checks in the config",
    )
    p.add_argument("-c", "--config", help="config file (default: the embedded default config)")
    p.add_argument("-t", "--tag", action="append", default=[], help="only checks with this tag (repeatable)")
    p.add_argument(
        "--timeout",
        type=_duration_arg,
        help="timeout of ad hoc URLs (default 10s); with --wait-healthy, how long to wait (default 300s)",
    )
    p.add_argument(
        "--wait-healthy",
        action="store_true",
        help="deploy gate: re-run the checks until all are OK (exit 0) or --timeout passes (exit 2)",
    )
    p.add_argument("--poll", type=_duration_arg, default=2.0, help="with --wait-healthy: pause between tries")
    p.add_argument(
        "--format",
        choices=["nagios", "table", "json"],
        help="nagios: the plugin line with perfdata (default for one check; several: one line for"
        " all, then a line per check), table (default for several), json",
    )
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print every sample too (in the table, the default with -v)",
    )
    from agent.adhoc import add_arguments

    add_arguments(p, _duration_arg)
    p.set_defaults(func=cmd_check, error_code=UNKNOWN)
    p.usage_exit_code = UNKNOWN
    p.one_line_errors = True

    p = sub.add_parser("validate", help="validate config files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--offline",
        action="store_true",
        help="read no file the config names (secrets, the host's /proc and /, CA files): for CI",
    )
    p.set_defaults(func=cmd_validate, error_code=1)

    p = sub.add_parser("list", help="list the checks of a config")
    p.add_argument("-c", "--config", help="config file (default: the embedded default config)")
    p.add_argument("-t", "--tag", action="append", default=[])
    p.set_defaults(func=cmd_list, error_code=1)

    p = sub.add_parser("run", help="run the agent")
    p.add_argument("-c", "--config", help="config file (default: the embedded default config)")
    p.add_argument("--listen", metavar="HOST:PORT", help="override agent.listen")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.set_defaults(func=cmd_run, error_code=1)

    p = sub.add_parser("alerts", help="show firing and pending alerts, outbox depth and dead letters")
    p.add_argument("-c", "--config", required=True, help="config file with an alerts section")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_alerts, error_code=1)

    p = sub.add_parser("silence", help="add, list or expire silences (the agent re-reads them within 10s)")
    p.set_defaults(error_code=1)
    silence = p.add_subparsers(dest="silence_command", required=True, metavar="ACTION")
    s = silence.add_parser("add", help="add a silence and print its id")
    s.add_argument("-c", "--config", required=True, help="config file with an alerts section")
    s.add_argument(
        "--match",
        action="append",
        required=True,
        metavar="KEY=GLOB",
        help="rule, check, target, severity or tag (repeatable; all must match)",
    )
    s.add_argument("--duration", type=_duration_arg, required=True, help="how long, e.g. 2h")
    s.add_argument("--start", metavar="ISO", help="when it starts (default now; naive times are UTC)")
    s.add_argument("--comment", required=True, help="why (shown by `silence list`)")
    s.set_defaults(func=cmd_silence_add, error_code=1)
    s = silence.add_parser("list", help="list active and future silences")
    s.add_argument("-c", "--config", required=True, help="config file with an alerts section")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=cmd_silence_list, error_code=1)
    s = silence.add_parser("expire", help="remove a silence now")
    s.add_argument("-c", "--config", required=True, help="config file with an alerts section")
    s.add_argument("id", metavar="ID")
    s.set_defaults(func=cmd_silence_expire, error_code=1)
    p.subcommands = dict(silence.choices)

    p = sub.add_parser("notify-test", help="send one test notification through a configured notifier")
    p.add_argument("-c", "--config", required=True, help="config file with notifiers")
    p.add_argument("route", metavar="ROUTE", help="the notifier's name")
    p.set_defaults(func=cmd_notify_test, error_code=1)

    _oci_alarms_parser(sub)
    parser.subcommands = dict(sub.choices)
    return parser


def _duration_arg(text: str) -> float:
    from agent.fields import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not isinstance(value, float) or value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so `check` exits 3
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        _print_config_error(exc)
        code = args.error_code
    except UsageError as exc:
        print(f"agentctl: {exc}", file=sys.stderr)
        code = args.error_code
    except StartupError as exc:
        print(f"agentctl: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # `agentctl … | head`: the reader left. Quietly, as cat/ls do; stdout is redirected to
        # /dev/null so the interpreter's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    return code


if __name__ == "__main__":
    sys.exit(main())
