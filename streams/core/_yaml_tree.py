"""YAML composed into nodes so every value keeps its line and column.

Shared by the rule loader and the configuration reader. Both are hand-written files, read with
care because they may also be hostile or generated:

- only safe tags are constructed (SafeConstructor);
- duplicate mapping keys are errors, with both places;
- plain scalars that YAML 1.1 (PyYAML) reads differently from YAML 1.2 and from what a reader
  sees are errors: `1:30` (base-60: 90), `0777` (octal: 511), `1_000`, `0b11`, `yes`/`no`/`on`/
  `off` (booleans), `2024-01-01` (a date), and `<<` merge keys. Quoting makes any of them text;
- limits: file size, nesting depth and number of nodes (`MAX_YAML_*`), checked while composing so
  a hostile file costs neither the stack nor the memory. Aliases share nodes: an alias bomb is
  composed, walked and constructed in linear time.
"""

from __future__ import annotations

import io
import re
from typing import Any

import yaml

from streams.errors import Location, RuleError

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "compose_checked",
    "compose_file",
    "location",
    "to_python",
]

#: The largest rules or configuration file read (bytes of UTF-8).
MAX_YAML_BYTES = 4 << 20
#: Nesting of collections; rule files use 5 levels, configurations about 6.
MAX_YAML_DEPTH = 64
#: Nodes per file (each costs a few hundred bytes while loading).
MAX_YAML_NODES = 200_000


def location(path: str, node: yaml.Node) -> Location:
    """Where a node is. Nodes remember their own file (an override's value comes from another)."""
    mark = node.start_mark
    name = mark.name if mark.name and not mark.name.startswith("<") else path
    return Location(name, mark.line + 1, mark.column + 1)


class _LimitError(yaml.MarkedYAMLError):
    """A limit of this module, raised while composing (so the stack stays shallow)."""


class _BoundedComposer(yaml.composer.Composer):
    """PyYAML's composer, stopping at MAX_YAML_DEPTH levels and MAX_YAML_NODES nodes."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._nodes += 1
        if self._depth >= MAX_YAML_DEPTH or self._nodes > MAX_YAML_NODES:
            what = (
                f"nesting deeper than {MAX_YAML_DEPTH} levels"
                if self._depth >= MAX_YAML_DEPTH
                else f"more than {MAX_YAML_NODES} YAML nodes in one file"
            )
            mark = self.peek_event().start_mark  # type: ignore[attr-defined]
            raise _LimitError(None, None, what, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PythonLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    _BoundedComposer,
    yaml.constructor.SafeConstructor,
    yaml.resolver.Resolver,
):
    """Pure-Python scanning and parsing (when PyYAML was built without libyaml)."""

    def __init__(self, stream: _NamedText) -> None:
        yaml.reader.Reader.__init__(self, stream.getvalue())
        self.name = stream.name
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


try:
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    _Loader: Any = _PythonLoader
else:

    class _CLoader(
        _BoundedComposer, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver
    ):
        """libyaml scans and parses (about 10x faster, and nesting-safe: it keeps its own
        stack); nodes are composed here, in Python, so the limits above apply. Only events
        cross from C, and the composer, constructor and resolver are PyYAML's safe ones."""

        def __init__(self, stream: _NamedText) -> None:
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _Loader = _CLoader


