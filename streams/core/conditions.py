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

Limits (docs/rules.md, "Limits"): rule files may be generated or hostile, and a macro used twice
is compiled twice, so expansion is bounded — per condition (`MAX_CONDITION_*`, `MAX_MACRO_DEPTH`,
`MAX_EXPANDED_DEPTH`) and across a ruleset (`ExpansionBudget`). Every bound is checked while
compiling, so a condition that would expand to 2**40 terms stops after the first 10,000.
"""

from __future__ import annotations

import fnmatch
import operator
import re
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.core._condition_parser import (
    MAX_CONDITION_CHARS,
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
from streams.core.events import DERIVED_FIELDS, TOP_LEVEL_FIELDS, Event
from streams.core.prefilter import Specialized, specialize
from streams.core.priority import PRIORITY_NAMES, priority_rank
from streams.errors import ConditionSyntaxError

__all__ = [
    "MAX_CONDITION_CHARS",
    "MAX_CONDITION_ITEMS",
    "MAX_CONDITION_TERMS",
    "MAX_EXPANDED_DEPTH",
    "MAX_MACRO_DEPTH",
    "MAX_RULESET_ITEMS",
    "MAX_RULESET_TERMS",
    "And",
    "Compare",
    "CompiledCondition",
    "Exists",
    "ExpansionBudget",
    "ListCompare",
    "ListCycleError",
    "ListItem",
    "MacroRef",
    "Node",
    "Not",
    "Or",
    "ResolvedLists",
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

#: Comparisons (`exists`, `FIELD OP VALUE`, `FIELD in (...)`) in one condition after its macros
#: are expanded; a macro used twice counts twice.
MAX_CONDITION_TERMS = 10_000
#: Macros inside macros inside macros...
MAX_MACRO_DEPTH = 64
#: Levels of one condition after its macros are expanded (and/or, not, parentheses).
MAX_EXPANDED_DEPTH = 256
#: Items the list operands of one condition expand to, list names expanded.
MAX_CONDITION_ITEMS = 100_000
#: Across every condition of one load: comparisons compiled, and list items expanded (resolving
#: a list counts every item it walks, duplicates included; using it counts its items again).
MAX_RULESET_TERMS = 500_000
MAX_RULESET_ITEMS = 2_000_000


@dataclass
class ExpansionBudget:
    """What the conditions of one load have expanded to so far, against the ruleset limits."""

    max_terms: int = MAX_RULESET_TERMS
    max_items: int = MAX_RULESET_ITEMS
    terms: int = 0
    items: int = 0

    def charge_terms(self, count: int, offset: int) -> None:
        self.terms += count
        if self.terms > self.max_terms:
            raise ConditionSyntaxError(
                f"the rules expand to more than {self.max_terms} comparisons in all "
                "(ruleset limit; macros are expanded where they are used)",
                offset,
            )

    def charge_items(self, count: int, offset: int) -> None:
        self.items += count
        if self.items > self.max_items:
            raise ConditionSyntaxError(
                f"the rules expand to more than {self.max_items} list items in all "
                "(ruleset limit; lists are expanded where they are used)",
                offset,
            )


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
    #: The correlations this condition references (`correlation = NAME`, RULES-SPEC C3).
    references: frozenset[str] = frozenset()
    #: True when only a derived event can satisfy it (streams/core/_references.py).
    derived_only: bool = False


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


class ListCycleError(ValueError):
    """Lists that contain each other; `cycle` names them, starting and ending with one."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__(f"list cycle: {' -> '.join(cycle)}")
        self.cycle = cycle


class ResolvedLists(Mapping[str, tuple[str, ...]]):
    """Lists with the list names inside them expanded, computed when first looked up.

    Lazy on purpose: a chain of n lists costs O(n) to check and O(size) per list used, where
    expanding every list up front costs O(n**2). Items keep their first-seen order and
    duplicates are dropped; a list met again while expanding adds nothing new, so it is walked
    once per lookup.
    """

    def __init__(self, raw: Mapping[str, Sequence[object]]) -> None:
        self._raw = raw
        self._done: dict[str, tuple[str, ...]] = {}
        self.budget: ExpansionBudget | None = None
        for name, items in raw.items():
            for item in items:
                if not isinstance(item, str | int | float):
                    raise ValueError(
                        f"list '{name}': item {_short(item)} is not a string or a number"
                    )
        _check_list_cycles(raw)

    def __getitem__(self, name: str) -> tuple[str, ...]:
        done = self._done.get(name)
        if done is None:
            done = self._done[name] = self._expand(name)
        return done

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def _expand(self, name: str) -> tuple[str, ...]:
        raw = self._raw
        if name not in raw:
            raise KeyError(name)
        items: dict[str, None] = {}
        visited = {name}
        walked = 0
        # Depth first, in item order: an explicit stack of iterators instead of recursion.
        stack = [iter(raw[name])]
        while stack:
            item = next(stack[-1], _END)
            if item is _END:
                stack.pop()
                continue
            walked += 1
            if isinstance(item, str) and item in raw:
                if item not in visited:
                    visited.add(item)
                    stack.append(iter(raw[item]))
            else:
                items[as_text(item)] = None
        if self.budget is not None:
            self.budget.charge_items(walked, -1)
        return tuple(items)


_END = object()


