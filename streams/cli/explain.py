"""`falco-correlator explain`: why a correlation did or did not fire on a run of events.

Replays the events through the whole ruleset exactly as `replay` does (same lateness, flush and
per-key cap), with a trace observer on one correlation, then prints per group key every partial
match with the steps it filled and why it stopped (docs/rules.md, "Explaining a run"). Exit 0 when
the run completed, 2 on a usage or rule error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

import orjson

from streams.cli._event_input import InputCounts, valid_events
from streams.cli._explain_render import RunInfo, explanation_json, explanation_text
from streams.core.engine import Engine
from streams.core.explain import Explanation, explain_trace, rank_near_misses
from streams.core.loader import load_rules
from streams.core.rules import Correlation, Ruleset
from streams.core.trace import CorrelationTrace
from streams.errors import RuleLoadError

__all__ = ["ExplainOptions", "UsageError", "explain_run", "parse_key_filters", "run_explain"]


class UsageError(Exception):
    """A command-line value that cannot be used (exit 2)."""


@dataclass
class ExplainOptions:
    correlation: str
    keys: dict[str, str]
    lateness_ns: int
    max_pending: int
    flush: bool
    near_miss: bool
    top: int
    as_json: bool


def parse_key_filters(items: Sequence[str]) -> dict[str, str]:
    """`FIELD=VALUE` items; a field given twice is an error."""
    filters: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--key expects FIELD=VALUE, got {item!r}")
        if name in filters:
            raise UsageError(f"--key {name} given twice")
        filters[name] = value
    return filters


def explain_run(
    ruleset: Ruleset,
    events: Iterable[tuple[str, int, bytes]],
    options: ExplainOptions,
    err: IO[str],
) -> tuple[Explanation, RunInfo]:
    """Run the events, then explain `options.correlation` (UsageError when it cannot be)."""
    index = {c.name: i for i, c in enumerate(ruleset.correlations)}
    if options.correlation not in index:
        if options.correlation in ruleset.disabled:
            raise UsageError(f"correlation {options.correlation!r} is disabled (enabled: false)")
        known = ", ".join(sorted(index)) or "none"
        raise UsageError(f"no correlation named {options.correlation!r}; loaded: {known}")
    ci = index[options.correlation]
    corr = ruleset.correlations[ci]
    unknown = [name for name in options.keys if name not in corr.by]
    if unknown:
        by = ", ".join(corr.by) or "none (one global group)"
        raise UsageError(f"--key {unknown[0]}: not a `by` field of {corr.name!r} (by: {by})")
    trace = CorrelationTrace(ci, corr)
    engine = Engine(
        ruleset, lateness_ns=options.lateness_ns, max_pending=options.max_pending, observer=trace
    )
    trace.matcher = engine.match
    counts = InputCounts()
    for _source, _number, event in valid_events(events, counts, err):
        engine.submit(event)
    engine.finish(flush=options.flush)
    explanation = explain_trace(trace, end_ns=engine.max_time_ns)
    if options.keys:
        positions = [(corr.by.index(name), value) for name, value in options.keys.items()]
        explanation.keys = [
            k for k in explanation.keys if all(_text(k.key[i]) == v for i, v in positions)
        ]
        explanation.unkeyed = []
        explanation.late_unkeyed = []
    info = RunInfo(
        upstreams=_upstreams(ruleset, corr, trace, engine),
        lines=counts.lines,
        invalid=counts.invalid,
        late=engine.stats.late,
        lateness_ns=options.lateness_ns,
        max_pending=options.max_pending,
        flush=options.flush,
    )
    return explanation, info


def _upstreams(
    ruleset: Ruleset, corr: Correlation, trace: CorrelationTrace, engine: Engine
) -> dict[str, tuple[int | None, int]]:
    """Per referenced correlation: its records in the run (None: disabled), and how many of
    them took part in the explained correlation (RULES-SPEC section 7, C3)."""
    took_part: Counter[str] = Counter()
    for key_trace in trace.keys.values():
        for fed in key_trace.fed:
            derived = fed.event.derived
            if derived is not None:
                took_part[derived["correlation"]] += 1
    stats = engine.stats
    return {
        name: (
            None if name in ruleset.disabled else stats.incidents[name] + stats.updates[name],
            took_part[name],
        )
        for name in corr.references
    }


def _text(value: object) -> str:
    """Key values compare as text, as `distinct` values do (`443` matches `"443"`)."""
    return str(value)


def run_explain(
    rule_paths: Sequence[str],
    events: Iterable[tuple[str, int, bytes]],
    options: ExplainOptions,
    out: IO[bytes],
    err: IO[str],
) -> int:
    try:
        ruleset = load_rules(rule_paths)
    except RuleLoadError as exc:
        for error in exc.errors:
            err.write(f"{error}\n")
        err.write(f"{len(exc.errors)} error(s); no rules loaded\n")
        return 2
    try:
        explanation, info = explain_run(ruleset, events, options, err)
    except UsageError as exc:
        err.write(f"explain: {exc}\n")
        return 2
    except OSError as exc:
        err.write(f"explain: {exc}\n")
        return 2
    near = rank_near_misses(explanation)[: options.top] if options.near_miss else None
    if options.as_json:
        out.write(orjson.dumps(explanation_json(explanation, info, near)) + b"\n")
    else:
        out.write(explanation_text(explanation, info, near).encode())
    return 0
