"""`new_term` correlations (RULES-SPEC section 7, N1-N5): terms, history, learning, firing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from helpers import NS, T0, Feed, S, iso, load

from streams.core.engine import Engine
from streams.core.events import event_from_dict
from streams.core.new_term import NewTermState
from streams.core.rules import Ruleset
from streams.core.snapshot import entry_from_data, entry_to_data

WITHIN = 100 * S


def _rules(tmp_path: Path, *, learn: str = "0s", extra: str = "", by: str = "[k]") -> Ruleset:
    return load(
        tmp_path,
        f"""
        - correlation: first destination
          type: new_term
          by: {by}
          fields: [dst]
          within: 100s
          learn: {learn}
          condition: rule = Conn
          output: "new {{{{ term['dst'] }}}} for {{{{ key }}}} ({{{{ count }}}})"
        {extra}
        """,
    )


def _conn(feed: Feed, at: int, dst: Any, k: Any = "c1", **kw: Any) -> list[dict[str, Any]]:
    return feed.send("Conn", at, k=k, dst=dst, **kw)


# -- N1 taking part ------------------------------


def test_event_whose_term_field_is_missing_null_empty_or_a_list_takes_no_part(
    tmp_path: Path,
) -> None:
    feed = Feed(_rules(tmp_path, learn="10s"))
    feed.send("Conn", 0, k="c1")  # no dst
    _conn(feed, 1 * S, None)
    _conn(feed, 2 * S, "")
    _conn(feed, 3 * S, ["a"])
    # none of them started the learning period: the key's first taking-part event is at 20s
    assert _conn(feed, 20 * S, "a") == []
    assert _conn(feed, 29 * S, "b") == []
    assert len(_conn(feed, 30 * S, "c")) == 1


def test_event_without_its_by_field_takes_no_part(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path))
    assert feed.send("Conn", 0, dst="a") == []
    assert feed.engine.state_entries == 0


def test_integer_and_its_decimal_text_are_the_same_term(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path))
    assert len(_conn(feed, 0, 443)) == 1
    assert _conn(feed, 1 * S, "443") == []


def test_tags_never_resolve_as_a_term_field(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: new tags
          type: new_term
          fields: [tags]
          within: 10s
          learn: 0s
          condition: rule = Conn
        """,
    )
    feed = Feed(rules)
    assert feed.send("Conn", 0, tags=["a"]) == []


def test_term_of_several_fields_is_the_tuple(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: new pair
          type: new_term
          by: [k]
          fields: [dst, port]
          within: 10s
          learn: 0s
          condition: rule = Conn
          output: "{{ term['dst'] }}:{{ term['port'] }}"
        """,
    )
    feed = Feed(rules)
    assert len(feed.send("Conn", 0, k="c", dst="a", port=1)) == 1
    assert feed.send("Conn", 1 * S, k="c", dst="a", port="1") == []
    out = feed.send("Conn", 2 * S, k="c", dst="a", port=2)
    assert [i["output"] for i in out] == ["a:2"]


# -- N2/N3 history ------------------------------


def test_sighting_exactly_within_before_still_counts(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path))
    assert len(_conn(feed, 0, "a")) == 1
    _conn(feed, 50 * S, "keepalive")
    assert _conn(feed, WITHIN, "a") == []


def test_sighting_one_nanosecond_older_than_within_does_not_count(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path))
    assert len(_conn(feed, 0, "a")) == 1
    _conn(feed, 50 * S, "keepalive")
    out = _conn(feed, WITHIN + 1 * NS, "a")
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(WITHIN + 1)


def test_every_taking_part_event_is_a_sighting_also_during_learning(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, learn="10s"))
    _conn(feed, 0, "a")  # T0, learning
    _conn(feed, 5 * S, "b")  # learning: seen, not fired
    _conn(feed, 10 * S, "b")
    _conn(feed, 10 * S, "c")
    feed.finish()
    assert [i["events"][0]["output_fields"]["dst"] for i in feed.incidents] == ["c"]


def test_equal_times_count_as_earlier_in_arrival_order(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path))
    _conn(feed, 0, "a", output="first")
    _conn(feed, 0, "a", output="second")
    feed.finish()
    assert [i["events"][0]["output"] for i in feed.incidents] == ["first"]


def test_firing_and_suppression_never_remove_the_history(tmp_path: Path) -> None:
    rules = _rules(tmp_path).correlations[0]
    assert rules.suppress_ns is None
    feed = Feed(_rules(tmp_path))
    assert len(_conn(feed, 0, "a")) == 1
    assert _conn(feed, 1 * S, "a") == []
    assert _conn(feed, 2 * S, "a") == []


def test_terms_are_per_key(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path))
    assert len(_conn(feed, 0, "a", k="c1")) == 1
    assert len(_conn(feed, 1 * S, "a", k="c2")) == 1


# -- N4 learning ------------------------------


def test_new_term_one_nanosecond_before_learning_ends_does_not_fire(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, learn="10s"))
    _conn(feed, 0, "a")
    assert _conn(feed, 10 * S - 1 * NS, "b") == []


def test_new_term_exactly_when_learning_ends_fires(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, learn="10s"))
    _conn(feed, 0, "a")
    assert len(_conn(feed, 10 * S, "b")) == 1


def test_learn_zero_fires_the_first_term_of_every_key(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, learn="0s"))
    _conn(feed, 0, "a", k="c1")
    _conn(feed, 0, "a", k="c2")
    feed.finish()
    assert [i["key"] for i in feed.incidents] == [{"k": "c1"}, {"k": "c2"}]


def test_learn_defaults_to_within(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: first destination
          type: new_term
          by: [k]
          fields: [dst]
          within: 100s
          condition: rule = Conn
        """,
    )
    assert rules.correlations[0].learn_ns == WITHIN
    feed = Feed(rules)
    _conn(feed, 0, "a")
    for at in range(1, 10):  # keep the key busy: never idle more than `within`
        _conn(feed, at * 10 * S, "a")
    assert _conn(feed, WITHIN - 1, "b") == []
    assert len(_conn(feed, WITHIN, "c")) == 1


