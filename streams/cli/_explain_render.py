"""Text and JSON views of an `Explanation` (streams/core/explain.py) for `falco-correlator explain`.

Event content is attacker-controlled: it is printed as data (JSON-quoted where it could be
mistaken for structure) and never interpreted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.durations import format_duration
from streams.core.events import TOP_LEVEL_FIELDS, Event, format_time
from streams.core.explain import Attempt, Explanation, KeyExplanation
from streams.core.observer import ObservedKey
from streams.core.rules import Correlation, CorrelationType

__all__ = ["RunInfo", "explanation_json", "explanation_text", "format_span"]

_TEXT_VALUE_MAX = 120
_SEC = 1_000_000_000


@dataclass
class RunInfo:
    """What the run saw, for the header line."""

    lines: int
    invalid: int
    late: int
    lateness_ns: int
    max_pending: int
    flush: bool
    #: per referenced correlation (RULES-SPEC C3): its records in the run (None: disabled) and
    #: how many of them took part in the explained correlation
    upstreams: dict[str, tuple[int | None, int]] = field(default_factory=dict)


def _upstream_steps(corr: Correlation, name: str) -> list[str]:
    return [s.name for s in corr.steps if name in s.condition.references]


def _upstream_text(corr: Correlation, name: str, info: RunInfo) -> str:
    records, took_part = info.upstreams.get(name, (0, 0))
    if records is None:
        return f"`{name}` (disabled: it emits no records)"
    return f"`{name}` ({records} record(s) in this run, {took_part} took part here)"


def format_span(ns: int) -> str:
    """A readable time span: 842 s -> '14m2s', 1.25 s -> '1.25s', 0.3 s -> '300ms'."""
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < _SEC:
        return f"{sign}{ns / 1_000_000:g}ms"
    parts = []
    for unit, size in (("d", 86_400 * _SEC), ("h", 3_600 * _SEC), ("m", 60 * _SEC)):
        if ns >= size:
            parts.append(f"{ns // size}{unit}")
            ns %= size
    if ns:
        parts.append(f"{round(ns / _SEC, 3):g}s")
    return sign + "".join(parts)


def _step_fields(corr: Correlation, step: str | None) -> list[str]:
    """The fields a step's condition reads and its `by` fields (all steps' when unknown)."""
    steps = [s for s in corr.steps if step is None or s.name == step] or list(corr.steps)
    names: set[str] = set()
    for s in steps:
        names |= s.condition.fields | set(s.by)
    if corr.field is not None:
        names.add(corr.field)
    names |= set(corr.term_fields)
    names.discard("rule")
    return sorted(names)


def _field(event: Event, name: str) -> tuple[bool, Any]:
    """(present, value): a missing field and a null one read differently to the analyst."""
    if name in TOP_LEVEL_FIELDS:
        return name in event.raw, event.raw.get(name)
    value = event.get(name)
    return (value is not None or name in event.fields), value


def event_json(event: Event, fields: Sequence[str]) -> dict[str, Any]:
    values = {}
    for name in fields:
        present, value = _field(event, name)
        if present:
            values[name] = value
    return {
        "time": format_time(event.time_ns),
        "rule": event.rule,
        "priority": event.priority,
        "uuid": event.raw.get("uuid"),
        "fields": values,
        "missing": [name for name in fields if not _field(event, name)[0]],
    }


def _key_dict(corr: Correlation, key: ObservedKey) -> dict[str, Any]:
    return dict(zip(corr.by, key, strict=False))


def attempt_json(corr: Correlation, attempt: Attempt, *, with_key: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "reason": attempt.reason,
        "progress": round(attempt.progress, 4),
        "step": attempt.step,
        "hits": [
            {"step": step, **event_json(e, _step_fields(corr, step))} for step, e in attempt.hits
        ],
        "other": (
            event_json(attempt.other, _step_fields(corr, attempt.step))
            if attempt.other is not None
            else None
        ),
        "delta": format_span(attempt.delta_ns) if attempt.delta_ns is not None else None,
        "incident": (
            {k: attempt.record.get(k) for k in ("id", "status", "count")}
            if attempt.record is not None
            else None
        ),
        "detail": _detail_json(attempt.detail),
    }
    if with_key:
        out = {"key": _key_dict(corr, attempt.key), **out}
    return out


def _detail_json(detail: dict[str, Any]) -> dict[str, Any]:
    out = dict(detail)
    if "deadline_ns" in out:
        out["deadline"] = format_time(out.pop("deadline_ns"))
    for name in ("seen_ns", "learning_since_ns", "learn_end_ns"):
        if name in out:
            out[name.removesuffix("_ns")] = format_time(out.pop(name))
    if "overshoot_ns" in out:
        out["overshoot"] = format_span(out.pop("overshoot_ns"))
    return out


def correlation_json(corr: Correlation) -> dict[str, Any]:
    return {
        "name": corr.name,
        "type": corr.type.value,
        "by": list(corr.by),
        "within": format_duration(corr.within_ns),
        "steps": [{"name": s.name, "by": list(s.by)} for s in corr.steps],
        "threshold": corr.threshold or None,
        "field": corr.field,
        "suppress": format_duration(corr.suppress_ns) if corr.suppress_ns is not None else None,
    }


def explanation_json(
    ex: Explanation, info: RunInfo, near_miss: list[Attempt] | None
) -> dict[str, Any]:
    corr = ex.correlation
    all_fields = _step_fields(corr, None)
    doc: dict[str, Any] = {
        "correlation": correlation_json(corr),
        "input": {
            "lines": info.lines,
            "invalid": info.invalid,
            "late": info.late,
            "lateness": format_duration(info.lateness_ns),
            "max_pending": info.max_pending,
            "flush": info.flush,
        },
        "summary": dict(_reasons(ex.keys)),
        "upstreams": [
            {
                "correlation": name,
                "steps": _upstream_steps(corr, name),
                "records": info.upstreams.get(name, (0, 0))[0],
                "took_part": info.upstreams.get(name, (0, 0))[1],
            }
            for name in corr.references
        ],
        "keys": [
            {
                "key": _key_dict(corr, k.key),
                "events": k.fed,
                "attempts": [attempt_json(corr, a, with_key=False) for a in k.attempts],
                "late": [event_json(e, all_fields) for e in k.late],
            }
            for k in ex.keys
        ],
        "unkeyed": [
            {
                **event_json(u.event, all_fields),
                "steps": [corr.steps[si].name for si in sorted(u.steps)],
                "missing_by": list(u.missing),
            }
            for u in ex.unkeyed
        ],
        "late_unkeyed": [event_json(e, all_fields) for e in ex.late_unkeyed],
    }
    if near_miss is not None:
        doc["near_miss"] = [attempt_json(corr, a, with_key=True) for a in near_miss]
    return doc


def _reasons(keys: Sequence[KeyExplanation]) -> Counter[str]:
    return Counter(a.reason for k in keys for a in k.attempts)


# -- text --------------------------------------------------------------------------------------


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        text = value if value and value.isprintable() and " " not in value else None
        text = text or orjson.dumps(value).decode()
    else:
        text = orjson.dumps(value).decode()
    return text if len(text) <= _TEXT_VALUE_MAX else text[: _TEXT_VALUE_MAX - 1] + "…"


def _event_line(corr: Correlation, event: Event, step: str | None) -> str:
    values = []
    for name in _step_fields(corr, step):
        present, value = _field(event, name)
        values.append(f"{name}={_text_value(value)}" if present else f"{name}=<missing>")
    return f"{format_time(event.time_ns)}  {_rule_text(event.rule)}  [{' '.join(values)}]"


def _rule_text(rule: str) -> str:
    return rule if rule.isprintable() and len(rule) <= _TEXT_VALUE_MAX else _text_value(rule)


def _key_text(corr: Correlation, key: ObservedKey) -> str:
    if not corr.by:
        return "(one global group)"
    return " ".join(f"{n}={_text_value(v)}" for n, v in zip(corr.by, key, strict=False))


def reason_text(corr: Correlation, a: Attempt, info: RunInfo) -> str:
    within = format_duration(corr.within_ns)
    other = f"{format_time(a.other.time_ns)} {_rule_text(a.other.rule)}" if a.other else ""
    record = a.record or {}
    incident = f"incident {record.get('id')}"
    texts = {
        "fired": f"fired: new {incident}",
        "suppressed": f"suppressed into update {record.get('count')} of {incident}",
        "consumed": (
            f"consumed: its events were consumed when {incident} fired "
            f"(last event {record.get('last_seen')}) with other events"
        ),
        "evicted": (
            f"evicted: the key held more than max_pending ({info.max_pending}) events "
            "and this partial match's oldest were dropped"
        ),
        "late": (
            f"late: the event that would have filled step `{a.step}` ({other}) arrived after "
            f"the watermark had passed it (lateness {format_duration(info.lateness_ns)})"
        ),
        "by_field_missing": (
            f"by field missing: {other} matched step `{a.step}` within the window, but "
            f"{', '.join(a.detail.get('missing', [])) or 'a by field'} was missing or null"
        ),
        "cleared": (
            f"cleared: `expect` matched {format_span(a.delta_ns or 0)} after the trigger "
            f"({other}), within {within}"
        ),
        "pending_at_end": (
            "pending: no `expect` yet, deadline "
            f"{format_time(a.detail.get('deadline_ns', 0))} not passed by the end of input "
            "(--flush fires it)"
        ),
    }
    if a.reason in texts:
        return texts[a.reason]
    if a.reason == "known_term":
        return (
            f"known term: {_text_value(a.detail.get('term'))} was seen "
            f"{format_span(a.delta_ns or 0)} before, within {within}"
        )
    if a.reason == "learning":
        return (
            f"learning: new term {_text_value(a.detail.get('term'))}, but the key learns from "
            f"{format_time(a.detail.get('learning_since_ns', 0))} until "
            f"{format_time(a.detail.get('learn_end_ns', 0))}"
        )
    if a.reason == "no_term":
        missing = ", ".join(a.detail.get("missing", [])) or "a field"
        return f"no term: {missing} of `fields` missing, null, empty or a list (took no part)"
    if a.reason == "outside_within":
        if corr.type in (CorrelationType.COUNT, CorrelationType.DISTINCT):
            return (
                f"outside within: the threshold was reached only at {other}, "
                f"{format_span(a.delta_ns or 0)} after the start; within is {within}"
            )
        return (
            f"outside within: step `{a.step}` matched at {other}, "
            f"{format_span(a.delta_ns or 0)} from the start; within is {within}"
        )
    suffix = " (the window was still open at the end of input)"
    open_end = suffix if a.detail.get("window_open_at_end") else ""
    if a.reason == "threshold_not_reached":
        what = "matching events"
        if corr.type is CorrelationType.DISTINCT:
            what = f"distinct {corr.field} values"
        got, needed = a.detail.get("got"), a.detail.get("needed")
        return f"threshold not reached: {got} of {needed} {what} within {within}{open_end}"
    waits = ""
    step = next((s for s in corr.steps if s.name == a.step), None)
    if step is not None and step.condition.references:
        names = sorted(step.condition.references)
        waits = "; it waits for records of " + ", ".join(
            _upstream_text(corr, n, info) for n in names
        )
    if not a.hits:
        matched = ", ".join(f"`{s}`" for s in a.detail.get("matched_steps", []))
        return f"step `{a.step}` never matched for this key (only {matched} did){waits}"
    before = ""
    if a.detail.get("matched_before") and a.other is not None:
        before = f"; it matched only before the previous step, at {other}"
    return f"step `{a.step}` never matched within {within} of the start{open_end}{before}{waits}"


def _attempt_lines(corr: Correlation, a: Attempt, info: RunInfo, indent: str) -> list[str]:
    lines = [f"{indent}{reason_text(corr, a, info)}"]
    width = max((len(step) for step, _ in a.hits), default=0)
    for step, event in a.hits:
        lines.append(f"{indent}  {step:<{width}}  {_event_line(corr, event, step)}")
    if a.other is not None and a.reason not in ("fired", "suppressed", "consumed"):
        lines.append(f"{indent}  {'>':<{width}}  {_event_line(corr, a.other, a.step)}")
    return lines


def _same(a: Attempt, b: Attempt) -> bool:
    return (a.reason, a.step, len(a.hits), (a.record or {}).get("id")) == (
        b.reason,
        b.step,
        len(b.hits),
        (b.record or {}).get("id"),
    ) and a.reason not in ("fired", "suppressed")


def explanation_text(ex: Explanation, info: RunInfo, near_miss: list[Attempt] | None) -> str:
    corr = ex.correlation
    lines = [_header(corr), _input_line(ex, info)]
    for name in corr.references:
        steps = ", ".join(_upstream_steps(corr, name)) or "-"
        lines.append(f"upstream (steps {steps}): {_upstream_text(corr, name, info)}")
    if near_miss is not None:
        lines.append("")
        lines.append(f"near misses, best first ({len(near_miss)} shown):")
        for rank, a in enumerate(near_miss, 1):
            lines.append(f"{rank:>3}. key {_key_text(corr, a.key)}  progress {a.progress:.0%}")
            lines.extend(_attempt_lines(corr, a, info, "     "))
        return "\n".join(lines) + "\n"
    for k in ex.keys:
        lines.append("")
        took = f"{k.fed} event{'' if k.fed == 1 else 's'} took part"
        lines.append(f"key {_key_text(corr, k.key)}  ({took})")
        lines.extend(_key_lines(corr, k, info))
    if ex.unkeyed:
        lines.append("")
        lines.append("matched a step but a `by` field was missing or null (took part in no key):")
        for u in ex.unkeyed:
            steps = ", ".join(corr.steps[si].name for si in sorted(u.steps))
            missing = ", ".join(u.missing)
            lines.append(f"  step {steps}, missing {missing}: {_event_line(corr, u.event, None)}")
    if ex.late_unkeyed:
        lines.append("")
        lines.append("late, and a `by` field was missing or null:")
        lines.extend(f"  {_event_line(corr, e, None)}" for e in ex.late_unkeyed)
    return "\n".join(lines) + "\n"


def _key_lines(corr: Correlation, k: KeyExplanation, info: RunInfo) -> list[str]:
    """A key's attempts; a run of attempts that stopped the same way is shown once."""
    lines: list[str] = []
    i = 0
    while i < len(k.attempts):
        a = k.attempts[i]
        j = i + 1
        while j < len(k.attempts) and _same(a, k.attempts[j]):
            j += 1
        lines.extend(_attempt_lines(corr, a, info, "  "))
        if j - i > 1:
            starts = [x.hits[0][1].time_ns for x in k.attempts[i:j] if x.hits]
            span = f", started {format_time(starts[0])} .. {format_time(starts[-1])}"
            lines.append(
                f"  ... and {j - i - 1} more that stopped the same way{span if starts else ''}"
            )
        i = j
    lines.extend(f"  late (not correlated): {_event_line(corr, e, None)}" for e in k.late)
    return lines


