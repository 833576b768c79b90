"""Comparing the incidents of two rulesets (for `falco-correlator diff`, streams/cli/diff.py).

Incidents are compared by id (new record and updates together); an incident of OLD and one of NEW
with another id but the same correlation and key that share an event are the same detection,
moved (a changed window or step moves the first event, hence the id).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Change", "DiffResult", "Incident", "compare_incidents", "group_records"]

EventKey = tuple[str, Any]  # (step, identity)


@dataclass
class Incident:
    """Every record of one incident id: its `new` record and its updates, in emission order."""

    id: str
    correlation: str
    key: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for r in self.records for e in r["events"]]

    @property
    def event_keys(self) -> list[EventKey]:
        return [(e["step"], _identity(e)) for e in self.events]

    @property
    def severities(self) -> list[str]:
        return [r["severity"] for r in self.records]

    @property
    def truncated(self) -> list[int]:
        return [r.get("events_truncated", 0) for r in self.records]


def _identity(event: dict[str, Any]) -> Any:
    """An event's identity as the engine defines it: its uuid, else time, rule, host, output."""
    uuid = event.get("uuid")
    if isinstance(uuid, str) and uuid:
        return uuid
    return (event.get("time"), event.get("rule"), event.get("hostname"), event.get("output"))


def _key_bytes(key: dict[str, Any]) -> bytes:
    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS)


@dataclass
class Change:
    old: Incident
    new: Incident
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]

    @property
    def severity_changed(self) -> bool:
        return self.old.severities != self.new.severities


@dataclass
class DiffResult:
    only_old: list[Incident]
    only_new: list[Incident]
    changed: list[Change]
    unchanged: int
    old_total: int
    new_total: int

    @property
    def differs(self) -> bool:
        return bool(self.only_old or self.only_new or self.changed)


def group_records(records: Iterable[dict[str, Any]]) -> dict[str, Incident]:
    incidents: dict[str, Incident] = {}
    for record in records:
        incident = incidents.get(record["id"])
        if incident is None:
            incident = incidents[record["id"]] = Incident(
                record["id"], record["correlation"], record["key"]
            )
        incident.records.append(record)
    return incidents


def _change(old: Incident, new: Incident) -> Change | None:
    if (
        old.event_keys == new.event_keys
        and old.severities == new.severities
        and old.truncated == new.truncated
    ):
        return None
    new_keys = set(new.event_keys)
    old_keys = set(old.event_keys)
    removed = [e for e in old.events if (e["step"], _identity(e)) not in new_keys]
    added = [e for e in new.events if (e["step"], _identity(e)) not in old_keys]
    return Change(old, new, added, removed)


def compare_incidents(
    old_records: Sequence[dict[str, Any]], new_records: Sequence[dict[str, Any]]
) -> DiffResult:
    old, new = group_records(old_records), group_records(new_records)
    changed: list[Change] = []
    unchanged = 0
    for incident_id in [i for i in old if i in new]:
        change = _change(old.pop(incident_id), new.pop(incident_id))
        if change is None:
            unchanged += 1
        else:
            changed.append(change)
    # Same correlation and key, sharing an event: the same detection, moved (a new id).
    by_key: dict[tuple[str, bytes], list[Incident]] = {}
    for n in new.values():
        by_key.setdefault((n.correlation, _key_bytes(n.key)), []).append(n)
    pairs = []
    for o in old.values():
        o_events = {_identity(e) for e in o.events}
        for n in by_key.get((o.correlation, _key_bytes(o.key)), []):
            shared = len(o_events & {_identity(e) for e in n.events})
            if shared:
                pairs.append((-shared, o.id, n.id))
    for _, old_id, new_id in sorted(pairs):
        if old_id in old and new_id in new:
            o, n = old.pop(old_id), new.pop(new_id)
            changed.append(_change(o, n) or Change(o, n, [], []))
    return DiffResult(
        only_old=list(old.values()),
        only_new=list(new.values()),
        changed=changed,
        unchanged=unchanged,
        old_total=len(group_records(old_records)),
        new_total=len(group_records(new_records)),
    )
