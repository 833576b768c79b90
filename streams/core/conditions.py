"""Conditions in Falco's filter syntax (spec section 3): parse once, compile into closures.

Compilation expands macros and lists and turns every comparison into a small closure, so an event
is never parsed or interpreted by walking a tree. Regexes run on RE2 (linear time): event content is
attacker-controlled and must not be able to stall the engine.

Semantics the spec leaves open, decided here:
- Numbers: a string is numeric when it reads as a decimal number (`443`, `-1`, `1.5`, `1e3`);
  integers compare exactly (nanosecond times do not go through float). Booleans are not numbers
  and read as `true`/`false` when compared as strings.
- A list value (`tags`, or any other field whose value is a JSON list): `contains X` means an
  element equals X; `icontains X` an element equals X ignoring case; `!=` means no element equals;
  `in` means non-empty and every element in the set; every other operator (including `=`) is true
  when some element satisfies it.
- `exists` is true for any non-null value, empty strings and empty lists included.
- An event whose `priority` is not a priority name fails every severity comparison (`!=` too);
  the string operators (`contains`, `glob`, ...) still see its text.
- `pmatch`: trailing slashes in a pattern are ignored; `/` covers every absolute path.
- An error inside an expanded macro is reported at the reference to that macro in the compiled
  text ("in macro 'm': ..."); a macro cycle has no single place (offset -1).
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.core._condition_parser import (
    And,
    Compare,
    Exists,
    ListCompare,
    ListItem,
    MacroRef,
    Node,
    Not,
    Or,
    as_number,
    as_text,
    parse,
    path_test,
    regex_test,
)
from streams.core.events import TOP_LEVEL_FIELDS, Event
from streams.core.prefilter import Specialized, specialize
from streams.core.priority import PRIORITY_NAMES, priority_rank
from streams.errors import ConditionSyntaxError

__all__ = [
    "And",
    "Compare",
    "CompiledCondition",
    "Exists",
    "ListCompare",
    "ListItem",
    "MacroRef",
    "Node",
    "Not",
    "Or",
    "compile_condition",
    "macro_refs",
    "parse_condition",
    "resolve_lists",
]

Predicate = Callable[[Event], bool]
_Getter = Callable[[Event], Any]
_Test = Callable[[Any], bool]

_Relation = Callable[[Any, Any], bool]
_ORDERING: dict[str, _Relation] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_EQUALITY: dict[str, _Relation] = {"=": operator.eq, "==": operator.eq, "!=": operator.ne}


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """A condition ready to run.

    `rules` is an index: the only `rule` values the predicate can accept (None: any). `fields` are
    the field names the condition reads, after macro expansion. `specialized`: the same condition
    per rule name, guarded (streams/core/prefilter.py); None when it was too large to specialise.
    """

    predicate: Predicate
    rules: frozenset[str] | None
    fields: frozenset[str]
    specialized: Specialized | None = None


def parse_condition(text: str) -> Node:
    """Parse a condition (syntax only); raises ConditionSyntaxError with the offset."""
    return parse(text)


def macro_refs(node: Node) -> list[MacroRef]:
    """Macro references in the order they appear in the text (not expanded)."""
    refs: list[MacroRef] = []
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, MacroRef):
            refs.append(current)
        elif isinstance(current, Not):
            stack.append(current.operand)
        elif isinstance(current, And | Or):
            stack.extend(reversed(current.operands))
    return refs


def resolve_lists(raw: Mapping[str, Sequence[object]]) -> dict[str, tuple[str, ...]]:
    """Expand list names inside list items, recursively; numbers become strings.

    Items keep their first-seen order and duplicates are dropped. A cycle raises ValueError.
    """
    resolved: dict[str, tuple[str, ...]] = {}

    def resolve(name: str, path: list[str]) -> tuple[str, ...]:
        done = resolved.get(name)
        if done is not None:
            return done
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise ValueError(f"list cycle: {' -> '.join(cycle)}")
        path.append(name)
        items: dict[str, None] = {}
        for item in raw[name]:
            if isinstance(item, str) and item in raw:
                items.update(dict.fromkeys(resolve(item, path)))
            elif isinstance(item, str | int | float):
                items[as_text(item)] = None
            else:
                raise ValueError(f"list '{name}': item {item!r} is not a string or a number")
        path.pop()
        resolved[name] = tuple(items)
        return resolved[name]

    for name in raw:
        resolve(name, [])
    return resolved


def compile_condition(
    node: Node, macros: Mapping[str, Node], lists: Mapping[str, tuple[str, ...]]
) -> CompiledCondition:
    """Compile a parsed condition, expanding macros (parsed nodes) and resolved lists."""
    compiler = _Compiler(macros, lists)
    predicate, rules = compiler.compile(node)
    specialized = specialize(
        node, predicate, macros, lists, lambda part: _Compiler(macros, lists).compile(part)[0]
    )
    return CompiledCondition(predicate, rules, frozenset(compiler.fields), specialized)


def _getter(field: str) -> _Getter:
    if field in TOP_LEVEL_FIELDS:
        return lambda event: event.raw.get(field)
    if field.endswith("]"):
        return lambda event: event.get(field)  # handles falcosidekick's `name_N` spelling
    return lambda event: event.fields.get(field)


def _false(_event: Event) -> bool:
    return False


def _any_item(on_str: _Test, on_other: _Test) -> _Test:
    def any_item(items: list[Any]) -> bool:
        for item in items:
            if item.__class__ is str:
                if on_str(item):
                    return True
            elif item is not None and on_other(item):
                return True
        return False

    return any_item


def _all_items(on_str: _Test, on_other: _Test) -> _Test:
    """`in` on a list: at least one element, and every element (null ones fail) passes."""

    def all_items(items: list[Any]) -> bool:
        for item in items:
            if item.__class__ is str:
                if not on_str(item):
                    return False
            elif item is None or not on_other(item):
                return False
        return bool(items)

    return all_items


def _field_predicate(field: str, on_str: _Test, on_other: _Test, on_list: _Test) -> Predicate:
    """Dispatch on the value's type; a missing or null value fails every comparison."""
    if field in TOP_LEVEL_FIELDS or field.endswith("]"):
        get = _getter(field)

        def predicate(event: Event) -> bool:
            value = get(event)
            if value.__class__ is str:
                return on_str(value)
            if value is None:
                return False
            if value.__class__ is list:
                return on_list(value)
            return on_other(value)

        return predicate

    # Most fields are plain output_fields keys: read the dict directly, one call less per event.
    def output_field_predicate(event: Event) -> bool:
        value = event.fields.get(field)
        if value.__class__ is str:
            return on_str(value)
        if value is None:
            return False
        if value.__class__ is list:
            return on_list(value)
        return on_other(value)

    return output_field_predicate


