"""Properties of the engine over random streams (RULES-SPEC section 4).

- Up to the lateness bound, results do not depend on arrival order (ties in time keep their
  arrival order, which the spec makes significant).
- The rule-name index is an optimisation only: evaluating every condition gives the same output.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import T0, Feed, S, payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.events import parse_time
from streams.core.loader import load_rules
from streams.core.prefilter import StepTarget, key_reader
from streams.core.rules import CorrelationType, Ruleset

LATENESS = 3  # grid units (seconds)

ORDER_RULES = """
- list: shells
  items: [bash, zsh]
- macro: is_shell
  condition: proc.name in (shells)

- correlation: seq2
  type: sequence
  by: [k]
  within: 4s
  steps:
    - {name: a, condition: rule = A}
    - {name: b, condition: rule = B}
  output: "{{ steps.a.time }} {{ steps.b['v'] }}"

- correlation: seq3 overlap
  type: sequence
  by: [k]
  within: 6s
  suppress: 5s
  steps:
    - {name: a, condition: "rule in (A, C)"}
    - {name: b, condition: "rule in (B, C)"}
    - {name: c, condition: rule = D}
  output: "{{ count }} {{ first.time }} {{ last.time }}"

- correlation: join
  type: sequence
  by: [k]
  within: 5s
  steps:
    - {name: a, condition: rule = A}
    - {name: c, condition: rule = C, by: [j]}

- correlation: all3
  type: all
  by: [k]
  within: 5s
  suppress: 3s
  steps:
    - {name: shell, condition: is_shell}
    - {name: b, condition: rule = B}
    - {name: bc, condition: "rule in (B, C)"}

- correlation: count3
  type: count
  by: [k]
  within: 5s
  condition: "rule in (A, D)"
  threshold: 3
  suppress: 8s

- correlation: distinct2
  type: distinct
  by: [k]
  within: 4s
  condition: "rule in (B, C)"
  field: v
  threshold: 2
  output: "{{ events|length }} {{ key }}"

- correlation: absent
  type: absence
  by: [k]
  within: 3s
  trigger: {condition: rule = A}
  expect: {condition: rule = B}

- correlation: heartbeat
  type: absence
  by: [j]
  within: 4s
  suppress: 4s
  trigger: {condition: rule = C}
  expect: {condition: rule = C}

- correlation: global count
  type: count
  within: 3s
  condition: "not rule = A and proc.name = curl"
  threshold: 4
"""

# Absence under suppression longer than `within` (see test_engine_suppression: anchors are swept
# by watermark although an absence's match time is older than the watermark when it fires).
ABSENCE_SUPPRESS_RULES = """
- correlation: beat
  type: absence
  by: [j]
  within: 2s
  suppress: 6s
  trigger: {condition: rule = C}
  expect: {condition: rule = C}
"""

INDEX_RULES = """
- list: ab
  items: [A, B]
- macro: a_or_d
  condition: (rule = A or rule = D)

- correlation: idx all
  type: all
  by: [k]
  within: 5s
  steps:
    - {name: s1, condition: "rule = A and proc.name = bash"}
    - {name: s2, condition: "not rule = B"}
    - {name: s3, condition: "rule in (ab) or proc.name = curl"}
    - {name: s4, condition: "rule != C"}
    - {name: s5, condition: "rule startswith B"}
    - {name: s6, condition: "rule intersects (C, D)"}

- correlation: idx all short
  type: all
  by: [k]
  within: 5s
  steps:
    - {name: x, condition: "proc.name = bash"}
    - {name: y, condition: "rule in (A, B)"}
    - {name: z, condition: "rule = C or rule = A"}

- correlation: idx seq
  type: sequence
  by: [k]
  within: 6s
  steps:
    - {name: a, condition: "a_or_d and not proc.name = bash"}
    - {name: b, condition: "rule glob '[BC]'"}
    - {name: c, condition: "rule exists and rule icontains d"}

- correlation: idx never
  type: count
  within: 6s
  condition: "rule = A and rule = B"
  threshold: 2

- correlation: idx count
  type: count
  by: [j]
  within: 4s
  condition: "rule in (A, 1) or (rule = B and v exists)"
  threshold: 3

- correlation: idx distinct
  type: distinct
  within: 4s
  condition: "not (rule in (A, B))"
  field: v
  threshold: 2

