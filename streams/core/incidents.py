"""Incident records (spec section 5): ids, context, rendered output, truncation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams.core.events import Event, format_time
from streams.core.priority import PRIORITY_NAMES
from streams.core.rules import Correlation, CorrelationType
from streams.core.templates import EventView, render_template

__all__ = [
    "CONTEXT_FIELDS",
    "IncidentAnchor",
    "build_incident",
    "event_record",
    "incident_id",
]

CONTEXT_FIELDS = (
    "hostname",
    "k8s.ns.name",
    "k8s.pod.name",
    "container.id",
    "container.name",
    "container.image.repository",
    "container.image.tag",
)


@dataclass(slots=True)
class IncidentAnchor:
    """What suppression remembers of the incident that a match opened."""

    id: str
    anchor_ns: int  # last event time of the match that emitted `new`
    first_seen_ns: int
    count: int = 1


def incident_id(correlation: str, key: dict[str, Any], first: Event) -> str:
    material = orjson.dumps([correlation, list(key.items()), first.identity])
    return hashlib.sha256(material).hexdigest()[:32]


def event_record(step: str, event: Event) -> dict[str, Any]:
    raw = event.raw
    tags = raw.get("tags")
    return {
        "step": step,
        "uuid": raw.get("uuid"),
        "time": format_time(event.time_ns),
        "rule": event.rule,
        "priority": event.priority,
        "hostname": raw.get("hostname"),
        "output": raw.get("output"),
        "output_fields": event.fields,
        "tags": tags if isinstance(tags, list) else [],
    }


def _severity(corr: Correlation, match: Sequence[tuple[str, Event]]) -> str:
    if corr.severity is not None:
        return corr.severity
    ranks = [e.priority_rank for _, e in match if e.priority_rank is not None]
    return PRIORITY_NAMES[max(ranks)] if ranks else "Informational"


def _context(match: Sequence[tuple[str, Event]]) -> dict[str, Any]:
    context: dict[str, Any] = dict.fromkeys(CONTEXT_FIELDS)
    for _, event in reversed(match):
        for name in CONTEXT_FIELDS:
            if context[name] is None:
                value = event.get(name)
                if value != "":  # non-null and non-empty (spec section 7, C1)
                    context[name] = value
    return context


def _render(
    corr: Correlation,
    key: dict[str, Any],
    match: Sequence[tuple[str, Event]],
    count: int,
    severity: str,
) -> tuple[str, str | None]:
    """The rendered output, or the plain default and the error text on a template failure."""
    views = [EventView(e, step) for step, e in match]
    term: dict[str, Any] = {}
    if corr.type is CorrelationType.NEW_TERM:
        term = {name: match[-1][1].get(name) for name in corr.term_fields}
    try:
        text = render_template(
            corr.output,
            {
                "correlation": corr.name,
                "key": key,
                "events": views,
                "steps": {v.step: v for v in views},
                "first": views[0],
                "last": views[-1],
                "count": count,
                "severity": severity,
                "term": term,
            },
        )
    except Exception as exc:  # any template failure, budgets included: default text, counted
        fallback = f"{corr.name}: {len(match)} events for {orjson.dumps(key).decode()}"
        return fallback, f"{type(exc).__name__}: {exc}"
    return text, None


def build_incident(
    corr: Correlation,
    key: dict[str, Any],
    match: Sequence[tuple[str, Event]],
    anchor: IncidentAnchor,
    *,
    status: str,
    ruleset: str,
    detected_at_ns: int,
    max_events: int,
) -> tuple[dict[str, Any], str | None]:
    """The incident record and the template error (None when the template rendered)."""
    severity = _severity(corr, match)
    output, template_error = _render(corr, key, match, anchor.count, severity)
    kept = match[:max_events]
    record: dict[str, Any] = {
        "id": anchor.id,
        "status": status,
        "correlation": corr.name,
        "type": corr.type.value,
        "severity": severity,
        "output": output,
        "key": key,
        "count": anchor.count,
        "first_seen": format_time(anchor.first_seen_ns),
        "last_seen": format_time(match[-1][1].time_ns),
        "events": [event_record(step, e) for step, e in kept],
        "tags": list(corr.tags),
        "context": _context(match),
        "enrichment": {},
        "detected_at": format_time(detected_at_ns),
        "ruleset": ruleset,
    }
    if len(match) > len(kept):
        record["events_truncated"] = len(match) - len(kept)
    return record, template_error
