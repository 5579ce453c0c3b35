"""YAML loading that remembers where every value came from, and `${VAR}` interpolation.

Errors found later (by pydantic) carry a path into the document; `YamlDoc.line_of(path)` turns
it into the line a user should look at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class DocumentError(Exception):
    """A problem at a known place in the document (line is 1-based; 0 when unknown)."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.message = message


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Raises KeyError(VAR) when a
    variable without default is unset."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise KeyError(name)
            return default
        return value

    return _VAR.sub(sub, text)


@dataclass
class YamlDoc:
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of the deepest part of `path` the document has (0 if none)."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:n]))
            if line:
                return line
        return 0


def load(text: str, env: Mapping[str, str]) -> YamlDoc:
    """Parse YAML (safe subset) into plain Python values, interpolating variables in strings.

    Raises DocumentError for syntax errors, duplicate keys, non-string keys and unset variables.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.problem and exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise DocumentError((), line, message) from None
    except yaml.YAMLError as exc:
        raise DocumentError((), 0, f"invalid YAML: {exc}") from None
    doc = YamlDoc(data=None)
    if root is None:
        doc.data = {}
        return doc
    constructor = yaml.constructor.SafeConstructor()

    def build(node: yaml.Node, path: Path) -> Any:
        doc.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            # Keys written in this mapping may override keys merged in with `<<`, but not
            # repeat each other.
            explicit = {id(k) for k, _ in node.value}
            try:
                constructor.flatten_mapping(node)
            except yaml.MarkedYAMLError as exc:
                raise DocumentError(path, doc.lines[path], f"invalid merge key: {exc.problem}") from None
            out: dict[str, Any] = {}
            written: set[str] = set()
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise DocumentError(path, line, f"keys must be strings, got {key!r}")
                if key in written:
                    raise DocumentError(path + (key,), line, f"duplicate key {key!r}")
                if id(key_node) in explicit:
                    written.add(key)
                out[key] = build(value_node, path + (key,))
                doc.lines[path + (key,)] = line
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            value = constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise DocumentError(path, doc.lines[path], f"invalid value: {exc.problem}") from None
        if isinstance(value, str) and "$" in value:
            try:
                value = interpolate(value, env)
            except KeyError as exc:
                raise DocumentError(
                    path,
                    doc.lines[path],
                    f"environment variable {exc.args[0]} is not set "
                    f"(use ${{{exc.args[0]}:-default}} for a default)",
                ) from None
        return value

    doc.data = build(root, ())
    return doc
