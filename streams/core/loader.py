"""Load rule files into a Ruleset: lists, macros, correlations, overrides, located errors.

Every error of every file is collected and reported as `PATH:LINE:COL: message`; when there is
any, nothing is loaded (RuleLoadError).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from streams._text import short
from streams.core._references import (
    ReferenceGraph,
    condition_references,
    only_derived,
    strongly_connected,
)
from streams.core._yaml_tree import MAX_YAML_BYTES, compose_file, location, to_python
from streams.core.conditions import (
    ExpansionBudget,
    ListCycleError,
    ResolvedLists,
    compile_condition,
    macro_refs,
    parse_condition,
    resolve_lists,
)
from streams.core.correlation_schema import build_correlation
from streams.core.rule_spec import ITEM_KINDS, LIST_KEYS, MACRO_KEYS, OVERRIDE_APPEND_KEYS
from streams.core.rules import Ruleset
from streams.errors import ConditionSyntaxError, Location, RuleError, RuleLoadError

__all__ = ["RULE_FILE_SUFFIXES", "TEST_FILE_SUFFIXES", "load_rules", "rule_files"]

RULE_FILE_SUFFIXES = (".yaml", ".yml")
TEST_FILE_SUFFIXES = (".test.yaml", ".test.yml")
_KINDS = ITEM_KINDS
_KIND_KEYS = {"list": LIST_KEYS, "macro": MACRO_KEYS}


@dataclass
class RawItem:
    """One YAML item: its kind, name, and key -> (key node, value node), in file order."""

    kind: str
    name: str
    path: str
    node: yaml.MappingNode
    keys: dict[str, tuple[yaml.Node, yaml.Node]] = field(default_factory=dict)

    def loc(self, key: str | None = None) -> Location:
        if key is not None and key in self.keys:
            return location(self.path, self.keys[key][1])
        return location(self.path, self.node)

    def key_loc(self, key: str) -> Location:
        return location(self.path, self.keys[key][0])

    def value(self, key: str) -> Any:
        return to_python(self.keys[key][1])


def rule_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files in argument order; a directory contributes its rule files in lexical path order.

    Files named `*.test.yaml` are rule tests, not rules, and are skipped inside directories, and
    so are hidden files and directories: a Kubernetes ConfigMap volume holds every file three
    times (`x.yaml` -> `..data/x.yaml` -> `..2024_05_25_13_44_05.1234/x.yaml`), and only the
    visible link is the rule file (it is also what changes when the ConfigMap is updated).
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = [
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.name.endswith(RULE_FILE_SUFFIXES)
                and not p.name.endswith(TEST_FILE_SUFFIXES)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            files.extend(sorted(found, key=lambda p: p.as_posix()))
        else:
            files.append(path)
    return files


def load_rules(paths: Iterable[str | Path]) -> Ruleset:
    """Load every file; returns a Ruleset or raises RuleLoadError with all errors."""
    errors: list[RuleError] = []
    items: list[RawItem] = []
    files = rule_files(paths)
    digest = hashlib.sha256()
    yaml_problems: list[RuleError] = []
    for path in files:
        name = str(path)
        text = _read_text(path, errors)
        if text is None:
            continue
        digest.update(name.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
        items.extend(_read_items(name, text, errors, yaml_problems))

    merged = _merge(items, errors)
    budget = ExpansionBudget()
    lists = _resolve_lists(merged["list"], errors)
    lists.budget = budget
    macros = _parse_macros(merged["macro"], errors)
    _check_macro_cycles(merged["macro"], macros, errors)

    correlations = []
    disabled = []
    compiler = ConditionCompiler(macros, lists, errors, budget, ReferenceGraph())
    for item in merged["correlation"].values():
        try:
            built = build_correlation(item, errors, compiler)
        except RecursionError:
            # Every known way to nest deeply has its own limit; this keeps an unknown one a
            # located rule error (the worker's reload only catches RuleLoadError).
            errors.append(RuleError(item.loc(item.kind), "too deeply nested to load"))
            continue
        if built is not None:
            if built.enabled:
                correlations.append(built)
            else:
                disabled.append(built.name)
    graph = compiler.graph
    if graph is not None:
        enabled = {
            name
            for name, item in merged["correlation"].items()
            if "enabled" not in item.keys or item.value("enabled") is not False
        }
        graph.check(set(merged["correlation"]), enabled, errors)
        correlations = [
            replace(corr, references=graph.references(corr.name)) for corr in correlations
        ]
    if errors:
        raise RuleLoadError(_report(errors, files, yaml_problems))
    return Ruleset(
        correlations=tuple(correlations),
        digest=digest.hexdigest()[:16],
        files=tuple(str(f) for f in files),
        disabled=tuple(disabled),
    )


def _read_text(path: Path, errors: list[RuleError]) -> str | None:
    name = str(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            errors.append(
                RuleError(Location(name, 1, 1), f"file larger than {MAX_YAML_BYTES} bytes")
            )
            return None
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        errors.append(
            RuleError(Location(name, 1, 1), f"cannot read rules file: not UTF-8 ({exc.reason} "
                      f"at byte {exc.start})")
        )  # fmt: skip
    except OSError as exc:
        errors.append(RuleError(Location(name, 1, 1), f"cannot read rules file: {exc}"))
    return None


def _report(
    errors: list[RuleError], files: list[Path], yaml_problems: list[RuleError]
) -> list[RuleError]:
    """Errors in file order, then line and column; at a place with a YAML problem (`1:30`,
    `yes`), only that problem: what the value was read as would only repeat it."""
    order = {str(path): index for index, path in enumerate(files)}
    problems = {id(e) for e in yaml_problems}
    places = {e.location for e in yaml_problems}
    kept = [e for e in errors if id(e) in problems or e.location not in places]
    kept.sort(
        key=lambda e: (
            order.get(e.location.path, len(order)),
            e.location.line,
            e.location.column,
        )
    )
    return kept


@dataclass
class ConditionCompiler:
    """Compiles correlation conditions against the loaded macros and lists, collecting errors."""

    macros: dict[str, Any]
    lists: Mapping[str, tuple[str, ...]]
    errors: list[RuleError]
    budget: ExpansionBudget | None = None
    #: Where each correlation's conditions reference other correlations (spec section 7, C3).
    graph: ReferenceGraph | None = None

    def __call__(self, item: RawItem, key: str, text: str, node: yaml.Node) -> Any:
        """The compiled condition, or None after recording the error at the condition's node."""
        try:
            parsed = parse_condition(text)
            compiled = compile_condition(parsed, self.macros, self.lists, self.budget)
            if self.graph is not None:
                names = condition_references(parsed, self.macros, self.lists)
                self.graph.add(item.name, location(item.path, node), names)
                derived_only = only_derived(parsed, self.macros)
                if names or derived_only:
                    compiled = replace(
                        compiled, references=frozenset(names), derived_only=derived_only
                    )
            return compiled
        except ConditionSyntaxError as exc:
            where = location(item.path, node)
            self.errors.append(RuleError(where, f"{key}: {_condition_message(exc, text)}"))
        return None


