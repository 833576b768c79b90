"""`falco-correlator diff`: outcomes (only OLD, only NEW, changed, unchanged) and exit codes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
from _cli_support import CLI_RULES, SHIPPED_RULES, Run, at, jsonl, parse_incidents

from streams.cli._diff_compare import compare_incidents
from streams.cli._diff_render import diff_text
from streams.cli.diff import diff_run
from streams.core.loader import load_rules

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "deploy" / "demo" / "attack.jsonl"
BENIGN = REPO / "rules" / "tests" / "fixtures" / "benign-noise.jsonl"

SEQ = """
- correlation: Chain
  type: sequence
  by: [container.id]
  within: {within}
  steps:
    - {{name: shell, condition: rule = Shell}}
    - {{name: egress, condition: rule = Egress}}
  severity: {severity}
"""


def rules(tmp_path: Path, name: str, *, within: str = "10m", severity: str = "Error") -> Path:
    path = tmp_path / name
    path.write_text(SEQ.format(within=within, severity=severity))
    return path


def event(rule: str, seconds: int, container: str = "c1") -> dict[str, Any]:
    return {
        "rule": rule,
        "time": at(seconds),
        "priority": "Warning",
        "uuid": f"{rule}-{seconds}-{container}",
        "output_fields": {"container.id": container},
    }


def test_the_same_rules_give_no_difference_and_exit_0(run: Run) -> None:
    replay = parse_incidents(run("replay", "--rules", SHIPPED_RULES, DEMO, BENIGN).stdout)
    n = len({i["id"] for i in replay})
    assert n > 0
    result = run("diff", "--rules", SHIPPED_RULES, "--against", SHIPPED_RULES, DEMO, BENIGN)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "diff: 0 only in OLD, 0 only in NEW, 0 changed, "
        f"{n} unchanged (OLD {n} incidents, NEW {n})\n"
    )


def test_a_disabled_correlation_is_only_in_old_and_exits_1(run: Run, tmp_path: Path) -> None:
    (tmp_path / "off.yaml").write_text(
        "- correlation: Shell then outbound connection\n"
        "  enabled: false\n"
        "  override: {enabled: replace}\n"
    )
    result = run(
        "diff", "--rules", SHIPPED_RULES, "--against", SHIPPED_RULES, "--against", "off.yaml", DEMO
    )
    assert result.returncode == 1, result.stderr
    replay = parse_incidents(run("replay", "--rules", SHIPPED_RULES, DEMO).stdout)
    [gone] = [i for i in replay if i["correlation"] == "Shell then outbound connection"]
    assert "only in OLD:" in result.stdout
    assert (
        f'- Shell then outbound connection  key={{"container.id":"ee97d9c4186f"}}  id={gone["id"]}'
        in result.stdout
    )
    n = len({i["id"] for i in replay})
    # the campaign in the demo's namespace counted it as one of its three chains: gone with it
    assert "- Attack campaign in a namespace" in result.stdout
    assert f"diff: 2 only in OLD, 0 only in NEW, 0 changed, {n - 2} unchanged" in result.stdout


def test_a_wider_window_adds_an_incident_only_in_new(run: Run, tmp_path: Path) -> None:
    old, new = rules(tmp_path, "old.yaml"), rules(tmp_path, "new.yaml", within="20m")
    (tmp_path / "events.jsonl").write_text(jsonl(event("Shell", 0), event("Egress", 900)))
    result = run("diff", "--rules", old, "--against", new, "--json", "events.jsonl")
    assert result.returncode == 1
    doc = orjson.loads(result.stdout)
    assert doc["summary"]["only_new"] == 1
    assert doc["summary"]["only_old"] == 0
    [added] = doc["only_new"]
    assert added["correlation"] == "Chain"
    assert added["key"] == {"container.id": "c1"}
    assert added["events"] == 2


def test_a_severity_change_is_a_changed_incident(run: Run, tmp_path: Path) -> None:
    old, new = rules(tmp_path, "old.yaml"), rules(tmp_path, "new.yaml", severity="Critical")
    (tmp_path / "events.jsonl").write_text(jsonl(event("Shell", 0), event("Egress", 60)))
    result = run("diff", "--rules", old, "--against", new, "events.jsonl")
    assert result.returncode == 1
    assert "severity Error -> Critical" in result.stdout
    assert "diff: 0 only in OLD, 0 only in NEW, 1 changed, 0 unchanged" in result.stdout


def test_a_moved_first_event_is_a_change_with_the_old_and_new_ids(tmp_path: Path) -> None:
    # OLD takes any shell, NEW only bash: the tightest chain of OLD starts at the later `sh`,
    # NEW's at the earlier bash, so the incident id moves; the egress is shared.
    old = load_rules([rules(tmp_path, "old.yaml")])
    narrowed = SEQ.replace("rule = Shell", "rule = Shell and proc.name = bash")
    (tmp_path / "new.yaml").write_text(narrowed.format(within="10m", severity="Error"))
    new = load_rules([tmp_path / "new.yaml"])
    bash = event("Shell", 0)
    bash["output_fields"]["proc.name"] = "bash"
    sh = event("Shell", 10)
    sh["output_fields"]["proc.name"] = "sh"
    events = [bash, sh, event("Egress", 20)]
    lines = [("events", n, orjson.dumps(e)) for n, e in enumerate(events, 1)]
    outcome = diff_run(
        old, new, lines, lateness_ns=0, max_pending=100, flush=False, err=io.StringIO()
    )
    result = outcome.result
    assert (result.only_old, result.only_new) == ([], [])
    [change] = result.changed
    assert change.old.id != change.new.id
    assert [e["uuid"] for e in change.removed] == ["Shell-10-c1"]
    assert [e["uuid"] for e in change.added] == ["Shell-0-c1"]
    assert "-> " + change.new.id in diff_text(result)


def test_compare_pairs_by_id_then_by_correlation_key_and_shared_event() -> None:
    def record(
        iid: str, events: list[str], severity: str = "Error", status: str = "new"
    ) -> dict[str, Any]:
        return {
            "id": iid,
            "status": status,
            "correlation": "C",
            "key": {"k": 1},
            "severity": severity,
            "first_seen": "t0",
            "last_seen": "t1",
            "events": [{"step": "s", "uuid": u, "time": "t", "rule": "R"} for u in events],
        }

    old = [record("a", ["e1", "e2"]), record("b", ["e3", "e4"]), record("gone", ["e9"])]
    new = [
        record("a", ["e1", "e2"]),  # unchanged
        record("b2", ["e4", "e5"]),  # moved: shares e4 with b
        record("fresh", ["e7"]),  # shares nothing
        record("a", ["e6"], status="update"),  # a gained an update: changed
    ]
    result = compare_incidents(old, new)
    assert [i.id for i in result.only_old] == ["gone"]
    assert [i.id for i in result.only_new] == ["fresh"]
    changes = {(c.old.id, c.new.id): c for c in result.changed}
    assert set(changes) == {("a", "a"), ("b", "b2")}
    assert [e["uuid"] for e in changes[("b", "b2")].removed] == ["e3"]
    assert [e["uuid"] for e in changes[("b", "b2")].added] == ["e5"]
    assert [e["uuid"] for e in changes[("a", "a")].added] == ["e6"]
    assert result.unchanged == 0
    same = compare_incidents(old, old)
    assert (same.unchanged, same.differs) == (3, False)


def test_rule_errors_on_either_side_exit_2(run: Run, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("- correlation: X\n  type: nope\n")
    (tmp_path / "events.jsonl").write_text(jsonl(event("Shell", 0)))
    for args in (
        ["--rules", "bad.yaml", "--against", CLI_RULES],
        ["--rules", CLI_RULES, "--against", "bad.yaml"],
    ):
        result = run("diff", *args, "events.jsonl")
        assert result.returncode == 2
        assert "bad.yaml:2:9:" in result.stderr


def test_missing_against_is_a_usage_error(run: Run) -> None:
    result = run("diff", "--rules", CLI_RULES)
    assert result.returncode == 2
    assert "--against" in result.stderr
