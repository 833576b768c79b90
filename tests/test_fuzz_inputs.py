"""Property-based fuzzing of events, replay input, rule files and the worker configuration
(issue 10), with a bounded number of examples; `python bench/fuzz_inputs.py` runs longer.

Every input ends in a result or in the project's own located error, never another exception.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fuzzing import (
    check_config_text,
    check_event_line,
    check_replay,
    check_rules_text,
    config_texts,
    event_lines,
    replay_inputs,
    rules_texts,
)
from hypothesis import HealthCheck, given, settings

# Bounded for the unit suite; no deadline: the machine is shared and some examples compile rules.
BOUNDED = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@BOUNDED
@given(event_lines)
def test_any_record_is_an_event_or_an_event_error_and_its_incidents_are_json(line: bytes) -> None:
    check_event_line(line)


@settings(BOUNDED, max_examples=60)
@given(replay_inputs)
def test_replay_of_any_lines_reports_each_skipped_line_at_its_position(lines: list[bytes]) -> None:
    check_replay(lines)


@settings(BOUNDED, max_examples=100)
@given(rules_texts)
def test_any_rules_file_loads_or_gives_located_errors(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_rules_text(text, Path(tmp))


@settings(BOUNDED, max_examples=100)
@given(config_texts)
def test_any_configuration_loads_or_gives_located_errors_without_secrets(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_config_text(text, Path(tmp))
