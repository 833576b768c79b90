"""Correlation of correlations (RULES-SPEC section 7, C1-C7): derived events, their fields, their
position in the processing order, lateness, records over them, and ids."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
from helpers import NS, T0, Feed, S, iso, load

from streams.core.rules import Ruleset

UPSTREAM = """
- correlation: foothold
  type: count
  by: [hostname]
  within: 10s
  threshold: 2
  condition: rule = Shell
  severity: Warning
  tags: [mitre_execution]
  output: "foothold on {{ key.hostname }}"
"""


def _rules(tmp_path: Path, dependents: str, upstream: str = UPSTREAM) -> Ruleset:
    return load(tmp_path, upstream + dependents)


def _of(feed: Feed, name: str) -> list[dict[str, Any]]:
    return [i for i in feed.incidents if i["correlation"] == name]


def _foothold(feed: Feed, at: int, host: str = "n1", **fields: Any) -> None:
    feed.send("Shell", at, hostname=host, **fields)
    feed.send("Shell", at, hostname=host, **fields)


# -- C1 the derived event ------------------------------

ECHO = """
- correlation: echo
  type: count
  by: [container.id]
  within: 1m
  threshold: 2
  condition: correlation = foothold or rule = Echo
"""


def test_derived_event_carries_the_fields_of_c1(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, ECHO))
    feed.send(
        "Shell",
        0,
        hostname="n1",
        priority="Notice",
        **{"container.id": "c1", "k8s.ns.name": "prod", "container.name": ""},
    )
    feed.send("Shell", 1 * S, hostname="n1", priority="Error", **{"container.id": "c1"})
    feed.send("Echo", 2 * S, hostname="n2", **{"container.id": "c1"})
    feed.finish()
    (upstream,) = _of(feed, "foothold")
    (record,) = _of(feed, "echo")
    derived = record["events"][0]
    assert derived == {
        "step": "match",
        "uuid": f"{upstream['id']}:1",
        "time": iso(1 * S),
        "rule": "foothold",
        "priority": "Warning",
        "hostname": "n1",
        "output": "foothold on n1",
        "output_fields": {"k8s.ns.name": "prod", "container.id": "c1"},
        "tags": ["mitre_execution"],
    }
    assert record["key"] == {"container.id": "c1"}


def test_derived_event_hostname_is_the_context_hostname_when_not_in_by(tmp_path: Path) -> None:
    upstream = """
- correlation: per container
  type: count
  by: [container.id]
  within: 10s
  threshold: 2
  condition: rule = Shell
- correlation: echo
  type: count
  within: 1m
  threshold: 1
  condition: correlation = "per container"
"""
    rules = load(tmp_path, upstream.replace("threshold: 1", "threshold: 2"))
    feed = Feed(rules)
    for at, host in [(0, "n1"), (1, "n2"), (5, "n3"), (6, "n3")]:
        feed.send("Shell", at * S, hostname=host, **{"container.id": f"c{at // 5}"})
    feed.finish()
    (record,) = _of(feed, "echo")
    assert [e["hostname"] for e in record["events"]] == ["n2", "n3"]
    assert [e["output_fields"] for e in record["events"]] == [
        {"container.id": "c0"},
        {"container.id": "c1"},
    ]


def test_key_fields_win_over_context_and_top_level_names_are_not_copied(tmp_path: Path) -> None:
    upstream = """
- correlation: by rule
  type: count
  by: [rule, k8s.ns.name]
  within: 10s
  threshold: 2
  condition: rule = Shell
  output: x
- correlation: echo
  type: count
  within: 1m
  threshold: 2
  condition: correlation = "by rule" or rule = Echo
"""
    feed = Feed(load(tmp_path, upstream))
    feed.send("Shell", 0, **{"k8s.ns.name": "a"})
    feed.send("Shell", 1, **{"k8s.ns.name": "a"})
    feed.send("Echo", 2 * S)
    feed.finish()
    (record,) = _of(feed, "echo")
    assert record["events"][0]["output_fields"] == {"k8s.ns.name": "a"}
    assert record["events"][0]["rule"] == "by rule"


def test_default_severity_is_informational_when_no_priority_parses(tmp_path: Path) -> None:
    upstream = """
- correlation: vague
  type: count
  within: 10s
  threshold: 2
  condition: rule = Shell
- correlation: echo
  type: count
  within: 1m
  threshold: 2
  condition: (correlation = vague and priority = Informational) or rule = Echo
