"""Validate one correlation item and build its typed model, collecting located errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from streams._text import short
from streams.core._yaml_tree import location, to_python
from streams.core.durations import parse_duration
from streams.core.priority import canonical_priority
from streams.core.rule_spec import (
    CORRELATION_COMMON_KEYS,
    CORRELATION_TYPE_KEYS,
    MAX_NEW_TERM_WITHIN,
    MAX_TERM_FIELDS,
    MAX_WITHIN,
    MIN_STEPS,
    MIN_THRESHOLD,
    OPTIONAL_TYPE_KEYS,
    ROLE_KEYS,
    STEP_KEYS,
)
from streams.core.rules import Correlation, CorrelationType, Step
from streams.core.templates import TemplateSyntaxError, compile_template
from streams.errors import RuleError

if TYPE_CHECKING:
    from streams.core.loader import RawItem

__all__ = ["MAX_NEW_TERM_WITHIN_NS", "MAX_WITHIN_NS", "build_correlation"]

MAX_WITHIN_NS = parse_duration(MAX_WITHIN)
MAX_NEW_TERM_WITHIN_NS = parse_duration(MAX_NEW_TERM_WITHIN)
_COMMON = CORRELATION_COMMON_KEYS
_BY_TYPE = CORRELATION_TYPE_KEYS
_ALL_TYPE_KEYS = frozenset().union(*_BY_TYPE.values())
_DEFAULT_OUTPUT = "{{ correlation }}: {{ events|length }} events for {{ key }}"

CompileFn = Callable[..., Any]


class _Checker:
    def __init__(self, item: RawItem, errors: list[RuleError]) -> None:
        self.item = item
        self.errors = errors
        self.ok = True

    def error(self, node: yaml.Node, message: str) -> None:
        self.errors.append(RuleError(location(self.item.path, node), message))
        self.ok = False

    def node(self, key: str) -> yaml.Node:
        return self.item.keys[key][1]

    def string(self, node: yaml.Node, what: str) -> str | None:
        value = to_python(node)
        if not isinstance(value, str) or not value.strip():
            self.error(node, f"{what} must be a non-empty string")
            return None
        return value

    def fields(self, node: yaml.Node, what: str) -> tuple[str, ...] | None:
        value = to_python(node)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.error(node, f"{what} must be a list of field names")
            return None
        if len(set(value)) != len(value):
            self.error(node, f"{what} lists a field twice")
            return None
        return tuple(value)

    def duration(
        self,
        node: yaml.Node,
        what: str,
        maximum: int | None = None,
        *,
        limit: str = MAX_WITHIN,
        zero: bool = False,
    ) -> int | None:
        try:
            ns = parse_duration(to_python(node))
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return None
        if ns < 0 or (ns == 0 and not zero):
            self.error(node, f"{what} must be greater than 0")
            return None
        if maximum is not None and ns > maximum:
            self.error(node, f"{what} must be at most {limit}")
            return None
        return ns

    def mapping(
        self, node: yaml.Node, what: str, allowed: frozenset[str]
    ) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key not in allowed:
                self.error(key_node, f"unknown key '{key}' in {what}")
                continue
            out[key] = value_node
        return out


def build_correlation(
    item: RawItem, errors: list[RuleError], compile_fn: CompileFn
) -> Correlation | None:
    check = _Checker(item, errors)
    name = item.name
    for key, (key_node, _value) in item.keys.items():
        if key not in _COMMON and key not in _ALL_TYPE_KEYS:
            check.error(key_node, f"unknown key '{key}' in correlation")

    ctype: CorrelationType | None = None
    if "type" not in item.keys:
        check.error(item.node, f"correlation '{name}' has no 'type'")
    else:
        raw_type = to_python(check.node("type"))
        try:
            ctype = CorrelationType(raw_type)
        except ValueError:
            choices = ", ".join(t.value for t in CorrelationType)
            check.error(
                check.node("type"), f"unknown type {short(raw_type)} (expected one of {choices})"
            )
    if ctype is not None:
        for key, (key_node, _value) in item.keys.items():
            if key in _ALL_TYPE_KEYS and key not in _BY_TYPE[ctype]:
                check.error(key_node, f"unknown key '{key}' for type {ctype.value}")
        for key in sorted(_BY_TYPE[ctype] - OPTIONAL_TYPE_KEYS):
            if key not in item.keys:
                check.error(item.node, f"correlation '{name}' of type {ctype.value} needs '{key}'")

    by: tuple[str, ...] = ()
    if "by" in item.keys:
        by = check.fields(check.node("by"), "by") or ()
    within = None
    if "within" not in item.keys:
        check.error(item.node, f"correlation '{name}' has no 'within'")
    elif ctype is CorrelationType.NEW_TERM:
        within = check.duration(
            check.node("within"), "within", MAX_NEW_TERM_WITHIN_NS, limit=MAX_NEW_TERM_WITHIN
        )
    else:
        within = check.duration(check.node("within"), "within", MAX_WITHIN_NS)
    suppress = None
    if "suppress" in item.keys:
        suppress = check.duration(check.node("suppress"), "suppress")

    severity = None
    if "severity" in item.keys:
        raw_sev = to_python(check.node("severity"))
        severity = canonical_priority(raw_sev)
        if severity is None:
            check.error(
                check.node("severity"), f"severity {short(raw_sev)} is not a Falco priority name"
            )
    tags: tuple[str, ...] = ()
    if "tags" in item.keys:
        raw_tags = to_python(check.node("tags"))
        if not isinstance(raw_tags, list) or not all(isinstance(t, str) for t in raw_tags):
            check.error(check.node("tags"), "tags must be a list of strings")
        else:
            tags = tuple(raw_tags)
    enabled = True
    if "enabled" in item.keys:
        raw_enabled = to_python(check.node("enabled"))
        if not isinstance(raw_enabled, bool):
            check.error(check.node("enabled"), "enabled must be true or false")
        else:
            enabled = raw_enabled
    desc = ""
    if "desc" in item.keys:
        raw_desc = to_python(check.node("desc"))
        if not isinstance(raw_desc, str):
            check.error(check.node("desc"), "desc must be a string")
        else:
            desc = raw_desc

    output_source = _DEFAULT_OUTPUT
    template = None
    if "output" in item.keys:
        output_source = check.string(check.node("output"), "output") or _DEFAULT_OUTPUT
    try:
        template = compile_template(output_source)
    except TemplateSyntaxError as exc:
        check.error(
            check.node("output"), f"output: template error: {exc.message} (line {exc.lineno})"
        )

    def condition(node: yaml.Node, what: str) -> Any:
        text = check.string(node, what)
        if text is None:
            return None
        compiled = compile_fn(item, what, text, node)
        if compiled is None:
            check.ok = False
        return compiled

    steps: list[Step] = []
    threshold = 0
    field_name = None
    term_fields: tuple[str, ...] = ()
    learn = within
    if ctype is CorrelationType.NEW_TERM:
        if "condition" in item.keys:
            compiled = condition(check.node("condition"), "condition")
            if compiled is not None:
                steps = [Step("term", compiled, by)]
        if "fields" in item.keys:
            term_fields = _term_fields(check, check.node("fields"))
        if "learn" in item.keys:
            learn = check.duration(
                check.node("learn"),
                "learn",
                MAX_NEW_TERM_WITHIN_NS,
                limit=MAX_NEW_TERM_WITHIN,
                zero=True,
            )
    elif ctype in (CorrelationType.SEQUENCE, CorrelationType.ALL) and "steps" in item.keys:
        steps = _steps(check, by, condition)
    elif ctype in (CorrelationType.COUNT, CorrelationType.DISTINCT):
        if "condition" in item.keys:
            compiled = condition(check.node("condition"), "condition")
            if compiled is not None:
                steps = [Step("match", compiled, by)]
        if "threshold" in item.keys:
            raw_threshold = to_python(check.node("threshold"))
            if (
                isinstance(raw_threshold, bool)
                or not isinstance(raw_threshold, int)
                or raw_threshold < MIN_THRESHOLD
            ):
                check.error(
                    check.node("threshold"), f"threshold must be an integer >= {MIN_THRESHOLD}"
                )
            else:
                threshold = raw_threshold
        if ctype is CorrelationType.DISTINCT and "field" in item.keys:
            field_name = check.string(check.node("field"), "field")
    elif ctype is CorrelationType.ABSENCE:
        for role in ("trigger", "expect"):
            if role in item.keys:
                step = _role_step(check, role, by, condition)
                if step is not None:
                    steps.append(step)

    if not check.ok or ctype is None or within is None or template is None:
        return None
    return Correlation(
        name=name,
        type=ctype,
        by=by,
        within_ns=within,
        steps=tuple(steps),
        output=template,
        output_source=output_source,
        location=item.loc(item.kind),
        desc=desc,
        threshold=threshold,
        field=field_name,
        severity=severity,
        tags=tags,
        suppress_ns=suppress,
        enabled=enabled,
        term_fields=term_fields,
        learn_ns=(learn or 0) if ctype is CorrelationType.NEW_TERM else 0,
    )


def _term_fields(check: _Checker, node: yaml.Node) -> tuple[str, ...]:
    found = check.fields(node, "fields")
    if found is None:
        return ()
    if not 1 <= len(found) <= MAX_TERM_FIELDS:
        check.error(node, f"fields must list 1 to {MAX_TERM_FIELDS} field names")
        return ()
    return found


def _step_by(
    check: _Checker, spec: dict[str, yaml.Node], by: tuple[str, ...], what: str
) -> tuple[str, ...] | None:
    if "by" not in spec:
        return by
    own = check.fields(spec["by"], f"{what} by")
    if own is not None and len(own) != len(by):
        check.error(
            spec["by"],
            f"{what} by has {len(own)} field(s); it replaces the correlation's by "
            f"({len(by)} field(s)) position by position",
        )
        return None
    return own


def _steps(
    check: _Checker, by: tuple[str, ...], condition: Callable[[yaml.Node, str], Any]
) -> list[Step]:
    node = check.node("steps")
    if not isinstance(node, yaml.SequenceNode) or len(node.value) < MIN_STEPS:
        check.error(node, f"steps must be a list of at least {MIN_STEPS} steps")
        return []
    steps: list[Step] = []
    names: set[str] = set()
    for index, step_node in enumerate(node.value):
        spec = check.mapping(step_node, f"steps[{index}]", STEP_KEYS)
        if spec is None:
            continue
        if "name" not in spec or "condition" not in spec:
            check.error(step_node, f"steps[{index}] needs 'name' and 'condition'")
            continue
        step_name = check.string(spec["name"], f"steps[{index}].name")
        if step_name is not None and step_name in names:
            check.error(spec["name"], f"duplicate step name '{step_name}'")
        compiled = condition(spec["condition"], f"steps[{index}].condition")
        step_by = _step_by(check, spec, by, f"steps[{index}]")
        if step_name is not None and compiled is not None and step_by is not None:
            names.add(step_name)
            steps.append(Step(step_name, compiled, step_by))
    return steps


def _role_step(
    check: _Checker, role: str, by: tuple[str, ...], condition: Callable[[yaml.Node, str], Any]
) -> Step | None:
    spec = check.mapping(check.node(role), role, ROLE_KEYS)
    if spec is None:
        return None
    if "condition" not in spec:
        check.error(check.node(role), f"{role} needs 'condition'")
        return None
    compiled = condition(spec["condition"], f"{role}.condition")
    step_by = _step_by(check, spec, by, role)
    if compiled is None or step_by is None:
        return None
    return Step(role, compiled, step_by)
