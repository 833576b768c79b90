"""Pure pieces of the OpenSearch/Elasticsearch notifier: index names, documents, bulk lines and
the index template. No I/O, so they are tested against golden files.

Why the document is not the incident verbatim: Falco field names contain dots, and both engines
expand a dotted key into an object path. Falco has `container.image` *and*
`container.image.repository`, `evt.time` (a number) *and* `evt.time.iso8601`: the first event
that carries both would be rejected with a mapping conflict. So the dotted keys of `key`,
`context` and each event's `output_fields` become underscores (`container_image_repository`),
as falcosidekick's Elasticsearch output does with `flattenfields`, and the index template maps
every value under them as a keyword, whatever its JSON type, so one field that is a number in
one event and a string in another cannot reject a document either.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from streams.core.incident_record import Incident

__all__ = [
    "FLATTENED_SECTIONS",
    "BulkAction",
    "IndexSuffix",
    "build_bulk_body",
    "build_index_template",
    "build_search_action",
    "flatten_keys",
    "index_name",
]

# Sections whose keys are Falco field names: flattened, and every value a keyword.
FLATTENED_SECTIONS = ("key", "context", "events.output_fields")
_KEYWORD_LIMIT = 4096  # longer keyword values are kept in _source but not indexed


class IndexSuffix(StrEnum):
    """The date appended to the index name, as falcosidekick's `suffix` option."""

    DAILY = "daily"
    MONTHLY = "monthly"
    ANNUALLY = "annually"
    NONE = "none"


_SUFFIX_FORMATS = {
    IndexSuffix.DAILY: "%Y.%m.%d",
    IndexSuffix.MONTHLY: "%Y.%m",
    IndexSuffix.ANNUALLY: "%Y",
}


@dataclass(frozen=True, slots=True)
class BulkAction:
    """One `index` action of a bulk request: where the document goes and its version."""

    index: str
    id: str
    version: int
    document: dict[str, Any]


def _incident_day(incident: Mapping[str, Any], now: dt.datetime) -> dt.datetime:
    """The UTC date of the incident's first event: the same for the incident and all its updates,
    so an update lands in the index of its incident and replaces it there."""
    for name in ("first_seen", "detected_at"):
        value = incident.get(name)
        if isinstance(value, str) and len(value) >= 10:
            try:
                return dt.datetime.strptime(value[:10], "%Y-%m-%d").replace(tzinfo=dt.UTC)
            except ValueError:
                continue
    return now.astimezone(dt.UTC)


def index_name(
    incident: Mapping[str, Any], prefix: str, suffix: IndexSuffix, now: dt.datetime
) -> str:
    """`falco-incidents-2023.05.25` for a daily suffix; `now` is used when the incident has no
    usable `first_seen`."""
    if suffix is IndexSuffix.NONE:
        return prefix
    return f"{prefix}-{_incident_day(incident, now).strftime(_SUFFIX_FORMATS[suffix])}"


def _flat_value(value: Any) -> Any:
    # Values under flattened sections are scalars in Falco; anything else is kept as JSON text
    # so that it cannot turn a keyword field into an object.
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(
        v is None or isinstance(v, str | int | float | bool) for v in value
    ):
        return value
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def flatten_keys(fields: Any) -> Any:
    """`{"container.image.repository": x}` -> `{"container_image_repository": x}`."""
    if not isinstance(fields, Mapping):
        return fields
    return {str(name).replace(".", "_"): _flat_value(value) for name, value in fields.items()}


def _nanos_to_millis(value: Any) -> Any:
    """`@timestamp` for dashboards' time pickers: RFC 3339 with milliseconds."""
    if not isinstance(value, str) or "." not in value:
        return value
    head, _, fraction = value.partition(".")
    digits = fraction.rstrip("Z")
    return f"{head}.{(digits + '000')[:3]}Z"


def build_search_action(
    incident: Incident,
    *,
    index_prefix: str,
    suffix: IndexSuffix,
    flatten: bool,
    now: dt.datetime,
) -> BulkAction:
    """The bulk action for one incident record (pure).

    Document id = incident id, so an update replaces its incident. The version is the record's
    `count` with `version_type=external_gte`: a redelivered older record (a `new` sent again from
    the dead-letter topic after its update was stored) is refused by the engine (409) instead of
    overwriting the newer one; the same record again is accepted (at-least-once delivery).
    """
    document: dict[str, Any] = dict(incident)
    if flatten:
        for section in ("key", "context"):
            if section in document:
                document[section] = flatten_keys(document[section])
        if "events" in incident:
            document["events"] = [
                {**event, "output_fields": flatten_keys(event["output_fields"])}
                if "output_fields" in event
                else event
                for event in incident["events"]
            ]
    document["@timestamp"] = _nanos_to_millis(incident.get("first_seen"))
    version = max(1, incident.get("count", 1))
    return BulkAction(
        index=index_name(incident, index_prefix, suffix, now),
        id=incident["id"],
        version=version,
        document=document,
    )


