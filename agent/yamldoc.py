"""YAML loading that remembers where every value came from, and `${VAR}` interpolation.

Errors found later (by pydantic) carry a path into the document; `YamlDoc.line_of(path)` turns
it into the line a user should look at.

A config file may come from anyone who can send the agent SIGHUP, so loading is bounded: at most
`MAX_BYTES` of text, `MAX_NODES` nodes once aliases are expanded (a "billion laughs" file is
refused from the sizes of its anchors, without expanding anything), `MAX_DEPTH` levels of
nesting, no alias inside the node it refers to, and no tag but the standard ones. Every refusal is
a `DocumentError` at a line, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer

try:  # libyaml's parser: the same events, about 20 times faster than the pure-Python one
    from yaml import CSafeLoader as _SafeLoader

    _LIBYAML = True
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

    _LIBYAML = False

Path = tuple[str | int, ...]

MAX_BYTES = 4 * 2**20
MAX_NODES = 100_000
MAX_DEPTH = 64

# `${NAME}`, `${NAME:-default}`, `$$`; any other `${` is an error (a typo must not stay literal).
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}|\$\{")
_YAML_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
# Plain `=` and `<<` resolve to these; anywhere but a merge key they are just text.
_TEXT_TAGS = {_YAML_TAG + "value", _YAML_TAG + "merge"}
_COLLECTION_TAGS: dict[type[yaml.Node], str] = {
    yaml.SequenceNode: _YAML_TAG + "seq",
    yaml.MappingNode: _YAML_TAG + "map",
}


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
            # A key with a line break (or nothing printable) is quoted: one issue, one line.
            shown = part if part.isprintable() and part.strip() == part and part else repr(part)
            shown = shown if len(shown) <= 64 else shown[:61] + "..."
            out += f".{shown}" if out else shown
    return out or "(document)"


def shown(value: Any) -> str:
    """A value the user wrote, for a message: repr, at most about 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Raises KeyError(VAR) when a
    variable without default is unset, ValueError for a `${` that is not a valid reference."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group(0) == "${":
            rest = text[m.start() :]
            ref = rest[: rest.find("}") + 1] if "}" in rest else rest
            raise ValueError(
                f"invalid variable reference {shown(ref)}: expected ${{NAME}} or ${{NAME:-default}},"
                " NAME of letters, digits and _ not starting with a digit (write $$ for a literal $)"
            )
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
    empty: bool = False  # no document at all: an empty or comments-only text

    def line_of(self, path: Path) -> int:
        """The line of the deepest part of `path` the document has (0 if none)."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:n]))
            if line:
                return line
        return 0


class _Loader(Composer, _SafeLoader):
    """PyYAML's safe loader whose composer counts as it goes: nesting depth, nodes written, and
    the size and height each node has once aliases are expanded (computed from its children's,
    so an alias costs nothing to measure). Refusals are DocumentErrors at the node's line."""

    def __init__(self, text: str) -> None:
        _SafeLoader.__init__(self, text)
        Composer.__init__(self)  # libyaml's loader composes in C and never sets up `anchors`
        self.path: list[str | int] = []
        self.depth = 0
        self.written = 0
        self.expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, height), once complete
        self.explicit: dict[int, set[int]] = {}  # id(mapping) -> ids of its keys, before `<<` merges

    def _refuse(self, mark: Any, message: str, index: Any = None) -> DocumentError:
        # The path of a refusal deep down is long and says little: the line says where.
        path = self.path + ([part] if (part := _part(index)) is not None else [])
        return DocumentError(tuple(path[:8]), mark.line + 1 if mark else 0, message)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event: Any = self.peek_event()
        kind = type(event)
        if kind is yaml.AliasEvent:
            target = self.anchors.get(str(event.anchor))
            if target is not None and id(target) not in self.expanded:
                raise self._refuse(
                    event.start_mark, f"alias *{event.anchor} is inside the node it refers to (recursive)"
                )
            return super().compose_node(parent, index)  # type: ignore[return-value]
        self.written += 1
        if self.written > MAX_NODES:
            raise self._refuse(event.start_mark, f"the document has more than {MAX_NODES} nodes", index)
        if kind is yaml.ScalarEvent:  # the common case, kept short: a leaf needs no path
            node: Any = super().compose_node(parent, index)
            if node.tag not in _SCALAR_TAGS and node.tag not in _TEXT_TAGS:
                raise self._refuse(node.start_mark, f"unsupported YAML tag {_tag(node.tag)}", index)
            self.expanded[id(node)] = _LEAF
            return node  # type: ignore[no-any-return]
        part = _part(index)
        if part is not None:
            self.path.append(part)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._refuse(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
        node = super().compose_node(parent, index)
        # Checked here, not when building: a mapping merged with `<<` is never built itself.
        if node.tag != _COLLECTION_TAGS.get(type(node)):
            raise self._refuse(node.start_mark, f"unsupported YAML tag {_tag(node.tag)}")
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
            self.explicit[id(node)] = {id(k) for k, _ in node.value}
        else:
            children = node.value
        expanded = self.expanded
        size = 1 + sum(expanded[id(c)][0] for c in children)
        height = 1 + max((expanded[id(c)][1] for c in children), default=0)
        if size > MAX_NODES:
            raise self._refuse(
                node.start_mark, f"the document expands to more than {MAX_NODES} nodes (YAML aliases)"
            )
        if height > MAX_DEPTH:
            raise self._refuse(
                node.start_mark, f"nested more than {MAX_DEPTH} levels deep once YAML aliases are expanded"
            )
        expanded[id(node)] = (size, height)
        self.depth -= 1
        if part is not None:
            self.path.pop()
        return node  # type: ignore[no-any-return]


_LEAF = (1, 1)


def _part(index: Any) -> str | int | None:
    """The path part of a node composed at `index` (PyYAML's: a key node, a list index, or None
    for the root and for keys themselves)."""
    if isinstance(index, int):
        return index
    if isinstance(index, yaml.ScalarNode):
        return str(index.value)
    if isinstance(index, yaml.Node):
        return "?"
    return None


def _yaml_error(exc: yaml.YAMLError) -> DocumentError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.problem and exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    else:  # the reader's (a character YAML does not allow): one line, without its position
        line = 0
        message = f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return DocumentError((), line, " ".join(message.split()))


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


class _NotPlain(Exception):
    """The document has something only the counting composer handles (see `_load_plain`)."""


_STR_TAG = _YAML_TAG + "str"
_IMPLICIT = _SafeLoader.yaml_implicit_resolvers
_WILDCARD = _IMPLICIT.get(None, [])


@dataclass(slots=True)
class _Open:
    """A collection being built by `_load_plain`: its value, path, and the key awaiting a value."""

    value: dict[str, Any] | list[Any]
    path: Path
    key: str | None = None
    key_line: int = 0


def _load_plain(text: str, env: Mapping[str, str]) -> YamlDoc:
    """`load()` for a plain document — no anchor, alias, tag or merge key, within the bounds, and
    without an error — built straight from libyaml's events: no node objects and no resolver
    call per node, which makes a config of 10 000 checks load in a fifth of the time. Raises
    _NotPlain for anything else (including every error), so `load()` falls back to the counting
    composer, which says what is wrong exactly as before: the fast path never decides a refusal."""
    if not _LIBYAML:  # pragma: no cover - the pure-Python parser would be the slow part
        raise _NotPlain
    parser = _SafeLoader(text)
    constructor = yaml.constructor.SafeConstructor()
    lines: dict[Path, int] = {}
    stack: list[_Open] = []
    root: Any = None
    nodes = 0

    def scalar(event: Any) -> Any:
        if event.tag is not None or event.anchor is not None:
            raise _NotPlain
        value: str = event.value
        tag = _STR_TAG
        if event.implicit[0]:  # a plain scalar: resolved as the resolver does
            for tag_, regexp in _IMPLICIT.get(value[:1], []) + _WILDCARD:
                if regexp.match(value):
                    tag = tag_
                    break
        if tag == _STR_TAG:
            return value
        if tag in _TEXT_TAGS:
            raise _NotPlain
        node = yaml.ScalarNode(tag, value, event.start_mark, event.end_mark)
        try:
            return constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, LookupError, TypeError, AttributeError, OverflowError):
            raise _NotPlain from None

    try:
        get = parser.get_event
        if type(get()) is not yaml.StreamStartEvent or type(get()) is not yaml.DocumentStartEvent:
            raise _NotPlain
        while True:
            event: Any = get()
            kind = type(event)
            if kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                stack.pop()
                continue
            if kind is yaml.DocumentEndEvent:
                break
            if kind is yaml.AliasEvent:
                raise _NotPlain
            nodes += 1
            if nodes > MAX_NODES:
                raise _NotPlain
            line = event.start_mark.line + 1
            top = stack[-1] if stack else None
            if top is not None and isinstance(top.value, dict) and top.key is None:
                key = scalar(event) if kind is yaml.ScalarEvent else None
                if not isinstance(key, str) or key in top.value:
                    raise _NotPlain
                top.key, top.key_line = key, line
                continue
            if kind is yaml.ScalarEvent:
                value = scalar(event)
                if isinstance(value, str) and "$" in value:
                    try:
                        value = interpolate(value, env)
                    except (KeyError, ValueError):
                        raise _NotPlain from None
            else:
                if event.tag is not None or event.anchor is not None or len(stack) >= MAX_DEPTH:
                    raise _NotPlain
                value = {} if kind is yaml.MappingStartEvent else []
            if top is None:
                path: Path = ()
                root = value
            elif isinstance(top.value, dict):
                assert top.key is not None
                path, line = top.path + (top.key,), top.key_line
                top.value[top.key] = value
                top.key = None
            else:
                path = top.path + (len(top.value),)
                top.value.append(value)
            lines[path] = line
            if kind is not yaml.ScalarEvent:
                stack.append(_Open(value, path))
        if type(get()) is not yaml.StreamEndEvent:
            raise _NotPlain
    except yaml.YAMLError:
        raise _NotPlain from None
    finally:
        parser.dispose()
    return YamlDoc(data=root, lines=lines)