def test_key_idle_more_than_within_is_forgotten_and_learns_again(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, learn="10s"))
    _conn(feed, 0, "a")
    assert len(_conn(feed, 10 * S, "b")) == 1
    idle_end = 10 * S + WITHIN + 1 * NS  # no taking-part event in the last `within`
    assert _conn(feed, idle_end, "c") == []  # a new learning period starts here
    assert _conn(feed, idle_end + 10 * S - 1, "d") == []
    assert len(_conn(feed, idle_end + 10 * S, "e")) == 1


def test_key_idle_exactly_within_is_not_forgotten(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, learn="10s"))
    _conn(feed, 0, "a")
    _conn(feed, 10 * S, "b")
    assert _conn(feed, 10 * S + WITHIN, "b") == []  # seen exactly `within` before
    assert len(_conn(feed, 10 * S + WITHIN + 1, "c")) == 1  # not learning again: fires


def test_idle_key_state_is_swept(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path))
    _conn(feed, 0, "a", k="c1")
    for at in range(1, 2000):
        feed.send("Other", at * S, k="c2")
    assert feed.engine.state_entries == 0


# -- N5 firing ------------------------------


def test_record_has_the_new_term_event_only(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, learn="10s"))
    _conn(feed, 0, "a")
    (record,) = _conn(feed, 12 * S, "b", output="to b")
    assert record["type"] == "new_term"
    assert record["key"] == {"k": "c1"}
    assert [e["step"] for e in record["events"]] == ["term"]
    assert record["events"][0]["output"] == "to b"
    assert record["first_seen"] == record["last_seen"] == iso(12 * S)
    assert record["output"] == "new b for {'k': 'c1'} (1)"


def test_suppression_is_per_key_not_per_term(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: first destination
          type: new_term
          by: [k]
          fields: [dst]
          within: 100s
          learn: 0s
          suppress: 30s
          condition: rule = Conn
        """,
    )
    feed = Feed(rules)
    (new,) = _conn(feed, 0, "a")
    (update,) = _conn(feed, 29 * S, "b")
    (again,) = _conn(feed, 30 * S, "c")
    assert new["status"] == "new"
    assert update["status"] == "update"
    assert update["id"] == new["id"]
    assert update["count"] == 2
    assert update["first_seen"] == new["first_seen"]
    assert again["status"] == "new"
    assert again["id"] != new["id"]


def test_term_template_variable_is_empty_for_other_types(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: two
          type: count
          within: 10s
          threshold: 2
          condition: rule = Conn
          output: "{{ term }}"
        """,
    )
    feed = Feed(rules)
    _conn(feed, 0, "a")
    assert [i["output"] for i in _conn(feed, 1, "a")] == ["{}"]


# -- bounded state ------------------------------


def test_per_key_cap_evicts_the_least_recently_seen_term_and_counts_it(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path), max_pending=2)
    _conn(feed, 0, "a")
    _conn(feed, 1 * S, "b")
    _conn(feed, 2 * S, "a")  # a is now the most recent
    _conn(feed, 3 * S, "c")  # evicts b
    assert feed.engine.stats.evicted == 1
    assert _conn(feed, 4 * S, "a") == []
    assert len(_conn(feed, 5 * S, "b")) == 1  # forgotten: new again


def test_state_keeps_only_t0_and_the_last_sighting_per_term(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path))
    for at in range(50):
        _conn(feed, at * S, f"d{at % 3}")
    ((ci, key),) = feed.engine.entry_keys()
    entry = feed.engine.entry(ci, key)
    assert entry is not None
    state = entry.state
    assert isinstance(state, NewTermState)
    assert state.t0 == T0
    assert state.terms == {"d2": T0 + 47 * S, "d0": T0 + 48 * S, "d1": T0 + 49 * S}


def test_new_term_state_survives_a_snapshot_round_trip(tmp_path: Path) -> None:
    rules = _rules(tmp_path, learn="10s")
    by_name = {c.name: (i, c) for i, c in enumerate(rules.correlations)}
    payloads = [
        {"rule": "Conn", "time": iso(at * S), "output_fields": {"k": "c1", "dst": dst}}
        for at, dst in [(0, "a"), (3, "b"), (11, "a"), (12, "c"), (13, "b"), (14, "d")]
    ]
    reference = Engine(rules, lateness_ns=0)
    expected = [
        r for seq, p in enumerate(payloads) for r in reference.submit(event_from_dict(p, seq))
    ]
    assert [r["events"][0]["output_fields"]["dst"] for r in expected] == ["c", "d"]
    first = Engine(rules, lateness_ns=0, track_changes=True)
    got = [r for seq, p in enumerate(payloads[:3]) for r in first.submit(event_from_dict(p, seq))]
    second = Engine(rules, lateness_ns=0, track_changes=True)
    for ci, key in first.entry_keys():
        entry = first.entry(ci, key)
        assert entry is not None
        data = orjson.loads(orjson.dumps(entry_to_data(rules.correlations[ci], key, entry)))
        restored = entry_from_data(by_name, data)
        assert restored is not None
        second.restore(*restored)
    second.restore_clock(first.max_time_ns, first.watermark_ns)
    got += [
        r for seq, p in enumerate(payloads[3:], 3) for r in second.submit(event_from_dict(p, seq))
    ]
    assert [r["id"] for r in got] == [r["id"] for r in expected]
