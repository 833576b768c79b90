"""Incident records (RULES-SPEC section 5): fields, templates, ids, truncation, severity."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import MS, Feed, S, iso, load, payload

from streams.core.rules import Ruleset

TOP_LEVEL = {
    "id",
    "status",
    "correlation",
    "type",
    "severity",
    "output",
    "key",
    "count",
    "first_seen",
    "last_seen",
    "events",
    "tags",
    "context",
    "enrichment",
    "detected_at",
    "ruleset",
}
EVENT_FIELDS = {
    "step",
    "uuid",
    "time",
    "rule",
    "priority",
    "hostname",
    "output",
    "output_fields",
    "tags",
}
CONTEXT_FIELDS = {
    "hostname",
    "k8s.ns.name",
    "k8s.pod.name",
    "container.id",
    "container.name",
    "container.image.repository",
    "container.image.tag",
}
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z")

SEQ = """
- correlation: Shell then egress
  desc: shell, then a connection
  type: sequence
  by: [container.id]
  within: 10m
  steps:
    - name: shell
      condition: rule = Shell
    - name: egress
      condition: rule = Egress
  severity: Critical
  tags: [mitre_execution, mitre_command_and_control]
  output: "Shell then egress in {{ key['container.id'] }} ({{ steps.shell['proc.cmdline'] }})"
