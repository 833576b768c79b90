"""Property-based fuzzing of every input the project reads (issue 10): events, rule files and the
worker configuration. The unit suite runs each property with a bounded number of examples
(tests/test_fuzz_inputs.py); `python bench/fuzz_inputs.py` runs them for longer, nightly.

Each property: the input ends in a result or in the project's own located error, never in any
other exception, and within the limits the docs promise.
"""

from __future__ import annotations

import io
import json
import re
import string
import tempfile
from pathlib import Path
from typing import Any

import orjson
import yaml
from hypothesis import strategies as st

from streams.cli.replay import read_inputs, replay_lines
from streams.core.engine import Engine
from streams.core.events import event_from_bytes
from streams.core.loader import load_rules
from streams.core.rules import Ruleset
from streams.errors import ConfigError, EventError, RuleLoadError
from streams.runtime.config import load_config

__all__ = [
    "check_config_text",
    "check_event_line",
    "check_replay",
    "check_rules_text",
    "config_texts",
    "event_lines",
    "replay_inputs",
    "rules_texts",
]

_REPO = Path(__file__).resolve().parents[1]

# -- values ----------------------------------------------------------------------------------------

_WORDS = st.sampled_from(
    ["A", "B", "Shell", "Egress", "x", "", "host", "rule", "time", "uuid", "container.id",
     "proc.name", "evt.time", "priority", "Critical", "warning", "tags", "null", "1:30", "yes"]
)  # fmt: skip
_TEXT = st.one_of(_WORDS, st.text(max_size=30), st.text(string.printable, max_size=200))
_INTS = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 10**18, 7_258_118_400 * 10**9, 17 * 10**17]),
)
_SCALARS = st.one_of(
    st.none(), st.booleans(), _INTS, st.floats(allow_nan=False, allow_infinity=False), _TEXT
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_TEXT, inner, max_size=5)),
    max_leaves=40,
)
_TIMES = st.one_of(
    st.sampled_from(
        ["2024-01-01T00:00:00Z", "2024-01-01T00:00:01.5Z", "2024-01-01T00:00:02.123456789Z",
         "9999-12-31T23:59:59Z", "2600-01-01T00:00:00Z", "1969-12-31T23:59:59Z",
         "2024-02-30T00:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01 00:00:03+01:00", ""]
    ),
    _TEXT,
    _INTS,
)  # fmt: skip


def _nested(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


_PAYLOADS = st.fixed_dictionaries(
    {"rule": st.one_of(st.sampled_from(["A", "B", "Shell", "Egress", "Burst event"]), _TEXT)},
    optional={
        "time": _TIMES,
        "priority": st.one_of(st.sampled_from(["Critical", "info", "WARNING", "bogus"]), _TEXT),
        "hostname": st.one_of(_TEXT, JSON_VALUES, st.integers(20, 60).map(_nested)),
        "output": st.one_of(_TEXT, JSON_VALUES),
        "uuid": st.one_of(_TEXT, JSON_VALUES),
        "tags": st.one_of(st.lists(_TEXT, max_size=4), JSON_VALUES),
        "output_fields": st.one_of(
            st.dictionaries(
                st.one_of(
                    st.sampled_from(["container.id", "proc.name", "evt.time", "fd.name"]), _TEXT
                ),
                st.one_of(JSON_VALUES, st.integers(20, 60).map(_nested), _INTS),
                max_size=6,
            ),
            JSON_VALUES,
        ),
    },
)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


#: One input line: mostly event-shaped payloads, also any JSON value and arbitrary bytes.
event_lines = st.one_of(
    _PAYLOADS.map(_encode),
    JSON_VALUES.map(_encode),
    st.binary(max_size=300),
    st.integers(1, 300).map(lambda depth: _encode({"rule": "A", "hostname": _nested(depth)})),
)
replay_inputs = st.lists(event_lines, max_size=25)

_SEQUENCE_RULES = """\
- list: shells
  items: [sh, bash]
- macro: shell
  condition: rule in (Shell, A) or proc.name in (shells)
- correlation: chain
  type: sequence
  by: [container.id]
  within: 10m
  steps:
    - {name: a, condition: shell}
    - {name: b, condition: "rule in (Egress, B)"}
  output: "{{ key['container.id'] }} {{ steps.a['proc.name'] }} {{ last.hostname }}"
- correlation: burst
  type: count
  condition: rule = "Burst event" or rule = A
  threshold: 2
  within: 1m
  output: "{{ events|length }} {{ events|map(attribute='output')|join(',') }}"
- correlation: distinct
  type: distinct
  by: [hostname]
  condition: rule exists
  field: proc.name
  threshold: 2
  within: 1m
- correlation: quiet
  type: absence
  by: [hostname]
  within: 1m
  trigger: {condition: rule = Shell}
  expect: {condition: rule = Egress}
"""
_RULESET: Ruleset | None = None


def fuzz_ruleset() -> Ruleset:
    """A small ruleset with every correlation type, whose templates read event fields."""
    global _RULESET  # noqa: PLW0603 - loaded once per process
    if _RULESET is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rules.yaml"
            path.write_text(_SEQUENCE_RULES)
            _RULESET = load_rules([path])
    return _RULESET


def check_event_line(line: bytes) -> None:
    """An event record decodes to an Event or an EventError; an accepted event goes through
    an engine and every incident it takes part in is valid JSON."""
    try:
        event = event_from_bytes(line, 0)
    except EventError as exc:
        error: EventError | None = exc
    else:
        error = None
    if error is not None:
        assert 0 < len(str(error)) < 500
        return
    engine = Engine(fuzz_ruleset(), lateness_ns=0)
    out = engine.submit(event)
    out += engine.submit(event_from_bytes(line, 1))
    out += engine.finish(flush=True)
    for incident in out:
        orjson.loads(orjson.dumps(incident))


_POSITION = re.compile(r"^<stdin>:(\d+): (skipped|late): .+$")


def check_replay(lines: list[bytes]) -> None:
    """`replay` over the lines: every line is accepted or reported at its position, incidents
    are JSON lines, nothing raises."""
    data = b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines)
    out, err = io.BytesIO(), io.StringIO()
    result, _engine = replay_lines(
        fuzz_ruleset(),
        read_inputs([], io.BytesIO(data), max_line_bytes=4096),
        lateness_ns=10**10,
        flush=True,
        out=out,
        err=err,
        max_line_bytes=4096,
    )
    assert result.lines == len(lines)
    reported = err.getvalue().splitlines()
    for row in reported:
        assert _POSITION.match(row), row
    skipped = [row for row in reported if ": skipped: " in row]
    assert len(skipped) == result.invalid
    for row in out.getvalue().splitlines():
        assert isinstance(orjson.loads(row), dict)