def _check_list_cycles(raw: Mapping[str, Sequence[object]]) -> None:
    """ListCycleError for the first cycle found (lists in order); linear, no recursion."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in raw:
        if state.get(start):
            continue
        path = [start]
        state[start] = 1
        stack = [iter(raw[start])]
        while stack:
            item = next(stack[-1], _END)
            if item is _END:
                stack.pop()
                state[path.pop()] = 2
                continue
            if not isinstance(item, str) or item not in raw:
                continue
            seen = state.get(item)
            if seen == 1:
                raise ListCycleError([*path[path.index(item) :], item])
            if seen is None:
                state[item] = 1
                path.append(item)
                stack.append(iter(raw[item]))


def resolve_lists(raw: Mapping[str, Sequence[object]]) -> ResolvedLists:
    """Lists with list names inside them expanded (recursively, when looked up); numbers
    become strings. Items that are not scalars raise ValueError, cycles ListCycleError."""
    return ResolvedLists(raw)


def compile_condition(
    node: Node,
    macros: Mapping[str, Node],
    lists: Mapping[str, tuple[str, ...]],
    budget: ExpansionBudget | None = None,
) -> CompiledCondition:
    """Compile a parsed condition, expanding macros (parsed nodes) and resolved lists.

    ConditionSyntaxError when it refers to something unknown or exceeds a limit; `budget`
    carries the ruleset-wide limits across the conditions of one load.
    """
    compiler = _Compiler(macros, lists, budget)
    predicate, rules = compiler.compile(node)
    specialized = specialize(
        node, predicate, macros, lists, lambda part: _Compiler(macros, lists, None).compile(part)[0]
    )
    return CompiledCondition(predicate, rules, frozenset(compiler.fields), specialized)


def _getter(field: str) -> _Getter:
    if field in TOP_LEVEL_FIELDS:
        return lambda event: event.raw.get(field)
    if field.endswith("]") or field in DERIVED_FIELDS:
        # falcosidekick's `name_N` spelling; the fields only derived events carry
        return lambda event: event.get(field)
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
    if field in TOP_LEVEL_FIELDS or field in DERIVED_FIELDS or field.endswith("]"):
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
    def __init__(
        self,
        macros: Mapping[str, Node],
        lists: Mapping[str, tuple[str, ...]],
        budget: ExpansionBudget | None,
    ) -> None:
        self.macros = macros
        self.lists = lists
        self.budget = budget
        self.fields: set[str] = set()
        self.expanding: list[str] = []
        self.depth = 0
        self.terms = 0
        self.items = 0

    def compile(self, node: Node) -> tuple[Predicate, frozenset[str] | None]:
        self.depth += 1
        try:
            if self.depth > MAX_EXPANDED_DEPTH:
                raise ConditionSyntaxError(
                    f"condition nested more than {MAX_EXPANDED_DEPTH} levels deep once its "
                    "macros are expanded",
                    -1,
                )
            return self._compile(node)
        finally:
            self.depth -= 1

    def _compile(self, node: Node) -> tuple[Predicate, frozenset[str] | None]:
        if isinstance(node, Or):
            parts = [self.compile(operand) for operand in node.operands]
            # One set for the union: `union | rules` per operand is quadratic in the operands.
            union: set[str] = set()
            for _, rules in parts:
                if rules is None:
                    return _any_of([p for p, _ in parts]), None
                union.update(rules)
            return _any_of([p for p, _ in parts]), frozenset(union)
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
        self.terms += 1
        if self.terms > MAX_CONDITION_TERMS:
            raise ConditionSyntaxError(
                f"condition has more than {MAX_CONDITION_TERMS} comparisons once its macros are "
                "expanded (a macro used twice counts twice)",
                -1,
            )
        if self.budget is not None:
            self.budget.charge_terms(1, -1)
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
            raise ConditionSyntaxError(f"macro cycle: {_path(cycle)}", -1)
        if len(self.expanding) >= MAX_MACRO_DEPTH:
            raise _MacroError(
                f"macros nested more than {MAX_MACRO_DEPTH} deep", ref.offset, [ref.name]
            )
        self.expanding.append(ref.name)
        try:
            return self.compile(body)
        except _MacroError as exc:
            # Raised inside a macro: its offset is in some macro's own text; keep the path of
            # macros and report at this reference, which is in the text one level up.
            raise _MacroError(exc.inner, ref.offset, [ref.name, *exc.macros]) from None
        except ConditionSyntaxError as exc:
            if exc.offset == -1:
                raise
            raise _MacroError(exc.message, ref.offset, [ref.name]) from None
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
            expansion = None
            if not item.quoted and item.value in self.lists:
                try:
                    expansion = self.lists[item.value]
                except ConditionSyntaxError as exc:
                    raise ConditionSyntaxError(exc.message, item.offset) from None
            values = (item.value,) if expansion is None else expansion
            self.items += len(values)
            if self.items > MAX_CONDITION_ITEMS:
                raise ConditionSyntaxError(
                    f"condition's lists expand to more than {MAX_CONDITION_ITEMS} items",
                    item.offset,
                )
            if self.budget is not None:
                self.budget.charge_items(len(values), item.offset)
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


class _MacroError(ConditionSyntaxError):
    """An error inside expanded macros: `macros` is the path from the outermost reference."""

    def __init__(self, inner: str, offset: int, macros: list[str]) -> None:
        super().__init__(f"in macro {_path(macros, quote=True)}: {inner}", offset)
        self.inner = inner
        self.macros = macros


def _path(names: list[str], *, quote: bool = False) -> str:
    """`a -> b -> c`; a long path keeps its ends: `a -> b -> ... (60 more) -> y -> z`."""
    shown = [f"'{n}'" if quote else n for n in names]
    if len(shown) > 6:
        shown = [*shown[:2], f"... ({len(shown) - 4} more)", *shown[-2:]]
    return " -> ".join(shown)


def _short(value: object) -> str:
    text = reprlib.repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


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