"""


def template_rule(output: str, *, severity: str | None = None, threshold: int = 2) -> str:
    sev = f"  severity: {severity}\n" if severity else ""
    return (
        "- correlation: tpl\n"
        "  type: count\n"
        "  by: [container.id]\n"
        "  within: 1h\n"
        "  condition: rule = X\n"
        f"  threshold: {threshold}\n"
        f"{sev}"
        f"  output: {json.dumps(output)}\n"
    )


def run_pair(rules: Ruleset, *events: dict[str, Any]) -> tuple[Feed, list[dict[str, Any]]]:
    feed = Feed(rules)
    for raw in events:
        feed.raw(raw)
    feed.finish(flush=True)
    return feed, feed.incidents


def x(at_ns: int, **kw: Any) -> dict[str, Any]:
    kw.setdefault("container.id", "c1")
    return payload("X", at_ns, **kw)


@pytest.fixture
def seq(tmp_path: Path) -> Ruleset:
    return load(tmp_path, SEQ)


def shell_egress(feed: Feed) -> dict[str, Any]:
    feed.raw(
        payload(
            "Shell",
            0,
            uuid="6b1f3c4e-0000-4000-8000-000000000001",
            priority="Notice",
            hostname="node-7",
            output="shell spawned",
            tags=["shell", "container"],
            **{
                "container.id": "ee97d9c4186f",
                "container.name": "web",
                "k8s.ns.name": "prod",
                "k8s.pod.name": "web-1",
                "proc.cmdline": "bash -i",
            },
        )
    )
    out = feed.raw(
        payload(
            "Egress",
            116 * S + 521554005,
            priority="critical",
            hostname="node-7",
            output="egress",
            **{
                "container.id": "ee97d9c4186f",
                "container.image.repository": "nginx",
                "container.image.tag": "1.25",
                "fd.sip": "203.0.113.9",
            },
        )
    )
    assert len(out) == 1
    return out[0]


def test_incident_has_exactly_the_section_5_fields(seq: Ruleset) -> None:
    incident = shell_egress(Feed(seq))
    assert set(incident) == TOP_LEVEL


def test_incident_field_values(seq: Ruleset) -> None:
    incident = shell_egress(Feed(seq))
    assert re.fullmatch(r"[0-9a-f]{32}", incident["id"])
    assert incident["status"] == "new"
    assert incident["correlation"] == "Shell then egress"
    assert incident["type"] == "sequence"
    assert incident["severity"] == "Critical"
    assert incident["output"] == "Shell then egress in ee97d9c4186f (bash -i)"
    assert incident["key"] == {"container.id": "ee97d9c4186f"}
    assert incident["count"] == 1
    assert incident["first_seen"] == iso(0)
    assert incident["last_seen"] == iso(116 * S + 521554005)
    assert incident["tags"] == ["mitre_execution", "mitre_command_and_control"]
    assert incident["enrichment"] == {}
    assert TIME_RE.fullmatch(incident["detected_at"])
    assert isinstance(incident["ruleset"], str)
    assert incident["ruleset"] == seq.digest


def test_incident_times_have_nine_fractional_digits(seq: Ruleset) -> None:
    incident = shell_egress(Feed(seq))
    assert incident["first_seen"] == "2024-05-01T12:00:00.000000000Z"
    assert incident["last_seen"] == "2024-05-01T12:01:56.521554005Z"
    for event in incident["events"]:
        assert TIME_RE.fullmatch(event["time"])


def test_incident_is_json_serialisable(seq: Ruleset) -> None:
    incident = shell_egress(Feed(seq))
    assert json.loads(json.dumps(incident)) == incident


def test_incident_events_carry_the_section_5_fields(seq: Ruleset) -> None:
    incident = shell_egress(Feed(seq))
    shell, egress = incident["events"]
    assert set(shell) == EVENT_FIELDS
    assert shell["step"] == "shell"
    assert shell["uuid"] == "6b1f3c4e-0000-4000-8000-000000000001"
    assert shell["time"] == iso(0)
    assert shell["rule"] == "Shell"
    assert shell["priority"] == "Notice"
    assert shell["hostname"] == "node-7"
    assert shell["output"] == "shell spawned"
    assert shell["output_fields"]["proc.cmdline"] == "bash -i"
    assert shell["tags"] == ["shell", "container"]
    assert egress["step"] == "egress"
    assert egress["uuid"] is None
    assert egress["tags"] == []


def test_incident_event_records_have_exactly_the_section_5_fields(seq: Ruleset) -> None:
    incident = shell_egress(Feed(seq))
    for event in incident["events"]:
        assert set(event) == EVENT_FIELDS


def test_incident_context_is_filled_from_the_events(seq: Ruleset) -> None:
    incident = shell_egress(Feed(seq))
    assert set(incident["context"]) == CONTEXT_FIELDS
    assert incident["context"] == {
        "hostname": "node-7",
        "k8s.ns.name": "prod",
        "k8s.pod.name": "web-1",
        "container.id": "ee97d9c4186f",
        "container.name": "web",
        "container.image.repository": "nginx",
        "container.image.tag": "1.25",
    }


def test_incident_tags_default_to_empty(tmp_path: Path) -> None:
    _, out = run_pair(load(tmp_path, template_rule("t")), x(0), x(1))
    assert out[0]["tags"] == []


def test_falcosidekick_short_fraction_is_formatted_with_nine_digits(tmp_path: Path) -> None:
    raw = x(0)
    raw["time"] = "2024-05-01T12:00:00.5Z"
    _, out = run_pair(load(tmp_path, template_rule("t")), raw, x(1 * S))
    assert out[0]["first_seen"] == "2024-05-01T12:00:00.500000000Z"
    assert out[0]["events"][0]["time"] == "2024-05-01T12:00:00.500000000Z"


# -- severity -------------------------------------------------------------------------------------


def test_severity_defaults_to_the_highest_event_priority(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("{{ severity }}", threshold=3))
    _, out = run_pair(rules, x(0, priority="Notice"), x(1, priority="ERROR"), x(2, priority="info"))
    assert out[0]["severity"] == "Error"
    assert out[0]["output"] == "Error"


def test_severity_default_understands_info(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("s"))
    _, out = run_pair(rules, x(0, priority="debug"), x(1, priority="info"))
    assert out[0]["severity"] == "Informational"


def test_explicit_severity_wins_and_is_canonical(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("{{ severity }}", severity="warning"))
    _, out = run_pair(rules, x(0, priority="Emergency"), x(1, priority="Emergency"))
    assert out[0]["severity"] == "Warning"
    assert out[0]["output"] == "Warning"


# -- truncation -----------------------------------------------------------------------------------


def test_events_are_capped_at_50_with_events_truncated(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("{{ events|length }}", threshold=60))
    _, out = run_pair(rules, *[x(i * MS, output=f"x{i}") for i in range(60)])
    assert len(out) == 1
    assert len(out[0]["events"]) == 50
    assert out[0]["events_truncated"] == 10
    assert out[0]["output"] == "60"  # the template sees every event
    assert set(out[0]) == TOP_LEVEL | {"events_truncated"}


def test_exactly_50_events_are_not_truncated(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("t", threshold=50))
    _, out = run_pair(rules, *[x(i * MS) for i in range(50)])
    assert len(out[0]["events"]) == 50
    assert "events_truncated" not in out[0]


# -- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ correlation }}", "tpl"),
        ("{{ key['container.id'] }}", "c1"),
        ("{{ events|length }}", "2"),
        ("{{ count }}", "1"),
        ("{{ first['proc.name'] }}-{{ last['proc.name'] }}", "bash-curl"),
        ("{{ first.rule }} {{ last.hostname }}", "X node-1"),
        ("{{ first['container.id'] }}", "c1"),
        ("{{ events[1]['proc.name'] }}", "curl"),
        ("{{ first.time }}", iso(0)),
        ("{{ first['missing.field'] }}", "<NA>"),
        ("{{ first['proc.null'] }}", "<NA>"),
        ("{{ first['proc.aname[2]'] }}", "sshd"),
        ("{{ steps.match['proc.name'] }}", "curl"),
        ("{% for e in events %}{{ e['proc.name'] }};{% endfor %}", "bash;curl;"),
    ],
)
def test_template_variables(tmp_path: Path, template: str, expected: str) -> None:
    rules = load(tmp_path, template_rule(template))
    feed, out = run_pair(
        rules,
        x(0, **{"proc.name": "bash", "proc.null": None, "proc.aname[2]": "sshd"}),
        x(1 * S, **{"proc.name": "curl"}),
    )
    assert out[0]["output"] == expected
    assert feed.engine.stats.template_errors == 0


def test_template_missing_field_of_a_step_renders_na(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: ab
          type: sequence
          within: 1m
          steps:
            - {name: a, condition: rule = A}
            - {name: b, condition: rule = B}
          output: "{{ steps.a['fd.sip'] }} {{ steps.b['fd.sip'] }}"
        """,
    )
    feed = Feed(rules)
    feed.send("A", 0)
    out = feed.send("B", 1 * S, **{"fd.sip": "1.2.3.4"})
    assert out[0]["output"] == "<NA> 1.2.3.4"


