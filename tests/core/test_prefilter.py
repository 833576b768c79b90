"""Prefilters (streams/core/prefilter.py): per-rule specialisation and literal guards.

Whatever they skip, a condition's result must not change: the examples pin the cases that are easy
to get wrong (null and missing fields, case, `not`, an `or` with an indexed branch, lists and
macros, values that are not strings) and the properties compare against the plain closure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import T0, load, payload
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.conditions import (
    CompiledCondition,
    compile_condition,
    parse_condition,
    resolve_lists,
)
from streams.core.engine import Engine
from streams.core.events import Event, event_from_dict
from streams.core.prefilter import (
    MAX_RESIDUALS,
    MAX_SPECIALIZED_TERMS,
    Residual,
    Specialized,
    contains_any,
    key_reader,
)

MACROS = {
    "allowed": "container.image.repository in (trusted_images) or k8s.ns.name in (ci_ns)",
    "miner_rule": "rule in (miner_rules)",
    "stratum": 'proc.cmdline contains "stratum+" or proc.cmdline contains "stratum2+"',
}
LISTS: dict[str, list[Any]] = {
    "trusted_images": ["docker.io/acme/scanner", "registry.k8s.io/pause"],
    "ci_ns": ["ci", "gitlab-runner"],
    "miner_rules": ["Detect crypto miners using the Stratum protocol", "Miner binary"],
    "net_rules": ["Outbound to pool", "Unexpected outbound connection destination"],
    "numbers": [443, "0443"],
}
MINER = "(miner_rule or (stratum and not rule in (net_rules))) and not allowed"


def compiled(text: str, macros: Mapping[str, str] = MACROS) -> CompiledCondition:
    parsed = {name: parse_condition(body) for name, body in macros.items()}
    return compile_condition(parse_condition(text), parsed, resolve_lists(LISTS))


def event(rule: str = "Read sensitive file untrusted", **fields: Any) -> Event:
    """An event whose output_fields are `fields` (`__` stands for `.`); `_top` sets top keys."""
    top = fields.pop("_top", {})
    raw: dict[str, Any] = {
        "rule": rule,
        "time": "2024-05-01T12:00:00.000000001Z",
        "priority": "Warning",
        "hostname": "node-1",
        "output": "an alert",
        "tags": ["container", "mitre_execution"],
        "output_fields": {name.replace("__", "."): value for name, value in fields.items()},
    }
    raw.update(top)
    return event_from_dict(raw, 0)


def run(residual: Residual, on: Event) -> bool:
    return residual if isinstance(residual, bool) else residual(on)


def specialized(condition: CompiledCondition) -> Specialized:
    assert condition.specialized is not None
    return condition.specialized


def agrees(text: str, events: list[Event], macros: Mapping[str, str] = MACROS) -> None:
    """The specialised, guarded condition gives the plain closure's result on every event."""
    condition = compiled(text, macros)
    special = specialized(condition)
    for one in events:
        assert run(special.for_rule(one.rule), one) is condition.predicate(one), (text, one.raw)


# --- specialisation by rule name --------------------------------------------------------------


def test_a_rule_test_is_folded_into_true_or_false_for_each_rule_name() -> None:
    special = specialized(compiled("rule = A or (rule = B and proc.name = cat)"))
    assert special.for_rule("A") is True
    assert special.other is False
    residual = special.for_rule("B")
    assert callable(residual)
    assert residual(event("B", proc__name="cat"))
    assert not residual(event("B", proc__name="vim"))


def test_a_step_is_false_for_every_rule_it_does_not_name() -> None:
    special = specialized(compiled("rule in (net_rules) and not allowed"))
    assert special.other is False
    assert set(special.by_rule) == set(LISTS["net_rules"])


def test_not_equal_and_not_are_folded_for_the_named_rule_only() -> None:
    special = specialized(compiled("rule != A and not rule in (B, C)"))
    assert special.for_rule("A") is False
    assert special.for_rule("B") is False
    assert special.other is True


def test_macros_and_lists_are_expanded_before_folding() -> None:
    special = specialized(compiled(MINER))
    # A miner rule needs only the allow-list; a pool-connection rule can never be the miner step.
    for name in LISTS["miner_rules"]:
        residual = special.for_rule(name)
        assert callable(residual)
        assert residual(event(name))
        assert not residual(event(name, container__image__repository="registry.k8s.io/pause"))
    for name in LISTS["net_rules"]:
        assert special.for_rule(name) is False


def test_rule_names_with_the_same_residual_share_one_closure() -> None:
    special = specialized(compiled("rule in (miner_rules) and proc.name = xmrig"))
    first, second = (special.for_rule(name) for name in LISTS["miner_rules"])
    assert first is second


