"""YAML composed into nodes so every value keeps its line and column.

Only safe tags are constructed (SafeConstructor); duplicate mapping keys are errors.
"""

from __future__ import annotations

from typing import Any

import yaml

from streams.errors import Location, RuleError

__all__ = ["compose_file", "location", "to_python"]


def location(path: str, node: yaml.Node) -> Location:
    """Where a node is. Nodes remember their own file (an override's value comes from another)."""
    mark = node.start_mark
    name = mark.name if mark.name and not mark.name.startswith("<") else path
    return Location(name, mark.line + 1, mark.column + 1)


def compose_file(path: str, text: str) -> tuple[yaml.Node | None, list[RuleError]]:
    """The document's root node (None for an empty file) and the errors found in it."""
    loader = yaml.SafeLoader(text)
    loader.name = path  # marks carry the file name, so merged items report the right file
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        return None, [RuleError(where, f"YAML syntax error: {problem}")]
    except yaml.YAMLError as exc:
        return None, [RuleError(Location(path, 1, 1), f"YAML error: {exc}")]
    finally:
        loader.dispose()
    errors: list[RuleError] = []
    if root is not None:
        _check_duplicates(path, root, errors, set())
        _check_constructible(path, root, errors, set())
    return root, errors


_STANDARD_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _check_constructible(
    path: str, node: yaml.Node, errors: list[RuleError], seen: set[int]
) -> None:
    """Explicit tags that safe loading cannot build (`!!python/name`, `!foo`, `!!int abc`)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode) or node.tag not in _STANDARD_COLLECTION_TAGS:
        try:
            to_python(node)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
            errors.append(RuleError(location(path, node), f"cannot load value: {problem}"))
            return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            _check_constructible(path, key_node, errors, seen)
            _check_constructible(path, value_node, errors, seen)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _check_constructible(path, child, errors, seen)


def _check_duplicates(path: str, node: yaml.Node, errors: list[RuleError], seen: set[int]) -> None:
    # Aliases share nodes: visiting each node once keeps an alias bomb linear.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in keys:
                    first = keys[key_node.value].start_mark.line + 1
                    errors.append(
                        RuleError(
                            location(path, key_node),
                            f"duplicate key '{key_node.value}' (first at line {first})",
                        )
                    )
                else:
                    keys[key_node.value] = key_node
            _check_duplicates(path, value_node, errors, seen)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _check_duplicates(path, child, errors, seen)


def to_python(node: yaml.Node) -> Any:
    """Construct plain Python values (safe tags only) from a node."""
    constructor = yaml.constructor.SafeConstructor()
    return constructor.construct_document(node)
