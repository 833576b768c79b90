"""Properties of rulesets with chains and new terms (RULES-SPEC section 7, C5): up to the
lateness bound, results do not depend on arrival order, nor on lateness with --flush; a restored
engine continues exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_engine_properties import (
    EVENTS,
    LATENESS,
    PROPERTY,
    _load,
    _payloads,
    _run,
    _shuffle,
)

from streams.core._condition_parser import parse
from streams.core._references import only_derived
from streams.core.engine import Engine
from streams.core.events import event_from_dict
from streams.core.rules import Ruleset
from streams.core.snapshot import entry_from_data, entry_to_data

V2_RULES = """
- correlation: seq2
  type: sequence
  by: [k]
  within: 4s
  suppress: 5s
  steps:
    - {name: a, condition: rule = A}
    - {name: b, condition: rule = B}

- correlation: absent
  type: absence
  by: [k]
  within: 3s
  trigger: {condition: rule = A}
  expect: {condition: rule = B}

- correlation: novel v
  type: new_term
  by: [k]
  fields: [v]
  within: 6s
  learn: 2s
  output: "{{ term['v'] }}"
  condition: rule in (C, D)

- correlation: novel pair
  type: new_term
  fields: [j, proc.name]
  within: 5s
  learn: 0s
  suppress: 3s
  condition: rule = E

- correlation: chain
  type: sequence
  by: [k]
  within: 6s
  steps:
    - {name: first, condition: correlation = seq2}
    - {name: then, condition: "correlation in (absent, 'novel v') or rule = D"}
  output: "{{ steps.first.uuid }} {{ steps.then.uuid }}"

- correlation: chain count
  type: count
  by: [k]
  within: 5s
  threshold: 3
  condition: correlation intersects (seq2, "novel v", chain) or rule = D

- correlation: chain absence
  type: absence
  by: [k]
  within: 3s
  trigger: {condition: correlation = "novel v" and status = new}
  expect: {condition: correlation = seq2 or rule = E}

- correlation: new after chain
  type: new_term
  fields: [correlation, k]
  within: 10s
  learn: 0s
  condition: correlation in (seq2, absent, "chain absence", "novel pair")
"""


@pytest.fixture(scope="module")
def v2_rules(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    return _load(tmp_path_factory.mktemp("v2"), V2_RULES)


@PROPERTY
@given(events=EVENTS, data=st.data(), flush=st.booleans())
def test_chains_and_new_terms_do_not_depend_on_arrival_order_within_lateness(
    v2_rules: Ruleset, events: list[tuple[Any, ...]], data: st.DataObject, flush: bool
) -> None:
    ordered = _payloads(events)
    delays = data.draw(
        st.lists(st.integers(0, LATENESS), min_size=len(ordered), max_size=len(ordered))
    )
    shuffled = _shuffle(ordered, delays)
    expected, _ = _run(v2_rules, ordered, lateness=LATENESS, flush=flush)
    actual, late = _run(v2_rules, shuffled, lateness=LATENESS, flush=flush)
    assert late == 0
    assert sorted(actual) == sorted(expected)


@PROPERTY
@given(events=EVENTS)
def test_chains_do_not_depend_on_lateness_with_flush(
    v2_rules: Ruleset, events: list[tuple[Any, ...]]
) -> None:
    ordered = _payloads(events)
    eager, _ = _run(v2_rules, ordered, lateness=0, flush=True)
    everything_at_the_end, _ = _run(v2_rules, ordered, lateness=10**6, flush=True)
    assert sorted(eager) == sorted(everything_at_the_end)


@PROPERTY
@given(events=EVENTS, flush=st.booleans())
def test_leaving_derived_only_steps_out_of_the_falco_index_changes_nothing(
    v2_rules: Ruleset, events: list[tuple[Any, ...]], flush: bool
) -> None:
    ordered = _payloads(events)
    indexed, _ = _run(v2_rules, ordered, lateness=1, flush=flush)
    scanned, _ = _run(v2_rules, ordered, lateness=1, flush=flush, full_scan=True)
    assert indexed == scanned


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("correlation = a", True),
        ("status = new and rule = X", True),
        ("count > 1 or correlation exists", True),
        ("correlation in (a, b) or rule = D", False),
        ("not correlation = a", False),
        ("correlation != a", True),
        ("m and rule = X", True),
        ("rule = X", False),
    ],
)
def test_only_derived_conditions(condition: str, expected: bool) -> None:
    macros = {"m": parse("correlation = b")}
    assert only_derived(parse(condition), macros) is expected


def _restored(old: Engine, rules: Ruleset) -> Engine:
    new = Engine(rules, lateness_ns=old.lateness_ns, track_changes=True)
    by_name = {c.name: (i, c) for i, c in enumerate(rules.correlations)}
    for ci, key in old.entry_keys():
        entry = old.entry(ci, key)
        if entry is None:
            continue
        data = orjson.loads(orjson.dumps(entry_to_data(rules.correlations[ci], key, entry)))
        restored = entry_from_data(by_name, data)
        assert restored is not None
        new.restore(*restored)
    new.restore_clock(old.max_time_ns, old.watermark_ns)
    return new


@PROPERTY
@given(events=EVENTS, cut=st.integers(0, 30))
def test_engine_restored_from_snapshots_continues_chains_exactly(
    v2_rules: Ruleset, events: list[tuple[Any, ...]], cut: int
) -> None:
    ordered = _payloads(events)
    lateness = LATENESS * 10**9
    reference = Engine(v2_rules, lateness_ns=lateness, track_changes=True)
    expected = [
        r for seq, p in enumerate(ordered) for r in reference.submit(event_from_dict(p, seq))
    ]
    expected += reference.finish(flush=True)
    first = Engine(v2_rules, lateness_ns=lateness, track_changes=True)
    got = [r for seq, p in enumerate(ordered[:cut]) for r in first.submit(event_from_dict(p, seq))]
    second = _restored(first, v2_rules)
    got += [
        r
        for seq, p in enumerate(ordered[cut:], cut)
        for r in second.submit(event_from_dict(p, seq))
    ]
    got += second.finish(flush=True)
    assert got == expected


def test_v2_property_rules_can_fire_every_correlation(v2_rules: Ruleset, tmp_path: Path) -> None:
    """Guards the properties against vacuity: each correlation fires on some stream."""
    events = [
        (0, "A", "k0", "v0", "k0", "bash", False),
        (1, "B", "k0", "v1", "k0", "curl", False),
        (1, "C", "k0", "v0", "k0", "curl", False),
        (2, "E", "k0", None, "k1", "bash", False),
        (3, "C", "k0", "v1", "k0", "curl", False),
        (3, "D", "k0", "v2", "k0", "curl", False),
        (4, "A", "k0", None, "k0", "zsh", False),
        (5, "D", "k0", "v0", "k0", "curl", False),
        (8, "A", "k1", None, "k1", "zsh", False),
        (9, "C", "k1", "v0", "k1", "curl", False),
        (13, "C", "k1", "v1", "k1", "curl", False),
        (20, "E", "k0", None, "k0", "zsh", False),
    ]
    out, _ = _run(v2_rules, _payloads(events), lateness=LATENESS, flush=True)
    fired = {json.loads(i)["correlation"] for i in out}
    assert fired == {c.name for c in v2_rules.correlations}
