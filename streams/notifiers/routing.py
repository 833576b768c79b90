"""Which incidents a notifier receives: a pure filter over the incident record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from streams._config_fields import Fields
from streams._text import short
from streams.core.incident_record import Incident
from streams.core.priority import canonical_priority, priority_rank
from streams.errors import ConfigError

__all__ = ["STATUSES", "Route", "incident_value", "parse_route"]

STATUSES = frozenset({"new", "update"})


@dataclass(frozen=True, slots=True)
class Route:
    """All given conditions must hold; an empty condition matches everything.

    - `min_severity`: the incident's severity is at least this (case-insensitive names).
    - `correlations`: the correlation name matches one of these globs (case-sensitive).
    - `tags`: the incident has at least one of these tags.
    - `namespaces`: `context["k8s.ns.name"]` matches one of these globs; an incident without a
      namespace does not match a route that names namespaces.
    - `statuses`: `new`, `update` or both.
    - `fields`: `{dotted.path: [globs]}`: the incident's value at each path (e.g.
      `enrichment.ownership.team`) matches one of its globs; a missing value does not match.

    An incident whose severity is not a priority name passes `min_severity`: a record from our
    own engine always has one, and a malformed one should reach a human rather than vanish.
    """

    min_severity: str | None = None
    correlations: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    statuses: frozenset[str] = STATUSES
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def matches(self, incident: Incident) -> bool:
        return self.refusal(incident) is None

    def refusal(self, incident: Incident) -> str | None:
        """The first condition the incident fails (`min_severity`, `statuses`, `correlations`,
        `tags`, `namespaces`, `fields`), or None when the route selects it."""
        if self.min_severity is not None:
            rank = priority_rank(incident.get("severity"))
            wanted = priority_rank(self.min_severity)
            if rank is not None and wanted is not None and rank < wanted:
                return "min_severity"
        if incident.get("status", "new") not in self.statuses:
            return "statuses"
        if self.correlations:
            name = incident.get("correlation")
            if name is None or not any(fnmatchcase(name, p) for p in self.correlations):
                return "correlations"
        if self.tags and not set(self.tags).intersection(incident.get("tags") or []):
            return "tags"
        if self.namespaces:
            namespace = (incident.get("context") or {}).get("k8s.ns.name")
            if not isinstance(namespace, str) or not any(
                fnmatchcase(namespace, pattern) for pattern in self.namespaces
            ):
                return "namespaces"
        for path, patterns in self.fields:
            value = incident_value(incident, path)
            if not isinstance(value, str | int) or isinstance(value, bool):
                return "fields"
            if not any(fnmatchcase(str(value), pattern) for pattern in patterns):
                return "fields"
        return None


def incident_value(incident: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (`enrichment.ownership.slack_channel`), None if absent.

    Context and key names contain dots themselves (`context.k8s.ns.name`): at each level the
    longest key that matches is taken.
    """
    current: Any = incident
    rest = path
    while rest:
        if not isinstance(current, Mapping):
            return None
        parts = rest.split(".")
        for cut in range(len(parts), 0, -1):
            name = ".".join(parts[:cut])
            if name in current:
                current = current[name]
                rest = ".".join(parts[cut:])
                break
        else:
            return None
    return current


def parse_route(fields: Fields) -> Route:
    """A Route from the `route:` mapping of one notifier."""
    min_severity = fields.string("min_severity", None)
    if min_severity is not None:
        canonical = canonical_priority(min_severity)
        if canonical is None:
            raise ConfigError(
                f"{fields.key('min_severity')}: unknown priority {short(min_severity)} "
                "(Emergency, Alert, Critical, Error, Warning, Notice, Informational, Debug)"
            )
        min_severity = canonical
    statuses = fields.strings("statuses")
    for index, status in enumerate(statuses):
        if status not in STATUSES:
            raise ConfigError(f"{fields.key('statuses')}[{index}]: expected new or update")
    raw_fields = fields.raw("fields", {})
    if not isinstance(raw_fields, Mapping) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v)
        for k, v in raw_fields.items()
    ):
        raise ConfigError(f"{fields.key('fields')}: expected {{dotted.path: [glob, ...]}}")
    route = Route(
        fields=tuple((k, tuple(v)) for k, v in raw_fields.items()),
        min_severity=min_severity,
        correlations=fields.strings("correlations"),
        tags=fields.strings("tags"),
        namespaces=fields.strings("namespaces"),
        statuses=frozenset(statuses) if statuses else STATUSES,
    )
    fields.finish()
    return route
