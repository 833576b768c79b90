"""Two engines over the same event objects (what `diff` and shadow rules do) stay independent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.core.engine import Engine
from streams.core.events import Event, event_from_bytes
from streams.core.loader import load_rules
from streams.core.rules import Ruleset

REPO = Path(__file__).resolve().parents[2]
INPUTS = [
    REPO / "deploy" / "demo" / "attack.jsonl",
    REPO / "rules" / "tests" / "fixtures" / "benign-noise.jsonl",
]
OFF = """
- correlation: Shell then outbound connection
  within: 1m
  override: {within: replace}
- correlation: Repeated sensitive file reads
  enabled: false
  override: {enabled: replace}
"""


def events() -> list[Event]:
    lines = [line for path in INPUTS for line in path.read_bytes().splitlines() if line.strip()]
    return [event_from_bytes(line, seq) for seq, line in enumerate(lines)]


def alone(ruleset: Ruleset) -> list[dict[str, Any]]:
    engine = Engine(ruleset)
    out = [i for e in events() for i in engine.submit(e)]
    return out + engine.finish(flush=True)


def test_two_engines_fed_the_same_events_each_emit_what_they_emit_alone(tmp_path: Path) -> None:
    (tmp_path / "override.yaml").write_text(OFF)
    shipped = load_rules([REPO / "rules"])
    changed = load_rules([REPO / "rules", tmp_path / "override.yaml"])
    first, second = Engine(shipped), Engine(changed)
    out: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for event in events():
        out[0].extend(first.submit(event))
        out[1].extend(second.submit(event))
    out[0].extend(first.finish(flush=True))
    out[1].extend(second.finish(flush=True))
    assert out[0] == alone(shipped)
    assert out[1] == alone(changed)
    assert out[0] != out[1]
