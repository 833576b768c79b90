"""The vocabulary of rule files: item kinds, their keys, value constraints and descriptions.

The loader checks keys against these definitions, and `rules_json_schema()` turns the same
definitions into the JSON Schema that editors use (schema/rules.schema.json, written by
`falco-correlator schema`), so the two cannot drift: a key added here is known to both, and a
test compares the committed schema with the generated one.

What a JSON Schema cannot express stays with the loader alone: condition syntax, unknown
macros and lists, regular expressions, `within` at most 7d (30d for new_term), duplicate names,
overrides of unknown items, keys given without an override entry, `by` lengths of steps, and
references between correlations (unknown names, cycles).
"""

from __future__ import annotations

from typing import Any

from streams.core.durations import NS_PER_UNIT
from streams.core.priority import PRIORITY_NAMES
from streams.core.rules import CorrelationType

__all__ = [
    "CORRELATION_COMMON_KEYS",
    "CORRELATION_TYPE_KEYS",
    "ITEM_KINDS",
    "LIST_KEYS",
    "MACRO_KEYS",
    "MAX_NEW_TERM_WITHIN",
    "MAX_TERM_FIELDS",
    "MAX_WITHIN",
    "MIN_STEPS",
    "MIN_THRESHOLD",
    "OPTIONAL_TYPE_KEYS",
    "OVERRIDE_APPEND_KEYS",
    "ROLE_KEYS",
    "STEP_KEYS",
    "rules_json_schema",
]

ITEM_KINDS = ("list", "macro", "correlation")
LIST_KEYS = frozenset({"list", "items", "override"})
MACRO_KEYS = frozenset({"macro", "condition", "override"})
CORRELATION_COMMON_KEYS = frozenset(
    {
        "correlation",
        "desc",
        "type",
        "by",
        "within",
        "output",
        "severity",
        "tags",
        "suppress",
        "enabled",
        "override",
    }
)
CORRELATION_TYPE_KEYS: dict[CorrelationType, frozenset[str]] = {
    CorrelationType.SEQUENCE: frozenset({"steps"}),
    CorrelationType.ALL: frozenset({"steps"}),
    CorrelationType.COUNT: frozenset({"condition", "threshold"}),
    CorrelationType.DISTINCT: frozenset({"condition", "field", "threshold"}),
    CorrelationType.ABSENCE: frozenset({"trigger", "expect"}),
    CorrelationType.NEW_TERM: frozenset({"condition", "fields", "learn"}),
}
#: Type keys that may be left out (the rest of a type's keys are required).
OPTIONAL_TYPE_KEYS = frozenset({"learn"})
STEP_KEYS = frozenset({"name", "condition", "by"})
ROLE_KEYS = frozenset({"condition", "by"})
# Keys whose override may append (the rest can only be replaced), per kind.
OVERRIDE_APPEND_KEYS: dict[str, frozenset[str]] = {
    "list": frozenset({"items"}),
    "macro": frozenset({"condition"}),
    "correlation": frozenset(),
}
MIN_STEPS = 2
MIN_THRESHOLD = 2
MAX_WITHIN = "7d"
#: new_term keeps a history: its `within` (and `learn`) may be up to 30d (spec section 7).
MAX_NEW_TERM_WITHIN = "30d"
MAX_TERM_FIELDS = 3