@pytest.mark.parametrize(
    "text",
    [
        "rule = 443",  # numbers compare as numbers: "0443" = 443, never folded
        "rule in (numbers)",
        "rule startswith Detect",
        "rule glob 'Detect *'",
        "rule pmatch (/a)",
        "rule contains miner",
        "rule exists",
    ],
)
def test_rule_tests_that_are_not_exact_string_tests_run_as_compiled(text: str) -> None:
    special = specialized(compiled(text))
    assert special.by_rule == {}
    agrees(
        text,
        [event(name) for name in ("443", "0443", "443.0", "Detect crypto miners", "/a/b", "x")],
    )


def test_conditions_too_large_to_specialise_keep_the_plain_closure() -> None:
    many = " or ".join(f"proc.name = p{i}" for i in range(MAX_SPECIALIZED_TERMS + 1))
    assert compiled(many).specialized is None
    names = " or ".join(f"(rule = R{i} and proc.name = p{i})" for i in range(MAX_RESIDUALS))
    assert compiled(names).specialized is None


def test_a_macro_used_many_times_is_counted_at_every_use() -> None:
    macros = {"m0": "proc.name = a or proc.name = b"}
    for level in range(1, 12):
        macros[f"m{level}"] = f"m{level - 1} or m{level - 1}"
    assert compiled("m11", macros).specialized is None  # 4096 comparisons once expanded
    assert compiled("m9", macros).specialized is not None  # 1024


# --- literal guards ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cmdline",
    [
        None,
        "",
        "xmrig -o stratum+tcp://pool:3333",
        "xmrig -o stratum2+ssl://pool:3333",
        "xmrig -o STRATUM+tcp://pool:3333",  # `contains` is case sensitive
        "stratum",
        "stratum+",
        443,
        ["stratum+"],  # a list: the comparison decides (an element equals), not the guard
        [],
        True,
    ],
)
def test_the_stratum_guard_never_changes_the_miner_step(cmdline: Any) -> None:
    events = [
        event("Read sensitive file untrusted", proc__cmdline=cmdline),
        event("Read sensitive file untrusted", proc__cmdline=cmdline, k8s__ns__name="ci"),
        event("Miner binary", proc__cmdline=cmdline),
        event("Outbound to pool", proc__cmdline=cmdline),
    ]
    agrees(MINER, events)


def test_a_missing_field_fails_the_guard_and_the_condition() -> None:
    condition = compiled(MINER)
    residual = specialized(condition).other
    assert callable(residual)
    missing = event("Read sensitive file untrusted")
    null = event("Read sensitive file untrusted", proc__cmdline=None)
    found = event("Read sensitive file untrusted", proc__cmdline="x stratum+tcp://p")
    assert not residual(missing)
    assert not residual(null)
    assert residual(found)
    assert condition.predicate(found)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ('proc.cmdline contains "Stratum" and proc.name exists', ["a Stratum b", "a stratum b"]),
        ('proc.cmdline icontains "Stratum" and proc.name exists', ["a STRATUM b", "a sTrAtUm"]),
        ("proc.cmdline startswith xmrig and proc.name exists", ["xmrig -o", "XMRIG -o", " xmrig"]),
        ("proc.cmdline endswith .sh and proc.name exists", ["run.sh", "run.SH", "run.sh "]),
        ("proc.cmdline = xmrig and proc.name exists", ["xmrig", "XMRIG", "xmrig "]),
        ("proc.cmdline in (xmrig, minerd) and proc.name exists", ["minerd", "Minerd", "xmrig"]),
        ("proc.cmdline pmatch (/tmp) and proc.name exists", ["/tmp/x", "/tmpx", "/TMP/x", "/tmp"]),
        ("fd.sport = 443 and proc.name exists", ["443", "0443", "443.0", "4430", 443, 443.0]),
        ("fd.sport in (443, https) and proc.name exists", ["0443", "https", "HTTPS", 443]),
        ("(proc.cmdline = a or proc.cmdline contains b) and proc.name exists", ["a", "xbx", "c"]),
    ],
)
def test_guards_follow_each_operators_case_and_number_rules(text: str, values: list[Any]) -> None:
    field = "fd.sport" if text.startswith("fd.sport") else "proc.cmdline"
    events = [
        event(proc__name="cat", **{field.replace(".", "__"): value}) for value in [*values, None]
    ]
    events.append(event(proc__name="cat"))
    agrees(text, events)


def test_not_gives_no_guard_a_missing_field_makes_it_true() -> None:
    text = 'not proc.cmdline contains "stratum+" and proc.name = cat'
    agrees(text, [event(proc__name="cat"), event(proc__name="cat", proc__cmdline="stratum+x")])
    assert compiled(text).predicate(event(proc__name="cat"))


