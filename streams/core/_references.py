"""References between correlations (spec section 7, C3): which records a correlation receives.

A correlation A references B when a condition of A, after macro and list expansion, has
`correlation = B` (or `==`), or B among the items of `correlation in (...)` /
`correlation intersects (...)`, also under `not`. Other tests on `correlation` create none.

The loader reports, as located rule errors, a reference to a name that is no correlation of the
loaded files, and every cycle among enabled correlations: one error per correlation of the
cycle, at its first condition that references the next one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from streams.core._condition_parser import (
    And,
    Compare,
    Exists,
    ListCompare,
    MacroRef,
    Node,
    Not,
    Or,
)
from streams.errors import Location, RuleError

__all__ = [
    "MAX_CHAIN_DEPTH",
    "ReferenceGraph",
    "condition_references",
    "only_derived",
    "strongly_connected",
]

#: How many correlations deep a chain of references may go (a derived event of a derived event
#: ... is correlated depth first: the bound keeps that finite and small).
MAX_CHAIN_DEPTH = 32

_REFERENCE_OPS = frozenset({"=", "=="})
_REFERENCE_LIST_OPS = frozenset({"in", "intersects"})


def condition_references(
    node: Node, macros: Mapping[str, Node], lists: Mapping[str, tuple[str, ...]]
) -> list[str]:
    """The correlation names a parsed condition references, in the order they appear."""
    found: list[str] = []
    expanding: set[str] = set()
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, And | Or):
            stack.extend(reversed(current.operands))
        elif isinstance(current, Not):
            stack.append(current.operand)
        elif isinstance(current, MacroRef):
            body = macros.get(current.name)
            if body is not None and current.name not in expanding:
                expanding.add(current.name)  # a macro's references are the same at every use
                stack.append(body)
        elif isinstance(current, Compare):
            if current.field == "correlation" and current.op in _REFERENCE_OPS:
                found.append(current.value)
        elif (
            isinstance(current, ListCompare)
            and current.field == "correlation"
            and current.op in _REFERENCE_LIST_OPS
        ):
            for item in current.items:
                if not item.quoted and item.value in lists:
                    found.extend(lists[item.value])
                else:
                    found.append(item.value)
    return list(dict.fromkeys(found))


_DERIVED_FIELDS = frozenset({"correlation", "status", "count"})


def only_derived(node: Node, macros: Mapping[str, Node], depth: int = 0) -> bool:
    """Whether the condition can be true only for derived events: it needs a comparison on
    `correlation`, `status` or `count` (null for every Falco event, so every comparison on them,
    `exists` and `!=` included, is false) outside any `not`. Such a step never meets Falco
    events (a prefilter, like the rule-name index)."""
    if depth > 256:
        return False
    if isinstance(node, Compare | ListCompare | Exists):
        return node.field in _DERIVED_FIELDS
    if isinstance(node, And):
        return any(only_derived(operand, macros, depth + 1) for operand in node.operands)
    if isinstance(node, Or):
        return all(only_derived(operand, macros, depth + 1) for operand in node.operands)
    if isinstance(node, MacroRef):
        body = macros.get(node.name)
        return body is not None and only_derived(body, macros, depth + 1)
    return False  # `not`: true for Falco events whenever its operand is false


@dataclass
class ReferenceGraph:
    """Per correlation, its conditions' references with where each condition is."""

    conditions: dict[str, list[tuple[Location, list[str]]]] = field(default_factory=dict)

    def add(self, correlation: str, where: Location, names: list[str]) -> None:
        if names:
            self.conditions.setdefault(correlation, []).append((where, names))

    def references(self, correlation: str) -> tuple[str, ...]:
        names = {n for _, found in self.conditions.get(correlation, []) for n in found}
        return tuple(sorted(names))

    def first_reference(self, correlation: str, target: str) -> Location:
        """Where `correlation`'s first condition (in file order) that references `target` is."""
        places = [where for where, names in self.conditions[correlation] if target in names]
        return min(places, key=lambda loc: (loc.line, loc.column))

    def check(self, known: set[str], enabled: set[str], errors: list[RuleError]) -> None:
        """Unknown references and cycles among enabled correlations, as located errors."""
        for name, conditions in self.conditions.items():
            for where, names in conditions:
                for target in names:
                    if target not in known:
                        errors.append(
                            RuleError(
                                where,
                                f"correlation '{name}' references unknown correlation "
                                f"'{target}' (correlation = {target})",
                            )
                        )
        graph = {
            name: [t for t in self.references(name) if t in enabled] for name in sorted(enabled)
        }
        cyclic: set[str] = set()
        for component in strongly_connected(graph):
            if len(component) > 1 or component[0] in graph[component[0]]:
                cyclic.update(component)
        for name in sorted(cyclic):
            cycle = _shortest_cycle(name, {n: graph[n] for n in cyclic})
            if cycle is not None:
                errors.append(
                    RuleError(
                        self.first_reference(name, cycle[1]),
                        "correlation cycle: " + " -> ".join(cycle),
                    )
                )
        if not cyclic:
            self._check_depth(graph, errors)

    def _check_depth(self, graph: dict[str, list[str]], errors: list[RuleError]) -> None:
        """Chains deeper than MAX_CHAIN_DEPTH, reported at the correlation that goes too deep."""
        depth: dict[str, int] = {}
        for root in sorted(graph):
            stack = [root]
            while stack:
                node = stack[-1]
                pending = [t for t in graph[node] if t not in depth]
                if pending:
                    stack.extend(pending)
                    continue
                stack.pop()
                if node not in depth:
                    depth[node] = 1 + max((depth[t] for t in graph[node]), default=-1)
        for name in sorted(graph):
            if depth[name] > MAX_CHAIN_DEPTH and all(
                depth[t] <= MAX_CHAIN_DEPTH for t in graph[name]
            ):
                deepest = max(graph[name], key=lambda t: depth[t])
                errors.append(
                    RuleError(
                        self.first_reference(name, deepest),
                        f"correlation '{name}' is more than {MAX_CHAIN_DEPTH} references deep "
                        "(correlations of correlations of ...)",
                    )
                )


def _shortest_cycle(start: str, graph: dict[str, list[str]]) -> list[str] | None:
    """The shortest path start -> ... -> start (breadth first), or None when there is none."""
    previous: dict[str, str] = {}
    queue = [start]
    seen = {start}
    while queue:
        following: list[str] = []
        for node in queue:
            for child in graph.get(node, []):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start] * 2
                if child not in seen:
                    seen.add(child)
                    previous[child] = node
                    following.append(child)
        queue = following
    return None


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root, refs in graph.items():
        if root in index:
            continue
        work = [(root, iter(refs))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(component)
    return found