"""
    feed = Feed(load(tmp_path, upstream))
    feed.send("Shell", 0, priority="whatever")
    feed.send("Shell", 1, priority="whatever")
    feed.send("Echo", 2 * S)
    feed.finish()
    (vague,) = _of(feed, "vague")
    assert vague["severity"] == "Informational"
    assert len(_of(feed, "echo")) == 1


UPDATES = """
- correlation: updates only
  type: count
  by: [hostname]
  within: 1h
  threshold: 2
  condition: correlation = noisy and status = update and count >= 2
  output: "{{ events[0].uuid }} {{ events[1].uuid }}"
- correlation: incidents only
  type: count
  by: [hostname]
  within: 1h
  threshold: 2
  condition: correlation = noisy and status = new
"""

NOISY = """
- correlation: noisy
  type: count
  by: [hostname]
  within: 10s
  threshold: 2
  condition: rule = Shell
  suppress: 1h
"""


def test_update_records_are_derived_events_with_their_status_count_and_uuid(
    tmp_path: Path,
) -> None:
    feed = Feed(_rules(tmp_path, UPDATES, NOISY))
    for at in range(6):
        feed.send("Shell", at * S)
    feed.finish()
    noisy = _of(feed, "noisy")
    assert [i["status"] for i in noisy] == ["new", "update", "update"]
    (updates,) = _of(feed, "updates only")
    nid = noisy[0]["id"]
    assert updates["output"] == f"{nid}:2 {nid}:3"
    assert _of(feed, "incidents only") == []  # one `new` only


# -- C2 spoofing ------------------------------


def test_correlation_status_count_in_falco_json_are_null(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        UPSTREAM
        + """
- correlation: spoofable
  type: count
  within: 1m
  threshold: 1
  condition: correlation = foothold or status exists or count exists
""".replace("threshold: 1", "threshold: 2"),
    )
    feed = Feed(rules)
    for at in range(3):
        raw = {
            "time": iso(at * S),
            "rule": "Echo",
            "correlation": "foothold",
            "status": "new",
            "count": 1,
            "output_fields": {"correlation": "foothold", "status": "new", "count": 1},
        }
        feed.raw(raw)
    feed.finish()
    assert feed.incidents == []


def test_falco_event_named_like_a_correlation_is_not_a_derived_event(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, ECHO))
    feed.send("foothold", 0, **{"container.id": "c1"})
    feed.send("foothold", 1, **{"container.id": "c1"})
    feed.finish()
    assert feed.incidents == []


# -- C3 references ------------------------------


def test_correlation_that_references_nothing_never_sees_derived_events(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        """
- correlation: any warning
  type: count
  by: [hostname]
  within: 1m
  threshold: 3
  condition: priority >= Warning
- correlation: not equal is no reference
  type: count
  by: [hostname]
  within: 1m
  threshold: 1
  condition: correlation != other and rule = foothold
""".replace("threshold: 1", "threshold: 2"),
    )
    feed = Feed(rules)
    _foothold(feed, 0)  # two Warning events and one Warning record
    feed.finish()
    assert [i["correlation"] for i in feed.incidents] == ["foothold"]


def test_every_condition_of_a_referencing_correlation_applies_to_derived_events(
    tmp_path: Path,
) -> None:
    rules = _rules(
        tmp_path,
        """
- correlation: escalation
  type: sequence
  by: [hostname]
  within: 1m
  steps:
    - {name: foothold, condition: correlation = foothold}
    - {name: severe, condition: priority >= Critical and not correlation in (foothold)}
""",
    )
    feed = Feed(rules)
    _foothold(feed, 0)
    feed.send("Kernel module", 5 * S, hostname="n1", priority="Critical")
    feed.finish()
    (record,) = _of(feed, "escalation")
    assert [e["rule"] for e in record["events"]] == ["foothold", "Kernel module"]


# -- C4 position ------------------------------

AFTER = """
- correlation: then exec
  type: sequence
  by: [hostname]
  within: 1m
  steps:
    - {name: foothold, condition: correlation = foothold}
    - {name: exec, condition: rule = Exec}
- correlation: exec then
  type: sequence
  by: [hostname]
  within: 1m
  steps:
    - {name: exec, condition: rule = Exec}
    - {name: foothold, condition: correlation = foothold}
"""


def test_derived_event_comes_right_after_the_event_that_completed_the_match(
    tmp_path: Path,
) -> None:
    feed = Feed(_rules(tmp_path, AFTER))
    feed.send("Shell", 0)
    feed.send("Shell", 5 * S)  # completes foothold at 5s
    feed.send("Exec", 5 * S)  # same time, later arrival: after the derived event
    feed.finish()
    assert len(_of(feed, "then exec")) == 1
    assert _of(feed, "exec then") == []


def test_derived_event_comes_after_earlier_arrivals_of_the_same_time(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, AFTER))
    feed.send("Shell", 0)
    feed.send("Exec", 5 * S)  # same time, earlier arrival
    feed.send("Shell", 5 * S)
    feed.finish()
    assert _of(feed, "then exec") == []
    assert len(_of(feed, "exec then")) == 1


SIBLINGS = """
- correlation: beta
  type: count
  within: 10s
  threshold: 1
  condition: rule = X
