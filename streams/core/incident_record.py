"""The incident record's one typed shape, and the one check that a JSON value has it.

`build_incident` (streams/core/incidents.py) makes these records; the worker writes them to the
incidents topic as JSON, and the notify stage reads them back with `read_incident`: the only
place their shape is checked. The notifiers (routes, the Slack and webhook builders, the search
index documents) are typed against `Incident` and trust it instead of re-checking each field.

A TypedDict, not a class: the record stays the plain dict that replay prints and the topic
carries, byte for byte. Every field but `id` may be absent (records written by an older worker,
hand-made test incidents): readers use `.get()` with a default. Values that come from Falco
events as they were sent (`key`, `context`, an event's `uuid`, `hostname`, `output`) are not
typed further.
"""

from __future__ import annotations

from typing import Any, Required, TypedDict, cast

__all__ = ["Incident", "IncidentEvent", "incident_problem", "read_incident"]


class IncidentEvent(TypedDict, total=False):
    """One event of `incident["events"]` (streams.core.incidents.event_record)."""

    step: str
    uuid: Any
    time: str
    rule: str
    priority: str | None
    hostname: Any
    output: Any
    output_fields: dict[str, Any]
    tags: list[Any]


class Incident(TypedDict, total=False):
    """An incident record (spec section 5) as the notifiers receive it."""

    id: Required[str]
    status: str  # "new" or "update"
    correlation: str
    type: str
    severity: str
    output: str
    key: dict[str, Any]
    count: int
    first_seen: str
    last_seen: str
    events: list[IncidentEvent]
    events_truncated: int  # events of the match not listed in `events`
    tags: list[str]
    context: dict[str, Any]
    enrichment: dict[str, Any]
    detected_at: str
    ruleset: str


_TEXT = ("status", "correlation", "type", "severity", "output", "first_seen", "last_seen")
_TEXT_MORE = ("detected_at", "ruleset")
_OBJECTS = ("key", "context", "enrichment")
_EVENT_TEXT = ("step", "time", "rule")


def incident_problem(value: object) -> str | None:
    """Why `value` is not an incident record (the first reason), or None when it is one."""
    if not isinstance(value, dict):
        return "not a JSON object"
    if not isinstance(value.get("id"), str):
        return "id is not a string"
    for name in (*_TEXT, *_TEXT_MORE):
        if name in value and not isinstance(value[name], str):
            return f"{name} is not a string"
    for name in _OBJECTS:
        if name in value and not isinstance(value[name], dict):
            return f"{name} is not an object"
    for name in ("count", "events_truncated"):
        if name in value and not _is_int(value[name]):
            return f"{name} is not an integer"
    tags = value.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        return "tags is not a list of strings"
    events = value.get("events", [])
    if not isinstance(events, list):
        return "events is not a list"
    for index, event in enumerate(events):
        problem = _event_problem(event)
        if problem is not None:
            return f"events[{index}]: {problem}"
    return None


def _event_problem(event: object) -> str | None:
    if not isinstance(event, dict):
        return "not an object"
    for name in _EVENT_TEXT:
        if name in event and not isinstance(event[name], str):
            return f"{name} is not a string"
    priority = event.get("priority")
    if priority is not None and not isinstance(priority, str):
        return "priority is not a string"
    if "output_fields" in event and not isinstance(event["output_fields"], dict):
        return "output_fields is not an object"
    if "tags" in event and not isinstance(event["tags"], list):
        return "tags is not a list"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_incident(value: object) -> Incident | None:
    """`value` (decoded JSON) as an Incident, or None when it does not have the shape."""
    return None if incident_problem(value) is not None else cast(Incident, value)