# -- YAML ------------------------------------------------------------------------------------------

_YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from(["1:30", "0777", "yes", "off", "2024-01-01", "10s", "5m", "0s", "7d", "8d",
                     "rule = A", "rule in (shells)", "m1 or m2", "(((", "not", "{{ x }}",
                     "{{ 'x' * 2000000000 }}", "{% for i in range(9) %}", "Critical", "sequence",
                     "count", "all", "absence", "distinct", "append", "replace", "${env:X}",
                     "${file:/dev/zero}", "${file:/nonexistent}", "https://h.example", "u"]),
    _TEXT,
)  # fmt: skip
_RULE_KEYS = st.sampled_from(
    ["list", "macro", "correlation", "items", "condition", "override", "type", "by", "within",
     "steps", "name", "threshold", "field", "trigger", "expect", "output", "severity", "tags",
     "suppress", "enabled", "desc", "<<", "x"]
)  # fmt: skip
_CONFIG_KEYS = st.sampled_from(
    ["kafka", "topics", "app", "notifiers", "delivery", "enrichment", "bootstrap_servers",
     "security_protocol", "sasl_username", "sasl_password", "passwrd", "lateness", "rules",
     "web_port", "max_state_entries", "max_future_skew", "name", "type", "slack", "webhook",
     "url", "token", "channel", "headers", "route", "min_severity", "deadline", "enrichers",
     "harbor", "username", "password", "risk", "posture", "kube_hunter", "ownership", "tables",
     "max_in_flight", "timeout", "trivy", "directory"]
)  # fmt: skip


def _trees(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        _YAML_SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(keys, _TEXT), inner, max_size=5),
        ),
        max_leaves=30,
    )


def _as_yaml(tree: Any) -> str:
    try:
        return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return repr(tree)


def _mutate(text: str, cut: int, insert: str) -> str:
    """Plain scalars the dumper would have quoted, aliases, flow collections, broken YAML."""
    at = cut % (len(text) + 1)
    return text[:at] + insert + text[at:]


_SNIPPETS = st.sampled_from(
    ["", " 1:30", " yes", " 0777", " &a [x, *a]", " *a", " &b [x, x]\n- *b", "\n  dup: 1\n  dup: 2",
     "[[[[[[[", "}", "\t", "<<: {x: 1}", "!!python/name:os.system ''", "!custom x", " ${env:X}",
     "\n" + "- " * 80, "{a: {b: {c: {d: [1, 2]}}}}", "'unterminated"]
)  # fmt: skip

#: Rules files: YAML sequences of rule-shaped mappings, dumped and then mutated.
rules_texts = st.builds(
    _mutate,
    st.lists(st.dictionaries(_RULE_KEYS, _trees(_RULE_KEYS), max_size=8), max_size=5).map(_as_yaml),
    st.integers(0, 10_000),
    _SNIPPETS,
)
#: Worker configuration files: section-shaped mappings, dumped and then mutated.
config_texts = st.builds(
    _mutate,
    st.dictionaries(_CONFIG_KEYS, _trees(_CONFIG_KEYS), max_size=6).map(_as_yaml),
    st.integers(0, 10_000),
    _SNIPPETS,
)

_LOCATED = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): \S")


def check_rules_text(text: str, directory: Path) -> None:
    """A rules file loads, or fails with errors that are all located in it."""
    path = directory / "rules.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        ruleset = load_rules([path])
    except RuleLoadError as exc:
        failed: RuleLoadError | None = exc
    else:
        failed = None
    if failed is not None:
        assert failed.errors
        for error in failed.errors:
            assert error.location.path == str(path), error
            assert error.location.line >= 1, error
            assert error.location.column >= 1, error
            assert len(error.message) < 1000, error
        return
    engine = Engine(ruleset)
    line = b'{"rule": "A", "time": "2024-01-01T00:00:00Z", "output_fields": {"x": 1}}'
    engine.submit(event_from_bytes(line, 0))
    for incident in engine.finish(flush=True):
        orjson.dumps(incident)


def check_config_text(text: str, directory: Path) -> None:
    """A configuration loads, or fails with a ConfigError whose every line names a place (the
    file, or an environment variable) and shows no secret."""
    path = directory / "worker.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    environ = {"X": "s3cret-value-x"}
    try:
        config = load_config(str(path), environ)
    except ConfigError as exc:
        message = str(exc)
    else:
        assert "s3cret-value-x" not in repr(config)
        return
    assert message
    assert "s3cret-value-x" not in message
    for row in message.splitlines():
        assert row.startswith((str(path), "env ", "default: ")), row
    assert len(message) < 20_000