- correlation: alpha
  type: count
  within: 10s
  threshold: 1
  condition: rule = X
- correlation: alpha then beta
  type: sequence
  within: 1m
  steps:
    - {name: a, condition: correlation = alpha}
    - {name: b, condition: correlation = beta}
- correlation: beta then alpha
  type: sequence
  within: 1m
  steps:
    - {name: b, condition: correlation = beta}
    - {name: a, condition: correlation = alpha}
""".replace("threshold: 1", "threshold: 2")


def test_sibling_derived_events_are_ordered_by_correlation_name(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, SIBLINGS))
    feed.send("X", 0)
    feed.send("X", 1)  # completes beta and alpha (beta is declared first)
    feed.finish()
    assert len(_of(feed, "alpha then beta")) == 1
    assert _of(feed, "beta then alpha") == []


def test_derived_events_of_one_correlation_at_one_position_are_ordered_by_key_text(
    tmp_path: Path,
) -> None:
    rules = load(
        tmp_path,
        """
- correlation: per value
  type: absence
  by: [v]
  within: 10s
  trigger: {condition: rule = X}
  expect: {condition: rule = Y}
- correlation: both
  type: count
  within: 10s
  threshold: 2
  condition: correlation = "per value"
  output: "{{ events[0]['v'] }} {{ events[1]['v'] }}"
""",
    )
    feed = Feed(rules)
    feed.send("X", 0, v=9)
    feed.send("X", 0, v="10")  # both due at 10s: keys "10" < "9" as text
    feed.finish(flush=True)
    (both,) = _of(feed, "both")
    assert both["output"] == "10 9"


CHAIN_OF_CHAINS = """
- correlation: escalation
  type: count
  by: [hostname]
  within: 1m
  threshold: 2
  condition: correlation = foothold or rule = Sudo
- correlation: campaign
  type: sequence
  by: [hostname]
  within: 1m
  steps:
    - {name: escalation, condition: correlation = escalation}
    - {name: next, condition: rule = Sudo}
"""


def test_derived_event_of_a_derived_event_follows_its_parent_at_once(tmp_path: Path) -> None:
    feed = Feed(_rules(tmp_path, CHAIN_OF_CHAINS))
    feed.send("Sudo", 0)
    feed.send("Shell", 1 * S)
    feed.send("Shell", 1 * S)  # foothold -> escalation (with Sudo) -> campaign's first step
    feed.send("Sudo", 1 * S)  # same time, later arrival: after the whole chain
    feed.finish()
    assert [i["correlation"] for i in feed.incidents] == ["foothold", "escalation", "campaign"]
    (campaign,) = _of(feed, "campaign")
    assert campaign["events"][0]["uuid"] == f"{_of(feed, 'escalation')[0]['id']}:1"


ABSENT = """
- correlation: silent
  type: absence
  by: [hostname]
  within: 10s
  trigger: {condition: rule = Start}
  expect: {condition: rule = Done}
- correlation: silent then x
  type: sequence
  by: [hostname]
  within: 1m
  steps:
    - {name: silent, condition: correlation = silent}
    - {name: x, condition: rule = X}
- correlation: x then silent
  type: sequence
  by: [hostname]
  within: 1m
  steps:
    - {name: x, condition: rule = X}
    - {name: silent, condition: correlation = silent}
"""


def test_absence_derived_event_comes_after_every_event_of_its_deadline(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, ABSENT))
    feed.send("Start", 0)
    feed.send("X", 10 * S)  # at the deadline: before the derived event
    feed.finish(flush=True)
    (silent,) = _of(feed, "silent")
    assert silent["last_seen"] == iso(0)  # the record keeps the trigger's time
    (record,) = _of(feed, "x then silent")
    assert record["events"][1]["time"] == iso(10 * S)  # the derived event is at the deadline
    assert _of(feed, "silent then x") == []


def test_absence_derived_event_comes_before_later_events(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, ABSENT))
    feed.send("Start", 0)
    feed.send("X", 10 * S + 1 * NS)
    feed.finish(flush=True)
    assert len(_of(feed, "silent then x")) == 1
    assert _of(feed, "x then silent") == []


def test_expect_at_the_deadline_clears_a_dependent_absence_wherever_its_position(
    tmp_path: Path,
) -> None:
    rules = load(
        tmp_path,
        """