def _condition_message(exc: ConditionSyntaxError, text: str) -> str:
    if exc.offset < 0:
        return exc.message
    near = text[exc.offset : exc.offset + 20].split("\n", maxsplit=1)[0]
    return f"{exc.message} (at offset {exc.offset}: {near!r})"


def _read_items(
    path: str, text: str, errors: list[RuleError], yaml_problems: list[RuleError]
) -> list[RawItem]:
    root, found = compose_file(path, text)
    errors.extend(found)
    yaml_problems.extend(found)
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        errors.append(RuleError(location(path, root), "a rules file is a YAML sequence of items"))
        return []
    items = []
    for node in root.value:
        item = _read_item(path, node, errors)
        if item is not None:
            items.append(item)
    return items


def _read_item(path: str, node: yaml.Node, errors: list[RuleError]) -> RawItem | None:
    if not isinstance(node, yaml.MappingNode):
        errors.append(RuleError(location(path, node), "an item must be a mapping"))
        return None
    keys: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            errors.append(RuleError(location(path, key_node), "keys must be plain strings"))
            continue
        keys.setdefault(str(key_node.value), (key_node, value_node))
    kinds = [k for k in _KINDS if k in keys]
    if len(kinds) != 1:
        what = "none" if not kinds else ", ".join(kinds)
        errors.append(
            RuleError(
                location(path, node),
                f"an item must have exactly one of 'list', 'macro', 'correlation' (found {what})",
            )
        )
        return None
    kind = kinds[0]
    name_node = keys[kind][1]
    name = to_python(name_node)
    if not isinstance(name, str) or not name.strip():
        errors.append(
            RuleError(location(path, name_node), f"{kind} name must be a non-empty string")
        )
        return None
    return RawItem(kind, name, path, node, keys)