def test_template_count_is_the_merged_match_count(tmp_path: Path) -> None:
    text = template_rule("{{ count }}/{{ events|length }}") + "  suppress: 1h\n"
    _, out = run_pair(load(tmp_path, text), x(0), x(1), x(2), x(3))
    assert [i["output"] for i in out] == ["1/2", "2/2"]


@pytest.mark.parametrize(
    "template",
    [
        "{{ steps.nosuch['x'] }}",
        "{{ count // 0 }}",
        "{{ undefined_variable.attr }}",
        "{{ first.__class__.__mro__ }}",
        "{{ ''.__class__.__subclasses__() }}",
    ],
)
def test_runtime_template_error_falls_back_and_is_counted(tmp_path: Path, template: str) -> None:
    feed, out = run_pair(load(tmp_path, template_rule(template)), x(0), x(1))
    assert len(out) == 1
    assert isinstance(out[0]["output"], str)
    assert out[0]["output"]
    assert "{{" not in out[0]["output"]
    assert feed.engine.stats.template_errors == 1
    assert set(out[0]) == TOP_LEVEL


def test_runtime_template_error_is_counted_per_incident(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("{{ count // 0 }}"))
    feed, out = run_pair(rules, x(0), x(1), x(2), x(3))
    assert len(out) == 2
    assert feed.engine.stats.template_errors == 2


def test_event_content_is_not_evaluated_as_a_template(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("{{ first['proc.cmdline'] }}"))
    _, out = run_pair(rules, x(0, **{"proc.cmdline": "{{ 7*7 }}"}), x(1))
    assert out[0]["output"] == "{{ 7*7 }}"


