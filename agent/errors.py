"""User-facing errors, in a module with no dependencies so the CLI can catch them cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a config file; `str()` gives one line per problem."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


class StartupError(Exception):
    """Something the agent needs cannot be set up (a state file's directory is not writable, …):
    one line for the operator, no traceback."""
