"""`replay` and `validate` on hostile input (issue 10): a located reason, exit as documented,
no traceback, bounded time."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from _cli_support import CLI_RULES, Run, at, parse_incidents

from streams.cli import replay


def _shell(seconds: int, **extra: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "rule": "Shell",
        "time": at(seconds),
        "output_fields": {"container.id": "c1"},
    }
    raw.update(extra)
    return raw


def _egress(seconds: int, **extra: object) -> dict[str, object]:
    return {**_shell(seconds, **extra), "rule": "Egress"}


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def _skips(stderr: str, name: str) -> dict[int, str]:
    return {
        int(m[1]): m[2]
        for m in re.finditer(rf"^{re.escape(name)}:(\d+): skipped: (.*)$", stderr, re.MULTILINE)
    }


def test_replay_skips_every_hostile_line_with_its_position_and_exits_0(
    run: Run, tmp_path: Path
) -> None:
    lines = [
        _shell(0, time="9999-05-25T13:44:05Z"),
        _egress(1, time="2600-05-25T13:44:06Z"),
        {**_shell(2), "time": None, "uuid": "u", "output_fields": {"evt.time": "1" * 40}},
        _egress(3, hostname=_nested(300)),
        _egress(4, output_fields={"container.id": "c1", "x": _nested(300)}),
        _shell(5),
        _egress(6),
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / "events.jsonl").write_text(text)
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    skips = _skips(result.stderr, "events.jsonl")
    assert sorted(skips) == [1, 2, 3, 4, 5]
    assert all("out of range" in skips[n] for n in (1, 2, 3))
    assert all("nested deeper than 32 levels" in skips[n] for n in (4, 5))
    [incident] = parse_incidents(result.stdout)
    assert incident["correlation"] == "Shell then egress"
    assert "5 invalid" in result.stderr


def test_replay_skips_a_line_over_the_size_limit_and_reads_on(run: Run, tmp_path: Path) -> None:
    huge = json.dumps(_shell(0, output="x" * 3_000_000))
    (tmp_path / "events.jsonl").write_text(
        f"{huge}\n{json.dumps(_shell(1))}\n{json.dumps(_egress(2))}\n"
    )
    result = run("replay", "--rules", CLI_RULES, "events.jsonl")
    assert result.returncode == 0, result.stderr
    assert _skips(result.stderr, "events.jsonl") == {1: "record longer than the 1048576-byte limit"}
    assert len(parse_incidents(result.stdout)) == 1


def test_replay_max_line_bytes_sets_the_limit_also_for_a_last_line_without_newline(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "events.jsonl").write_text(
        json.dumps(_shell(1)) + "\n" + json.dumps(_egress(2, output="y" * 500))
    )
    result = run("replay", "--rules", CLI_RULES, "--max-line-bytes", "300", "events.jsonl")
    assert result.returncode == 0, result.stderr
    assert _skips(result.stderr, "events.jsonl") == {2: "record longer than the 300-byte limit"}
    assert parse_incidents(result.stdout) == []


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 20])
@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"", []),
        (b"a\nbb\n", [b"a", b"bb"]),
        (b"a\nbb", [b"a", b"bb"]),
        (b"\n\n", [b"", b""]),
        (b"12345\n", [b"12345"]),  # the newline does not count toward the limit
        (b"x" * 10 + b"\nok\n", [b"x" * 6, b"ok"]),
        (b"x" * 10, [b"x" * 6]),
        (b"abc\n" + b"y" * 25 + b"\nz\n", [b"abc", b"y" * 6, b"z"]),
    ],
)
def test_lines_are_split_and_cut_the_same_whatever_the_read_size(
    monkeypatch: pytest.MonkeyPatch, block: int, data: bytes, lines: list[bytes]
) -> None:
    monkeypatch.setattr(replay, "_BLOCK", block)
    read = replay.read_inputs(["-"], io.BufferedReader(io.BytesIO(data)), max_line_bytes=5)
    assert [(n, line) for _, n, line in read] == list(enumerate(lines, 1))