def _on_text(test: _Test) -> _Test:
    return lambda value: test(as_text(value))


def _equality(literal: str) -> tuple[_Test, _Test]:
    """Value equality with a literal: as numbers when both are numbers, else as strings."""
    number = as_number(literal)
    if number is None:
        return literal.__eq__, lambda value: as_text(value) == literal

    def equal(value: Any) -> bool:
        n = as_number(value)
        return n is not None and n == number

    return equal, equal


def _membership(items: Sequence[str]) -> tuple[_Test, _Test]:
    """Equality with any of the items, as `_equality` defines it, through set lookups."""
    texts = frozenset(item for item in items if as_number(item) is None)
    numbers = frozenset(n for item in items if (n := as_number(item)) is not None)
    if not numbers:
        return texts.__contains__, lambda value: as_text(value) in texts

    def member(value: Any) -> bool:
        n = as_number(value)
        # A numeric value never equals a non-numeric text, and vice versa.
        return n in numbers if n is not None else as_text(value) in texts

    return member, member


class _Compiler:
    def __init__(self, macros: Mapping[str, Node], lists: Mapping[str, tuple[str, ...]]) -> None:
        self.macros = macros
        self.lists = lists
        self.fields: set[str] = set()
        self.expanding: list[str] = []

    def compile(self, node: Node) -> tuple[Predicate, frozenset[str] | None]:
        if isinstance(node, Or):
            parts = [self.compile(operand) for operand in node.operands]
            union: frozenset[str] | None = frozenset()
            for _, rules in parts:
                union = None if union is None or rules is None else union | rules
            return _any_of([p for p, _ in parts]), union
        if isinstance(node, And):
            parts = [self.compile(operand) for operand in node.operands]
            constrained = [rules for _, rules in parts if rules is not None]
            both = frozenset.intersection(*constrained) if constrained else None
            return _all_of([p for p, _ in parts]), both
        if isinstance(node, Not):
            inner, _ = self.compile(node.operand)
            return (lambda event: not inner(event)), None
        if isinstance(node, MacroRef):
            return self.expand(node)
        self.fields.add(node.field)
        if isinstance(node, Exists):
            get = _getter(node.field)
            return (lambda event: get(event) is not None), None
        if isinstance(node, Compare):
            return self.compare(node)
        return self.list_compare(node)

    def expand(self, ref: MacroRef) -> tuple[Predicate, frozenset[str] | None]:
        body = self.macros.get(ref.name)
        if body is None:
            hint = (
                f" (a field needs an operator, e.g. '{ref.name} exists')" if "." in ref.name else ""
            )
            raise ConditionSyntaxError(f"unknown macro '{ref.name}'{hint}", ref.offset)
        if ref.name in self.expanding:
            cycle = [*self.expanding[self.expanding.index(ref.name) :], ref.name]
            raise ConditionSyntaxError(f"macro cycle: {' -> '.join(cycle)}", -1)
        self.expanding.append(ref.name)
        try:
            return self.compile(body)
        except ConditionSyntaxError as exc:
            if exc.offset == -1:
                raise
            # The inner offset points into the macro's own text; report the reference instead.
            raise ConditionSyntaxError(
                f"in macro '{ref.name}': {exc.message}", ref.offset
            ) from None
        finally:
            self.expanding.pop()

    def compare(self, node: Compare) -> tuple[Predicate, frozenset[str] | None]:
        field, op, literal = node.field, node.op, node.value
        if field == "priority" and (op in _EQUALITY or op in _ORDERING):
            rank = _priority(literal, node.value_offset)
            test = _EQUALITY.get(op) or _ORDERING[op]

            def by_rank(event: Event) -> bool:
                own = event.priority_rank
                return own is not None and test(own, rank)

            return by_rank, None
        literal_is_text = as_number(literal) is None
        if field == "rule" and literal_is_text and op in ("=", "=="):
            return (lambda event: event.rule == literal), frozenset({literal})
        if field == "rule" and literal_is_text and op == "!=":
            return (lambda event: event.rule != literal), None
        if op in ("=", "==", "!="):
            on_str, on_other = _equality(literal)
            any_equal = _any_item(on_str, on_other)
            if op != "!=":
                index = _rule_index(field, [literal])
                return _field_predicate(field, on_str, on_other, any_equal), index
            return _field_predicate(
                field,
                lambda value: not on_str(value),
                lambda value: not on_other(value),
                lambda items: not any_equal(items),
            ), None
        if op in _ORDERING:
            number = as_number(literal)
            if number is None:
                return _false, None  # ordering on non-numbers is false (the spec)
            order = _ORDERING[op]

            def ordered(value: Any) -> bool:
                n = as_number(value)
                return n is not None and order(n, number)

            return _field_predicate(field, ordered, ordered, _any_item(ordered, ordered)), None
        on_str = self.string_test(node)
        on_other = _on_text(on_str)
        on_list = _any_item(on_str, on_other)
        if op == "contains":
            on_list = _any_item(*_equality(literal))
        elif op == "icontains":
            folded = literal.lower()
            on_list = _any_item(
                lambda value: value.lower() == folded,
                lambda value: as_text(value).lower() == folded,
            )
        return _field_predicate(field, on_str, on_other, on_list), None

    def string_test(self, node: Compare) -> _Test:
        literal, op = node.value, node.op
        if op == "contains":
            return lambda value: literal in value
        if op == "icontains":
            folded = literal.lower()
            return lambda value: folded in value.lower()
        if op == "startswith":
            return lambda value: value.startswith(literal)
        if op == "endswith":
            return lambda value: value.endswith(literal)
        if op == "glob":
            # fnmatch's translation uses atomic groups, so it cannot backtrack catastrophically.
            match = re.compile(fnmatch.translate(literal)).match
            return lambda value: match(value) is not None
        if op == "regex":
            return regex_test(literal, node.value_offset)
        raise ConditionSyntaxError(f"unknown operator '{op}'", node.offset)

    def list_compare(self, node: ListCompare) -> tuple[Predicate, frozenset[str] | None]:
        field, op = node.field, node.op
        items: list[str] = []
        offsets: list[int] = []
        for item in node.items:
            expansion = None if item.quoted else self.lists.get(item.value)
            values = (item.value,) if expansion is None else expansion
            items.extend(values)
            offsets.extend([item.offset] * len(values))
        if op == "pmatch":
            test = path_test(items)
            on_other = _on_text(test)
            return _field_predicate(field, test, on_other, _any_item(test, on_other)), None
        if field == "priority":
            ranks = frozenset(_priority(item, at) for item, at in zip(items, offsets, strict=True))
            return (lambda event: event.priority_rank in ranks), None
        index = _rule_index(field, items)
        if field == "rule" and index is not None:
            return (lambda event: event.rule in index), index
        on_str, on_other = _membership(items)
        on_list = _all_items(on_str, on_other) if op == "in" else _any_item(on_str, on_other)
        return _field_predicate(field, on_str, on_other, on_list), index


def _rule_index(field: str, literals: Sequence[str]) -> frozenset[str] | None:
    """The rule names a `rule` equality can match; None when numbers make it inexact."""
    if field != "rule" or any(as_number(literal) is not None for literal in literals):
        return None
    return frozenset(literals)


def _priority(name: str, offset: int) -> int:
    rank = priority_rank(name)
    if rank is None:
        raise ConditionSyntaxError(
            f"unknown priority '{name}' (expected one of {', '.join(reversed(PRIORITY_NAMES))})",
            offset,
        )
    return rank


def _all_of(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 2:
        first, second = predicates
        return lambda event: first(event) and second(event)
    parts = tuple(predicates)

    def all_of(event: Event) -> bool:
        for part in parts:  # noqa: SIM110 - a loop is faster than all() over a generator
            if not part(event):
                return False
        return True

    return all_of


def _any_of(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 2:
        first, second = predicates
        return lambda event: first(event) or second(event)
    parts = tuple(predicates)

    def any_of(event: Event) -> bool:
        for part in parts:  # noqa: SIM110 - a loop is faster than any() over a generator
            if part(event):
                return True
        return False

    return any_of