def _header(corr: Correlation) -> str:
    by = ", ".join(corr.by) if corr.by else "one global group"
    parts = [f"{corr.name}: {corr.type.value} by {by}, within {format_duration(corr.within_ns)}"]
    if corr.type in (CorrelationType.SEQUENCE, CorrelationType.ALL):
        joiner = " -> " if corr.type is CorrelationType.SEQUENCE else " + "
        parts.append("steps " + joiner.join(s.name for s in corr.steps))
    elif corr.type is CorrelationType.ABSENCE:
        parts.append("trigger, then no expect")
    elif corr.type is CorrelationType.NEW_TERM:
        parts.append(
            f"new term of {', '.join(corr.term_fields)}, learn {format_duration(corr.learn_ns)}"
        )
    else:
        what = f"distinct {corr.field}" if corr.type is CorrelationType.DISTINCT else "events"
        parts.append(f"threshold {corr.threshold} {what}")
    if corr.suppress_ns is not None:
        parts.append(f"suppress {format_duration(corr.suppress_ns)}")
    return "; ".join(parts)


def _input_line(ex: Explanation, info: RunInfo) -> str:
    reasons = _reasons(ex.keys)
    summary = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"
    return (
        f"input: {info.lines} lines, {info.invalid} invalid, {info.late} late; "
        f"{len(ex.keys)} key{'' if len(ex.keys) == 1 else 's'} took part; "
        f"partial matches: {summary}"
    )