def _merge(items: Sequence[RawItem], errors: list[RuleError]) -> dict[str, dict[str, RawItem]]:
    """Apply duplicates and overrides in load order."""
    merged: dict[str, dict[str, RawItem]] = {kind: {} for kind in _KINDS}
    for item in items:
        table = merged[item.kind]
        if "override" not in item.keys:
            if item.name in table:
                first = table[item.name].loc()
                errors.append(
                    RuleError(
                        item.loc(item.kind),
                        f"duplicate {item.kind} name '{item.name}' (first defined at {first}); "
                        "use 'override' to change it",
                    )
                )
            else:
                table[item.name] = item
            continue
        _apply_override(item, table, errors)
    return merged


def _apply_override(item: RawItem, table: dict[str, RawItem], errors: list[RuleError]) -> None:
    spec = item.value("override")
    if not isinstance(spec, dict) or not spec:
        errors.append(
            RuleError(item.loc("override"), "override must be a mapping KEY: append|replace")
        )
        return
    base = table.get(item.name)
    if base is None:
        errors.append(
            RuleError(item.loc(item.kind), f"override of unknown {item.kind} '{item.name}'")
        )
        return
    merged = RawItem(base.kind, base.name, base.path, base.node, dict(base.keys))
    ok = True
    for key, mode in spec.items():
        if key in (item.kind, "override"):
            errors.append(RuleError(item.loc("override"), f"override: cannot override '{key}'"))
            ok = False
            continue
        if key not in item.keys:
            errors.append(
                RuleError(item.loc("override"), f"override: '{key}' is listed but not given")
            )
            ok = False
            continue
        allowed_append = OVERRIDE_APPEND_KEYS[item.kind]
        if mode == "replace":
            merged.keys[key] = item.keys[key]
        elif mode == "append" and key in allowed_append:
            merged.keys[key] = (item.keys[key][0], _append_node(base, item, key))
        else:
            choices = "append or replace" if key in allowed_append else "replace"
            errors.append(
                RuleError(
                    item.loc("override"), f"override: '{key}' must be {choices}, not {short(mode)}"
                )
            )
            ok = False
    for key in item.keys:
        if key not in (item.kind, "override") and key not in spec:
            errors.append(
                RuleError(item.key_loc(key), f"'{key}' given without an override entry for it")
            )
            ok = False
    if ok:
        table[item.name] = merged


def _append_node(base: RawItem, item: RawItem, key: str) -> yaml.Node:
    """A synthetic node holding base + appended value, located at the appended text."""
    old_node, new_node = base.keys[key][1], item.keys[key][1]
    if key == "items":
        if isinstance(old_node, yaml.SequenceNode) and isinstance(new_node, yaml.SequenceNode):
            return yaml.SequenceNode(
                old_node.tag,
                old_node.value + new_node.value,
                new_node.start_mark,
                new_node.end_mark,
            )
        return new_node  # wrong types are reported by the list check
    text = f"{to_python(old_node)} {to_python(new_node)}"
    return yaml.ScalarNode("tag:yaml.org,2002:str", text, new_node.start_mark, new_node.end_mark)


