"""The global bound on correlation state (issue 10, `app.max_state_entries`) and packed events.

Keys past the bound are evicted least recently used first and counted (`stats.evicted_keys`);
suppression anchors have the same bound. Events kept in state are packed (JSON bytes), and the
incidents built from them are the same as from the original events.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest
from helpers import Feed, S, load, payload

from streams.core.correlators import SequenceState
from streams.core.engine import DEFAULT_MAX_STATE_ENTRIES, Engine
from streams.core.events import PackedEvent, event_from_dict
from streams.core.rules import Ruleset

RULES = """
- correlation: chain
  type: sequence
  by: [container.id]
  within: 10m
  suppress: 1h
  steps:
    - {name: a, condition: rule = A}
    - {name: b, condition: rule = B}
  output: "{{ key['container.id'] }}: {{ steps.a['proc.cmdline'] }} -> {{ steps.b.rule }}"
"""


@pytest.fixture
def chain(tmp_path: Path) -> Ruleset:
    return load(tmp_path, RULES)


def _send(feed: Feed, rule: str, at_s: int, container: str) -> list[dict[str, object]]:
    return feed.send(
        rule, at_s * S, **{"container.id": container, "proc.cmdline": f"sh {container}"}
    )


def test_default_bound_is_documented_value() -> None:
    assert DEFAULT_MAX_STATE_ENTRIES == 1_000_000


def test_keys_past_the_bound_are_evicted_least_recently_used_first(chain: Ruleset) -> None:
    feed = Feed(chain, max_state_entries=2)
    _send(feed, "A", 0, "c1")
    _send(feed, "A", 1, "c2")
    _send(feed, "A", 2, "c1")  # c1 used again: c2 is now the least recently used
    _send(feed, "A", 3, "c3")  # third key: c2 goes
    assert feed.engine.state_entries == 2
    assert feed.engine.stats.evicted_keys == 1
    assert _send(feed, "B", 4, "c2") == []  # its partial match was evicted
    [incident] = _send(feed, "B", 5, "c1")
    assert incident["output"] == "c1: sh c1 -> B"
    [incident] = _send(feed, "B", 6, "c3")
    assert incident["key"] == {"container.id": "c3"}


def test_suppression_anchors_have_the_same_bound(chain: Ruleset) -> None:
    feed = Feed(chain, max_state_entries=1)
    for at, container in enumerate(("c1", "c2")):
        _send(feed, "A", 2 * at, container)
        _send(feed, "B", 2 * at + 1, container)
    assert [i["status"] for i in feed.incidents] == ["new", "new"]
    assert feed.engine.stats.evicted_keys == 1  # c1's anchor, when c2's incident opened
    _send(feed, "A", 5, "c1")
    [again] = _send(feed, "B", 6, "c1")
    assert again["status"] == "new"  # its anchor was evicted: no longer an update
    assert again["id"] != feed.incidents[0]["id"]


def test_eviction_is_reported_as_a_change_to_a_persistent_host(chain: Ruleset) -> None:
    engine = Engine(chain, lateness_ns=0, max_state_entries=1, track_changes=True)
    for seq, container in enumerate(("c1", "c2")):
        raw = payload("A", seq * S, **{"container.id": container})
        engine.submit(event_from_dict(raw, seq))
    engine.advance_to(10**20)
    changed = engine.take_changes()
    ci = 0
    assert (ci, ("c1",)) in changed
    assert engine.entry(ci, ("c1",)) is None  # the host deletes its row
    assert engine.entry(ci, ("c2",)) is not None


def test_restore_respects_the_bound(chain: Ruleset) -> None:
    source = Engine(chain, lateness_ns=0, track_changes=True)
    for seq, container in enumerate(("c1", "c2", "c3")):
        source.submit(event_from_dict(payload("A", seq * S, **{"container.id": container}), seq))
    source.advance_to(10**20)
    target = Engine(chain, lateness_ns=0, max_state_entries=2)
    for key in (("c1",), ("c2",), ("c3",)):
        entry = source.entry(0, key)
        assert entry is not None
        target.restore(0, key, entry)
    assert target.state_entries == 2
    assert target.stats.evicted_keys == 1


def test_small_state_keeps_events_as_they_are(chain: Ruleset) -> None:
    feed = Feed(chain)
    _send(feed, "A", 0, "c1")
    state = feed.engine._states[(0, ("c1",))]
    assert isinstance(state, SequenceState)
    assert not isinstance(state.candidates[0][0], PackedEvent)


def test_large_state_keeps_events_packed_and_incidents_are_unchanged(chain: Ruleset) -> None:
    packed = Feed(chain, pack_state_above=0)
    _send(packed, "A", 0, "c1")
    state = packed.engine._states[(0, ("c1",))]
    assert isinstance(state, SequenceState)
    [[kept]] = state.candidates
    assert isinstance(kept, PackedEvent)
    assert kept.get("proc.cmdline") == "sh c1"
    assert kept.identity == event_from_dict(payload("A", 0, **{"container.id": "c1",
                                            "proc.cmdline": "sh c1"}), 0).identity  # fmt: skip
    [incident] = _send(packed, "B", 1, "c1")
    assert incident["events"][0]["output_fields"] == {"container.id": "c1", "proc.cmdline": "sh c1"}
    assert incident["events"][0]["output"] == "A at 0"
    assert incident["output"] == "c1: sh c1 -> B"


def test_an_event_kept_by_several_correlations_is_packed_once(tmp_path: Path) -> None:
    rules = load(tmp_path, RULES + RULES.replace("correlation: chain", "correlation: chain2"))
    feed = Feed(rules, pack_state_above=0)
    _send(feed, "A", 0, "c1")
    first = feed.engine._states[(0, ("c1",))]
    second = feed.engine._states[(1, ("c1",))]
    assert isinstance(first, SequenceState)
    assert isinstance(second, SequenceState)
    assert first.candidates[0][0] is second.candidates[0][0]


def test_memory_per_key_stays_near_the_packed_payload(chain: Ruleset) -> None:
    """About 0.9 KB of JSON per event; before packing a key cost about 3.2 KB."""
    fields = {f"field.{n}": f"value-{n}-" + "x" * 20 for n in range(20)}
    engine = Engine(chain, pack_state_above=100)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for seq in range(2000):
            raw = payload("A", seq * 1000, **{"container.id": f"c{seq}"}, **fields)
            engine.submit(event_from_dict(raw, seq))
        engine.finish()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert engine.state_entries == 2000
    assert used / 2000 < 2000


def test_state_restored_from_a_snapshot_keeps_its_events_packed(chain: Ruleset) -> None:
    from streams.core.snapshot import entry_from_data, entry_to_data

    source = Engine(chain, lateness_ns=0, track_changes=True)
    source.submit(event_from_dict(payload("A", 0, **{"container.id": "c1"}), 0))
    source.advance_to(10**20)
    entry = source.entry(0, ("c1",))
    assert entry is not None
    data = entry_to_data(chain.correlations[0], ("c1",), entry)
    restored = entry_from_data({"chain": (0, chain.correlations[0])}, data)
    assert restored is not None
    state = restored[2].state
    assert isinstance(state, SequenceState)
    assert isinstance(state.candidates[0][0], PackedEvent)


def test_a_partial_match_that_no_longer_fits_is_said_not_dropped_silently(chain: Ruleset) -> None:
    from streams.core.snapshot import entry_from_data, entry_to_data

    source = Engine(chain, lateness_ns=0, track_changes=True)
    source.submit(event_from_dict(payload("A", 0, **{"container.id": "c1"}), 0))
    source.advance_to(10**20)
    entry = source.entry(0, ("c1",))
    assert entry is not None
    data = entry_to_data(chain.correlations[0], ("c1",), entry)
    data["st"] = {"unexpected": "shape"}
    dropped: list[str] = []
    restored = entry_from_data({"chain": (0, chain.correlations[0])}, data, dropped)
    assert restored is not None
    assert restored[2].state is None
    assert len(dropped) == 1
    assert dropped[0].startswith("chain: ")