def test_template_output_is_not_html_escaped(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("{{ first['proc.cmdline'] }}"))
    _, out = run_pair(rules, x(0, **{"proc.cmdline": "a < b && c > 'd'"}), x(1))
    assert out[0]["output"] == "a < b && c > 'd'"


# -- ids ------------------------------------------------------------------------------------------


def test_ids_are_deterministic_across_engines(seq: Ruleset) -> None:
    assert shell_egress(Feed(seq)) == shell_egress(Feed(seq))


def test_ids_are_deterministic_without_uuid(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("t"))
    _, one = run_pair(rules, x(0), x(1))
    _, two = run_pair(rules, x(0), x(1))
    assert one == two


def test_id_depends_on_the_first_events_uuid(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("t"))
    _, a = run_pair(rules, x(0, uuid="u-1"), x(1, uuid="u-9"))
    _, b = run_pair(rules, x(0, uuid="u-2"), x(1, uuid="u-9"))
    assert a[0]["id"] != b[0]["id"]


def test_id_ignores_later_events(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("t"))
    _, a = run_pair(rules, x(0, uuid="u-1"), x(1, uuid="u-8", output="one"))
    _, b = run_pair(rules, x(0, uuid="u-1"), x(5 * S, uuid="u-9", output="two"))
    assert a[0]["id"] == b[0]["id"]


def test_id_with_uuid_ignores_the_first_events_other_fields(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("t"))
    _, a = run_pair(rules, x(0, uuid="u-1", output="one", hostname="h1"), x(1 * S))
    _, b = run_pair(rules, x(1, uuid="u-1", output="two", hostname="h2"), x(1 * S))
    assert a[0]["id"] == b[0]["id"]


@pytest.mark.parametrize(
    "change",
    [{"output": "other output"}, {"hostname": "other-host"}, {"at": 1}],
)
def test_id_without_uuid_depends_on_time_rule_hostname_output(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    rules = load(tmp_path, template_rule("t"))
    base = {"output": "o", "hostname": "h"}
    _, a = run_pair(rules, x(0, **base), x(1 * S))
    changed = {**base, **change}
    at = changed.pop("at", 0)
    _, b = run_pair(rules, x(at, **changed), x(1 * S))
    assert a[0]["id"] != b[0]["id"]


def test_id_without_uuid_ignores_output_fields_of_first_event(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("t"))
    _, a = run_pair(rules, x(0, output="o", **{"proc.name": "a"}), x(1 * S))
    _, b = run_pair(rules, x(0, output="o", **{"proc.name": "b"}), x(1 * S))
    assert a[0]["id"] == b[0]["id"]


def test_id_depends_on_the_key(tmp_path: Path) -> None:
    rules = load(tmp_path, template_rule("t"))
    _, out = run_pair(
        rules,
        x(0, uuid="u", **{"container.id": "c1"}),
        x(1, **{"container.id": "c1"}),
        x(2, uuid="u", **{"container.id": "c2"}),
        x(3, **{"container.id": "c2"}),
    )
    assert len(out) == 2
    assert out[0]["id"] != out[1]["id"]


def test_id_depends_on_the_correlation_name(tmp_path: Path) -> None:
    text = template_rule("t")
    _, a = run_pair(load(tmp_path, text, "a.yaml"), x(0, uuid="u"), x(1))
    _, b = run_pair(load(tmp_path, text.replace("tpl", "tpl2"), "b.yaml"), x(0, uuid="u"), x(1))
    assert a[0]["id"] != b[0]["id"]


def test_replaying_the_same_input_gives_identical_records(seq: Ruleset) -> None:
    def run() -> list[dict[str, Any]]:
        feed = Feed(seq, lateness_ns=10 * S)
        for i in range(3):
            feed.send("Shell", i * 20 * S, **{"container.id": f"c{i}"})
            feed.send("Egress", i * 20 * S + 1, **{"container.id": f"c{i}"})
        feed.finish(flush=True)
        return feed.incidents

    first, second = run(), run()
    assert len(first) == 3
    assert first == second