def load(text: str, env: Mapping[str, str]) -> YamlDoc:
    """Parse YAML (safe subset) into plain Python values, interpolating variables in strings.

    Raises DocumentError for syntax errors, duplicate keys, non-string keys, unset variables,
    unsupported tags and documents past the bounds above.
    """
    try:
        too_large = len(text) > MAX_BYTES or len(text.encode("utf-8")) > MAX_BYTES
    except UnicodeEncodeError:
        raise DocumentError((), 0, "invalid YAML: the text is not valid Unicode") from None
    if too_large:
        raise DocumentError((), 0, f"the document is larger than {MAX_BYTES // 2**20} MiB")
    try:
        return _load_plain(text, env)
    except _NotPlain:
        pass
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    finally:
        loader.dispose()
    doc = YamlDoc(data=None)
    if root is None:
        doc.data = {}
        doc.empty = True
        return doc

    def scalar(node: yaml.Node, path: Path, line: int) -> Any:
        if node.tag in _TEXT_TAGS:
            return node.value
        try:
            return loader.construct_object(node, deep=True)
        # The constructors of explicit tags (`!!int x`, `!!timestamp y`) fail in many ways.
        except (yaml.YAMLError, ValueError, LookupError, TypeError, AttributeError, OverflowError):
            raise DocumentError(path, line, f"invalid {_tag(node.tag)} value {shown(node.value)}") from None

    def build(node: yaml.Node, path: Path) -> Any:
        doc.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            # Keys written in this mapping may override keys merged in with `<<`, but not
            # repeat each other.
            explicit = loader.explicit.get(id(node), set())
            try:
                loader.flatten_mapping(node)
            except yaml.MarkedYAMLError as exc:
                raise DocumentError(path, doc.lines[path], f"invalid merge key: {exc.problem}") from None
            out: dict[str, Any] = {}
            written: set[str] = set()
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                key = scalar(key_node, path, line) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    got = shown(key) if isinstance(key_node, yaml.ScalarNode) else "a collection"
                    raise DocumentError(path, line, f"keys must be strings, got {got}")
                if key in written:
                    raise DocumentError(path + (key,), line, f"duplicate key {shown(key)}")
                if id(key_node) in explicit:
                    written.add(key)
                out[key] = build(value_node, path + (key,))
                doc.lines[path + (key,)] = line
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        value = scalar(node, path, doc.lines[path])
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
            except ValueError as exc:
                raise DocumentError(path, doc.lines[path], str(exc)) from None
        return value

    doc.data = build(root, ())
    return doc
