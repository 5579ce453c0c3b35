"""User-facing errors, in a module with no dependencies so the CLI can catch them cheaply."""

from __future__ import annotations

from dataclasses import dataclass

# Every character str.splitlines() breaks a line at, escaped.
_ONE_LINE = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


@dataclass(frozen=True)
class ConfigIssue:
    """One problem of a config file. A warning does not make the file invalid: `validate` prints
    it and the agent logs it at start and on reload (`AgentConfig.warnings`)."""

    file: str
    line: int
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.path}: {'warning: ' if self.warning else ''}{self.message}"
        return text.translate(_ONE_LINE)  # whatever a message quotes, an issue is one line


class ConfigError(Exception):
    """One or more problems in a config file; `str()` gives one line per problem."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


class StartupError(Exception):
    """Something the agent needs cannot be set up (a state file's directory is not writable, …):
    one line for the operator, no traceback."""


class ExtraMissing(Exception):
    """An exporter's (or a check option's) optional dependency is not installed: one line naming
    the extra and how to add it. `extra` is mamori's extra that brings it (None for a core
    dependency)."""

    def __init__(self, message: str, extra: str | None = None) -> None:
        super().__init__(message)
        self.extra = extra

    @classmethod
    def of_extra(cls, component: str, needs: str, extra: str, kind: str = "exporter") -> ExtraMissing:
        return cls(
            f"{kind} {component} needs {needs}, which is not installed: pip install 'mamori[{extra}]'"
            f" (the container image: build it with --build-arg EXTRAS={extra})",
            extra,
        )