- correlation: b silent
  type: absence
  by: [hostname]
  within: 10s
  trigger: {condition: rule = Start}
  expect: {condition: rule = Done}
- correlation: a watcher
  type: absence
  by: [hostname]
  within: 10s
  trigger: {condition: rule = Start}
  expect: {condition: correlation = "b silent"}
""",
    )
    feed = Feed(rules)
    feed.send("Start", 0)
    feed.finish(flush=True)
    assert [i["correlation"] for i in feed.incidents] == ["b silent"]


# -- C5 lateness and watermark ------------------------------


def test_derived_events_are_never_late_and_do_not_move_the_watermark(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, ABSENT), lateness_ns=0)
    feed.send("Start", 0)
    feed.send("Other", 60 * S)  # fires the absence at 10s, far below the watermark
    feed.send("X", 60 * S + 1)
    feed.finish()
    assert feed.engine.stats.late == 0
    assert feed.engine.watermark_ns == T0 + 60 * S + 1
    assert len(_of(feed, "silent then x")) == 1


def test_absence_derived_event_exists_only_once_the_absence_fires(tmp_path: Path) -> None:
    rules = load(tmp_path, ABSENT)
    feed = Feed(rules, lateness_ns=5 * S)
    feed.send("Start", 0)
    feed.send("X", 12 * S)  # watermark 7s: the deadline 10s is not below it
    feed.finish()
    assert feed.incidents == []
    flushed = Feed(rules, lateness_ns=5 * S)
    flushed.send("Start", 0)
    flushed.send("X", 12 * S)
    flushed.finish(flush=True)
    assert len(_of(flushed, "silent then x")) == 1


# -- C6 records over derived events ------------------------------


def test_record_over_derived_events_uses_their_times_and_its_own_by(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        """
- correlation: repeat
  type: count
  by: [k8s.ns.name]
  within: 60s
  threshold: 2
  condition: correlation = foothold
""",
        UPSTREAM.replace("within: 10s", "within: 1h"),
    )
    feed = Feed(rules)
    feed.send("Shell", 0, hostname="n1", **{"k8s.ns.name": "prod"})
    feed.send("Shell", 1000 * S, hostname="n1", **{"k8s.ns.name": "prod"})  # foothold 1
    feed.send("Shell", 1010 * S, hostname="n2", **{"k8s.ns.name": "prod"})
    feed.send("Shell", 1060 * S, hostname="n2", **{"k8s.ns.name": "prod"})  # foothold 2
    feed.finish()
    (record,) = _of(feed, "repeat")
    assert record["key"] == {"k8s.ns.name": "prod"}
    assert record["first_seen"] == iso(1000 * S)
    assert record["last_seen"] == iso(1060 * S)
    assert [e["hostname"] for e in record["events"]] == ["n1", "n2"]


def test_window_over_derived_events_one_nanosecond_too_wide_does_not_fire(
    tmp_path: Path,
) -> None:
    rules = _rules(
        tmp_path,
        """
- correlation: repeat
  type: count
  within: 60s
  threshold: 2
  condition: correlation = foothold
""",
    )
    feed = Feed(rules)
    _foothold(feed, 0, host="n1")
    _foothold(feed, 60 * S + 1 * NS, host="n2")
    feed.finish()
    assert _of(feed, "repeat") == []


# -- C7 ids ------------------------------


def _sha(material: Any) -> str:
    return hashlib.sha256(orjson.dumps(material)).hexdigest()[:32]


def test_incident_id_follows_the_fixed_formula(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        """
- correlation: chain
  type: count
  by: [hostname, k8s.ns.name]
  within: 1m
  threshold: 2
  condition: correlation = foothold
""",
    )
    feed = Feed(rules)
    feed.send("Shell", 0, hostname="nœud", output="o1", **{"k8s.ns.name": "prød"})
    feed.send("Shell", 1, hostname="nœud", uuid="u-2", **{"k8s.ns.name": "prød"})
    _foothold(feed, 5 * S, host="nœud", **{"k8s.ns.name": "prød"})
    feed.finish()
    first, second = _of(feed, "foothold")
    identity = _sha([T0, "Shell", "nœud", "o1"])
    expected = '["foothold",[["hostname","nœud"]],"' + identity + '"]'
    assert first["id"] == hashlib.sha256(expected.encode()).hexdigest()[:32]
    (chain,) = _of(feed, "chain")
    chain_material = [
        "chain",
        [["hostname", "nœud"], ["k8s.ns.name", "prød"]],
        f"{first['id']}:1",
    ]
    assert chain["id"] == _sha(chain_material)
    assert second["id"] != first["id"]
