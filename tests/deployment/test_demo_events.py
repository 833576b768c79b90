"""The demo sends exactly what falcosidekick's Kafka output sends (docs/falco.md): its payload
keys, Go's RFC 3339 time with trailing zeros dropped, a uuid per event, no key."""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from types import ModuleType

from .tools import REPO

ATTACK = REPO / "deploy" / "demo" / "attack.jsonl"
# Go's time.RFC3339Nano as falcosidekick marshals `time`: no trailing zeros, no empty fraction.
GO_RFC3339_NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z")


def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo", REPO / "deploy" / "demo" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_scripted_event_is_a_falcosidekick_payload() -> None:
    keys = demo().FALCOSIDEKICK_KEYS
    uuids = set()
    for number, line in enumerate(ATTACK.read_text(encoding="utf-8").splitlines(), 1):
        event = json.loads(line)
        assert set(event) == keys, number
        assert GO_RFC3339_NANO.fullmatch(event["time"]), (number, event["time"])
        uuids.add(str(uuid.UUID(event["uuid"])))
        assert isinstance(event["output_fields"], dict)
        assert isinstance(event["tags"], list)
    assert len(uuids) == len(ATTACK.read_text(encoding="utf-8").splitlines())


def test_the_demo_formats_time_and_heartbeats_as_falcosidekick_does() -> None:
    module = demo()
    assert module._fmt(1_714_564_800_000_000_000) == "2024-05-01T12:00:00Z"
    assert module._fmt(1_714_564_800_478_445_990) == "2024-05-01T12:00:00.47844599Z"
    assert module._fmt(1_714_564_800_000_000_001) == "2024-05-01T12:00:00.000000001Z"
    beat = module.heartbeat("node-1", 1_714_564_800_100_000_000)
    assert set(beat) == module.FALCOSIDEKICK_KEYS
    assert beat["time"] == "2024-05-01T12:00:00.1Z"
    uuid.UUID(beat["uuid"])


def test_the_demo_produces_unkeyed_round_robin_like_falcosidekick() -> None:
    source = (REPO / "deploy" / "demo" / "demo.py").read_text(encoding="utf-8")
    produces = re.findall(r"producer\.produce\(([^\n]*)", source)
    assert produces
    assert all("key=" not in call for call in produces)