_DESCRIPTIONS = {
    "list": "Name of a list of values, usable in conditions as `field in (name)`.",
    "items": "The list's values; may name other lists, which are expanded.",
    "macro": "Name of a reusable condition fragment, usable in conditions by its name.",
    "correlation": "Unique name of the correlation; the incident's `correlation` field.",
    "desc": "What the correlation detects.",
    "type": "sequence: steps in order; all: every step in any order; count: N matching events; "
    "distinct: N distinct values of `field`; absence: a trigger without the expected follow-up; "
    "new_term: the first time a key shows a value of `fields` within the history `within`.",
    "by": "Fields that form the group key (state and incidents are per key); omitted: one group.",
    "within": f"Window: an integer and a unit ms|s|m|h|d, more than 0, at most {MAX_WITHIN} "
    f"(new_term: the history, at most {MAX_NEW_TERM_WITHIN}).",
    "output": "Jinja2 template of the incident's text (variables: correlation, key, events, "
    "steps, first, last, count, severity).",
    "severity": "Falco priority of the incident (any case; `info` = Informational); default: "
    "the highest priority of its events.",
    "tags": "Tags copied to the incident.",
    "suppress": "Merge repeated matches of a key into updates of one incident for this long.",
    "enabled": "false: validated but not run.",
    "override": "Change an item defined in an earlier file: KEY: replace (any key) or "
    "KEY: append (a list's items, a macro's condition).",
    "condition": "A Falco filter expression over the alert's fields (`correlation = NAME` "
    "receives that correlation's records as derived events).",
    "fields": f"new_term: 1 to {MAX_TERM_FIELDS} distinct field names whose values form the term.",
    "learn": f"new_term: learning period per key before new terms fire (0s allowed, at most "
    f"{MAX_NEW_TERM_WITHIN}); default: `within`.",
    "threshold": f"How many matching events (count) or distinct values (distinct); at least "
    f"{MIN_THRESHOLD}.",
    "field": "The field whose distinct values are counted.",
    "steps": f"The steps ({MIN_STEPS} or more), each with a name and a condition.",
    "trigger": "The event that starts the wait.",
    "expect": "The event that must follow the trigger within the window.",
    "name": "The step's name, unique in the correlation (`steps.<name>` in templates).",
    "step_by": "Replaces the correlation's `by` position by position for this step.",
}


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def _text(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": r"\S", "description": description}


def _duration(description: str, *, positive: bool) -> dict[str, Any]:
    units = "|".join(sorted(NS_PER_UNIT, key=len, reverse=True))
    number = "0*[1-9][0-9]*" if positive else "[0-9]+"
    return {"type": "string", "pattern": rf"^\s*{number}({units})\s*$", "description": description}


def _fields(description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1},
        "uniqueItems": True,
        "description": description,
    }


def _override(kind: str, keys: frozenset[str]) -> dict[str, Any]:
    appendable = OVERRIDE_APPEND_KEYS[kind]
    properties: dict[str, Any] = {
        key: {"enum": ["append", "replace"] if key in appendable else ["replace"]}
        for key in sorted(keys - {kind, "override"})
    }
    return {
        "type": "object",
        "minProperties": 1,
        "properties": properties,
        "additionalProperties": False,
        "description": _DESCRIPTIONS["override"],
    }


def _conditioned(description: str) -> dict[str, Any]:
    """A `trigger`/`expect` mapping."""
    return {
        "type": "object",
        "properties": {
            "condition": _text(_DESCRIPTIONS["condition"]),
            "by": _fields(_DESCRIPTIONS["step_by"]),
        },
        "required": ["condition"],
        "additionalProperties": False,
        "description": description,
    }


