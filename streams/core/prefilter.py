"""Prefilters: exact shortcuts that keep the engine from running conditions that cannot match.

Conditions are compiled once into closures (conditions.py) and indexed by the Falco rule names
they can match. A condition without such a restriction used to run on every event, and an indexed
one re-tested the rule name the index had already checked. From a condition's syntax tree,
`specialize` derives cheaper closures with the same result:

1. By Falco rule name. An event's `rule` is known before any condition runs, so each comparison
   the compiler turns into an exact string test of it (`rule = X`, `rule != X`, `rule in (...)`,
   `rule intersects (...)`, names that are not numbers) has a known value for that event. It is
   replaced by that value and the condition simplified: `rule in (falco_sensitive_read_rules)
   and not allowed` becomes `not allowed` for those rules and `false` for every other one, so the
   step leaves the index for the rules it cannot match and does not test the name again for the
   ones it can. Names that leave the same residual share one closure (`other` serves every name
   the condition does not mention).
2. Literal guards. A residual may be true only when some field holds some literal:
   `(proc.cmdline contains "stratum+" or proc.cmdline contains "stratum2+") and not
   allowed_workloads` needs `proc.cmdline` to contain one of two strings. The guard tests that
   first, reading each field once and testing its literals together (a set for `=`/`in`, one
   `startswith`/`endswith` call with a tuple, one RE2 alternation for many `contains`).

Why the results cannot change: a residual is the condition with subterms replaced by the value
they have for every event of that rule (the compiled closures read the event and nothing else,
and change nothing). A guard is implied by the condition: each atom is implied by a comparison
(a missing or null field fails every comparison, spec section 3), an `or` implies one of its
operands' atoms, an `and` implies every operand's (one is taken), `not` implies nothing. A
non-string value (a number, a list) passes the guard and the comparison itself decides.
tests/core/test_prefilter.py checks both properties with hypothesis.

Bounds: a condition whose expansion has more than `MAX_SPECIALIZED_TERMS` comparisons, or whose
rule names fall into more than `MAX_RESIDUALS` residuals, is not specialised (the plain closure
and its rule index serve it), so load time stays linear in the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import re2

from streams.core._condition_parser import (
    And,
    Compare,
    Exists,
    ListCompare,
    MacroRef,
    Node,
    Not,
    Or,
    as_number,
    path_test,
)
from streams.core.events import DERIVED_FIELDS, TOP_LEVEL_FIELDS, Event
from streams.core.rules import CorrelationType
from streams.errors import ConditionSyntaxError

if TYPE_CHECKING:
    from streams.core.rules import Correlation

__all__ = [
    "MAX_RESIDUALS",
    "MAX_SPECIALIZED_TERMS",
    "KeyReader",
    "Residual",
    "Specialized",
    "StepTarget",
    "key_reader",
    "specialize",
    "step_index",
]

Predicate = Callable[[Event], bool]
#: A condition as it stands for the events of some rule names: a closure, or a known result.
Residual = Predicate | bool
KeyReader = Callable[[Event], "tuple[Any, ...] | None"]
#: What the engine runs for one step: (correlation index, step index, test or None when the
#: step matches every event that meets it, the step's group key reader, whether the correlation
#: is an `all`, whose event belongs to the first step it matches only).
StepTarget = tuple[int, int, Predicate | None, KeyReader, bool]

MAX_SPECIALIZED_TERMS = 2_000
MAX_RESIDUALS = 32
# From this many `contains` literals on one field, one RE2 pass beats a loop of `in` tests.
_RE2_MIN_LITERALS = 6
_STRING_OPS = frozenset({"contains", "icontains", "startswith", "endswith"})
_Atom = tuple[str, str, Any]  # (field, kind, operand)


@dataclass(frozen=True, slots=True)
class Specialized:
    """A condition per Falco rule name: `by_rule` for the names it mentions, else `other`."""

    by_rule: Mapping[str, Residual]
    other: Residual

    def for_rule(self, rule: str) -> Residual:
        return self.by_rule.get(rule, self.other)


def specialize(
    node: Node,
    predicate: Predicate,
    macros: Mapping[str, Node],
    lists: Mapping[str, tuple[str, ...]],
    compile_node: Callable[[Node], Predicate],
) -> Specialized | None:
    """The condition specialised by rule name and guarded; None when it is too large to.

    `node` must have compiled to `predicate` already (with the same macros and lists);
    `compile_node` compiles a residual (macros expanded) the same way.
    """
    if _terms(node, macros, {}) > MAX_SPECIALIZED_TERMS:
        return None
    expanded = _expand(node, macros, {})
    leaves: dict[int, tuple[frozenset[str], bool]] = {}
    _rule_leaves(expanded, lists, leaves, set())
    # Rule names that make the same leaves true leave the same residual.
    holds: dict[str, list[int]] = {}
    for leaf_id, (names, _) in leaves.items():
        for name in names:
            holds.setdefault(name, []).append(leaf_id)
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, leaf_ids in holds.items():
        groups.setdefault(tuple(leaf_ids), []).append(name)
    if len(groups) >= MAX_RESIDUALS:
        return None
    compiled: dict[Node, Predicate] = {expanded: predicate}

    def residual(members: tuple[int, ...]) -> Residual:
        """The condition for names inside exactly the `members` leaves, compiled and guarded."""
        inside = frozenset(members)
        truth = {leaf_id: (leaf_id in inside) is holds for leaf_id, (_, holds) in leaves.items()}
        folded = _fold(expanded, truth, {})
        if isinstance(folded, bool):
            return folded
        compiled_folded = compiled.get(folded)
        if compiled_folded is None:
            compiled_folded = compiled[folded] = compile_node(folded)
        return _guard(folded, compiled_folded, lists)

    try:
        residuals = {members: residual(members) for members in [*groups, ()]}
    except ConditionSyntaxError:  # not expected: a residual is part of what compiled
        return None
    by_rule = {name: residuals[members] for members, names in groups.items() for name in names}
    return Specialized(by_rule, residuals[()])


def step_index(
    correlations: Sequence[Correlation], *, derived: bool = False
) -> tuple[dict[str, list[StepTarget]], list[StepTarget]]:
    """The engine's index: steps to test per Falco rule name, and for any other name.

    Targets stay in (correlation, step) order; a step whose condition is false for a name is
    left out of that name's list. Steps with the same `by` share one key reader. Without
    `derived` (the index of Falco events), steps only a derived event can satisfy are left out.
    """
    readers: dict[tuple[str, ...], KeyReader] = {}  # one per `by`: the engine reuses its key
    steps = [
        (
            ci,
            si,
            step.condition,
            readers.setdefault(step.by, key_reader(step.by)),
            corr.type is CorrelationType.ALL,
        )
        for ci, corr in enumerate(correlations)
        for si, step in enumerate(corr.steps)
        if derived or not step.condition.derived_only
    ]
    names: set[str] = set()
    for _, _, condition, _, _ in steps:
        special = condition.specialized
        names.update(special.by_rule if special is not None else condition.rules or ())

    def targets(rule: str | None) -> list[StepTarget]:
        found: list[StepTarget] = []
        for ci, si, condition, key_of, first_only in steps:
            special = condition.specialized
            test: Residual
            if special is not None:
                test = special.other if rule is None else special.for_rule(rule)
            elif condition.rules is None or (rule is not None and rule in condition.rules):
                test = condition.predicate
            else:
                test = False
            if test is not False:
                found.append((ci, si, None if test is True else test, key_of, first_only))
        return found

    return {name: targets(name) for name in sorted(names)}, targets(None)


def key_reader(fields: tuple[str, ...]) -> KeyReader:
    """The group key of an event on `fields` (the values), or None when one of them is null,
    empty, an object or a list: the event then takes no part in the step (spec section 4)."""
    plan = tuple((_read_kind(name), name) for name in fields)
    if len(plan) == 1 and plan[0][0] == _OUTPUT_FIELD:
        name = fields[0]

        def output_field_key(event: Event) -> tuple[Any, ...] | None:
            value = event.fields.get(name)
            if value.__class__ is str:
                return (value,) if value else None
            if value is None or value == "" or isinstance(value, dict | list):
                return None
            return (value,)

        return output_field_key

    def key(event: Event) -> tuple[Any, ...] | None:
        raw, output_fields = event.raw, event.fields
        values = []
        for kind, name in plan:  # the reads of `_reader`, inline
            if kind == _OUTPUT_FIELD:
                value = output_fields.get(name)
            elif kind == _TOP_LEVEL:
                value = raw.get(name)
            else:
                value = event.get(name)
            if value.__class__ is str:
                if not value:
                    return None
            elif value is None or value == "" or isinstance(value, dict | list):
                return None
            values.append(value)
        return tuple(values)

    return key


# -- the syntax tree ---------------------------------------------------------------------------


def _terms(node: Node, macros: Mapping[str, Node], sizes: dict[str, int]) -> int:
    """Comparisons in the expanded condition (a macro counts at every use), memoised."""
    if isinstance(node, And | Or):
        return sum(_terms(operand, macros, sizes) for operand in node.operands)
    if isinstance(node, Not):
        return _terms(node.operand, macros, sizes)
    if isinstance(node, MacroRef):
        size = sizes.get(node.name)
        if size is None:
            size = sizes[node.name] = _terms(macros[node.name], macros, sizes)
        return size
    return 1


def _expand(node: Node, macros: Mapping[str, Node], done: dict[str, Node]) -> Node:
    """The condition with its macros expanded in place (each macro's expansion built once)."""
    if isinstance(node, And | Or):
        return type(node)(tuple(_expand(operand, macros, done) for operand in node.operands))
    if isinstance(node, Not):
        return Not(_expand(node.operand, macros, done))
    if isinstance(node, MacroRef):
        body = done.get(node.name)
        if body is None:
            body = done[node.name] = _expand(macros[node.name], macros, done)
        return body
    return node


def _list_items(node: ListCompare, lists: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The items of a list operand with list names expanded, as the compiler reads them."""
    items: list[str] = []
    for item in node.items:
        expansion = None if item.quoted else lists.get(item.value)
        items.extend((item.value,) if expansion is None else expansion)
    return items


def _rule_leaves(
    node: Node,
    lists: Mapping[str, tuple[str, ...]],
    leaves: dict[int, tuple[frozenset[str], bool]],
    seen: set[int],
) -> None:
    """Exact tests of `rule`: id -> (names, whether the test is true for them, not for others).

    Exactly the comparisons the compiler turns into `event.rule == X` / `!= X` / `in {...}`.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, And | Or):
        for operand in node.operands:
            _rule_leaves(operand, lists, leaves, seen)
    elif isinstance(node, Not):
        _rule_leaves(node.operand, lists, leaves, seen)
    elif isinstance(node, Compare):
        if node.field == "rule" and as_number(node.value) is None:
            if node.op in ("=", "=="):
                leaves[id(node)] = (frozenset({node.value}), True)
            elif node.op == "!=":
                leaves[id(node)] = (frozenset({node.value}), False)
    elif isinstance(node, ListCompare) and node.field == "rule" and node.op != "pmatch":
        items = _list_items(node, lists)
        if all(as_number(item) is None for item in items):
            leaves[id(node)] = (frozenset(items), True)


def _guard(node: Node, predicate: Predicate, lists: Mapping[str, tuple[str, ...]]) -> Predicate:
    """`predicate` behind the literal guard its condition implies, when that is worth a test."""
    if isinstance(node, And | Or | Not):
        atoms = _needs(node, lists)
        if atoms is not None and any(kind != "exists" for _, kind, _ in atoms):
            return _guarded(atoms, predicate)
    return predicate  # a single comparison is as cheap as its guard


def _fold(node: Node, truth: Mapping[int, bool], memo: dict[int, Node | bool]) -> Node | bool:
    """`node` with the rule tests in `truth` replaced by their values, simplified."""
    known = truth.get(id(node))
    if known is not None:
        return known
    if not isinstance(node, And | Or | Not):
        return node
    done = memo.get(id(node))
    if done is not None:
        return done
    result: Node | bool
    if isinstance(node, Not):
        inner = _fold(node.operand, truth, memo)
        if isinstance(inner, bool):
            result = not inner
        else:
            result = node if inner is node.operand else Not(inner)
    else:
        absorbing = isinstance(node, Or)  # true absorbs an `or`, false an `and`
        kept: list[Node] = []
        result = not absorbing
        for operand in node.operands:
            part = _fold(operand, truth, memo)
            if part is absorbing:
                result = absorbing
                break
            if not isinstance(part, bool):
                kept.append(part)
        else:
            if len(kept) == 1:
                result = kept[0]
            elif kept:
                same = len(kept) == len(node.operands) and all(
                    a is b for a, b in zip(kept, node.operands, strict=True)
                )
                result = node if same else type(node)(tuple(kept))
    memo[id(node)] = result
    return result


# -- guards ------------------------------------------------------------------------------------


def _needs(node: Node, lists: Mapping[str, tuple[str, ...]]) -> list[_Atom] | None:
    """Atoms one of which holds whenever `node` does; None when nothing cheap is implied."""
    if isinstance(node, Or):
        atoms: list[_Atom] = []
        for operand in node.operands:
            inner = _needs(operand, lists)
            if inner is None:
                return None
            atoms.extend(inner)
        return atoms
    if isinstance(node, And):
        best: list[_Atom] | None = None
        for operand in node.operands:
            inner = _needs(operand, lists)
            if inner is not None and (best is None or _weaker(best, inner)):
                best = inner
        return best
    if isinstance(node, Not | MacroRef) or node.field == "priority":
        return None  # priority compares by severity rank, not by its text
    field = node.field
    if isinstance(node, Exists):
        return [(field, "exists", None)]
    if isinstance(node, Compare):
        if node.op in _STRING_OPS:
            return [(field, node.op, node.value)]
        if node.op in ("=", "==") and as_number(node.value) is None:
            return [(field, "in", frozenset({node.value}))]
        return [(field, "exists", None)]  # `!=`, ordering, glob, regex: false when null
    items = _list_items(node, lists)
    if node.op == "pmatch":
        return [(field, "pmatch", tuple(items))]
    if all(as_number(item) is None for item in items):
        return [(field, "in", frozenset(items))]
    return [(field, "exists", None)]  # numbers compare numerically: "0443" equals 443


def _weaker(best: list[_Atom], other: list[_Atom]) -> bool:
    """Whether `other` makes a better guard than `best`: fewer fields merely required, then fewer
    atoms."""

    def cost(atoms: list[_Atom]) -> tuple[int, int]:
        return sum(kind == "exists" for _, kind, _ in atoms), len(atoms)

    return cost(other) < cost(best)


def _guarded(atoms: list[_Atom], predicate: Predicate) -> Predicate:
    by_field: dict[str, list[tuple[str, Any]]] = {}
    for field, kind, operand in atoms:
        by_field.setdefault(field, []).append((kind, operand))
    if len(by_field) == 1:
        ((field, kinds),) = by_field.items()
        if _read_kind(field) == _OUTPUT_FIELD and all(kind == "contains" for kind, _ in kinds):
            return _guarded_contains(field, [literal for _, literal in kinds], predicate)
    checks = [(_reader(field), _text_test(kinds)) for field, kinds in by_field.items()]
    if len(checks) == 1:
        read, test = checks[0]

        def guarded_one(event: Event) -> bool:
            value = read(event)
            if value.__class__ is str:
                if test is not None and not test(value):
                    return False
            elif value is None:
                return False
            return predicate(event)

        return guarded_one

    def guarded(event: Event) -> bool:
        for read, test in checks:
            value = read(event)
            if value.__class__ is str:
                if test is None or test(value):
                    return predicate(event)
            elif value is not None:
                return predicate(event)
        return False

    return guarded


def _guarded_contains(field: str, literals: list[str], predicate: Predicate) -> Predicate:
    """The common guard, fused: an output field that must contain one of some literals."""
    unique = tuple(dict.fromkeys(literals))
    if len(unique) >= _RE2_MIN_LITERALS:
        test = contains_any(unique)

        def guarded_many(event: Event) -> bool:
            value = event.fields.get(field)
            if value.__class__ is str:
                return test(value) and predicate(event)
            return value is not None and predicate(event)

        return guarded_many

    def guarded_few(event: Event) -> bool:
        value = event.fields.get(field)
        if value.__class__ is str:
            for literal in unique:
                if literal in value:
                    return predicate(event)
            return False
        return value is not None and predicate(event)

    return guarded_few


_TOP_LEVEL, _OUTPUT_FIELD, _BRACKETED = 0, 1, 2


def _read_kind(field: str) -> int:
    """How the compiler reads a field: a top-level key, a bracketed output field (with
    falcosidekick's `name_N` fallback, `Event.get`), or a plain output field."""
    if field in TOP_LEVEL_FIELDS:
        return _TOP_LEVEL
    # `correlation`, `status`, `count` (Event.get: null unless the event is derived) read
    # like a bracketed field
    return _BRACKETED if field.endswith("]") or field in DERIVED_FIELDS else _OUTPUT_FIELD


def _reader(field: str) -> Callable[[Event], Any]:
    kind = _read_kind(field)
    if kind == _TOP_LEVEL:
        return lambda event: event.raw.get(field)
    if kind == _BRACKETED:
        return lambda event: event.get(field)
    return lambda event: event.fields.get(field)


def _text_test(kinds: list[tuple[str, Any]]) -> Callable[[str], bool] | None:
    """One test of a string value against every literal of a field; None: any value will do."""
    equal: set[str] = set()
    starts: list[str] = []
    ends: list[str] = []
    contained: list[str] = []
    folded: list[str] = []
    tests: list[Callable[[str], bool]] = []
    for kind, operand in kinds:
        if kind == "exists":
            return None
        if kind == "in":
            equal.update(operand)
        elif kind == "startswith":
            starts.append(operand)
        elif kind == "endswith":
            ends.append(operand)
        elif kind == "contains":
            contained.append(operand)
        elif kind == "icontains":
            folded.append(operand.lower())
        else:  # pmatch
            tests.append(path_test(operand))
    if equal:
        tests.append(frozenset(equal).__contains__)
    if starts:
        prefixes = tuple(starts)
        tests.append(lambda value: value.startswith(prefixes))
    if ends:
        suffixes = tuple(ends)
        tests.append(lambda value: value.endswith(suffixes))
    if contained:
        tests.append(contains_any(contained))
    if folded:
        lowered = tuple(folded)
        tests.append(lambda value: _any_in(lowered, value.lower()))
    if len(tests) == 1:
        return tests[0]
    every = tuple(tests)
    return lambda value: any(test(value) for test in every)


def _any_in(literals: tuple[str, ...], value: str) -> bool:
    for literal in literals:  # noqa: SIM110 - a loop is faster than any() over a generator
        if literal in value:
            return True
    return False


def contains_any(literals: Sequence[str]) -> Callable[[str], bool]:
    """Whether a string contains one of the literals: `in` tests, or one RE2 pass for many."""
    unique = tuple(dict.fromkeys(literals))
    if len(unique) == 1:
        only = unique[0]
        return lambda value: only in value
    if len(unique) >= _RE2_MIN_LITERALS:
        search = _re2_search(unique)
        if search is not None:
            return search
    return lambda value: _any_in(unique, value)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.encoding = re2.Options.Encoding.LATIN1
_RE2_OPTIONS.never_capture = True
_RE2_OPTIONS.log_errors = False
try:
    _UNANCHORED: Any = re2._re2.RE2.Anchor.UNANCHORED
except AttributeError:  # another google-re2 layout: fall back to the public API
    _UNANCHORED = None


def _re2_search(literals: Sequence[str]) -> Callable[[str], bool] | None:
    """One RE2 alternation over the UTF-8 bytes of the literals; None if RE2 refuses it.

    Byte-wise on purpose (Latin-1 mode, every byte escaped): a substring of the UTF-8 encoding
    that starts with a whole encoded literal is exactly that literal inside the text, and no
    pattern character can be misread.
    """
    pattern = b"|".join(
        b"".join(b"\\x%02x" % byte for byte in literal.encode("utf-8", "surrogatepass"))
        for literal in literals
    )
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error:
        return None
    match = getattr(getattr(compiled, "_regexp", None), "Match", None)
    if match is None or _UNANCHORED is None:
        search = compiled.search
        return lambda value: search(value.encode("utf-8", "surrogatepass")) is not None

    def found(value: str) -> bool:
        data = value.encode("utf-8", "surrogatepass")
        return bool(match(_UNANCHORED, data, 0, len(data))[0][0] != -1)

    return found