def _check_keys(item: RawItem, errors: list[RuleError]) -> None:
    allowed = _KIND_KEYS[item.kind]
    for key in item.keys:
        if key not in allowed:
            errors.append(RuleError(item.key_loc(key), f"unknown key '{key}' in {item.kind}"))


def _resolve_lists(items: dict[str, RawItem], errors: list[RuleError]) -> ResolvedLists:
    raw: dict[str, list[object]] = {}
    for name, item in items.items():
        _check_keys(item, errors)
        if "items" not in item.keys:
            errors.append(RuleError(item.loc(), f"list '{name}' has no 'items'"))
            continue
        values = item.value("items")
        if not isinstance(values, list) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in values
        ):
            errors.append(
                RuleError(item.loc("items"), f"list '{name}': items must be a list of strings")
            )
            continue
        raw[name] = values
    try:
        return resolve_lists(raw)
    except ListCycleError as exc:
        errors.append(RuleError(items[exc.cycle[0]].loc("items"), str(exc)))
    except ValueError as exc:  # pragma: no cover - item types are checked above
        errors.append(RuleError(next(iter(items.values())).loc(), str(exc)))
    return resolve_lists({})


def _parse_macros(items: dict[str, RawItem], errors: list[RuleError]) -> dict[str, Any]:
    macros: dict[str, Any] = {}
    for name, item in items.items():
        _check_keys(item, errors)
        if "condition" not in item.keys:
            errors.append(RuleError(item.loc(), f"macro '{name}' has no 'condition'"))
            continue
        text = item.value("condition")
        if not isinstance(text, str):
            errors.append(RuleError(item.loc("condition"), "condition must be a string"))
            continue
        try:
            macros[name] = parse_condition(text)
        except ConditionSyntaxError as exc:
            errors.append(
                RuleError(item.loc("condition"), f"macro '{name}': {_condition_message(exc, text)}")
            )
    return macros


def _check_macro_cycles(
    items: dict[str, RawItem], macros: dict[str, Any], errors: list[RuleError]
) -> None:
    """Unknown macros inside macros and cycles are reported at the macro that has them.

    Linear in the number of macros and references (strongly connected components), however
    the macros use each other: 40 macros that each use the previous one twice are 40 nodes and
    80 edges here, not 2**40 paths.
    """
    graph: dict[str, list[str]] = {}
    for name, node in macros.items():
        item = items[name]
        refs = []
        for ref in macro_refs(node):
            if ref.name not in macros and ref.name not in items:
                errors.append(
                    RuleError(item.loc("condition"), f"macro '{name}': unknown macro '{ref.name}'")
                )
            elif ref.name in macros:
                refs.append(ref.name)
        graph[name] = list(dict.fromkeys(refs))
    for component in strongly_connected(graph):
        members = set(component)
        cyclic = len(component) > 1 or component[0] in graph[component[0]]
        if not cyclic:
            continue
        for index, name in enumerate(sorted(members, key=list(macros).index)):
            if index < _MAX_CYCLE_PATHS:
                message = "macro cycle: " + _path(_cycle_through(name, graph, members))
            else:
                message = (
                    f"macro cycle: '{name}' is one of {len(members)} macros that use each other"
                )
            errors.append(RuleError(items[name].loc("condition"), message))


# Finding the path of a cycle is a search per macro; past this many in one component, the
# error says which component instead.
_MAX_CYCLE_PATHS = 20


def _cycle_through(start: str, graph: dict[str, list[str]], members: set[str]) -> list[str]:
    """The shortest cycle from `start` back to it, within its component (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in graph[node]:
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start, start]  # pragma: no cover - a member of a cyclic component has a cycle


def _path(names: list[str]) -> str:
    """`a -> b -> a`; a long cycle keeps its ends."""
    if len(names) > 8:
        names = [*names[:3], f"... ({len(names) - 6} more)", *names[-3:]]
    return " -> ".join(names)