def _correlation() -> dict[str, Any]:
    all_type_keys = frozenset().union(*CORRELATION_TYPE_KEYS.values())
    severity = "|".join(_any_case(name) for name in (*PRIORITY_NAMES, "info"))
    properties: dict[str, Any] = {
        "correlation": _text(_DESCRIPTIONS["correlation"]),
        "desc": {"type": "string", "description": _DESCRIPTIONS["desc"]},
        "type": {"enum": [t.value for t in CorrelationType], "description": _DESCRIPTIONS["type"]},
        "by": _fields(_DESCRIPTIONS["by"]),
        "within": _duration(_DESCRIPTIONS["within"], positive=True),
        "output": _text(_DESCRIPTIONS["output"]),
        "severity": {
            "type": "string",
            "pattern": rf"^\s*({severity})\s*$",
            "description": _DESCRIPTIONS["severity"],
        },
        "tags": {
            "type": "array",
            "items": {"type": "string"},
            "description": _DESCRIPTIONS["tags"],
        },
        "suppress": _duration(_DESCRIPTIONS["suppress"], positive=True),
        "enabled": {"type": "boolean", "description": _DESCRIPTIONS["enabled"]},
        "override": _override("correlation", CORRELATION_COMMON_KEYS | all_type_keys),
        "condition": _text(_DESCRIPTIONS["condition"]),
        "threshold": {
            "type": "integer",
            "minimum": MIN_THRESHOLD,
            "description": _DESCRIPTIONS["threshold"],
        },
        "field": _text(_DESCRIPTIONS["field"]),
        "steps": {
            "type": "array",
            "minItems": MIN_STEPS,
            "items": {
                "type": "object",
                "properties": {
                    "name": _text(_DESCRIPTIONS["name"]),
                    "condition": _text(_DESCRIPTIONS["condition"]),
                    "by": _fields(_DESCRIPTIONS["step_by"]),
                },
                "required": sorted(STEP_KEYS - {"by"}),
                "additionalProperties": False,
            },
            "description": _DESCRIPTIONS["steps"],
        },
        "trigger": _conditioned(_DESCRIPTIONS["trigger"]),
        "expect": _conditioned(_DESCRIPTIONS["expect"]),
        "fields": {
            **_fields(_DESCRIPTIONS["fields"]),
            "minItems": 1,
            "maxItems": MAX_TERM_FIELDS,
        },
        "learn": _duration(_DESCRIPTIONS["learn"], positive=False),
    }
    assert set(properties) == CORRELATION_COMMON_KEYS | all_type_keys
    not_override = {"not": {"required": ["override"]}}
    rules: list[dict[str, Any]] = [{"if": not_override, "then": {"required": ["type", "within"]}}]
    for ctype, keys in CORRELATION_TYPE_KEYS.items():
        foreign = dict.fromkeys(sorted(all_type_keys - keys), False)
        rules.append(
            {
                "if": {"properties": {"type": {"const": ctype.value}}, "required": ["type"]},
                "then": {
                    "properties": foreign,
                    "allOf": [
                        {
                            "if": not_override,
                            "then": {"required": sorted(keys - OPTIONAL_TYPE_KEYS)},
                        }
                    ],
                },
            }
        )
    return {
        "type": "object",
        "properties": properties,
        "required": ["correlation"],
        "additionalProperties": False,
        "allOf": rules,
    }


def rules_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07, what the YAML language server reads) of a rule file."""
    scalar = {"type": ["string", "number"]}
    definitions = {
        "list": {
            "type": "object",
            "properties": {
                "list": _text(_DESCRIPTIONS["list"]),
                "items": {"type": "array", "items": scalar, "description": _DESCRIPTIONS["items"]},
                "override": _override("list", LIST_KEYS),
            },
            "required": ["list"],
            "additionalProperties": False,
            "allOf": [{"if": {"not": {"required": ["override"]}}, "then": {"required": ["items"]}}],
        },
        "macro": {
            "type": "object",
            "properties": {
                "macro": _text(_DESCRIPTIONS["macro"]),
                "condition": _text(_DESCRIPTIONS["condition"]),
                "override": _override("macro", MACRO_KEYS),
            },
            "required": ["macro"],
            "additionalProperties": False,
            "allOf": [
                {"if": {"not": {"required": ["override"]}}, "then": {"required": ["condition"]}}
            ],
        },
        "correlation": _correlation(),
    }
    item_rules = [
        {"if": {"required": [kind]}, "then": {"$ref": f"#/definitions/{kind}"}}
        for kind in ITEM_KINDS
    ]
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "falco-correlator rule file",
        "description": "A YAML sequence of lists, macros and correlations (docs/rules.md). "
        "Generated by `falco-correlator schema` from the loader's definitions.",
        "type": "array",
        "items": {
            "type": "object",
            "anyOf": [{"required": [kind]} for kind in ITEM_KINDS],
            "allOf": item_rules,
        },
        "definitions": definitions,
    }