def test_an_or_with_an_indexed_branch_keeps_both_branches() -> None:
    text = 'rule = "Miner binary" or (proc.cmdline contains "stratum+" and proc.name exists)'
    special = specialized(compiled(text))
    assert special.for_rule("Miner binary") is True
    agrees(
        text,
        [
            event("Miner binary"),
            event("Miner binary", proc__cmdline=None),
            event("Other", proc__cmdline="stratum+tcp", proc__name="x"),
            event("Other", proc__cmdline="stratum", proc__name="x"),
            event("Other", proc__name="x"),
        ],
    )


def test_guards_read_fields_as_the_compiler_does() -> None:
    text = (
        "(proc.aname[2] contains shim or output contains miner or tags contains miner) "
        "and hostname exists"
    )
    both_spellings: dict[str, Any] = {"proc.aname[2]": None, "proc.aname_2": "containerd-shim"}
    agrees(
        text,
        [
            event(**{"proc.aname[2]": "containerd-shim"}),
            event(**{"proc.aname_2": "containerd-shim"}),  # falcosidekick's spelling
            event(**both_spellings),
            event(_top={"output": "a miner ran"}),
            event(_top={"tags": ["miner"]}),
            event(_top={"tags": ["miners"]}),
            event(_top={"hostname": None, "output": "a miner ran"}),
            event(),
        ],
    )


def test_many_contains_literals_are_searched_in_one_pass() -> None:
    literals = ["stratum+", "xmrig", "minerd", "ß", "日本", "", "a|b", "(x)", ".*"]
    texts = ["", "XMRIG", "a xmrig b", "Straße", "ss", "日本語", "a|b", "ab", "(x)", "x.*y", "q"]
    for chosen in (literals[:6], [x for x in literals if x], literals[3:]):
        test = contains_any(chosen)
        for text in texts:
            assert test(text) is any(literal in text for literal in chosen), (chosen, text)


# --- the engine's index -----------------------------------------------------------------------


RULES = """\
- list: miner_rules
  items: [Miner binary]
- correlation: miner then pool
  type: sequence
  by: [container.id]
  within: 1m
  steps:
    - name: miner
      condition: >
        rule in (miner_rules)
        or (proc.cmdline contains "stratum+" and not rule = "Outbound to pool")
    - name: pool
      condition: rule = "Outbound to pool"
  output: miner
- correlation: anything in ci
  type: count
  by: [hostname]
  within: 1m
  threshold: 2
  condition: k8s.ns.name = ci
  output: ci
"""


def test_the_index_leaves_out_steps_that_are_false_for_a_rule(tmp_path: Path) -> None:
    engine = Engine(load(tmp_path, RULES))
    pool = [(ci, si) for ci, si, *_ in engine.matcher._by_rule["Outbound to pool"]]
    assert pool == [(0, 1), (1, 0)]  # the miner step cannot match a pool connection
    other = [(ci, si, test is None) for ci, si, test, *_ in engine.matcher._any_rule]
    assert other == [(0, 0, False), (1, 0, False)]
    miner = [(ci, si, test is None) for ci, si, test, *_ in engine.matcher._by_rule["Miner binary"]]
    assert miner == [(0, 0, True), (1, 0, False)]  # no test left: the rule name decides


def test_the_engine_matches_as_the_plain_conditions_do(tmp_path: Path) -> None:
    engine = Engine(load(tmp_path, RULES))
    for rule in ("Miner binary", "Outbound to pool", "Other"):
        for cmdline in (None, "stratum+tcp://x", "STRATUM+tcp"):
            for ns in (None, "ci", "prod"):
                fields: dict[str, Any] = {"proc.cmdline": cmdline, "k8s.ns.name": ns}
                raw = payload(rule, 0, **fields)
                raw["output_fields"]["container.id"] = "c1"
                one = event_from_dict(raw, 0)
                expected = [
                    (ci, si)
                    for ci, corr in enumerate(engine.correlations)
                    for si, step in enumerate(corr.steps)
                    if step.condition.predicate(one)
                ]
                assert [(ci, si) for ci, si, _ in engine.match(one)] == expected


@pytest.mark.parametrize(
    ("by", "fields", "expected"),
    [
        (("container.id",), {"container.id": "c1"}, ("c1",)),
        (("container.id",), {"container.id": ""}, None),
        (("container.id",), {"container.id": None}, None),
        (("container.id",), {}, None),
        (("container.id",), {"container.id": 0}, (0,)),
        (("container.id",), {"container.id": ["c1"]}, None),
        (("container.id",), {"container.id": {"a": 1}}, None),
        (("hostname", "container.id"), {"container.id": "c1"}, ("node-1", "c1")),
        (("hostname", "container.id"), {"container.id": ""}, None),
        (("proc.aname[2]",), {"proc.aname_2": "shim"}, ("shim",)),
        (("proc.aname[2]", "user.uid"), {"proc.aname[2]": "shim", "user.uid": 0}, ("shim", 0)),
    ],
)
def test_group_keys_need_every_field_non_null_and_non_empty(
    by: tuple[str, ...], fields: dict[str, Any], expected: tuple[Any, ...] | None
) -> None:
    assert key_reader(by)(event(**{k.replace(".", "__"): v for k, v in fields.items()})) == (
        expected
    )


