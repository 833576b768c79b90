"""Template cost (issue 10): nothing is evaluated when a template is loaded; a render is bounded
in steps, time, output and the size of what it builds, and an incident whose template goes past
a bound gets the default text, counted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
import pytest
from helpers import Feed, load

from streams.core._sandbox import (
    BudgetedSandbox,
    RenderLimits,
    TemplateBudgetError,
    _budgeted,
    deep_size,
)
from streams.core.templates import compile_template, render_template

BOMBS = {
    "repeat": "{{ 'x' * 2000000000 }}",
    "power": "{{ 9**(9**9) }}",
    "big-int-product": "{{ (2**4000) * (2**4000) }}",
    "center": "{{ 'x'|center(2000000000) }}",
    "indent": "{{ ('x\\n' * 1000)|indent(100000) }}",
    "replace-filter": "{{ ('x' * 1000)|replace('', 'y' * 10000) }}",
    "replace-method": "{{ ('x' * 1000).replace('', 'y' * 10000) }}",
    "ljust": "{{ 'x'.ljust(10**9) }}",
    "expandtabs": "{{ ('\\t' * 1000).expandtabs(100000) }}",
    "printf-width": "{{ '%1000000000d' % 1 }}",
    "printf-star": "{{ '%*d' % (1000000000, 1) }}",
    "format-filter": "{{ '%1000000000s'|format('x') }}",
    "list-repeat": "{{ ['y' * 60000] * 65536 }}",
    "join": "{{ (['y' * 60000] * 10)|join('z' * 200000) }}",
    "batch-fill": "{{ [1]|batch(100000000, 'x')|list }}",
    "nested-range": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "recursive-macro": (
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% else %}xx{% endif %}{% endmacro %}"
        "{{ f(40) }}"
    ),
    "namespace-doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}"
    ),
    "captured-block": (
        "{% set x %}{% for i in range(100000) %}{{ 'y' * 60000 }}{% endfor %}{% endset %}"
        "{{ x|length }}"
    ),
    "map-center": "{{ range(300)|map('string')|map('center', 60000)|list|length }}",
    "long-output": "{% for i in range(100) %}{{ 'y' * 1000 }}{% endfor %}",
    "sum-lists": "{{ range(50000)|map('string')|map('list')|sum(start=[]) }}",
}


@pytest.mark.parametrize("source", BOMBS.values(), ids=BOMBS.keys())
def test_hostile_template_loads_instantly_and_its_render_stops_within_budget(source: str) -> None:
    started = time.monotonic()
    template = compile_template(source)
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    with pytest.raises(TemplateBudgetError):
        render_template(template, {})
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "source",
    ["{{ '{:>1000000000}'.format(1) }}", "{{ '{x}'.format_map({'x': 1}) }}", "{{ lipsum(10) }}"],
)
def test_str_format_and_lipsum_are_not_available(source: str) -> None:
    with pytest.raises((jinja2.exceptions.SecurityError, jinja2.exceptions.UndefinedError)):
        render_template(compile_template(source), {})


def test_no_filter_or_test_runs_at_load_time() -> None:
    calls: list[object] = []

    def probe(value: object, *args: object) -> object:
        calls.append(value)
        return value

    env = BudgetedSandbox()
    env.filters["probe"] = _budgeted("probe", probe)
    env.tests["probe"] = _budgeted("probe", probe)
    template = compile_template("{{ 'abc'|probe }}{{ 'x' is probe }}", env)
    assert calls == []  # plain Jinja calls both while compiling (constant folding)
    assert render_template(template, {}) == "abcx"
    assert calls == ["abc", "x"]


def test_time_budget_stops_a_render_whose_steps_are_slow() -> None:
    ticks = iter(range(1_000_000))
    env = BudgetedSandbox(RenderLimits(max_seconds=5.0))
    template = compile_template("{% for i in range(1000) %}{{ i }}{% endfor %}", env)
    with pytest.raises(TemplateBudgetError, match="ran longer than 5 s"):
        env.render_budgeted(template, {}, clock=lambda: float(next(ticks)))


def test_step_budget_is_deterministic_and_counts_iterations() -> None:
    env = BudgetedSandbox(RenderLimits(max_steps=100))
    small = compile_template("{% for i in range(10) %}{{ i }}{% endfor %}", env)
    assert env.render_budgeted(small, {}) == "0123456789"
    big = compile_template("{% for i in range(50) %}{{ i }}{% endfor %}", env)
    with pytest.raises(TemplateBudgetError, match="more than 100 steps"):
        env.render_budgeted(big, {})


def test_ordinary_templates_render_as_plain_jinja_does() -> None:
    source = (
        "{{ key['container.id'] }} {{ events|length }} {{ events|map(attribute='rule')|join(',') }}"
        " {{ '%s/%s' % (ns, pod) }} {{ 3 * 4 }} {{ -n }} {{ 'a-b'|replace('-', '_')|upper }}"
        "{% for e in events %} {{ loop.index }}:{{ e.rule|truncate(5) }}{% endfor %}"
        " {{ 2 ** 10 }} {{ [1, 2] + [3] }} {{ 'x' * 3 }} {{ 7 // 2 }} {{ 7 / 2 }}"
    )
    variables: dict[str, Any] = {
        "key": {"container.id": "c1"},
        "events": [{"rule": "Terminal shell"}, {"rule": "Egress"}],
        "ns": "prod",
        "pod": "web",
        "n": 5,
    }
    expected = jinja2.Environment(autoescape=False).from_string(source).render(variables)
    assert render_template(compile_template(source), variables) == expected


def test_deep_size_counts_shared_references_as_printing_would() -> None:
    big = "y" * 1000
    assert deep_size([big] * 3, 10**9) == 3 * 1000 + 4
    assert deep_size({"k": big}, 10**9) == 1000 + 1 + 3
    assert deep_size([[big] * 1000] * 1000, 5000) > 5000  # stops early


def test_template_budget_failure_gives_the_default_text_and_is_counted(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: bomb
          type: count
          by: [container.id]
          condition: rule = x
          threshold: 2
          within: 1m
          output: "{{ 'x' * 2000000000 }}"
        """,
    )
    feed = Feed(rules)
    feed.send("x", 0, **{"container.id": "c1"})
    [incident] = feed.send("x", 1, **{"container.id": "c1"})
    assert incident["output"] == 'bomb: 2 events for {"container.id":"c1"}'
    assert feed.engine.stats.template_errors == 1
    assert "TemplateBudgetError" in (feed.engine.stats.last_template_error or "")
