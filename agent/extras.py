"""What a config needs installed beyond mamori's core: the one check `agentctl run` makes before
it starts its exporters (`exporters.config.missing_extra`) and its checks (a check option's
`CheckConfig.require()`: `google_service_account` needs `google`), for `agentctl validate` and
for `make run CONFIG=FILE`.

`python -m agent.extras FILE` prints the extras FILE needs that are not installed here,
comma-separated (`oci,otel`; an empty line when none): `make run` installs them. A config that
does not load prints an empty line too: `agentctl run` then says what is wrong with it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.errors import ExtraMissing


def missing_extras(cfg: AgentConfig) -> list[ExtraMissing]:
    """One `ExtraMissing` per configured check, then exporter, whose dependency is not installed,
    in config order. Imports the dependencies that are installed (as `agentctl run` would)."""
    from exporters.config import missing_extra

    missing = missing_check_extras(cfg)
    return missing + [m for e in cfg.exporters if (m := missing_extra(e)) is not None]


def missing_check_extras(cfg: AgentConfig) -> list[ExtraMissing]:
    """One `ExtraMissing` per configured check an option of which needs an extra that is not
    installed, in config order."""
    from agent.errors import ExtraMissing

    missing: list[ExtraMissing] = []
    for check in cfg.checks:
        try:
            check.require()
        except ExtraMissing as exc:
            missing.append(exc)
    return missing


def main(argv: list[str]) -> int:
    from agent import config
    from agent.files import offline

    if len(argv) != 1:
        sys.stderr.write("usage: python -m agent.extras CONFIG\n")
        return 2
    try:
        with offline():
            cfg = config.load(argv[0])
    except ConfigError:
        sys.stdout.write("\n")
        return 0
    extras = dict.fromkeys(m.extra for m in missing_extras(cfg) if m.extra is not None)
    sys.stdout.write(",".join(e for e in extras if e is not None) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
