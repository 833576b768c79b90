"""Shared builders for engine tests: rule files in tmp_path, events at offsets, a feeding driver."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from streams.core.engine import Engine
from streams.core.events import Event, event_from_dict, format_time, parse_time
from streams.core.loader import load_rules
from streams.core.rules import Ruleset

__all__ = [
    "MS",
    "NS",
    "T0",
    "Feed",
    "S",
    "as_json_set",
    "iso",
    "load",
    "payload",
]

NS = 1
MS = 1_000_000
S = 1_000_000_000
T0 = parse_time("2024-05-01T12:00:00Z")
assert T0 is not None


def iso(offset_ns: int) -> str:
    """The 9-digit RFC 3339 text of T0 + offset."""
    return format_time(T0 + offset_ns)


def load(tmp_path: Path, text: str, name: str = "rules.yaml") -> Ruleset:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_rules([path])


def payload(
    rule: str,
    at_ns: int,
    *,
    priority: str = "Warning",
    hostname: str | None = "node-1",
    output: str | None = None,
    tags: list[str] | None = None,
    uuid: str | None = None,
    source: str = "syscall",
    **fields: Any,
) -> dict[str, Any]:
    """A Falco alert at T0 + at_ns; keyword fields become output_fields (`_` stays `_`).

    Field names with dots are passed through `fields` as a dict: payload(..., **{"fd.sip": "x"}).
    """
    raw: dict[str, Any] = {
        "time": iso(at_ns),
        "rule": rule,
        "priority": priority,
        "source": source,
        "output": output if output is not None else f"{rule} at {at_ns}",
        "output_fields": dict(fields),
        "tags": tags if tags is not None else [],
    }
    if hostname is not None:
        raw["hostname"] = hostname
    if uuid is not None:
        raw["uuid"] = uuid
    return raw


class Feed:
    """Drives one Engine: numbers arrivals, collects every incident in emission order."""

    def __init__(self, ruleset: Ruleset, *, lateness_ns: int = 0, **engine_kw: Any) -> None:
        self.engine = Engine(ruleset, lateness_ns=lateness_ns, **engine_kw)
        self.seq = 0
        self.incidents: list[dict[str, Any]] = []

    def event(self, raw: dict[str, Any]) -> Event:
        event = event_from_dict(raw, self.seq)
        self.seq += 1
        return event

    def raw(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.engine.submit(self.event(raw))
        self.incidents.extend(out)
        return out

    def send(self, rule: str, at_ns: int, **kw: Any) -> list[dict[str, Any]]:
        return self.raw(payload(rule, at_ns, **kw))

    def advance(self, offset_ns: int) -> list[dict[str, Any]]:
        out = self.engine.advance_to(T0 + offset_ns)
        self.incidents.extend(out)
        return out

    def finish(self, *, flush: bool = False) -> list[dict[str, Any]]:
        out = self.engine.finish(flush=flush)
        self.incidents.extend(out)
        return out

    def rules_of(self, index: int = -1) -> list[str]:
        """The rule names of the events of one collected incident, in report order."""
        return [e["rule"] for e in self.incidents[index]["events"]]

    def outputs_of(self, index: int = -1) -> list[str]:
        return [e["output"] for e in self.incidents[index]["events"]]


def as_json_set(incidents: list[dict[str, Any]]) -> set[str]:
    return {json.dumps(i, sort_keys=True) for i in incidents}
