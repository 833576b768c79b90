"""Which Falco rule names each shipped correlation names in its conditions (for docs/coverage.md).

A correlation uses a rule name when one of its step conditions, macros and lists expanded,
compares `rule` with it (`=`, `==`, `in`, `intersects`) outside a `not`. A `not rule in (...)`
excludes names and does not count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from streams.core.conditions import (
    And,
    Compare,
    ListCompare,
    MacroRef,
    Node,
    Not,
    Or,
    parse_condition,
    resolve_lists,
)

__all__ = ["rule_mentions"]

_STEP_KEYS = ("condition",)


def _items(rules_dir: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for path in sorted(rules_dir.glob("*.yaml")):
        items.extend(yaml.safe_load(path.read_text(encoding="utf-8")) or [])
    return items


def _conditions(item: dict[str, Any]) -> list[str]:
    found = [item["condition"]] if "condition" in item else []
    found += [step["condition"] for step in item.get("steps", [])]
    found += [item[k]["condition"] for k in ("trigger", "expect") if k in item]
    return found


def rule_mentions(rules_dir: Path) -> dict[str, set[str]]:
    """Falco rule name -> the enabled shipped correlations that name it positively."""
    items = _items(rules_dir)
    lists = resolve_lists({i["list"]: i["items"] for i in items if "list" in i})
    macros = {i["macro"]: parse_condition(i["condition"]) for i in items if "macro" in i}
    used: dict[str, set[str]] = {}

    def walk(node: Node, negated: bool, correlation: str) -> None:
        if isinstance(node, Or | And):
            for operand in node.operands:
                walk(operand, negated, correlation)
        elif isinstance(node, Not):
            walk(node.operand, not negated, correlation)
        elif isinstance(node, MacroRef):
            walk(macros[node.name], negated, correlation)
        elif not negated and node.field == "rule":
            names: list[str] = []
            if isinstance(node, Compare) and node.op in ("=", "=="):
                names = [node.value]
            elif isinstance(node, ListCompare) and node.op in ("in", "intersects"):
                for item in node.items:
                    expanded = lists.get(item.value) if not item.quoted else None
                    names.extend(expanded if expanded is not None else [item.value])
            for name in names:
                used.setdefault(name, set()).add(correlation)

    for item in items:
        if "correlation" in item and item.get("enabled", True):
            for text in _conditions(item):
                walk(parse_condition(text), False, item["correlation"])
    return used
