"""The core's API for a host that routes derived events itself (the worker): `derived_sink`,
`submit_derived`, `derived_to_data`/`derived_from_data` (RULES-SPEC section 7, C4-C5)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
from helpers import T0, S, load, payload

from streams.core.derived import DerivedSeq, derived_from_data, derived_to_data
from streams.core.engine import Engine
from streams.core.events import Event, event_from_dict

RULES = """
- correlation: foothold
  type: count
  by: [hostname]
  within: 10s
  threshold: 2
  condition: rule = Shell
- correlation: silent
  type: absence
  by: [hostname]
  within: 5s
  trigger: {condition: rule = Beat}
  expect: {condition: rule = Beat}
- correlation: chain
  type: sequence
  by: [hostname]
  within: 1m
  steps:
    - {name: a, condition: correlation = foothold}
    - {name: b, condition: "correlation in (foothold, silent)"}
- correlation: chain of chains
  type: count
  within: 1m
  threshold: 2
  condition: correlation = chain
"""


def _stream(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        payload(rng.choice(["Shell", "Beat", "Other"]), at * S, hostname=rng.choice(["n1", "n2"]))
        for at in sorted(rng.randint(0, 60) for _ in range(40))
    ]


def _local(rules: Any, raws: list[dict[str, Any]]) -> list[dict[str, Any]]:
    engine = Engine(rules, lateness_ns=0)
    out = [r for seq, raw in enumerate(raws) for r in engine.submit(event_from_dict(raw, seq))]
    return out + engine.finish(flush=True)


def test_routed_derived_events_give_the_dependents_the_records_of_one_engine(
    tmp_path: Path,
) -> None:
    rules = load(tmp_path, RULES)
    dependents = {"chain", "chain of chains"}
    fired: set[str] = set()
    for seed in range(20):
        raws = _stream(seed)
        expected = [r for r in _local(rules, raws) if r["correlation"] in dependents]
        fired.update(r["correlation"] for r in expected)
        upstream = Engine(rules, lateness_ns=0)
        routed: list[Event] = []
        upstream.derived_sink = routed.append
        for seq, raw in enumerate(raws):
            upstream.submit(event_from_dict(raw, seq))
        upstream.finish(flush=True)
        # across a topic, in any order: the dependent's reorder buffer restores positions
        wire = [orjson.loads(orjson.dumps(derived_to_data(e))) for e in routed]
        random.Random(seed).shuffle(wire)
        downstream = Engine(rules, lateness_ns=0)
        for data in wire:
            downstream.submit_derived(derived_from_data(data))
        assert downstream.watermark_ns < 0  # derived events never move the watermark
        got = downstream.finish(flush=True)
        assert got == expected, seed
        assert all(isinstance(e.seq, DerivedSeq) for e in routed)
    assert fired == dependents  # not vacuous


def test_each_derived_event_of_an_absence_has_a_position_of_its_own(tmp_path: Path) -> None:
    """Two absences of one key fire at two deadlines: their derived events differ in time and
    also in seq (a host keys held events and redelivery marks by seq)."""
    rules = load(tmp_path, RULES)
    engine = Engine(rules, lateness_ns=0)
    routed: list[Event] = []
    engine.route_derived(routed.append, alone=True)
    for seq, at in enumerate([0, 20, 40]):
        engine.submit(event_from_dict(payload("Beat", at * S, hostname="n1"), seq))
    engine.advance_to(T0 + 60 * S)
    absences = [e for e in routed if e.derived is not None and e.derived["correlation"] == "silent"]
    assert len(absences) == 3
    assert len({e.seq for e in absences}) == 3
    assert [e.time_ns for e in absences] == sorted(e.time_ns for e in absences)
    # and they still sort after every event of their time, by name then key at one deadline
    assert all(int(e.seq) == 2**63 - 1 for e in absences)
