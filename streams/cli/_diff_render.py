"""Text and JSON views of a `DiffResult` for `falco-correlator diff`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from streams.cli._diff_compare import Change, DiffResult, Incident

__all__ = ["diff_json", "diff_text", "summary_line"]


def _incident_json(incident: Incident) -> dict[str, Any]:
    new = incident.records[0]
    return {
        "id": incident.id,
        "correlation": incident.correlation,
        "key": incident.key,
        "severity": new["severity"],
        "first_seen": new["first_seen"],
        "last_seen": incident.records[-1]["last_seen"],
        "records": len(incident.records),
        "events": len(incident.events),
    }


def _event_json(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event.get(k) for k in ("step", "time", "rule", "uuid")}


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "correlation": change.old.correlation,
        "key": change.old.key,
        "old_id": change.old.id,
        "new_id": change.new.id,
        "severity": {"old": change.old.severities, "new": change.new.severities},
        "records": {"old": len(change.old.records), "new": len(change.new.records)},
        "events_removed": [_event_json(e) for e in change.removed],
        "events_added": [_event_json(e) for e in change.added],
    }


def diff_json(result: DiffResult) -> dict[str, Any]:
    return {
        "only_old": [_incident_json(i) for i in result.only_old],
        "only_new": [_incident_json(i) for i in result.only_new],
        "changed": [_change_json(c) for c in result.changed],
        "summary": {
            "only_old": len(result.only_old),
            "only_new": len(result.only_new),
            "changed": len(result.changed),
            "unchanged": result.unchanged,
            "old_incidents": result.old_total,
            "new_incidents": result.new_total,
            "differs": result.differs,
        },
    }


def _key_text(key: dict[str, Any]) -> str:
    return orjson.dumps(key).decode() if key else "{}"


def _incident_line(sign: str, incident: Incident) -> str:
    new = incident.records[0]
    updates = len(incident.records) - 1
    more = f", {updates} update{'s' if updates != 1 else ''}" if updates else ""
    return (
        f"{sign} {incident.correlation}  key={_key_text(incident.key)}  id={incident.id}  "
        f"{new['severity']}  {new['first_seen']} .. {incident.records[-1]['last_seen']}  "
        f"({len(incident.events)} events{more})"
    )


def _event_text(sign: str, event: dict[str, Any]) -> str:
    rule = orjson.dumps(event.get("rule")).decode()
    return f"      {sign} {event.get('step')}  {event.get('time')}  {rule}"


def _change_lines(change: Change) -> list[str]:
    ids = change.old.id if change.old.id == change.new.id else f"{change.old.id} -> {change.new.id}"
    what = []
    if change.severity_changed:
        what.append(
            f"severity {'/'.join(change.old.severities)} -> {'/'.join(change.new.severities)}"
        )
    if len(change.old.records) != len(change.new.records):
        what.append(f"records {len(change.old.records)} -> {len(change.new.records)}")
    if change.removed or change.added:
        what.append(f"events -{len(change.removed)} +{len(change.added)}")
    if not what:
        what.append("events reordered or regrouped")
    lines = [
        f"~ {change.old.correlation}  key={_key_text(change.old.key)}  id={ids}: {'; '.join(what)}"
    ]
    lines.extend(_event_text("-", e) for e in change.removed)
    lines.extend(_event_text("+", e) for e in change.added)
    return lines


def summary_line(result: DiffResult) -> str:
    return (
        f"diff: {len(result.only_old)} only in OLD, {len(result.only_new)} only in NEW, "
        f"{len(result.changed)} changed, {result.unchanged} unchanged "
        f"(OLD {result.old_total} incidents, NEW {result.new_total})"
    )


def diff_text(result: DiffResult) -> str:
    lines: list[str] = []
    sections = (
        ("only in OLD", [_incident_line("-", i) for i in result.only_old]),
        ("only in NEW", [_incident_line("+", i) for i in result.only_new]),
        ("changed", [line for c in result.changed for line in _change_lines(c)]),
    )
    for title, body in sections:
        if body:
            lines.append(f"{title}:")
            lines.extend(body)
            lines.append("")
    per = Counter(
        [i.correlation for i in result.only_old]
        + [i.correlation for i in result.only_new]
        + [c.old.correlation for c in result.changed]
    )
    if per:
        lines.append("differences by correlation:")
        lines.extend(f"  {n:>5}  {name}" for name, n in sorted(per.items()))
        lines.append("")
    lines.append(summary_line(result))
    return "\n".join(lines) + "\n"
