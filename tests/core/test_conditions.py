"""The condition language (spec section 3): syntax, semantics, macros, lists and the rule index."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.conditions import (
    And,
    Compare,
    CompiledCondition,
    Exists,
    ListCompare,
    ListItem,
    MacroRef,
    Not,
    Or,
    compile_condition,
    macro_refs,
    parse_condition,
    resolve_lists,
)
from streams.core.events import Event, event_from_dict
from streams.errors import ConditionSyntaxError

# Real-shaped payloads from Falco's json_output and falcosidekick (shared/falco-examples.jsonl).
SHADOW: dict[str, Any] = {
    "hostname": "d53a40db2ded",
    "output": "2026-07-10T19:10:27.228348323+0000: Warning Sensitive file opened for reading by "
    "non-trusted program | file=/etc/shadow gparent=systemd command=cat /etc/shadow",
    "output_fields": {
        "container.id": "9cc6d64c75d0",
        "container.image.repository": "alpine",
        "container.image.tag": "3.20",
        "container.name": "lab9-target",
        "evt.time.iso8601": 1783710627228348323,
        "evt.type": "openat",
        "fd.name": "/etc/shadow",
        "k8s.ns.name": None,
        "k8s.pod.name": None,
        "proc.aname[2]": "systemd",
        "proc.aname[3]": None,
        "proc.cmdline": "cat /etc/shadow",
        "proc.exepath": "/bin/busybox",
        "proc.name": "cat",
        "proc.pname": "containerd-shim",
        "proc.tty": 0,
        "user.loginuid": -1,
        "user.name": "root",
        "user.uid": 0,
    },
    "priority": "Warning",
    "rule": "Read sensitive file untrusted",
    "source": "syscall",
    "tags": [
        "T1555",
        "container",
        "filesystem",
        "host",
        "maturity_stable",
        "mitre_credential_access",
    ],
    "time": "2026-07-10T19:10:27.228348323Z",
}

K8S_API: dict[str, Any] = {
    "hostname": "minikube",
    "output": "10:18:15.901045861: Notice Unexpected connection to K8s API Server from container",
    "output_fields": {
        "container.id": "ee90b4bfa6d7",
        "evt.time": 1747563495901045861,
        "fd.lport": 443,
        "fd.name": "192.168.49.2:42668->10.96.0.1:443",
        "fd.rport": 42668,
        "fd.sport": "443",
        "k8s.ns.name": None,
        "proc.name": "storage-provisi",
        "user.uid": 0,
    },
    "priority": "Notice",
    "rule": "Contact K8S API Server From Container",
    "source": "syscall",
    "tags": ["T1565", "container", "k8s", "maturity_stable", "mitre_discovery", "network"],
    "time": "2025-05-18T10:18:15.901045861Z",
}

# falcosidekick: uuid, trailing zeros dropped, `proc.aname[2]` spelled `proc.aname_2`.
SIDEKICK: dict[str, Any] = {
    "uuid": "5b1f3ac2-8c1e-4b3e-9a57-1c2d3e4f5a6b",
    "output": "10:18:20.90104586: Notice Unexpected connection to K8s API Server from container",
    "priority": "Notice",
    "rule": "Contact K8S API Server From Container",
    "time": "2025-05-18T10:18:20.90104586Z",
    "output_fields": {
        "container.id": "ee90b4bfa6d7",
        "evt.time": 1747563500901045860,
        "k8s.ns.name": None,
        "proc.name": "storage-provisi",
        "proc.aname_2": "containerd",
    },
    "source": "syscall",
    "tags": ["container", "k8s", "mitre_discovery", "network"],
    "hostname": "minikube",
}


def make_event(base: dict[str, Any] = SHADOW, /, **fields: Any) -> Event:
    """An event from a base payload; keyword arguments replace output_fields (dots as `__`)."""
    raw = copy.deepcopy(base)
    for name, value in fields.items():
        raw["output_fields"][name.replace("__", ".")] = value
    return event_from_dict(raw, 0)


def with_top(base: dict[str, Any] = SHADOW, /, **top: Any) -> Event:
    """An event from a base payload with top-level keys replaced (None removes the key)."""
    raw = copy.deepcopy(base)
    for key, value in top.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return event_from_dict(raw, 0)


def compiled(
    text: str,
    macros: Mapping[str, str] | None = None,
    lists: Mapping[str, list[Any]] | None = None,
) -> CompiledCondition:
    parsed_macros = {name: parse_condition(body) for name, body in (macros or {}).items()}
    return compile_condition(parse_condition(text), parsed_macros, resolve_lists(lists or {}))


def matches(text: str, event: Event | None = None, **kwargs: Any) -> bool:
    return compiled(text, **kwargs).predicate(event if event is not None else make_event())


def syntax_error(text: str, **kwargs: Any) -> ConditionSyntaxError:
    with pytest.raises(ConditionSyntaxError) as info:
        compiled(text, **kwargs)
    return info.value


# --- syntax -----------------------------------------------------------------------------------


def test_parse_comparison_records_field_operator_value_and_offsets() -> None:
    assert parse_condition("proc.name = cat") == Compare("proc.name", "=", "cat", 0, 12)


def test_and_binds_tighter_than_or() -> None:
    node = parse_condition("a = 1 or b = 2 and c = 3")
    assert isinstance(node, Or)
    assert node.operands[0] == Compare("a", "=", "1", 0, 4)
    assert isinstance(node.operands[1], And)


def test_not_applies_to_the_next_term_only() -> None:
    node = parse_condition("not a = 1 and b = 2")
    assert isinstance(node, And)
    assert isinstance(node.operands[0], Not)


def test_parentheses_override_precedence() -> None:
    node = parse_condition("(a = 1 or b = 2) and c = 3")
    assert isinstance(node, And)
    assert isinstance(node.operands[0], Or)


def test_chained_and_is_one_flat_node() -> None:
    node = parse_condition("a = 1 and b = 2 and c exists")
    assert isinstance(node, And)
    assert len(node.operands) == 3
    assert node.operands[2] == Exists("c", 20)


@pytest.mark.parametrize(
    "text",
    ["in_container", "in_container and x = 1", "x = 1 or in_container", "(in_container)"],
)
def test_bare_word_where_a_condition_is_expected_is_a_macro_reference(text: str) -> None:
    refs = macro_refs(parse_condition(text))
    assert [ref.name for ref in refs] == ["in_container"]


def test_macro_refs_lists_references_in_text_order_with_offsets() -> None:
    node = parse_condition("a and not (b or x = 1) and c")
    assert macro_refs(node) == [MacroRef("a", 0), MacroRef("b", 11), MacroRef("c", 27)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("k8s.ns.name = kube-system", "kube-system"),
        ("fd.name = /etc", "/etc"),
        ("fd.name = /root/.ssh", "/root/.ssh"),
        ("fd.sport = 443", "443"),
        ("proc.aname[2] = systemd", "systemd"),
        ("x = a.b:c@d/e+f*g?h[1]~i", "a.b:c@d/e+f*g?h[1]~i"),
    ],
)
def test_bare_words_run_until_space_paren_comma_quote_or_operator(text: str, value: str) -> None:
    node = parse_condition(text)
    assert isinstance(node, Compare)
    assert node.value == value


def test_bracketed_field_name_is_a_bare_word() -> None:
    node = parse_condition("proc.aname[2] = systemd")
    assert isinstance(node, Compare)
    assert node.field == "proc.aname[2]"


def test_operators_need_no_surrounding_space() -> None:
    assert parse_condition("proc.name!=cat") == Compare("proc.name", "!=", "cat", 0, 11)
    assert parse_condition("x>=1") == Compare("x", ">=", "1", 0, 3)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('x = "two words"', "two words"),
        ("x = 'two words'", "two words"),
        (r'x = "say \"hi\""', 'say "hi"'),
        (r"x = 'it\'s'", "it's"),
        (r'x = "back\\slash"', "back\\slash"),
        (r'x = "\d+\.sh"', r"\d+\.sh"),
        ("x = 'a \"double\" inside'", 'a "double" inside'),
        ('x = "(a, b) = c"', "(a, b) = c"),
        ('x = ""', ""),
    ],
)
def test_quoted_values_and_escapes(text: str, value: str) -> None:
    node = parse_condition(text)
    assert isinstance(node, Compare)
    assert node.value == value


def test_list_items_record_whether_they_were_quoted() -> None:
    node = parse_condition("proc.name in (bash, 'sh', \"zsh\")")
    assert node == ListCompare(
        "proc.name",
        "in",
        (ListItem("bash", False, 14), ListItem("sh", True, 20), ListItem("zsh", True, 26)),
        0,
    )


@pytest.mark.parametrize(
    ("text", "offset", "fragment"),
    [
        ("", 0, "empty condition"),
        ("   ", 0, "empty condition"),
        ("(proc.name = a", 14, "expected ')'"),
        ("((a = 1) or b = 2", 17, "unbalanced parenthesis"),
        ("proc.name = a)", 13, "unbalanced parenthesis"),
        ("proc.name =", 11, "missing value"),
        ("proc.name = and x = 1", 12, "missing value"),
        ("proc.name = )", 12, "missing value"),
        ("proc.name =~ bash", 10, "unknown operator '=~'"),
        ("proc.name ~= bash", 10, "unknown operator '~='"),
        ("proc.name ! bash", 10, "unknown operator '!'"),
        ("proc.name <> bash", 10, "unknown operator '<>'"),
        ("proc.name === bash", 10, "unknown operator '==='"),
        ("proc.name equals bash", 10, "expected an operator"),
        ("proc.name IN (bash)", 10, "keywords are lower case"),
        ("proc.name = a b", 14, "expected 'and', 'or' or end of condition"),
        ("proc.name = a AND b = c", 14, "keywords are lower case"),
        ("proc.name in bash", 13, "expected '('"),
        ("proc.name in (a, b", 18, "expected ',' or ')'"),
        ("proc.name in (a b)", 16, "expected ',' or ')'"),
        ("proc.name in ()", 14, "expected a list item"),
        ("proc.name in (a,)", 16, "expected a list item"),
        ('proc.name = "abc', 12, "unterminated string"),
        ("proc.name = 'abc\\'", 12, "unterminated string"),
        ("not", 3, "expected a condition"),
        ("a = 1 and", 9, "expected a condition"),
        ("a = 1 or or b = 2", 9, "expected a condition"),
        ("and a = 1", 0, "expected a condition"),
        ("= a", 0, "expected a condition"),
        ('"proc.name" = a', 0, "expected a condition"),
        ("()", 1, "expected a condition"),
    ],
)
def test_syntax_errors_say_what_was_expected_and_where(
    text: str, offset: int, fragment: str
) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse_condition(text)
    assert info.value.offset == offset
    assert fragment in info.value.message


def test_absurdly_deep_nesting_is_a_syntax_error_not_a_crash() -> None:
    with pytest.raises(ConditionSyntaxError, match="nested too deeply"):
        parse_condition("(" * 1000 + "a = 1" + ")" * 1000)
    with pytest.raises(ConditionSyntaxError, match="nested too deeply"):
        parse_condition("not " * 1000 + "a = 1")


def test_moderate_nesting_parses() -> None:
    assert matches("(" * 50 + "proc.name = cat" + ")" * 50)


# --- every operator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("proc.name = cat", True),
        ("proc.name == cat", True),
        ("proc.name = Cat", False),
        ("proc.name != cat", False),
        ("proc.name != bash", True),
        ("user.uid < 1000", True),
        ("user.uid <= 0", True),
        ("user.uid > 0", False),
        ("user.uid >= 0", True),
        ("proc.cmdline contains shadow", True),
        ("proc.cmdline contains SHADOW", False),
        ("proc.cmdline icontains SHADOW", True),
        ("proc.cmdline icontains passwd", False),
        ("fd.name startswith /etc/", True),
        ("fd.name startswith /var", False),
        ("fd.name endswith shadow", True),
        ("fd.name endswith passwd", False),
        ('fd.name glob "/etc/*"', True),
        ('fd.name glob "/var/*"', False),
        ('fd.name regex "/etc/sha.ow"', True),
        ('fd.name regex "/etc/pass.*"', False),
        ("proc.name in (bash, cat)", True),
        ("proc.name in (bash, sh)", False),
        ("proc.name intersects (bash, cat)", True),
        ("proc.name intersects (bash, sh)", False),
        ("fd.name pmatch (/etc)", True),
        ("fd.name pmatch (/var, /usr)", False),
        ("container.id exists", True),
        ("no.such.field exists", False),
    ],
)
def test_each_operator_on_a_present_field(text: str, expected: bool) -> None:
    assert matches(text) is expected


ALL_COMPARISONS = [
    "{f} = x",
    "{f} == x",
    "{f} != x",
    "{f} < 5",
    "{f} <= 5",
    "{f} > 5",
    "{f} >= 5",
    "{f} contains x",
    "{f} icontains x",
    "{f} startswith x",
    "{f} endswith x",
    '{f} glob "*"',
    '{f} regex ".*"',
    "{f} in (x, y)",
    "{f} intersects (x, y)",
    "{f} pmatch (/)",
    "{f} exists",
]


@pytest.mark.parametrize("template", ALL_COMPARISONS)
@pytest.mark.parametrize("field", ["k8s.ns.name", "no.such.field", "proc.aname[3]"])
def test_null_or_missing_field_makes_every_comparison_false(template: str, field: str) -> None:
    text = template.format(f=field)
    assert matches(text) is False


@pytest.mark.parametrize("template", ALL_COMPARISONS)
@pytest.mark.parametrize("field", ["k8s.ns.name", "no.such.field"])
def test_not_of_a_comparison_on_a_null_or_missing_field_is_true(template: str, field: str) -> None:
    text = "not " + template.format(f=field)
    assert matches(text) is True


def test_not_startswith_is_true_when_the_field_is_missing() -> None:
    assert matches('not fd.sip startswith "10."') is True


@pytest.mark.parametrize("field", ["priority", "tags", "hostname", "source", "output"])
def test_missing_top_level_key_makes_comparisons_false(field: str) -> None:
    event = with_top(**{field: None})
    assert matches(f"{field} != debug", event) is False
    assert matches(f"{field} = debug", event) is False
    assert matches(f"{field} exists", event) is False
    assert matches(f"not {field} exists", event) is True


def test_priority_comparisons_are_false_without_a_priority() -> None:
    event = with_top(priority=None)
    for text in ("priority = Warning", "priority != Warning", "priority >= Debug"):
        assert matches(text, event) is False


def test_exists_is_true_for_empty_values() -> None:
    event = make_event(empty="", **{"proc.args": []})
    assert matches("empty exists", event)
    assert matches("proc.args exists", event)


# --- numbers and strings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('fd.sport = "443"', True),  # string field, quoted literal
        ("fd.sport = 443", True),  # string field, bare literal
        ('fd.lport = "443"', True),  # integer field, quoted literal
        ("fd.lport = 443", True),
        ("fd.lport = 443.0", True),
        ("fd.lport = 0443", True),
        ("fd.lport != 80", True),
        ("fd.lport != 443", False),
        ("fd.sport > 80", True),  # numeric string compares as a number, not as text
        ("fd.sport < 1000", True),
        ("fd.lport < 1000", True),
        ("fd.lport >= 443", True),
        ("fd.lport > 443", False),
        ("user.uid < 1000", True),
        ("fd.lport in (80, 443)", True),
        ("fd.lport in (80, 8443)", False),
        ("fd.sport in (80, 443)", True),
        ("fd.lport intersects (443)", True),
    ],
)
def test_numbers_and_numeric_strings_compare_as_numbers(text: str, expected: bool) -> None:
    assert matches(text, make_event(K8S_API)) is expected


@pytest.mark.parametrize(
    ("value", "text", "expected"),
    [
        (-1, "user.loginuid = -1", True),
        (-1, "user.loginuid < 0", True),
        ("-1", "user.loginuid < 0", True),
        (1.5, "user.loginuid > 1", True),
        ("1.5", "user.loginuid < 2", True),
        ("1.5", "user.loginuid = 1.50", True),
        (1000, "user.loginuid < 1000", False),
        (1000, "user.loginuid <= 1000", True),
        ("abc", "user.loginuid < 1000", False),
        ("abc", "user.loginuid > 1000", False),
        ("abc", "user.loginuid != 1000", True),
        (7, "user.loginuid < abc", False),
        ("abc", "user.loginuid < abd", False),  # no string ordering
        ("abc", "user.loginuid >= abc", False),
        (True, "user.loginuid = true", True),  # booleans are not numbers
        (True, "user.loginuid = 1", False),
        (34816, "user.loginuid startswith 34", True),  # string operators see str(value)
        (34816, "user.loginuid contains 481", True),
        (34816, "user.loginuid endswith 16", True),
        (34816, 'user.loginuid glob "348*"', True),
        (34816, 'user.loginuid regex "[0-9]+"', True),
    ],
)
def test_numeric_and_string_values(value: Any, text: str, expected: bool) -> None:
    assert matches(text, make_event(user__loginuid=value)) is expected


def test_large_integers_compare_exactly() -> None:
    event = make_event(K8S_API)
    assert matches("evt.time = 1747563495901045861", event)
    assert not matches("evt.time = 1747563495901045862", event)
    assert matches("evt.time < 1747563495901045862", event)


def test_version_like_strings_are_numbers_when_they_read_as_numbers() -> None:
    assert matches("container.image.tag = 3.20")
    assert matches('container.image.tag = "3.2"')  # 3.20 == 3.2 as numbers
    assert matches("container.image.tag = 3.20", make_event(container__image__tag="3.2"))
    assert not matches("container.image.tag = 3.20.1", make_event(container__image__tag="3.2.1"))


def test_non_numeric_strings_compare_as_text() -> None:
    assert matches("container.image.repository = alpine")
    assert not matches("container.image.repository = 3")
    assert not matches("container.image.repository = Alpine")


def test_host_is_an_ordinary_value() -> None:
    assert matches("container.id = host", make_event(container__id="host"))
    assert not matches("container.id = host")
    assert matches("container.id != host")


def test_bracketed_field_names_read_output_fields() -> None:
    assert matches("proc.aname[2] = systemd")
    assert not matches("proc.aname[3] exists")


def test_bracketed_field_names_find_falcosidekicks_replaced_spelling() -> None:
    assert matches("proc.aname[2] = containerd", make_event(SIDEKICK))


@pytest.mark.parametrize(
    "text",
    [
        "hostname = d53a40db2ded",
        "source = syscall",
        "output contains /etc/shadow",
        "time startswith 2026-07-10",
        'rule = "Read sensitive file untrusted"',
        'rule startswith "Read "',
    ],
)
def test_top_level_field_names_read_the_payload(text: str) -> None:
    assert matches(text)


def test_uuid_field_reads_falcosidekicks_uuid() -> None:
    assert matches('uuid = "5b1f3ac2-8c1e-4b3e-9a57-1c2d3e4f5a6b"', make_event(SIDEKICK))
    assert not matches("uuid exists")


def test_top_level_names_are_not_looked_up_in_output_fields() -> None:
    event = make_event(hostname="inner")
    assert matches("hostname = d53a40db2ded", event)


# --- priority ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        ("Emergency", True),
        ("Alert", True),
        ("Critical", True),
        ("Error", True),
        ("Warning", True),
        ("Notice", False),
        ("Informational", False),
        ("Debug", False),
    ],
)
def test_priority_at_least_warning_compares_by_severity(priority: str, expected: bool) -> None:
    assert matches("priority >= Warning", with_top(priority=priority)) is expected


@pytest.mark.parametrize("spelling", ["Warning", "warning", "WARNING", "wArNiNg"])
def test_priority_names_are_case_insensitive_in_conditions_and_events(spelling: str) -> None:
    assert matches(f"priority = {spelling}", with_top(priority="Warning"))
    assert matches("priority = Warning", with_top(priority=spelling))
    assert matches(f"priority in (error, {spelling})", with_top(priority="WARNING"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("priority = info", True),
        ("priority = Informational", True),
        ("priority < notice", True),
        ("priority <= Debug", False),
        ("priority > debug", True),
        ("priority != info", False),
        ("priority != Notice", True),
        ("priority in (info, debug)", True),
        ("priority intersects (Warning)", False),
    ],
)
def test_info_means_informational(text: str, expected: bool) -> None:
    assert matches(text, with_top(priority="info")) is expected


def test_event_priority_that_is_no_priority_name_fails_severity_comparisons() -> None:
    event = with_top(priority="Bogus")
    for text in ("priority = Warning", "priority != Warning", "priority < Emergency"):
        assert matches(text, event) is False
    assert matches("priority contains Bog", event) is True


@pytest.mark.parametrize(
    ("text", "offset"),
    [("priority = Warn", 11), ("priority >= 3", 12), ("priority in (Error, Serious)", 20)],
)
def test_unknown_priority_name_is_a_compile_error(text: str, offset: int) -> None:
    error = syntax_error(text)
    assert error.offset == offset
    assert "unknown priority" in error.message


def test_string_operators_on_priority_use_the_payload_text() -> None:
    assert matches("priority startswith Warn")
    assert matches("priority icontains warn")


# --- tags (a list field) ----------------------------------------------------------------------


SHADOW_TAGS = ", ".join(SHADOW["tags"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tags contains host", True),
        ("tags contains cont", False),  # an element, not a substring
        ("tags contains Host", False),
        ("tags icontains HOST", True),  # an element, ignoring case
        ("tags icontains hos", False),
        ("tags startswith mitre_", True),  # any element
        ("tags endswith _access", True),
        ("tags endswith _nothing", False),
        ('tags glob "T1*"', True),
        ('tags regex "T[0-9]{4}"', True),
        ('tags regex "T[0-9]{3}"', False),
        ("tags = container", True),  # any element equals
        ("tags = nope", False),
        ("tags != shell", True),  # no element equals
        ("tags != container", False),
        (f"tags in ({SHADOW_TAGS})", True),  # every tag is in the set
        (f"tags in (extra, {SHADOW_TAGS})", True),
        ("tags in (container, filesystem, host)", False),  # every tag must be in the set
        ("tags intersects (shell, host)", True),  # at least one tag in the set
        ("tags intersects (shell, network)", False),
    ],
)
def test_tags_semantics(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_tags_in_is_false_for_an_event_without_tags() -> None:
    assert matches("tags in (a, b)", with_top(tags=[])) is False
    assert matches("tags in (a, b)", with_top(tags=None)) is False
    assert matches("tags intersects (a, b)", with_top(tags=[])) is False


def test_null_tag_elements_never_count_as_members() -> None:
    assert not matches("tags in (a)", with_top(tags=["a", None]))
    assert matches("tags intersects (a)", with_top(tags=["a", None]))
    assert matches("tags != b", with_top(tags=["a", None]))


def test_tags_contains_an_element_from_the_list_field() -> None:
    assert matches("tags contains mitre_discovery", make_event(K8S_API))


def test_intersects_on_a_scalar_is_the_same_as_in() -> None:
    assert matches("proc.name intersects (cat, sh)")
    assert not matches("proc.name intersects (bash, sh)")


def test_in_lists_mix_quoted_and_bare_items() -> None:
    assert matches("proc.cmdline in ('cat /etc/shadow', bash)")


def test_empty_list_after_expansion_matches_nothing() -> None:
    lists: dict[str, list[Any]] = {"nothing": []}
    assert not matches("proc.name in (nothing)", lists=lists)
    assert not matches("tags intersects (nothing)", lists=lists)
    assert not matches("fd.name pmatch (nothing)", lists=lists)
    assert matches("not proc.name in (nothing)", lists=lists)


# --- glob -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "", True),
        ("/etc/*", "/etc/shadow", True),
        ("/etc/*", "/etc/ssh/sshd_config", True),  # `*` crosses `/` (fnmatch, as Falco)
        ("/etc/*", "/var/etc/x", False),  # anchored at the start
        ("*.sh", "/tmp/x.sh", True),
        ("*.sh", "/tmp/x.shx", False),  # anchored at the end
        ("/tmp/?.sh", "/tmp/a.sh", True),
        ("/tmp/?.sh", "/tmp/ab.sh", False),
        ("/dev/tty[0-9]", "/dev/tty7", True),
        ("/dev/tty[0-9]", "/dev/ttyS", False),
        ("/dev/tty[!0-9]", "/dev/ttyS", True),
        ("a.b", "axb", False),  # `.` is literal
        ("a+b", "a+b", True),
        ("(x)", "(x)", True),
    ],
)
def test_glob_matches_the_whole_value_shell_style(pattern: str, value: str, expected: bool) -> None:
    assert matches(f"x glob {pattern!r}", make_event(x=value)) is expected


def test_glob_with_many_stars_does_not_backtrack_catastrophically() -> None:
    event = make_event(x="a" * 20_000)
    start = time.perf_counter()
    assert not matches('x glob "*a*a*a*a*a*a*a*a*b"', event)
    assert time.perf_counter() - start < 1.0


# --- regex ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        (r"\d+\.sh", "123.sh", True),
        (r"\d+\.sh", "/tmp/123.sh", False),  # a partial match is not a match
        (r"\d+\.sh", "123.shx", False),
        ("sha", "/etc/shadow", False),
        (".*sha.*", "/etc/shadow", True),
        ("/etc/(shadow|passwd)", "/etc/passwd", True),
        ("a|b", "ab", False),  # the whole value, even across alternatives
        ("(?i)CAT", "cat", True),
        (".*", "line1\nline2", False),  # `.` does not cross newlines unless the pattern says so
        ("(?s).*", "line1\nline2", True),
    ],
)
def test_regex_must_match_the_whole_value(pattern: str, value: str, expected: bool) -> None:
    assert matches(f"x regex {pattern!r}", make_event(x=value)) is expected


def test_regex_handles_non_ascii_values() -> None:
    assert matches('x regex "caf.-[0-9]+"', make_event(x="café-42"))


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ('proc.name regex "(unclosed"', 16),
        ('proc.name regex "(a)\\1"', 16),  # backreferences: RE2 does not support them
        ('proc.name regex "(?<=a)b"', 16),  # nor look-behind
        ("x = 1 and proc.name regex '*'", 26),
    ],
)
def test_invalid_regex_is_a_compile_error_at_the_pattern(
    text: str, offset: int, capfd: pytest.CaptureFixture[str]
) -> None:
    error = syntax_error(text)
    assert error.offset == offset
    assert "invalid regex" in error.message
    assert capfd.readouterr().err == ""  # RE2's own logging is silenced


def test_regex_falls_back_to_re2s_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.core._condition_parser._ANCHOR_BOTH", None)
    assert matches(r'x regex "\\d+\\.sh"', make_event(x="12.sh"))
    assert not matches(r'x regex "\\d+\\.sh"', make_event(x="a12.sh"))


def test_regex_runs_in_linear_time_on_hostile_input() -> None:
    event = make_event(x="a" * 100_000 + "!")
    start = time.perf_counter()
    assert not matches('x regex "(a+)+$"', event)
    assert not matches('x regex "(a|aa)*b"', event)
    assert time.perf_counter() - start < 1.0


# --- pmatch -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "value", "expected"),
    [
        ("/etc", "/etc", True),
        ("/etc", "/etc/shadow", True),
        ("/etc", "/etc/ssh/sshd_config", True),
        ("/etc", "/etcfoo", False),
        ("/etc", "/et", False),
        ("/etc", "/var/etc", False),
        ("/etc", "/etc/", True),
        ("/etc/", "/etc", True),  # a trailing slash in the pattern is ignored
        ("/etc/", "/etc/shadow", True),
        ("/etc/", "/etcfoo", False),
        ("/", "/anything/at/all", True),  # the root covers every absolute path
        ("/", "/", True),
        ("/", "relative", False),
        ("/usr/bin, /etc", "/etc/x", True),
        ("/usr/bin, /etc", "/usr/bin/x", True),
        ("/usr/bin, /etc", "/usr/binx", False),
        ("'/path with space'", "/path with space/f", True),
    ],
)
def test_pmatch_is_equality_or_a_path_below(paths: str, value: str, expected: bool) -> None:
    assert matches(f"fd.name pmatch ({paths})", make_event(fd__name=value)) is expected


def test_pmatch_expands_list_names() -> None:
    lists = {"sensitive_dirs": ["/etc", "/root/.ssh"]}
    assert matches("fd.name pmatch (sensitive_dirs)", lists=lists)
    assert matches(
        "fd.name pmatch (sensitive_dirs)", make_event(fd__name="/root/.ssh/id_rsa"), lists=lists
    )


# --- macros -----------------------------------------------------------------------------------


def test_macro_expands_to_its_condition() -> None:
    macros = {"reads_shadow": "fd.name = /etc/shadow"}
    assert matches("reads_shadow", macros=macros)
    assert not matches("not reads_shadow", macros=macros)


def test_macro_expands_as_a_parenthesised_sub_expression() -> None:
    # Textual expansion would read `proc.name = bash and proc.name = cat or user.uid = 0`.
    macros = {"cat_or_root": "proc.name = cat or user.uid = 0"}
    assert not matches("proc.name = bash and cat_or_root", macros=macros)
    assert matches("not proc.name = bash and cat_or_root", macros=macros)


def test_macros_may_use_macros() -> None:
    macros = {
        "in_container": "container.id exists and container.id != host",
        "sensitive": "fd.name pmatch (/etc)",
        "container_reads_sensitive": "in_container and sensitive",
    }
    assert matches("container_reads_sensitive", macros=macros)
    assert not matches("container_reads_sensitive", make_event(container__id="host"), macros=macros)


def test_unknown_macro_is_reported_at_its_reference() -> None:
    error = syntax_error("proc.name = cat and in_contianer")
    assert error.offset == 20
    assert "unknown macro 'in_contianer'" in error.message


def test_field_without_operator_hints_at_exists() -> None:
    error = syntax_error("container.id")
    assert "container.id exists" in error.message


def test_unknown_macro_inside_a_macro_is_reported_at_the_outer_reference() -> None:
    error = syntax_error("x = 1 or outer", macros={"outer": "a = 1 and inner"})
    assert error.offset == 9
    assert "in macro 'outer'" in error.message
    assert "unknown macro 'inner'" in error.message


def test_invalid_regex_inside_a_macro_is_reported_at_the_reference() -> None:
    error = syntax_error("x = 1 and bad", macros={"bad": "proc.name regex '('"})
    assert error.offset == 10
    assert "invalid regex" in error.message


@pytest.mark.parametrize(
    ("macros", "cycle"),
    [
        ({"a": "a"}, "a -> a"),
        ({"a": "x = 1 and b", "b": "not a"}, "a -> b -> a"),
        ({"a": "b", "b": "c", "c": "b"}, "b -> c -> b"),
    ],
)
def test_macro_cycle_is_an_error_naming_the_cycle(macros: dict[str, str], cycle: str) -> None:
    error = syntax_error("a", macros=macros)
    assert cycle in error.message
    assert error.offset == -1


def test_a_macro_used_twice_is_not_a_cycle() -> None:
    macros = {"m": "proc.name = cat", "n": "m and m"}
    assert matches("m and n", macros=macros)


def test_fields_include_those_of_expanded_macros() -> None:
    macros = {"m": "container.id exists and fd.name pmatch (/etc)"}
    assert compiled("proc.name = cat and m", macros=macros).fields == frozenset(
        {"proc.name", "container.id", "fd.name"}
    )


# --- lists ------------------------------------------------------------------------------------


def test_resolve_lists_expands_nested_list_names_in_any_order() -> None:
    raw = {
        "all_shells": ["shell_binaries", "fish"],  # used before its definition
        "shell_binaries": ["bash", "sh", "posix_shells"],
        "posix_shells": ["dash", "ash"],
    }
    assert resolve_lists(raw) == {
        "all_shells": ("bash", "sh", "dash", "ash", "fish"),
        "shell_binaries": ("bash", "sh", "dash", "ash"),
        "posix_shells": ("dash", "ash"),
    }


def test_resolve_lists_turns_numbers_into_strings_and_drops_duplicates() -> None:
    assert resolve_lists({"ports": [443, 80, "443", 8.5]}) == {"ports": ("443", "80", "8.5")}


@pytest.mark.parametrize(
    ("raw", "cycle"),
    [
        ({"a": ["a"]}, "a -> a"),
        ({"a": ["x", "b"], "b": ["a"]}, "a -> b -> a"),
        ({"z": ["a"], "a": ["b"], "b": ["c"], "c": ["a"]}, "a -> b -> c -> a"),
    ],
)
def test_resolve_lists_rejects_cycles_naming_them(raw: dict[str, list[Any]], cycle: str) -> None:
    with pytest.raises(ValueError, match="cycle") as info:
        resolve_lists(raw)
    assert cycle in str(info.value)


@pytest.mark.parametrize("item", [None, ["nested"], {"k": "v"}])
def test_resolve_lists_rejects_items_that_are_not_scalars(item: Any) -> None:
    with pytest.raises(ValueError, match="not a string or a number"):
        resolve_lists({"bad": ["ok", item]})


def test_list_name_in_a_list_expands_to_its_items() -> None:
    lists = {"readers": ["less", "more", "posix_readers"], "posix_readers": ["cat"]}
    assert matches("proc.name in (readers)", lists=lists)
    assert matches("proc.name in (vim, readers)", lists=lists)


def test_quoted_list_name_is_a_literal() -> None:
    lists = {"readers": ["cat"]}
    assert not matches("proc.name in ('readers')", lists=lists)
    assert matches("proc.name in ('readers')", make_event(proc__name="readers"), lists=lists)


def test_list_name_outside_a_list_is_a_literal() -> None:
    lists = {"readers": ["cat"]}
    assert not matches("proc.name = readers", lists=lists)


def test_list_of_port_numbers_compares_as_numbers() -> None:
    lists = {"web_ports": [80, 443, "8080"]}
    assert matches("fd.lport in (web_ports)", make_event(K8S_API), lists=lists)
    assert matches("fd.sport in (web_ports)", make_event(K8S_API), lists=lists)


def test_list_used_by_macro_and_condition() -> None:
    lists = {"shells": ["bash", "sh"]}
    macros = {"spawned_shell": "proc.name in (shells)"}
    event = make_event(proc__name="sh")
    assert matches("spawned_shell and tags contains container", event, macros=macros, lists=lists)


# --- the rule index ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ('rule = "A"', {"A"}),
        ('rule == "A"', {"A"}),
        ("rule in (A, B)", {"A", "B"}),
        ("rule intersects (A, B)", {"A", "B"}),
        ("rule in (A, 443)", None),  # numbers compare loosely ("0443" = 443): no exact index
        ("rule = 443", None),
        ("rule != A", None),
        ("not rule = A", None),
        ("rule startswith A", None),
        ("rule = A and proc.name = cat", {"A"}),
        ("proc.name = cat and rule in (A, B)", {"A", "B"}),
        ("rule in (A, B) and rule in (B, C)", {"B"}),
        ("rule = A and rule = B", set()),
        ("rule = A or rule in (B, C)", {"A", "B", "C"}),
        ("rule = A or proc.name = cat", None),
        ("(rule = A or rule = B) and proc.name = cat", {"A", "B"}),
        ("proc.name = cat", None),
        ("m_rule and proc.name = cat", {"M"}),
        ("m_rule or rule = A", {"M", "A"}),
        ("rule in (rule_list)", {"L1", "L2"}),
    ],
)
def test_rule_index_is_derived_from_rule_equalities(text: str, rules: set[str] | None) -> None:
    condition = compiled(text, macros={"m_rule": "rule = M"}, lists={"rule_list": ["L1", "L2"]})
    assert condition.rules == (None if rules is None else frozenset(rules))


def test_rule_equality_matches_the_rule_exactly() -> None:
    assert matches('rule = "Read sensitive file untrusted"')
    assert not matches('rule = "read sensitive file untrusted"')
    assert matches('rule != "Terminal shell in container"')
    assert matches('rule in ("Terminal shell in container", "Read sensitive file untrusted")')


def test_numeric_rule_names_compare_as_numbers() -> None:
    assert matches("rule = 443", with_top(rule="0443"))
    assert matches("rule in (443, x)", with_top(rule="443.0"))


RULE_NAMES = ["R1", "R2", "R3", "443", "0443"]
MACROS = {
    "m_r2_or_sh": "rule = R2 or proc.name = sh",
    "m_r1_r3": "rule in (R1, R3)",
    "m_nested": "m_r1_r3 and not proc.name = bash",
}
LISTS = {"rl": ["R1", "R2"], "shells": ["bash", "sh"]}
ATOMS = [
    "rule = R1",
    'rule == "R2"',
    "rule != R1",
    "rule in (R1, R2)",
    "rule in (rl)",
    "rule intersects (R2, R3)",
    "rule = 443",
    "rule in (R3, 443)",
    "rule startswith R",
    "rule glob 'R?'",
    "proc.name in (shells)",
    "proc.name = bash",
    "proc.name exists",
    "fd.lport > 100",
    "m_r2_or_sh",
    "m_r1_r3",
    "m_nested",
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


EVENTS = st.builds(
    lambda rule, name, port: make_event(with_top(rule=rule).raw, proc__name=name, fd__lport=port),
    st.sampled_from(RULE_NAMES),
    st.sampled_from(["bash", "sh", "cat", None]),
    st.sampled_from([None, 50, 443, "443", "x"]),
)


@settings(max_examples=400, deadline=None)
@given(text=conditions_text(), events=st.lists(EVENTS, min_size=1, max_size=6))
def test_rule_index_never_excludes_an_event_the_predicate_accepts(
    text: str, events: list[Event]
) -> None:
    condition = compiled(text, macros=MACROS, lists=LISTS)
    for event in events:
        if condition.predicate(event):
            assert condition.rules is None or event.rule in condition.rules, (text, event.rule)


@settings(max_examples=200, deadline=None)
@given(text=conditions_text(), event=EVENTS)
def test_not_is_the_complement_of_any_condition(text: str, event: Event) -> None:
    positive = compiled(text, macros=MACROS, lists=LISTS).predicate(event)
    negative = compiled(f"not ({text})", macros=MACROS, lists=LISTS).predicate(event)
    assert positive is not negative


# --- the compiled object ----------------------------------------------------------------------


def test_fields_lists_every_field_the_condition_reads() -> None:
    condition = compiled("rule = A and (proc.name in (a) or not fd.name exists) or tags contains x")
    assert condition.fields == frozenset({"rule", "proc.name", "fd.name", "tags"})


def test_predicate_returns_a_bool() -> None:
    for text in ("proc.name = cat", "proc.name in (cat)", "fd.name regex '.*'", "x exists"):
        assert type(compiled(text).predicate(make_event())) is bool


def test_compiled_condition_is_reusable_across_events() -> None:
    condition = compiled("proc.name in (cat, bash) and priority >= warning")
    assert condition.predicate(make_event())
    assert not condition.predicate(make_event(proc__name="vim"))
    assert not condition.predicate(make_event(K8S_API, proc__name="cat"))
