"""The offline commands on rule language v2 (RULES-SPEC section 7): `replay`, `test`, `explain`
and `diff` with new terms and correlations of correlations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from _cli_support import Run, at, jsonl, parse_incidents

RULES = """
- correlation: foothold
  type: count
  by: [hostname]
  within: 10m
  threshold: 2
  condition: rule = Shell
- correlation: escape
  type: count
  by: [hostname]
  within: 10m
  threshold: 2
  condition: rule = Escape
- correlation: chain
  type: sequence
  by: [hostname]
  within: 1h
  steps:
    - {name: foothold, condition: correlation = foothold}
    - {name: escape, condition: correlation = escape}
- correlation: first destination
  type: new_term
  by: [hostname]
  fields: [fd.sip]
  within: 1h
  learn: 1m
  condition: rule = Conn
"""


def _event(rule: str, seconds: int, **fields: Any) -> dict[str, Any]:
    return {"rule": rule, "time": at(seconds), "hostname": "n1", "output_fields": fields}


def _setup(tmp_path: Path, *events: dict[str, Any]) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "events.jsonl").write_text(jsonl(*events))


def test_replay_emits_the_records_of_dependents_after_their_upstreams(
    run: Run, tmp_path: Path
) -> None:
    _setup(
        tmp_path,
        _event("Shell", 0),
        _event("Shell", 1),
        _event("Escape", 2),
        _event("Escape", 3),
        _event("Conn", 4, **{"fd.sip": "1.1.1.1"}),
        _event("Conn", 70, **{"fd.sip": "2.2.2.2"}),
    )
    result = run("replay", "--rules", "rules.yaml", "events.jsonl")
    assert result.returncode == 0, result.stderr
    incidents = parse_incidents(result.stdout)
    assert [i["correlation"] for i in incidents] == [
        "foothold",
        "escape",
        "chain",
        "first destination",
    ]
    chain = incidents[2]
    assert [e["uuid"] for e in chain["events"]] == [
        f"{incidents[0]['id']}:1",
        f"{incidents[1]['id']}:1",
    ]


def test_explain_says_which_upstream_record_was_missing(run: Run, tmp_path: Path) -> None:
    _setup(tmp_path, _event("Shell", 0), _event("Shell", 1), _event("Escape", 2))
    result = run("explain", "--rules", "rules.yaml", "--correlation", "chain", "events.jsonl")
    assert result.returncode == 0, result.stderr
    assert "step `escape` never matched" in result.stdout
    assert "it waits for records of `escape` (0 record(s) in this run, 0 took part here)" in (
        result.stdout
    )
    doc = orjson.loads(
        run(
            "explain", "--rules", "rules.yaml", "--correlation", "chain", "--json", "events.jsonl"
        ).stdout
    )
    assert doc["upstreams"] == [
        {"correlation": "escape", "steps": ["escape"], "records": 0, "took_part": 0},
        {"correlation": "foothold", "steps": ["foothold"], "records": 1, "took_part": 1},
    ]


def test_explain_says_why_a_new_term_did_not_fire(run: Run, tmp_path: Path) -> None:
    _setup(
        tmp_path,
        _event("Conn", 0, **{"fd.sip": "1.1.1.1"}),
        _event("Conn", 30, **{"fd.sip": "2.2.2.2"}),
        _event("Conn", 90, **{"fd.sip": "1.1.1.1"}),
    )
    result = run(
        "explain", "--rules", "rules.yaml", "--correlation", "first destination", "events.jsonl"
    )
    assert result.returncode == 0, result.stderr
    assert "new term of fd.sip, learn 1m" in result.stdout
    assert 'learning: new term ["1.1.1.1"], but the key learns from' in result.stdout
    assert "until 2024-01-01T00:01:00.000000000Z" in result.stdout
    assert 'known term: ["1.1.1.1"] was seen 1m30s before, within 1h' in result.stdout


def test_diff_compares_records_of_dependents(run: Run, tmp_path: Path) -> None:
    _setup(
        tmp_path,
        _event("Shell", 0),
        _event("Shell", 1),
        _event("Escape", 2),
        _event("Escape", 3),
    )
    (tmp_path / "no-chain.yaml").write_text(
        "- correlation: chain\n  enabled: false\n  override: {enabled: replace}\n"
    )
    result = run(
        "diff",
        "--rules",
        "rules.yaml",
        "--against",
        "rules.yaml",
        "--against",
        "no-chain.yaml",
        "events.jsonl",
    )
    assert result.returncode == 1, result.stderr  # differences found
    assert "1 only in OLD" in result.stdout
    assert "chain" in result.stdout


def test_rule_tests_may_expect_records_of_dependents(run: Run, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "chain.test.yaml").write_text(
        """
rules: [rules.yaml]
tests:
  - name: chain
    correlations: [chain]
    events:
      - {rule: Shell, at: +0s, hostname: n1}
      - {rule: Shell, at: +1s, hostname: n1}
      - {rule: Escape, at: +2s, hostname: n1}
      - {rule: Escape, at: +3s, hostname: n1}
    expect:
      - correlation: chain
        key: {hostname: n1}
        events: [foothold, escape]
        steps: [foothold, escape]
  - name: a wrong upstream name fails
    correlations: [chain]
    events:
      - {rule: Shell, at: +0s, hostname: n1}
      - {rule: Shell, at: +1s, hostname: n1}
      - {rule: Escape, at: +2s, hostname: n1}
      - {rule: Escape, at: +3s, hostname: n1}
    expect:
      - {correlation: chain, events: [escape, foothold]}
"""
    )
    result = run("test", "chain.test.yaml")
    assert result.returncode == 1
    assert "rule tests: 1 passed, 1 failed" in result.stdout
    assert "events are ['foothold', 'escape'], expected ['escape', 'foothold']" in result.stdout