class _NamedText(io.StringIO):
    """Text with a name: libyaml takes the name for its marks from the stream."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name


def compose_checked(path: str, text: str) -> tuple[yaml.Node | None, list[tuple[Location, str]]]:
    """The document's root node (None for an empty file or a fatal problem) and every problem
    found, each with its location: syntax, limits, duplicate keys, YAML 1.1 surprises and values
    that safe loading cannot build."""
    if len(text) > MAX_YAML_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        return None, [(Location(path, 1, 1), f"file larger than {MAX_YAML_BYTES} bytes")]
    # Marks carry the file name, so merged items report the right file.
    loader = _Loader(_NamedText(text, path))
    try:
        root = loader.get_single_node()
    except _LimitError as exc:
        mark = exc.problem_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path, 1, 1)
        return None, [(where, str(exc.problem))]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        return None, [(where, f"YAML syntax error: {problem}")]
    except yaml.YAMLError as exc:
        return None, [(Location(path, 1, 1), f"YAML error: {exc}")]
    finally:
        loader.dispose()
    problems: list[tuple[Location, str]] = []
    if root is not None and not _check_tree(path, root, problems):
        return None, problems  # what safe loading cannot build is not handed on
    return root, problems


def compose_file(path: str, text: str) -> tuple[yaml.Node | None, list[RuleError]]:
    """`compose_checked` for a rules file: the problems as RuleErrors."""
    root, problems = compose_checked(path, text)
    return root, [RuleError(where, message) for where, message in problems]


_STANDARD_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# What YAML 1.2 (core schema) and a reader agree on; PyYAML's YAML 1.1 resolver accepts more.
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)|[-+]?0x[0-9a-fA-F]+")
_PLAIN_FLOAT = re.compile(
    r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_RESOLVED_TAGS = frozenset({_INT_TAG, _FLOAT_TAG, _BOOL_TAG, _TIMESTAMP_TAG})
_RESOLVER = yaml.resolver.Resolver()
_PLAIN_BOOL = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})


def _surprise(node: yaml.ScalarNode) -> str | None:
    """Why a plain scalar means something else in YAML 1.1 than it seems, or None."""
    if node.style:  # quoted or block scalars are text (plain: None from PyYAML, '' from libyaml)
        return None
    tag, text = node.tag, node.value
    if tag not in _RESOLVED_TAGS or _implicit_tag(text) != tag:
        return None  # text, or an explicit tag (`!!int abc` is reported as unconstructible)
    if tag == _BOOL_TAG and text not in _PLAIN_BOOL:
        meaning = "true" if text.lower() in ("yes", "y", "on") else "false"
        return f"'{text}' is a YAML 1.1 boolean ({meaning}): write {meaning}, or quote it for text"
    if tag == _INT_TAG and not _PLAIN_INT.fullmatch(text):
        kind = _int_kind(text)
        article = "an" if kind.startswith("octal") else "a"
        return f"'{text}' is {article} {kind} in YAML 1.1: write the decimal number, or quote it"
    if tag == _FLOAT_TAG and not _PLAIN_FLOAT.fullmatch(text):
        kind = "base-60 number" if ":" in text else "number with '_' separators"
        return f"'{text}' is a {kind} in YAML 1.1: write the decimal number, or quote it"
    if tag == _TIMESTAMP_TAG:
        return f"'{text}' is a YAML 1.1 date/time: quote it"
    return None


def _implicit_tag(text: str) -> str:
    """The tag YAML 1.1 gives a plain scalar of this text."""
    return str(_RESOLVER.resolve(yaml.ScalarNode, text, (True, False)))  # type: ignore[no-untyped-call]


def _int_kind(text: str) -> str:
    body = text.lstrip("+-")
    if ":" in body:
        return f"base-60 number ({_to_int(text)})"
    if body.startswith("0b"):
        return f"binary number ({_to_int(text)})"
    if "_" in body:
        return f"number with '_' separators ({_to_int(text)})"
    return f"octal number ({_to_int(text)})"


def _to_int(text: str) -> str:
    try:
        return str(yaml.SafeLoader("").construct_yaml_int(yaml.ScalarNode(_INT_TAG, text)))
    except (ValueError, yaml.YAMLError):  # pragma: no cover - the resolver said int
        return "?"


def _check_tree(path: str, root: yaml.Node, problems: list[tuple[Location, str]]) -> bool:
    """Duplicate keys, YAML 1.1 surprises and unconstructible values, each node visited once.
    False when something cannot be built into plain data at all (a tag safe loading refuses, a
    mapping used as a key).

    Iterative: aliases can make the node graph as deep as the file is long.
    """
    buildable = True
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            surprise = _surprise(node)
            if surprise is not None:
                problems.append((location(path, node), surprise))
                continue
        if isinstance(node, yaml.ScalarNode) or node.tag not in _STANDARD_COLLECTION_TAGS:
            problem = _construct_problem(node)
            if problem is not None:
                problems.append((location(path, node), f"cannot load value: {problem}"))
                buildable = False
                continue
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, yaml.Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    problems.append(
                        (location(path, key_node), "a mapping key must be a plain value, not a "
                         "list or a mapping")
                    )  # fmt: skip
                    buildable = False
                elif key_node.tag == _MERGE_TAG and not key_node.style:
                    problems.append(
                        (location(path, key_node), "merge keys ('<<') are not supported")
                    )
                elif key_node.value in keys:
                    first = keys[key_node.value].start_mark.line + 1
                    problems.append(
                        (
                            location(path, key_node),
                            f"duplicate key '{_cut(key_node.value)}' (first at line {first})",
                        )
                    )
                else:
                    keys[key_node.value] = key_node
                stack.append(value_node)
                stack.append(key_node)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    problems.sort(key=lambda p: (p[0].line, p[0].column))
    return buildable


def _construct_problem(node: yaml.Node) -> str | None:
    """Explicit tags that safe loading cannot build (`!!python/name`, `!foo`, `!!int abc`)."""
    try:
        to_python(node)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        return str(getattr(exc, "problem", None) or exc or type(exc).__name__)
    return None


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def to_python(node: yaml.Node) -> Any:
    """Construct plain Python values (safe tags only) from a node.

    Not deep: SafeConstructor then builds nested collections from its own work list rather than
    by recursion, and each node (an alias bomb's shared ones too) once.
    """
    constructor = yaml.constructor.SafeConstructor()
    return constructor.construct_document(node)
