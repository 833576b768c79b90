"""The notify dead-letter record: what a delivery failure writes to `topics.notify_dead_letter`.

Written by the notify stage (streams/runtime/notify.py) and read back and rewritten by
`redeliver` (streams/runtime/redeliver.py): one format, kept here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson

from streams.notifiers import DeliveryFailure

__all__ = ["NOTIFIER_HEADER", "dead_letter_message", "dead_letter_record"]

NOTIFIER_HEADER = "fc-notifier"


def _iso(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter_record(
    incident: Mapping[str, Any],
    failure: DeliveryFailure,
    *,
    failed_at: float,
    source: tuple[str, int, int] | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON value of a notify dead-letter record. `previous` is the record a redelivery
    failed again: its attempts add up and its origin is kept."""
    record: dict[str, Any] = {
        "notifier": failure.notifier,
        "incident": dict(incident),
        "last_error": failure.last_error,
        "reason": failure.reason,
        "permanent": failure.permanent,
        "attempts": failure.attempts,
        "failed_at": _iso(failed_at),
        "redeliveries": 0,
    }
    if source is not None:
        topic, partition, offset = source
        record["source"] = {"topic": topic, "partition": partition, "offset": offset}
    if previous is not None:
        attempts, redeliveries = previous.get("attempts"), previous.get("redeliveries")
        if isinstance(attempts, int):
            record["attempts"] += attempts
        record["redeliveries"] = (redeliveries if isinstance(redeliveries, int) else 0) + 1
        if "source" in previous:
            record["source"] = previous["source"]
    return record


def dead_letter_message(record: Mapping[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key (the incident id), value and headers (the notifier name) of a dead-letter record."""
    incident = record.get("incident")
    incident_id = incident.get("id") if isinstance(incident, Mapping) else None
    key = str(incident_id or "").encode()
    headers = [(NOTIFIER_HEADER, str(record["notifier"]).encode())]
    return key, orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS), headers