# --- properties -------------------------------------------------------------------------------

RULE_NAMES = ["Miner binary", "Outbound to pool", "Other", "443", "0443", "/a/b"]
ATOMS = [
    "rule = Other",
    'rule == "Miner binary"',
    "rule != Other",
    "rule in (net_rules)",
    "rule intersects (Other, 443)",
    "rule in (numbers)",
    "rule startswith Out",
    "rule pmatch (/a)",
    "miner_rule",
    "stratum",
    "allowed",
    'proc.cmdline contains "stratum+"',
    'proc.cmdline icontains "STRATUM"',
    "proc.cmdline startswith xmrig",
    "proc.cmdline endswith .sh",
    "proc.cmdline = xmrig",
    "proc.cmdline != xmrig",
    "proc.cmdline in (xmrig, minerd, 443)",
    "proc.cmdline in (xmrig, minerd)",
    "proc.cmdline pmatch (/tmp)",
    "proc.cmdline glob 'xm*'",
    "proc.cmdline regex 'x.*'",
    "proc.cmdline exists",
    "proc.cmdline > 100",
    "fd.sport = 443",
    "priority >= Error",
    "priority in (warning, error)",
    "tags contains mitre_execution",
    "output contains alert",
    "proc.aname[2] = shim",
    " or ".join(f"proc.cmdline contains lit{i}" for i in range(7)),
]


def conditions_text() -> st.SearchStrategy[str]:
    return st.recursive(
        st.sampled_from(ATOMS),
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda ab: f"({ab[0]}) and ({ab[1]})"),
            st.tuples(inner, inner).map(lambda ab: f"({ab[0]}) or ({ab[1]})"),
            st.tuples(inner, inner, inner).map(lambda abc: " and ".join(f"({x})" for x in abc)),
            st.tuples(inner, inner, inner).map(lambda abc: " or ".join(f"({x})" for x in abc)),
            inner.map(lambda a: f"not ({a})"),
        ),
        max_leaves=8,
    )


VALUES = st.sampled_from(
    [
        None,
        "",
        "xmrig -o stratum+tcp://p",
        "XMRIG -o STRATUM+TCP",
        "xmrig",
        "minerd",
        "/tmp/x",
        "run.sh",
        "0443",
        "443",
        "lit3 here",
        443,
        200,
        1.5,
        True,
        ["xmrig"],
        [],
        {"a": 1},
    ]
)
MISSING = object()


@st.composite
def events(draw: st.DrawFn) -> Event:
    fields: dict[str, Any] = {}
    for name in ("proc.cmdline", "fd.sport", "container.image.repository", "k8s.ns.name"):
        value = draw(st.one_of(st.just(MISSING), VALUES))
        if value is not MISSING:
            fields[name] = value
    aname = draw(st.sampled_from([MISSING, "shim", None]))
    if aname is not MISSING:
        fields[draw(st.sampled_from(["proc.aname[2]", "proc.aname_2"]))] = aname
    fields["k8s.ns.name"] = draw(st.sampled_from([None, "ci", "prod"]))
    raw = payload(
        draw(st.sampled_from(RULE_NAMES)),
        0,
        priority=draw(st.sampled_from(["Warning", "Error", "debug", "bogus"])),
        output=draw(st.sampled_from(["an alert", "quiet"])),
        tags=draw(st.sampled_from([["mitre_execution"], ["container"], []])),
        **fields,
    )
    return event_from_dict(copy.deepcopy(raw), 0)


@settings(max_examples=500, deadline=None)
@given(text=conditions_text(), sample=st.lists(events(), min_size=1, max_size=8))
def test_the_prefilter_never_changes_a_conditions_result(text: str, sample: list[Event]) -> None:
    agrees(text, sample)


@settings(max_examples=300, deadline=None)
@given(
    literals=st.lists(st.text(max_size=4), min_size=1, max_size=10),
    values=st.lists(st.text(max_size=12), min_size=1, max_size=5),
)
def test_one_pass_contains_equals_testing_each_literal(
    literals: list[str], values: list[str]
) -> None:
    test = contains_any(literals)
    for value in values:
        for literal in literals[:2]:
            assert test(value + literal + value)
        assert test(value) is any(literal in value for literal in literals)


def test_property_events_start_at_t0() -> None:
    """The helper's events are valid (a property over invalid events would test nothing)."""
    assert event_from_dict(payload("Other", 0), 0).time_ns == T0