def build_bulk_body(actions: Sequence[BulkAction]) -> bytes:
    """NDJSON for `POST /_bulk`: an action line and a document line per action."""
    lines: list[bytes] = []
    for action in actions:
        meta = {
            "index": {
                "_index": action.index,
                "_id": action.id,
                "version": action.version,
                "version_type": "external_gte",
            }
        }
        lines.append(orjson.dumps(meta))
        lines.append(orjson.dumps(action.document, option=orjson.OPT_NON_STR_KEYS))
    return b"\n".join(lines) + b"\n"


def _keyword() -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": _KEYWORD_LIMIT}


def _text_and_keyword() -> dict[str, Any]:
    return {"type": "text", "fields": {"keyword": _keyword()}}


def _any_value_as_keyword(name: str, path: str) -> dict[str, Any]:
    return {name: {"path_match": path, "mapping": _keyword()}}


def build_index_template(
    index_prefix: str, suffix: IndexSuffix, *, shards: int, replicas: int, priority: int
) -> dict[str, Any]:
    """The composable index template (`PUT _index_template/<name>`) for the incident indices.

    Keyword versus text: names, ids, severities, tags and Falco field values are exact values
    (filters, aggregations); `output` is text with a keyword sub-field. Times are `date_nanos`
    (incidents carry nanoseconds); `@timestamp` is a `date` for dashboards. `enrichment` maps
    the fields people filter on and keeps the rest in `_source` only (`dynamic: false`): its
    sections are open-ended (owner tables pass extra columns through) and must never reject an
    incident.
    """
    pattern = index_prefix if suffix is IndexSuffix.NONE else f"{index_prefix}-*"
    event_properties = {
        "step": _keyword(),
        "uuid": _keyword(),
        "time": {"type": "date_nanos"},
        "rule": _keyword(),
        "priority": _keyword(),
        "source": _keyword(),
        "hostname": _keyword(),
        "output": _text_and_keyword(),
        "tags": _keyword(),
        "output_fields": {"type": "object", "dynamic": True},
    }
    enrichment = {
        "type": "object",
        "dynamic": False,
        "properties": {
            "risk": {
                "properties": {
                    "score": {"type": "integer"},
                    "escalation": {"properties": {"from": _keyword(), "to": _keyword()}},
                }
            },
            "ownership": {
                "properties": {
                    name: _keyword()
                    for name in ("team", "owner", "environment", "criticality", "slack_channel")
                }
            },
            "harbor": {
                "properties": {
                    "status": _keyword(),
                    "critical_fixable": {"type": "integer"},
                    "high_fixable": {"type": "integer"},
                    "total": {"type": "integer"},
                }
            },
            "trivy": {
                "properties": {
                    "status": _keyword(),
                    "critical_fixable": {"type": "integer"},
                    "high_fixable": {"type": "integer"},
                }
            },
            "posture": {
                "properties": {
                    "node": _keyword(),
                    "cis": {"properties": {"failed": {"type": "integer"}}},
                    "exposure": {"properties": {"count": {"type": "integer"}}},
                }
            },
        },
    }
    return {
        "index_patterns": [pattern],
        "priority": priority,
        "_meta": {"managed_by": "falco-correlator", "schema": 1},
        "template": {
            "settings": {"number_of_shards": shards, "number_of_replicas": replicas},
            "mappings": {
                "dynamic": True,
                "date_detection": False,
                "numeric_detection": False,
                "dynamic_templates": [
                    _any_value_as_keyword("key_values", "key.*"),
                    _any_value_as_keyword("context_values", "context.*"),
                    _any_value_as_keyword("output_field_values", "events.output_fields.*"),
                    {
                        "other_strings": {
                            "match_mapping_type": "string",
                            "mapping": _keyword(),
                        }
                    },
                ],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "id": _keyword(),
                    "status": _keyword(),
                    "correlation": _keyword(),
                    "type": _keyword(),
                    "severity": _keyword(),
                    "output": _text_and_keyword(),
                    "count": {"type": "integer"},
                    "events_truncated": {"type": "integer"},
                    "first_seen": {"type": "date_nanos"},
                    "last_seen": {"type": "date_nanos"},
                    "detected_at": {"type": "date_nanos"},
                    "tags": _keyword(),
                    "ruleset": _keyword(),
                    "key": {"type": "object", "dynamic": True},
                    "context": {"type": "object", "dynamic": True},
                    "events": {"type": "object", "properties": event_properties},
                    "enrichment": enrichment,
                },
            },
        },
    }
