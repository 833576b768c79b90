"""`falco-correlator replay` (spec sections 1, 4, 6): files, stdin, lateness, flush, bad lines."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from _cli_support import (
    CLI_RULES,
    FIXTURES,
    SHIPPED_RULES,
    Run,
    at,
    burst,
    heartbeat,
    jsonl,
    parse_incidents,
)

ID = re.compile(r"^[0-9a-f]{32}$")


def _position_lines(stderr: str, name: str) -> dict[int, str]:
    """`NAME:LINE: reason` lines of stderr, by line number."""
    found = {}
    for row in stderr.splitlines():
        match = re.match(rf"^{re.escape(name)}:(\d+): (\S.*)$", row)
        if match:
            found[int(match[1])] = match[2]
    return found


def test_incidents_are_json_lines_on_stdout(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(burst(0), burst(10), burst(20)))
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert result.returncode == 0, result.stderr
    [incident] = parse_incidents(result.stdout)
    assert ID.match(incident["id"])
    assert incident["status"] == "new"
    assert incident["correlation"] == "Burst"
    assert incident["type"] == "count"
    assert incident["severity"] == "Warning"
    assert incident["key"] == {"container.id": "c1"}
    assert incident["count"] == 1
    assert incident["first_seen"] == "2024-01-01T00:00:00.000000000Z"
    assert incident["last_seen"] == "2024-01-01T00:00:20.000000000Z"
    assert len(incident["events"]) == 3
    assert incident["output"] == "3 bursts in c1"
    assert result.stderr.strip(), "a summary is written to stderr"


def test_no_match_gives_empty_stdout_and_exit_0(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(burst(0), burst(10)))
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert result.returncode == 0
    assert result.stdout == ""


def test_several_files_are_one_stream(run: Run, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(jsonl(burst(0)))
    (tmp_path / "b.jsonl").write_text(jsonl(burst(10), burst(20)))
    result = run("replay", "--rules", CLI_RULES, "a.jsonl", "b.jsonl")
    assert result.returncode == 0, result.stderr
    [incident] = parse_incidents(result.stdout)
    assert [e["time"] for e in incident["events"]] == [
        "2024-01-01T00:00:00.000000000Z",
        "2024-01-01T00:00:10.000000000Z",
        "2024-01-01T00:00:20.000000000Z",
    ]


def test_several_rules_options_are_combined(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(burst(0), burst(10), burst(20)))
    result = run(
        "replay",
        "--rules",
        CLI_RULES / "00-lists-macros.yaml",
        "--rules",
        CLI_RULES / "correlations.yaml",
        "events.jsonl",
    )
    assert result.returncode == 0, result.stderr
    assert len(parse_incidents(result.stdout)) == 1


@pytest.mark.parametrize("args", [[], ["-"]], ids=["no-file", "dash"])
def test_events_are_read_from_stdin(run: Run, args: list[str]) -> None:
    result = run("replay", "--rules", CLI_RULES, *args, stdin=jsonl(burst(0), burst(10), burst(20)))
    assert result.returncode == 0, result.stderr
    [incident] = parse_incidents(result.stdout)
    assert incident["correlation"] == "Burst"


def test_dash_mixes_stdin_with_files(run: Run, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(jsonl(burst(0)))
    result = run("replay", "--rules", CLI_RULES, "a.jsonl", "-", stdin=jsonl(burst(10), burst(20)))
    assert result.returncode == 0, result.stderr
    assert len(parse_incidents(result.stdout)) == 1


def test_event_older_than_lateness_is_late_and_reported(run: Run, tmp_path: Path) -> None:
    # Arrival 0s, 30s, 10s: with the default 10s lateness the watermark is 20s when 10s arrives.
    (tmp_path / "events.jsonl").write_text(jsonl(burst(0), burst(30), burst(10)))
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert result.returncode == 0
    assert parse_incidents(result.stdout) == []
    assert list(_position_lines(result.stderr, "events.jsonl")) == [3]


@pytest.mark.parametrize("lateness", ["30s", "1m", "20s"])
def test_lateness_option_accepts_more_disorder(run: Run, tmp_path: Path, lateness: str) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(burst(0), burst(30), burst(10)))
    result = run("replay", "--rules", CLI_RULES, "--lateness", lateness, "events.jsonl")
    assert result.returncode == 0, result.stderr
    [incident] = parse_incidents(result.stdout)
    assert [e["time"][17:19] for e in incident["events"]] == ["00", "10", "30"]


def test_lateness_zero_makes_any_older_event_late(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(burst(0), burst(11), burst(10), burst(12)))
    result = run("replay", "--rules", CLI_RULES, "--lateness", "0s", "events.jsonl")
    assert result.returncode == 0
    assert list(_position_lines(result.stderr, "events.jsonl")) == [3]
    [incident] = parse_incidents(result.stdout)
    assert len(incident["events"]) == 3


def test_bad_lateness_is_a_usage_error(run: Run) -> None:
    result = run("replay", "--rules", CLI_RULES, "--lateness", "soon", stdin="")
    assert result.returncode != 0


def test_pending_absence_fires_at_end_only_with_flush(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(jsonl(heartbeat(0)))
    plain = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert plain.returncode == 0
    assert parse_incidents(plain.stdout) == []

    flushed = run("replay", "--rules", CLI_RULES, "--flush", "events.jsonl")
    assert flushed.returncode == 0
    [incident] = parse_incidents(flushed.stdout)
    assert incident["correlation"] == "Heartbeat lost"
    assert incident["key"] == {"hostname": "h1"}
    assert incident["first_seen"] == incident["last_seen"] == "2024-01-01T00:00:00.000000000Z"
    assert len(incident["events"]) == 1


def test_absence_past_the_final_watermark_fires_without_flush(run: Run, tmp_path: Path) -> None:
    # h1 is due at 60s; h2's last heartbeat (150s) is due at 210s, above the final watermark 140s.
    events = [
        heartbeat(0, "h1"),
        heartbeat(0, "h2"),
        heartbeat(50, "h2"),
        heartbeat(100, "h2"),
        heartbeat(150, "h2"),
    ]
    (tmp_path / "events.jsonl").write_text(jsonl(*events))
    plain = parse_incidents(run("replay", "--rules", CLI_RULES, "events.jsonl").stdout)
    assert [i["key"] for i in plain] == [{"hostname": "h1"}]

    flushed = parse_incidents(run("replay", "--rules", CLI_RULES, "--flush", "events.jsonl").stdout)
    assert sorted(i["key"]["hostname"] for i in flushed) == ["h1", "h2"]
    [h2] = [i for i in flushed if i["key"] == {"hostname": "h2"}]
    assert h2["first_seen"] == "2024-01-01T00:02:30.000000000Z"


MALFORMED = [
    orjson.dumps(burst(0)).decode(),  # 1
    "this is not json",  # 2
    '[{"rule": "Burst event", "time": "2024-01-01T00:00:05Z"}]',  # 3 an array
    '{"time": "2024-01-01T00:00:06Z", "output_fields": {"container.id": "c1"}}',  # 4 no rule
    '{"rule": "Burst event", "output_fields": {"container.id": "c1"}}',  # 5 no time
    "",  # 6 blank
    orjson.dumps(burst(10)).decode(),  # 7
    '{"rule": "Burst event", "time": "never"}',  # 8 unparsable time, no fallback
    '"a string"',  # 9
    # 10: no rule but far in the future: invalid lines must not move the watermark
    '{"time": "2030-01-01T00:00:00Z", "output_fields": {"container.id": "c1"}}',
    "   ",  # 11 white space only
    orjson.dumps(burst(20)).decode(),  # 12
]


def test_malformed_lines_are_reported_with_file_and_line_and_skipped(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "events.jsonl").write_text("\n".join(MALFORMED) + "\n")
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert result.returncode == 0
    reported = _position_lines(result.stderr, "events.jsonl")
    assert {2, 3, 4, 5, 8, 9, 10} <= set(reported)
    assert not {1, 7, 12} & set(reported)
    # The run went on: the three valid events, around the bad ones, still correlate.
    [incident] = parse_incidents(result.stdout)
    assert len(incident["events"]) == 3


def test_blank_lines_are_reported_as_skipped(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("\n".join(MALFORMED) + "\n")
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert {6, 11} <= set(_position_lines(result.stderr, "events.jsonl"))


def test_malformed_lines_on_stdin_are_reported_and_skipped(run: Run) -> None:
    result = run("replay", "--rules", CLI_RULES, stdin="\n".join(MALFORMED) + "\n")
    assert result.returncode == 0
    for number in (2, 3, 4, 5, 8, 9, 10):
        assert re.search(rf"^\S*:{number}: \S", result.stderr, re.MULTILINE), number
    assert len(parse_incidents(result.stdout)) == 1


def test_line_with_digit_like_evt_time_is_skipped_not_fatal(run: Run, tmp_path: Path) -> None:
    crafted = '{"rule": "Burst event", "output_fields": {"evt.time": "\\u00b2"}}'
    events = [orjson.dumps(burst(0)).decode(), crafted]
    events += [orjson.dumps(burst(s)).decode() for s in (10, 20)]
    (tmp_path / "events.jsonl").write_text("\n".join(events) + "\n")
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert result.returncode == 0, result.stderr
    assert 2 in _position_lines(result.stderr, "events.jsonl")
    assert len(parse_incidents(result.stdout)) == 1


def test_only_malformed_lines_still_exit_0(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("nope\n[]\n{}\n")
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert result.returncode == 0
    assert result.stdout == ""
    assert set(_position_lines(result.stderr, "events.jsonl")) == {1, 2, 3}


def _mixed_input() -> str:
    return jsonl(
        burst(0, "c1"),
        burst(5, "c2"),
        burst(10, "c1"),
        burst(15, "c2"),
        burst(20, "c1"),
        heartbeat(21),
        burst(25, "c2"),
        {"rule": "Shell", "time": at(30), "output_fields": {"container.id": "c3"}},
        {"rule": "Egress", "time": at(40), "output_fields": {"container.id": "c3"}},
    )


def test_replaying_the_same_input_twice_gives_the_same_ids(run: Run, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(_mixed_input())
    first = parse_incidents(run("replay", "--rules", CLI_RULES, "--flush", "events.jsonl").stdout)
    second = parse_incidents(run("replay", "--rules", CLI_RULES, "--flush", "events.jsonl").stdout)
    from_stdin = parse_incidents(
        run("replay", "--rules", CLI_RULES, "--flush", stdin=_mixed_input()).stdout
    )
    ids = [i["id"] for i in first]
    assert len(ids) == 4  # Burst c1, Burst c2, Shell then egress c3, Heartbeat lost h1
    assert len(set(ids)) == 4
    assert ids == [i["id"] for i in second] == [i["id"] for i in from_stdin]
    assert all(ID.match(i) for i in ids)


def test_example_payloads_replay_through_the_shipped_rules(run: Run, tmp_path: Path) -> None:
    lines = (FIXTURES / "falco-examples.jsonl").read_bytes().splitlines()
    in_time_order = sorted(
        (orjson.loads(line) for line in lines if line.strip()), key=lambda p: p["time"]
    )
    (tmp_path / "examples.jsonl").write_text(jsonl(*in_time_order))
    result = run("replay", "--rules", SHIPPED_RULES, "--flush", "examples.jsonl")
    assert result.returncode == 0
    assert _position_lines(result.stderr, "examples.jsonl") == {}
    [incident] = parse_incidents(result.stdout)
    assert incident["correlation"] == "Falco sensor went silent"
    assert incident["key"] == {"hostname": "minikube"}


def test_example_payloads_file_as_is_is_never_skipped_as_invalid(run: Run) -> None:
    # Out of time order by years: later lines are late (reported), but none is invalid.
    examples = FIXTURES / "falco-examples.jsonl"
    result = run("replay", "--rules", SHIPPED_RULES, "--lateness", "1s", examples)
    assert result.returncode == 0
    for reason in _position_lines(result.stderr, str(examples)).values():
        assert "late" in reason
