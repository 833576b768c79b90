"""`falco-correlator diff`: the incidents of two rulesets over the same events (shadow evaluation).

Both rulesets run side by side, each in its own engine, over one read of the events (each line is
decoded once and given to both). Incidents are compared by id (new record and updates together):
- only in OLD / only in NEW: no incident of the other side has the same id, correlation, key or
  any event;
- changed: the same id, or the same correlation and key sharing at least one event (a changed
  window or step moves the first event, hence the id), whose events (step and identity, updates
  included) or severity differ.
`output`, `tags`, `context`, `detected_at` and `ruleset` are not compared. Exit 0: no difference;
1: differences; 2: a usage or rule error (docs/rule-tests.md, "Comparing rulesets").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import orjson

from streams.cli._diff_compare import DiffResult, compare_incidents
from streams.cli._diff_render import diff_json, diff_text
from streams.cli._event_input import InputCounts, valid_events
from streams.core.engine import Engine
from streams.core.loader import load_rules
from streams.core.rules import Ruleset
from streams.errors import RuleLoadError

__all__ = ["DiffRun", "diff_run", "run_diff"]


@dataclass
class DiffRun:
    result: DiffResult
    counts: InputCounts
    late: int


def diff_run(
    old_rules: Ruleset,
    new_rules: Ruleset,
    lines: Iterable[tuple[str, int, bytes]],
    *,
    lateness_ns: int,
    max_pending: int,
    flush: bool,
    err: IO[str],
) -> DiffRun:
    """Both rulesets over one pass of the events; each engine keeps its own state."""
    engines = [
        Engine(rules, lateness_ns=lateness_ns, max_pending=max_pending)
        for rules in (old_rules, new_rules)
    ]
    emitted: list[list[dict[str, Any]]] = [[], []]
    counts = InputCounts()
    for source, number, event in valid_events(lines, counts, err):
        late = engines[0].stats.late
        for engine, out in zip(engines, emitted, strict=True):
            out.extend(engine.submit(event))
        if engines[0].stats.late != late:  # the watermark does not depend on the rules
            err.write(f"{source}:{number}: late: event time is before the watermark\n")
    for engine, out in zip(engines, emitted, strict=True):
        out.extend(engine.finish(flush=flush))
    return DiffRun(compare_incidents(*emitted), counts, engines[0].stats.late)


def _load(paths: Sequence[str], side: str, err: IO[str]) -> Ruleset | None:
    try:
        ruleset: Ruleset = load_rules(paths)
    except RuleLoadError as exc:
        for error in exc.errors:
            err.write(f"{error}\n")
        err.write(f"diff: {side}: {len(exc.errors)} error(s); no rules loaded\n")
        return None
    return ruleset


def run_diff(
    old_paths: Sequence[str],
    new_paths: Sequence[str],
    lines: Iterable[tuple[str, int, bytes]],
    *,
    lateness_ns: int,
    max_pending: int,
    flush: bool,
    as_json: bool,
    out: IO[bytes],
    err: IO[str],
) -> int:
    old_rules = _load(old_paths, "OLD (--rules)", err)
    new_rules = _load(new_paths, "NEW (--against)", err)
    if old_rules is None or new_rules is None:
        return 2
    try:
        run = diff_run(
            old_rules,
            new_rules,
            lines,
            lateness_ns=lateness_ns,
            max_pending=max_pending,
            flush=flush,
            err=err,
        )
    except OSError as exc:
        err.write(f"diff: {exc}\n")
        return 2
    if as_json:
        out.write(orjson.dumps(diff_json(run.result)) + b"\n")
    else:
        out.write(diff_text(run.result).encode())
    err.write(f"diff: {run.counts.lines} lines, {run.counts.invalid} invalid, {run.late} late\n")
    return 1 if run.result.differs else 0