- correlation: idx absence
  type: absence
  by: [k]
  within: 3s
  trigger: {condition: "rule pmatch (A, D)"}
  expect: {condition: "rule = B or proc.name = curl"}
"""


def _load(directory: Path, text: str) -> Ruleset:
    path = directory / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return load_rules([path])


@pytest.fixture(scope="module")
def order_rules(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    return _load(tmp_path_factory.mktemp("order"), ORDER_RULES)


@pytest.fixture(scope="module")
def absence_suppress_rules(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    return _load(tmp_path_factory.mktemp("absence"), ABSENCE_SUPPRESS_RULES)


@pytest.fixture(scope="module")
def index_rules(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    return _load(tmp_path_factory.mktemp("index"), INDEX_RULES)


EVENTS = st.lists(
    st.tuples(
        st.integers(0, 20),  # time on a 1s grid: ties happen
        st.sampled_from(["A", "B", "C", "D", "E"]),
        st.sampled_from(["k0", "k1", None, ""]),  # k
        st.sampled_from(["v0", "v1", "v2", None]),  # v
        st.sampled_from(["k0", "k1"]),  # j: joinable with k
        st.sampled_from(["bash", "curl", "zsh"]),  # proc.name
        st.booleans(),  # carries a uuid
    ),
    max_size=30,
)


def _payloads(events: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """In time order; equal times keep list order, which is their arrival order everywhere."""
    indexed = sorted(enumerate(events), key=lambda pair: (pair[1][0], pair[0]))
    out = []
    for index, (t, rule, k, v, j, proc, with_uuid) in indexed:
        fields = {"k": k, "v": v, "j": j, "proc.name": proc}
        uuid = f"uuid-{index}" if with_uuid else None
        out.append(payload(rule, t * S, output=f"e{index}", uuid=uuid, **fields))
    return out


def _shuffle(ordered: list[dict[str, Any]], delays: list[int]) -> list[dict[str, Any]]:
    """Arrival order: each event delayed by at most LATENESS; equal times keep relative order.

    An event e arriving after f implies f.t + df <= e.t + de, so f.t <= e.t + LATENESS: never late.
    Refilling the positions of each time value in the original order keeps the times seen at every
    position, so the bound still holds.
    """
    times = [_grid_time(raw) for raw in ordered]
    arrival = sorted(range(len(ordered)), key=lambda i: (times[i] + delays[i], i))
    by_time: dict[int, list[int]] = {}
    for i, t in enumerate(times):
        by_time.setdefault(t, []).append(i)
    cursor = dict.fromkeys(by_time, 0)
    result = []
    for i in arrival:
        t = times[i]
        result.append(ordered[by_time[t][cursor[t]]])
        cursor[t] += 1
    return result


def _grid_time(raw: dict[str, Any]) -> int:
    value = parse_time(raw["time"])
    assert value is not None
    return (value - T0) // S


def _run(
    rules: Ruleset,
    raws: list[dict[str, Any]],
    *,
    lateness: int,
    flush: bool,
    full_scan: bool = False,
) -> tuple[list[str], int]:
    feed = Feed(rules, lateness_ns=lateness * S)
    if full_scan:
        _disable_index(feed)
    for raw in raws:
        feed.raw(raw)
    feed.finish(flush=flush)
    return [json.dumps(i, sort_keys=True) for i in feed.incidents], feed.engine.stats.late


def _disable_index(feed: Feed) -> None:
    """Make the engine evaluate every plain condition of every correlation for every event."""
    engine = feed.engine
    every: list[StepTarget] = [
        (
            ci,
            si,
            step.condition.predicate,
            key_reader(step.by),
            corr.type is CorrelationType.ALL,
        )
        for ci, corr in enumerate(engine.correlations)
        for si, step in enumerate(corr.steps)
    ]
    engine.matcher._by_rule = {}  # the index and the prefilters are what this property is about
    engine.matcher._any_rule = every


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)


@PROPERTY
@given(events=EVENTS, data=st.data(), flush=st.booleans())
def test_results_do_not_depend_on_arrival_order_within_lateness(
    order_rules: Ruleset, events: list[tuple[Any, ...]], data: st.DataObject, flush: bool
) -> None:
    ordered = _payloads(events)
    delays = data.draw(
        st.lists(st.integers(0, LATENESS), min_size=len(ordered), max_size=len(ordered))
    )
    shuffled = _shuffle(ordered, delays)
    expected, _ = _run(order_rules, ordered, lateness=LATENESS, flush=flush)
    actual, late = _run(order_rules, shuffled, lateness=LATENESS, flush=flush)
    assert late == 0
    assert sorted(actual) == sorted(expected)


@PROPERTY
@given(events=EVENTS)
def test_lateness_does_not_change_results_of_an_ordered_stream_with_flush(
    order_rules: Ruleset, events: list[tuple[Any, ...]]
) -> None:
    ordered = _payloads(events)
    eager, _ = _run(order_rules, ordered, lateness=0, flush=True)
    patient, _ = _run(order_rules, ordered, lateness=LATENESS, flush=True)
    everything_at_the_end, _ = _run(order_rules, ordered, lateness=10**6, flush=True)
    assert sorted(eager) == sorted(patient) == sorted(everything_at_the_end)


@PROPERTY
@given(events=EVENTS, flush=st.booleans())
def test_replaying_twice_gives_identical_output(
    order_rules: Ruleset, events: list[tuple[Any, ...]], flush: bool
) -> None:
    ordered = _payloads(events)
    assert _run(order_rules, ordered, lateness=1, flush=flush) == _run(
        order_rules, ordered, lateness=1, flush=flush
    )


BEATS = st.lists(
    st.tuples(st.integers(0, 30), st.sampled_from(["C", "E"]), st.sampled_from(["k0", "k1"])),
    max_size=20,
)


@PROPERTY
@given(beats=BEATS)
def test_absence_under_long_suppression_does_not_depend_on_lateness(
    absence_suppress_rules: Ruleset, beats: list[tuple[int, str, str]]
) -> None:
    ordered = _payloads([(t, rule, "k0", None, j, "bash", False) for t, rule, j in beats])
    eager, _ = _run(absence_suppress_rules, ordered, lateness=0, flush=True)
    patient, _ = _run(absence_suppress_rules, ordered, lateness=10**6, flush=True)
    assert sorted(eager) == sorted(patient)


@PROPERTY
@given(events=EVENTS, flush=st.booleans())
def test_rule_index_gives_the_same_results_as_evaluating_every_condition(
    index_rules: Ruleset, events: list[tuple[Any, ...]], flush: bool
) -> None:
    ordered = _payloads(events)
    indexed, _ = _run(index_rules, ordered, lateness=1, flush=flush)
    scanned, _ = _run(index_rules, ordered, lateness=1, flush=flush, full_scan=True)
    assert indexed == scanned


@PROPERTY
@given(events=EVENTS, flush=st.booleans())
def test_rule_index_agrees_on_the_order_rules_too(
    order_rules: Ruleset, events: list[tuple[Any, ...]], flush: bool
) -> None:
    ordered = _payloads(events)
    indexed, _ = _run(order_rules, ordered, lateness=0, flush=flush)
    scanned, _ = _run(order_rules, ordered, lateness=0, flush=flush, full_scan=True)
    assert indexed == scanned


def test_property_rules_can_fire_every_correlation(order_rules: Ruleset) -> None:
    """Guards the properties against vacuity: each correlation fires on some stream."""
    events = [
        (0, "A", "k0", "v0", "k0", "bash", False),
        (1, "B", "k0", "v1", "k0", "curl", False),
        (2, "C", "k0", "v2", "k0", "curl", False),
        (3, "C", "k0", "v0", "k0", "curl", True),
        (3, "D", "k0", "v0", "k0", "curl", False),
        (4, "A", "k1", "v0", "k1", "bash", False),
        (4, "D", "k1", "v0", "k1", "curl", False),
        (5, "D", "k1", "v0", "k1", "curl", False),
        (6, "A", "k0", None, "k0", "zsh", False),
        (6, "B", "k0", None, "k0", "zsh", False),
        (6, "C", "k0", None, "k0", "zsh", False),
        (12, "A", "k0", None, "k1", "curl", False),
        (20, "E", "k0", None, "k1", "curl", False),
    ]
    out, _ = _run(order_rules, _payloads(events), lateness=LATENESS, flush=True)
    fired = {json.loads(i)["correlation"] for i in out}
    assert fired == {c.name for c in order_rules.correlations}
