"""`falco-correlator explain`: text and JSON output, key filters, near misses, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from _cli_support import CLI_RULES, SHIPPED_RULES, Run, at, burst, jsonl, parse_incidents

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "deploy" / "demo" / "attack.jsonl"


def shell(seconds: int, container: str = "c1") -> dict[str, Any]:
    return {"rule": "Shell", "time": at(seconds), "output_fields": {"container.id": container}}


def egress(seconds: int, container: str | None = "c1") -> dict[str, Any]:
    return {"rule": "Egress", "time": at(seconds), "output_fields": {"container.id": container}}


def explain_json(run: Run, *args: str | Path) -> dict[str, Any]:
    result = run("explain", "--rules", CLI_RULES, *args, "--json", "events.jsonl")
    assert result.returncode == 0, result.stderr
    doc = orjson.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def test_text_explains_a_fired_chain_with_the_incident_id_replay_gives(
    run: Run, tmp_path: Path
) -> None:
    replay = run("replay", "--rules", SHIPPED_RULES, DEMO)
    ids = {i["correlation"]: i["id"] for i in parse_incidents(replay.stdout)}
    result = run(
        "explain", "--rules", SHIPPED_RULES, "--correlation", "Shell then outbound connection", DEMO
    )
    assert result.returncode == 0, result.stderr
    assert f"fired: new incident {ids['Shell then outbound connection']}" in result.stdout
    assert "key container.id=ee97d9c4186f" in result.stdout
    assert "Terminal shell in container" in result.stdout


def test_json_lists_every_key_with_its_attempts_and_reasons(run: Run, tmp_path: Path) -> None:
    events = [shell(0), egress(30), shell(40, "c2"), egress(60, None), shell(100, "c3")]
    (tmp_path / "events.jsonl").write_text(jsonl(*events))
    doc = explain_json(run, "--correlation", "Shell then egress")
    assert doc["correlation"]["name"] == "Shell then egress"
    assert doc["correlation"]["within"] == "10m"
    reasons = {tuple(k["key"].values()): [a["reason"] for a in k["attempts"]] for k in doc["keys"]}
    assert reasons == {
        ("c1",): ["fired"],
        ("c2",): ["by_field_missing"],
        ("c3",): ["never_matched"],
    }
    [c2] = [k for k in doc["keys"] if k["key"] == {"container.id": "c2"}]
    [attempt] = c2["attempts"]
    assert attempt["step"] == "egress"
    assert attempt["hits"][0]["fields"] == {"container.id": "c2"}
    assert attempt["other"]["fields"] == {"container.id": None}
    assert doc["unkeyed"][0]["missing_by"] == ["container.id"]
    assert doc["summary"] == {"fired": 1, "by_field_missing": 1, "never_matched": 1}
    assert "near_miss" not in doc


def test_key_filters_keep_only_matching_keys(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(shell(0), shell(1, "c2"), egress(2, "c2")))
    doc = explain_json(run, "--correlation", "Shell then egress", "--key", "container.id=c2")
    assert [k["key"] for k in doc["keys"]] == [{"container.id": "c2"}]


def test_near_miss_ranks_across_keys_and_top_limits_them(run: Run, tmp_path: Path) -> None:
    events = [
        shell(0, "early"),
        shell(5, "late-egress"),
        shell(10, "never"),
        egress(700, "late-egress"),
    ]
    (tmp_path / "events.jsonl").write_text(jsonl(*events))
    doc = explain_json(run, "--correlation", "Shell then egress", "--near-miss", "--top", "2")
    ranked = [(m["key"]["container.id"], m["reason"]) for m in doc["near_miss"]]
    assert ranked == [("late-egress", "outside_within"), ("never", "never_matched")]
    text = run(
        "explain",
        "--rules",
        CLI_RULES,
        "--correlation",
        "Shell then egress",
        "--near-miss",
        "events.jsonl",
    )
    assert text.returncode == 0
    assert "near misses, best first (3 shown)" in text.stdout
    assert text.stdout.index("late-egress") < text.stdout.index("container.id=never")


def test_count_and_max_pending_report_evictions(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(burst(0), burst(10)))
    doc = explain_json(run, "--correlation", "Burst", "--max-pending", "1")
    [key] = doc["keys"]
    [attempt] = key["attempts"]  # the window opened at 10 s lies inside this one
    assert attempt["reason"] == "evicted"
    assert [h["time"] for h in attempt["hits"]] == [
        "2024-01-01T00:00:00.000000000Z",
        "2024-01-01T00:00:10.000000000Z",
    ]
    assert doc["input"]["max_pending"] == 1


def test_invalid_lines_are_reported_and_the_run_still_explains(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("not json\n" + jsonl(shell(0)))
    result = run(
        "explain", "--rules", CLI_RULES, "--correlation", "Shell then egress", "events.jsonl"
    )
    assert result.returncode == 0
    assert "events.jsonl:1: skipped: not JSON" in result.stderr
    assert "input: 2 lines, 1 invalid, 0 late" in result.stdout


def test_usage_errors_exit_2(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(shell(0)))
    (tmp_path / "off.yaml").write_text(
        "- correlation: Burst\n  enabled: false\n  override: {enabled: replace}\n"
    )
    cases = [
        (["--correlation", "Nope"], "no correlation named 'Nope'; loaded: Burst, Heartbeat lost"),
        (["--correlation", "Burst", "--rules", "off.yaml"], "'Burst' is disabled"),
        (["--correlation", "Burst", "--key", "hostname=h1"], "not a `by` field of 'Burst'"),
        (["--correlation", "Burst", "--key", "container.id"], "--key expects FIELD=VALUE"),
    ]
    for args, message in cases:
        result = run("explain", "--rules", CLI_RULES, *args, "events.jsonl")
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert result.stdout == ""


def test_rule_errors_exit_2_with_their_location(run: Run, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("- correlation: X\n  type: nope\n")
    (tmp_path / "events.jsonl").write_text(jsonl(shell(0)))
    result = run("explain", "--rules", "bad.yaml", "--correlation", "X", "events.jsonl")
    assert result.returncode == 2
    assert "bad.yaml:2:9:" in result.stderr
