"""Load YAML safely and remember where every value came from.

PyYAML's SafeLoader already refuses tags that construct objects; on top of it this
refuses duplicate keys (PyYAML silently keeps the last), non-scalar keys, documents
that are huge or nested absurdly deep, and alias bombs. Every value is located by its
path, so validation errors can name the file, the line and the field.

A document parsed once is kept in connfix's cache (connfix.config.cache), keyed by its
text, PyYAML's installed files and this module's own: the next command that reads the
same text loads it from there without importing PyYAML (about 8 ms of every command
that reads an inventory or a runbook). Only what parsed without an error is kept, and
only plain values (a timestamp is parsed every time).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # PyYAML is imported when a document is read, not with the types here
    from pathlib import Path

    import yaml

MAX_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_NODES = 50_000
CACHE_ENTRIES = 64  # documents kept; the oldest go first

_PLAIN_TAGS = {
    "tag:yaml.org,2002:" + name
    for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}

PathT = tuple[str | int, ...]


class YamlError(ValueError):
    """A YAML document that cannot be loaded; `line` is 1-based, 0 when unknown."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class Located:
    """A loaded document with the line of every path in it."""

    data: Any
    lines: dict[PathT, int] = field(default_factory=dict)

    def line_of(self, path: PathT) -> int:
        """Return the line of the deepest known prefix of `path`."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line:
                return line
        return 0


def format_path(path: PathT) -> str:
    """Render ('environments', 'prod', 'hosts', 1, 'name') as environments.prod.hosts[1].name."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_text(text: str) -> Located:
    """Parse one YAML document into plain Python values with a line map (from connfix's
    cache when the same text was parsed before)."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) > MAX_BYTES:
        raise YamlError(f"file is larger than {MAX_BYTES // 1000} kB")
    where = _cache_file(encoded)
    if where is not None:
        cached = _from_cache(where)
        if cached is not None:
            return cached
    located = _parse(text)
    if where is not None:
        _to_cache(where, located)
    return located


def _cache_file(encoded: bytes) -> str | None:
    """Where the parse of this text is kept: named by a hash of the text, of PyYAML's
    installed files and of this module's (a change in either parses again)."""
    from connfix.config import cache

    return cache.entry("yaml", _loader(), encoded)


@functools.cache
def _loader() -> bytes | None:
    """What the parse depends on besides the text — PyYAML's installed module and this
    one, by path, size and time — once per process; None when it cannot be told."""
    import importlib.util

    from connfix.config import cache

    try:
        spec = importlib.util.find_spec("yaml")
    except (ValueError, ImportError):
        return None
    return cache.signature([spec.origin if spec and spec.origin else "", __file__])


def _from_cache(where: str) -> Located | None:
    import marshal

    from connfix.config import cache

    try:
        data, lines = marshal.loads(cache.read(where))
    except (OSError, EOFError, ValueError, TypeError):  # none yet, or damaged: parse
        return None
    if not isinstance(lines, dict):  # not what _to_cache writes: parse
        return None
    return Located(data=data, lines=lines)


def _to_cache(where: str, located: Located) -> None:
    import marshal

    from connfix.config import cache

    try:
        blob = marshal.dumps((located.data, located.lines))
    except ValueError:  # a timestamp, say: not a plain value, parsed every time
        return
    cache.store(where, blob, CACHE_ENTRIES)


def _parse(text: str) -> Located:
    import yaml

    # libyaml's parser when PyYAML was built with it (Debian's and the wheels are): the
    # same nodes, marks and safe constructor, parsed in C
    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        loader = loader_class(text)
    except yaml.YAMLError as exc:  # e.g. a control character: the reader refuses at once
        raise YamlError(f"YAML error: {exc}".splitlines()[0]) from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # PyYAML composes recursively: [[[[…]]]]
            raise YamlError(
                "YAML nested too deeply (connfix reads at most a few hundred levels)"
            ) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 0
            problem = exc.problem or exc.context or "invalid YAML"
            if "nesting depth" in problem:  # libyaml's own limit: the same answer
                raise YamlError(
                    "YAML nested too deeply (connfix reads at most a few hundred levels)", line
                ) from None
            raise YamlError(f"YAML syntax error: {problem}", line) from None
        except yaml.YAMLError as exc:  # libyaml's reader: a control character, say
            raise YamlError(f"YAML error: {exc}".splitlines()[0]) from None
        located = Located(data=None)
        if node is None:
            return located
        counter = [0]
        located.data = _build(loader, node, (), located.lines, counter, 0)
        return located
    finally:
        loader.dispose()


def load_file(path: str | Path) -> Located:
    """Read and parse `path`; raise YamlError for anything unreadable."""
    from connfix.config import files

    try:
        text = files.read_text(path, 4 * MAX_BYTES)  # load_text says when it is too large
    except files.FileRefused as exc:
        raise YamlError(str(exc)) from None
    except UnicodeDecodeError:
        raise YamlError("file is not UTF-8 text") from None
    except OSError as exc:
        raise YamlError(f"cannot read the file: {exc.strerror or exc}") from None
    return load_text(text)


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: PathT,
    lines: dict[PathT, int],
    counter: list[int],
    depth: int,
) -> Any:
    import yaml

    line = node.start_mark.line + 1
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise YamlError(f"document has more than {MAX_NODES} values (alias bomb?)", line)
    if depth > MAX_DEPTH:
        raise YamlError(f"document is nested deeper than {MAX_DEPTH} levels", line)
    if node.tag not in _PLAIN_TAGS:
        raise YamlError(f"YAML tag {node.tag!r} is not allowed (plain values only)", line)
    lines.setdefault(path, line)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                raise YamlError(
                    "only plain keys are allowed (no merge keys, no complex keys)",
                    key_node.start_mark.line + 1,
                )
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key)
            if key in result:
                raise YamlError(
                    f"duplicate key {format_path((*path, key))!r}"
                    f" (first at line {lines.get((*path, key), '?')})",
                    key_node.start_mark.line + 1,
                )
            lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = _build(loader, value_node, (*path, key), lines, counter, depth + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, (*path, index), lines, counter, depth + 1)
            for index, item in enumerate(node.value)
        ]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise YamlError(f"bad value: {exc}", line) from None


def describe_at(path: str | Path, located: Located, loc: PathT, message: str) -> str:
    """Return 'file:line: field.path: message'."""
    where = format_path(loc) or "(top level)"
    return f"{path}:{located.line_of(loc)}: {where}: {message}"


def _validation_message(error: Any, unknown_hint: str) -> str:
    kind = error.get("type", "")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's, a record's
        return f"unknown field ({unknown_hint})"
    if kind == "missing":
        return "required field is missing"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def describe_validation(
    path: str | Path, located: Located, errors: list[Any], unknown_hint: str, prefix: PathT = ()
) -> str:
    """Turn pydantic errors into one message, first error first, each with file:line."""
    located_errors = sorted(errors, key=lambda e: located.line_of((*prefix, *tuple(e["loc"]))))
    messages = [
        describe_at(
            path, located, (*prefix, *tuple(e["loc"])), _validation_message(e, unknown_hint)
        )
        for e in located_errors
    ]
    extra = f"\n({len(messages) - 1} more error(s) below)" if len(messages) > 1 else ""
    return messages[0] + extra + "".join("\n" + m for m in messages[1:])
