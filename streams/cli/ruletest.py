"""`falco-correlator test`: rule tests, i.e. fixtures of events with the incidents they must give.

Format (docs/rule-tests.md): a `*.test.yaml` file is a mapping with optional `rules` (paths
relative to the file; default: the file's directory), `start` (base time), `lateness`, and `tests`,
each with `name`, `events` (payloads with relative times `at: +30s`, optional `repeat`/`every`),
`expect` (incidents compared on the keys given; `[]` means none; `events` lists indices of the
fixture's events, or correlation names for derived events), optional `correlations`
(compare only these), `flush` and `late` (how many events arrive late on purpose; default 0).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from streams.core.durations import parse_compound_duration, parse_duration
from streams.core.engine import DEFAULT_LATENESS_NS, Engine
from streams.core.events import event_from_dict, format_time, parse_time
from streams.core.loader import TEST_FILE_SUFFIXES, load_rules
from streams.errors import CorrelatorError, EventError, RuleLoadError

__all__ = ["RuleTestError", "TestOutcome", "run_rule_tests", "run_test_file", "test_files"]

_DEFAULT_START = "2024-01-01T00:00:00Z"
_COMPARED = ("correlation", "status", "type", "severity", "count", "key", "output", "tags")


class RuleTestError(CorrelatorError):
    """A fixture that cannot be read."""


@dataclass
class TestOutcome:
    file: str
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def test_files(paths: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    (p for p in path.rglob("*") if p.name.endswith(TEST_FILE_SUFFIXES)),
                    key=lambda p: p.as_posix(),
                )
            )
        else:
            found.append(path)
    return found


def _relative_ns(value: object, what: str) -> int:
    text = str(value).strip()
    sign = -1 if text.startswith("-") else 1
    try:
        return sign * parse_compound_duration(text.lstrip("+-"))
    except ValueError as exc:
        raise RuleTestError(f"{what}: {exc}") from None


def _fill(value: Any, index: int) -> Any:
    """`{i}` in strings of a repeated event becomes the repetition number."""
    if isinstance(value, str):
        return value.replace("{i}", str(index))
    if isinstance(value, dict):
        return {k: _fill(v, index) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, index) for v in value]
    return value


def expand_events(specs: Any, start_ns: int, base_dir: Path) -> list[dict[str, Any]]:
    if not isinstance(specs, list):
        raise RuleTestError("events must be a list")
    payloads: list[dict[str, Any]] = []
    for number, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise RuleTestError(f"events[{number}] must be a mapping")
        if "file" in spec:
            path = base_dir / str(spec["file"])
            for line in path.read_bytes().splitlines():
                if line.strip():
                    payloads.append(orjson.loads(line))
            continue
        fields = dict(spec)
        at = _relative_ns(fields.pop("at", "+0s"), f"events[{number}].at")
        repeat = int(fields.pop("repeat", 1))
        every = _relative_ns(fields.pop("every", "0s"), f"events[{number}].every")
        for i in range(repeat):
            payload = _fill(fields, i) if repeat > 1 else dict(fields)
            if "time" not in payload:
                payload["time"] = format_time(start_ns + at + i * every)
            payloads.append(payload)
    return payloads


def _compare(
    expected: dict[str, Any],
    actual: dict[str, Any],
    position: int,
    payloads: list[dict[str, Any]],
    start_ns: int,
) -> list[str]:
    problems: list[str] = []
    where = f"incident {position}"
    for key in _COMPARED:
        if key in expected and expected[key] != actual.get(key):
            problems.append(f"{where}: {key} is {actual.get(key)!r}, expected {expected[key]!r}")
    if "output_contains" in expected and str(expected["output_contains"]) not in actual["output"]:
        problems.append(
            f"{where}: output {actual['output']!r} lacks {expected['output_contains']!r}"
        )
    for key in ("first_seen", "last_seen"):
        if key in expected:
            want = format_time(start_ns + _relative_ns(expected[key], key))
            if actual[key] != want:
                problems.append(f"{where}: {key} is {actual[key]}, expected {want}")
    if "events" in expected:
        wanted_items = expected["events"]
        if not isinstance(wanted_items, list):
            wanted_items = [wanted_items]
        # An index names one of the fixture's events; a name, a derived event: a record of that
        # correlation (rule language v2), compared on its name only.
        times: list[Any] = [
            e["rule"] if isinstance(w, str) else (e["time"], e["rule"])
            for e, w in zip(actual["events"], wanted_items, strict=False)
        ]
        times += [(e["time"], e["rule"]) for e in actual["events"][len(wanted_items) :]]
        try:
            wanted = [
                i
                if isinstance(i, str)
                else (format_time(parse_time(payloads[i]["time"]) or 0), payloads[i]["rule"])
                for i in wanted_items
            ]
        except (IndexError, KeyError, TypeError):
            return [
                *problems,
                f"{where}: expected events must be indices of the fixture's events "
                "or names of correlations (derived events)",
            ]
        if times != wanted:
            problems.append(f"{where}: events are {times}, expected {wanted}")
    steps = [e["step"] for e in actual["events"]]
    if "steps" in expected and steps != expected["steps"]:
        problems.append(f"{where}: steps are {steps}, expected {expected['steps']}")
    return problems


def run_test_file(path: Path, rules_override: Sequence[str] | None) -> list[TestOutcome]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return [TestOutcome(str(path), "<file>", [f"cannot read fixture: {exc}"])]
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        return [
            TestOutcome(str(path), "<file>", ["a fixture file is a mapping with a 'tests' list"])
        ]
    base = path.parent
    rule_paths = list(
        rules_override or [os.path.normpath(base / p) for p in doc.get("rules", ["."])]
    )
    try:
        ruleset = load_rules(rule_paths)
    except RuleLoadError as exc:
        return [TestOutcome(str(path), "<rules>", [str(e) for e in exc.errors])]
    start_ns = parse_time(str(doc.get("start", _DEFAULT_START)))
    if start_ns is None:
        return [TestOutcome(str(path), "<file>", ["start must be an RFC 3339 time"])]
    default_lateness = doc.get("lateness")
    outcomes = []
    for number, test in enumerate(doc["tests"]):
        name = (
            str(test.get("name", f"tests[{number}]"))
            if isinstance(test, dict)
            else f"tests[{number}]"
        )
        outcome = TestOutcome(str(path), name)
        outcomes.append(outcome)
        try:
            outcome.failures = _run_one(test, ruleset, start_ns, default_lateness, base)
        except (RuleTestError, EventError, ValueError, OSError) as exc:
            outcome.failures = [f"invalid test: {exc}"]
    return outcomes


def _run_one(
    test: Any, ruleset: Any, start_ns: int, default_lateness: Any, base: Path
) -> list[str]:
    if not isinstance(test, dict) or "events" not in test or "expect" not in test:
        raise RuleTestError("a test needs 'name', 'events' and 'expect'")
    lateness_text = test.get("lateness", default_lateness)
    lateness = DEFAULT_LATENESS_NS if lateness_text is None else parse_duration(str(lateness_text))
    payloads = expand_events(test["events"], start_ns, base)
    engine = Engine(ruleset, lateness_ns=lateness)
    incidents: list[dict[str, Any]] = []
    late: list[int] = []
    for seq, payload in enumerate(payloads):
        before = engine.stats.late
        incidents.extend(engine.submit(event_from_dict(payload, seq)))
        if engine.stats.late != before:
            late.append(seq)
    incidents.extend(engine.finish(flush=bool(test.get("flush", False))))
    only = test.get("correlations")
    if only is not None:
        incidents = [i for i in incidents if i["correlation"] in only]
    known = {c.name for c in ruleset.correlations}
    missing = [n for n in (only or []) if n not in known]
    if missing:
        return [f"unknown or disabled correlations: {missing}"]
    expected = test["expect"] or []
    if not isinstance(expected, list):
        raise RuleTestError("expect must be a list of incidents ([] for none)")
    failures: list[str] = []
    declared = test.get("late", 0)
    if len(late) != declared:
        # A negative test that passes because its events were never correlated proves nothing.
        failures.append(
            f"{len(late)} event(s) arrived late and were not correlated (indices {late}), "
            f"{declared} declared: order the events by `at`, or declare `late: {len(late)}`"
        )
    if len(expected) != len(incidents):
        got = [(i["correlation"], i["status"], i["key"]) for i in incidents]
        failures.append(f"{len(incidents)} incident(s), expected {len(expected)}: {got}")
    for position, (want, got_incident) in enumerate(zip(expected, incidents, strict=False)):
        failures.extend(_compare(want, got_incident, position, payloads, start_ns))
    return failures


def run_rule_tests(
    paths: Sequence[str], *, rules_override: Sequence[str] | None, verbose: bool
) -> int:
    files = test_files(paths)
    if not files:
        print(f"no rule tests (*.test.yaml) found in {' '.join(paths)}", file=sys.stderr)
        return 1
    outcomes = [o for f in files for o in run_test_file(f, rules_override)]
    failed = [o for o in outcomes if not o.passed]
    for outcome in outcomes:
        if not outcome.passed:
            print(f"FAIL {outcome.file}: {outcome.name}")
            for failure in outcome.failures:
                print(f"    {failure}")
        elif verbose:
            print(f"ok   {outcome.file}: {outcome.name}")
    print(f"rule tests: {len(outcomes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
