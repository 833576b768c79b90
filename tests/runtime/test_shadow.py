"""Shadow rules (`app.shadow_rules`) in the worker's pure stages: configuration, the record codec
(backwards compatible), routing at ingest, and correlation with a state of their own beside the
live rules on one table — each set giving exactly what replay gives for it, the live results
unchanged by the shadow set."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.core.engine import Engine
from streams.core.events import event_from_dict, format_time
from streams.core.loader import load_rules
from streams.runtime.config import WorkerConfig, load_config
from streams.runtime.ingest import Ingestor, SourceMessage, encode_records
from streams.runtime.partitions import PartitionCorrelator, ShadowCorrelator
from streams.runtime.progress import SourceProgress
from streams.runtime.records import (
    SHADOW_PREFIX,
    CorrelateBatch,
    EventRecord,
    MatchRef,
    RecordError,
    decode_batch,
    encode_batch,
    shadow_incidents_topic,
)

LIVE_RULES = """
- correlation: chain
  type: sequence
  by: [container.id]
  within: 60s
  suppress: 2m
  steps:
    - {name: shell, condition: rule = Shell}
    - {name: egress, condition: rule = Egress}
- correlation: burst
  type: count
  by: [container.id]
  condition: rule in (Shell, Read)
  threshold: 3
  within: 30s
- correlation: silent
  type: absence
  by: [hostname]
  within: 45s
  trigger: {condition: rule = Beat}
  expect: {condition: rule = Beat}
"""
# The normal case of a shadow set: the same names, changed (a lower threshold, a shorter window,
# no suppression), one correlation removed and one added that no live rule has.
SHADOW_RULES = """
- correlation: chain
  type: sequence
  by: [container.id]
  within: 20s
  steps:
    - {name: shell, condition: rule = Shell}
    - {name: egress, condition: rule = Egress}
- correlation: burst
  type: count
  by: [container.id]
  condition: rule in (Shell, Read)
  threshold: 2
  within: 30s
- correlation: egress scan
  type: distinct
  by: [hostname]
  condition: rule = Egress
  field: fd.sip
  threshold: 3
  within: 30s
"""
BASE = 1_700_000_000_000_000_000
S = 1_000_000_000
LATENESS = 3 * S
PARTITIONS = 3
SOURCES = 3


@pytest.fixture(scope="module")
def rulesets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    directory = tmp_path_factory.mktemp("rules")
    (directory / "live.yaml").write_text(LIVE_RULES)
    (directory / "shadow.yaml").write_text(SHADOW_RULES)
    return load_rules([directory / "live.yaml"]), load_rules([directory / "shadow.yaml"])


def _stream(seed: int, n: int = 300) -> list[bytes]:
    rng = random.Random(seed)
    t = BASE
    lines = []
    for i in range(n):
        t += rng.randint(0, 3) * S
        disorder = rng.randint(0, 2) * S
        payload = {
            "rule": rng.choice(["Shell", "Egress", "Read", "Beat", "Noise"]),
            "priority": rng.choice(["Notice", "Warning", "Critical"]),
            "hostname": rng.choice(["n1", "n2"]),
            "uuid": f"u{i}",
            "time": format_time(t - disorder + i),
            "output_fields": {
                "container.id": rng.choice(["c1", "c2", "c3", None]),
                "fd.sip": f"10.0.0.{rng.randint(1, 5)}",
            },
        }
        lines.append(orjson.dumps(payload))
    return lines


def _replay(ruleset: Any, lines: list[bytes]) -> list[dict[str, Any]]:
    engine = Engine(ruleset, lateness_ns=LATENESS)
    out: list[dict[str, Any]] = []
    for seq, line in enumerate(lines):
        out.extend(engine.submit(event_from_dict(orjson.loads(line), seq)))
    return out + engine.finish(flush=True)


def _messages(lines: list[bytes], start: int = 0) -> list[SourceMessage]:
    return [
        SourceMessage(offset % SOURCES, offset, line, None, 0.0)
        for offset, line in enumerate(lines, start)
    ]


def _ids(incidents: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    return sorted((i["id"], i["status"], i["count"], i["ruleset"]) for i in incidents)


class StrictTable(dict[bytes, bytes]):
    """A table that, like the worker's (a write needs the current record's partition), refuses
    writes outside `writing()`: the worker correlates a group of records, then writes each
    partition's changes under one of its records."""

    def __init__(self) -> None:
        super().__init__()
        self.writable = False

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        self.writable = True
        try:
            yield
        finally:
            self.writable = False

    def __setitem__(self, key: bytes, value: bytes) -> None:
        assert self.writable, "state written outside of a correlate record"
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        assert self.writable, "state deleted outside of a correlate record"
        super().__delitem__(key)


class Pipeline:
    """Ingest -> records on the wire -> a live and (optionally) a shadow correlator on one table,
    as the worker runs them (correlate, then write under the record), without Kafka."""

    def __init__(self, live: Any, shadow: Any | None, table: StrictTable) -> None:
        self.ingestor = Ingestor(live, PARTITIONS, shadow=shadow)
        self.progress = SourceProgress(LATENESS)
        self.progress.assign(range(SOURCES))
        self.table = table
        self.offsets = [0] * PARTITIONS
        self.live_rules, self.shadow_rules = live, shadow
        self.restart()
        self.wall = 0
        self.records: list[bytes] = []
        self.guarded: ShadowCorrelator | None = None  # as the worker wraps the shadow one

    def restart(self) -> None:
        def make(rules: Any, shadow: bool) -> PartitionCorrelator:
            return PartitionCorrelator(
                rules,
                self.table,
                lateness_ns=LATENESS,
                max_pending=1000,
                wall_clock=lambda: 0,
                shadow=shadow,
            )

        self.live = make(self.live_rules, False)
        self.shadow = None if self.shadow_rules is None else make(self.shadow_rules, True)

    def batch(
        self, messages: list[SourceMessage], *, ticks: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        self.wall += 1
        batch = self.ingestor.process(messages, self.wall)
        for partition, time_ns in batch.observed:
            self.progress.observe(partition, time_ns, self.wall)
        shadow_rules = self.ingestor.shadow_ruleset
        live_out: list[dict[str, Any]] = []
        shadow_out: list[dict[str, Any]] = []
        for destination, value, _ in encode_records(
            batch,
            digest=self.ingestor.ruleset.digest,
            shadow_digest="" if shadow_rules is None else shadow_rules.digest,
            source_partitions=SOURCES,
            progress=self.progress.contributions(),
            wall_ns=self.wall,
            max_record_bytes=2_000,
            all_partitions=range(PARTITIONS) if ticks else (),
        ):
            self.records.append(value)
            offset = self.offsets[destination]
            self.offsets[destination] += 1
            record = decode_batch(b"\x00batch", value)
            live = self.live.on_batch(destination, offset, record, persist=False)
            live_out.extend(live.incidents)
            if self.guarded is not None:
                outcome = self.guarded.on_batch(destination, offset, record)
                if outcome is not None:
                    shadow_out.extend(outcome.incidents)
            elif self.shadow is not None:
                shadow_out.extend(
                    self.shadow.on_batch(destination, offset, record, persist=False).incidents
                )
            with self.table.writing():
                self.live.persist(destination)
                if self.guarded is not None:
                    self.guarded.persist(destination)
                elif self.shadow is not None:
                    self.shadow.persist(destination)
        return live_out, shadow_out

    def run(
        self, lines: list[bytes], size: int = 20, restart_at: int | None = None, start: int = 0
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        live: list[dict[str, Any]] = []
        shadow: list[dict[str, Any]] = []
        messages = _messages(lines, start)
        for at in range(0, len(messages), size):
            if restart_at is not None and at == restart_at:
                self.restart()  # in-memory engines gone; only the table survives
            got_live, got_shadow = self.batch(messages[at : at + size], ticks=at % 40 == 0)
            live += got_live
            shadow += got_shadow
        self.wall += 10**15
        for partition in range(SOURCES):
            self.progress.confirm_caught_up(partition, self.wall)
        got_live, got_shadow = self.batch([], ticks=True)
        return live + got_live, shadow + got_shadow


# --- configuration -------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "worker.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_shadow_rules_are_off_by_default_and_read_like_rules(tmp_path: Path) -> None:
    assert WorkerConfig().app.shadow_rules is None
    assert load_config(None, {}).app.shadow_rules is None
    config = load_config(_write(tmp_path, "app:\n  shadow_rules: [a/, b.yaml]\n"), {})
    assert config.app.shadow_rules == ("a/", "b.yaml")
    assert load_config(
        _write(tmp_path, "app:\n  shadow_rules: one.yaml\n"), {}
    ).app.shadow_rules == ("one.yaml",)
    assert load_config(None, {"FC_APP_SHADOW_RULES": "x/, y.yaml"}).app.shadow_rules == (
        "x/",
        "y.yaml",
    )
    # an empty list (what a Helm value renders when unused) is "no shadow rules"
    assert load_config(_write(tmp_path, "app:\n  shadow_rules: []\n"), {}).app.shadow_rules is None
    assert load_config(_write(tmp_path, "app:\n  shadow_rules:\n"), {}).app.shadow_rules is None


def test_shadow_incidents_have_their_own_topic() -> None:
    assert shadow_incidents_topic("falco-incidents") == "falco-incidents-shadow"


# --- the record codec ----------------------------------------------------------------------------


def _event(
    matches: tuple[MatchRef, ...], shadow: tuple[MatchRef, ...] = (), offset: int = 41
) -> EventRecord:
    return EventRecord(
        payload={"rule": "Shell", "output_fields": {"container.id": "c1"}},
        time_ns=5,
        source_partition=2,
        source_offset=offset,
        produced_ms=1700.5,
        matches=matches,
        shadow_matches=shadow,
    )


def test_shadow_matches_survive_the_wire() -> None:
    batch = CorrelateBatch(
        digest="live",
        source_partitions=3,
        progress={0: 10},
        wall_ns=99,
        events=(
            _event((MatchRef("chain", ("c1",), (0,)),), (MatchRef("chain", ("c1",), (0,)),)),
            _event((MatchRef("burst", ("c1",), (0,)),), offset=42),
            _event((), (MatchRef("scan", ("n1",), (0,)),), offset=43),  # only the shadow set
        ),
        shadow_digest="shadow",
    )
    decoded = decode_batch(b"\x00batch", encode_batch(batch))
    assert decoded == batch
    assert [e.shadow_matches for e in decoded.events] == [e.shadow_matches for e in batch.events]


def test_without_shadow_matches_the_record_is_what_it_always_was() -> None:
    """No `sd`/`sm` keys unless there are shadow matches: the bytes of a worker without shadow
    rules do not change, and the shadow digest alone adds nothing."""
    events = (_event((MatchRef("chain", ("c1",), (0,)),)),)
    plain = CorrelateBatch("live", 3, {0: 10}, 99, events)
    with_digest = CorrelateBatch("live", 3, {0: 10}, 99, events, shadow_digest="shadow")
    assert encode_batch(plain) == encode_batch(with_digest)
    data = orjson.loads(encode_batch(plain))
    assert set(data) == {"v", "d", "n", "p", "w", "e"}
    assert data["v"] == 1


def test_a_record_with_shadow_matches_reads_as_before_for_a_reader_that_predates_them() -> None:
    """Shadow matches are optional top-level keys of a version-1 record: each event is still the
    six-element list an earlier reader unpacks, so during a rolling upgrade an earlier worker
    correlates the live matches and skips events that only have shadow matches."""
    batch = CorrelateBatch(
        "live",
        3,
        {0: 10},
        99,
        (
            _event((MatchRef("chain", ("c1",), (0,)),), (MatchRef("chain", ("c1",), (0,)),)),
            _event((), (MatchRef("scan", ("n1",), (0,)),), offset=42),
        ),
        shadow_digest="shadow",
    )
    data = orjson.loads(encode_batch(batch))
    assert data["v"] == 1
    assert all(len(event) == 6 for event in data["e"])
    assert data["e"][1][5] == []  # no live match
    assert data["sd"] == "shadow"
    assert data["sm"] == [[0, [["chain", ["c1"], [0]]]], [1, [["scan", ["n1"], [0]]]]]
    # what the reader of 0.2 (before shadow rules) decodes: the same live events
    legacy = {k: v for k, v in data.items() if k not in {"sd", "sm"}}
    old_view = decode_batch(None, orjson.dumps(legacy))
    assert [e.matches for e in old_view.events] == [e.matches for e in batch.events]


def test_a_version_1_record_without_shadow_keys_has_no_shadow_matches() -> None:
    old = {
        "v": 1,
        "d": "abc",
        "n": 1,
        "p": [[0, 5]],
        "w": 0,
        "e": [[{"rule": "Shell"}, 5, 0, 9, None, [["chain", ["c1"], [0]]]]],
    }
    batch = decode_batch(None, orjson.dumps(old))
    assert batch.shadow_digest == ""
    assert batch.events[0].shadow_matches == ()
    assert batch.events[0].matches == (MatchRef("chain", ("c1",), (0,)),)


@pytest.mark.parametrize("index", [1, -1])
def test_shadow_matches_of_an_event_the_record_lacks_are_refused(index: int) -> None:
    value = {
        "v": 1,
        "d": "abc",
        "n": 1,
        "p": [],
        "w": 0,
        "sd": "s",
        "e": [[{"rule": "Shell"}, 5, 0, 9, None, []]],
        "sm": [[index, [["chain", ["c1"], [0]]]]],
    }
    with pytest.raises(RecordError, match="shadow matches"):
        decode_batch(None, orjson.dumps(value))


# --- routing at ingest ---------------------------------------------------------------------------


def _line(rule: str, cid: str = "c1", host: str = "n1", second: int = 0) -> bytes:
    return orjson.dumps(
        {
            "rule": rule,
            "priority": "Warning",
            "hostname": host,
            "uuid": f"{rule}-{second}",
            "time": format_time(BASE + second * S),
            "output_fields": {"container.id": cid, "fd.sip": "10.0.0.1"},
        }
    )


def test_an_event_of_both_sets_is_carried_once_with_both_matches(rulesets: tuple[Any, Any]) -> None:
    live, shadow = rulesets
    ingestor = Ingestor(live, PARTITIONS, shadow=shadow)
    batch = ingestor.process([SourceMessage(0, 0, _line("Shell"))], 1)
    records = [r for events in batch.records.values() for r in events]
    # chain and burst, both sets, key ("c1",): same names, same keys, same partitions
    assert sum(len(r.matches) for r in records) == 2
    assert len(records) == len(batch.records)  # one record per destination, never a copy
    assert sorted((m.correlation, m.key, m.steps) for r in records for m in r.shadow_matches) == [
        ("burst", ("c1",), (0,)),
        ("chain", ("c1",), (0,)),
    ]
    for record in records:  # a (name, key) goes where the live one of that name and key goes
        assert {m.correlation for m in record.shadow_matches} == {
            m.correlation for m in record.matches
        }
    assert (batch.matched, batch.shadow_matched) == (1, 1)


def test_an_event_only_the_shadow_set_matches_is_routed_without_live_matches(
    rulesets: tuple[Any, Any],
) -> None:
    live, shadow = rulesets
    ingestor = Ingestor(live, PARTITIONS, shadow=shadow)
    batch = ingestor.process([SourceMessage(0, 0, _line("Egress", cid="c9", host="n7"))], 1)
    records = [r for events in batch.records.values() for r in events]
    live_refs = [(m.correlation, m.key) for r in records for m in r.matches]
    shadow_refs = [(m.correlation, m.key) for r in records for m in r.shadow_matches]
    assert live_refs == [("chain", ("c9",))]
    assert sorted(shadow_refs) == [("chain", ("c9",)), ("egress scan", ("n7",))]
    decoded = [
        decode_batch(None, value)
        for _, value, _ in encode_records(
            batch,
            digest=live.digest,
            shadow_digest=shadow.digest,
            source_partitions=1,
            progress={},
            wall_ns=1,
            max_record_bytes=10**6,
        )
    ]
    assert {b.shadow_digest for b in decoded} == {shadow.digest}
    assert sorted(
        (m.correlation, m.key) for b in decoded for e in b.events for m in e.shadow_matches
    ) == sorted(shadow_refs)
    assert ingestor.process([SourceMessage(0, 1, _line("Noise"))], 1).records == {}


def test_without_shadow_rules_records_carry_nothing_of_them(rulesets: tuple[Any, Any]) -> None:
    live, _ = rulesets
    ingestor = Ingestor(live, PARTITIONS)
    assert ingestor.shadow_ruleset is None
    batch = ingestor.process(_messages(_stream(1, 50)), 1)
    assert all(not r.shadow_matches for rs in batch.records.values() for r in rs)
    assert batch.shadow_matched == 0
    for _, value, _ in encode_records(
        batch,
        digest=live.digest,
        source_partitions=1,
        progress={},
        wall_ns=1,
        max_record_bytes=10**6,
    ):
        assert b'"sm"' not in value
        assert b'"sd"' not in value


def test_a_failing_shadow_matcher_leaves_the_live_matches_alone(
    rulesets: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    live, shadow = rulesets
    lines = _stream(2, 60)
    expected = Ingestor(live, PARTITIONS).process(_messages(lines), 1)
    ingestor = Ingestor(live, PARTITIONS, shadow=shadow)

    def broken(event: Any) -> Any:
        raise ZeroDivisionError("a defect in the shadow rules")

    assert ingestor._shadow is not None
    ingestor._shadow.match = broken  # type: ignore[method-assign]
    got = ingestor.process(_messages(lines), 1)
    assert got.records == expected.records
    assert got.matched == expected.matched
    assert got.shadow_errors == sum(expected.consumed.values()) - len(expected.dead_letters)
    assert got.shadow_errors > 1
    errors = [r for r in caplog.records if "shadow rules: matching failed" in r.getMessage()]
    assert len(errors) == 1  # logged once


# --- correlation: each set as replay gives it, own state, live unchanged ------------------------


@pytest.mark.parametrize("seed", range(4))
def test_live_and_shadow_each_give_what_replay_gives_for_them(
    rulesets: tuple[Any, Any], seed: int
) -> None:
    live, shadow = rulesets
    lines = _stream(seed)
    expected_live, expected_shadow = _replay(live, lines), _replay(shadow, lines)
    assert _ids(expected_live) != _ids(expected_shadow)
    both = Pipeline(live, shadow, StrictTable())
    got_live, got_shadow = both.run(lines)
    assert _ids(got_live) == _ids(expected_live)
    assert _ids(got_shadow) == _ids(expected_shadow)
    assert {i["ruleset"] for i in got_shadow} == {shadow.digest}
    # the live results do not depend on the shadow set at all
    alone_live, alone_shadow = Pipeline(live, None, StrictTable()).run(lines)
    assert alone_shadow == []
    assert _full(got_live) == _full(alone_live)


def _full(incidents: list[dict[str, Any]]) -> list[bytes]:
    """Every field but the wall clock's, in a stable order (records are split differently when
    they also carry shadow matches, so incidents may leave in another order: never others)."""
    return sorted(
        orjson.dumps(
            {k: v for k, v in i.items() if k != "detected_at"}, option=orjson.OPT_SORT_KEYS
        )
        for i in incidents
    )


@pytest.mark.parametrize("cut", [40, 160])
def test_shadow_state_is_kept_apart_and_a_restart_continues_both_exactly(
    rulesets: tuple[Any, Any], cut: int
) -> None:
    live, shadow = rulesets
    lines = _stream(7)
    table = StrictTable()
    pipeline = Pipeline(live, shadow, table)
    got_live, got_shadow = pipeline.run(lines, restart_at=cut)
    assert _ids(got_live) == _ids(_replay(live, lines))
    assert _ids(got_shadow) == _ids(_replay(shadow, lines))
    # each set has its own meta entry (clock and progress) per partition
    metas = {k for k in table if b"\x00meta:" in k}
    assert metas == {b"\x00meta:%d" % p for p in range(PARTITIONS)} | {
        SHADOW_PREFIX + b"\x00meta:%d" % p for p in range(PARTITIONS)
    }


def test_the_same_name_and_key_have_separate_entries_in_each_set(
    rulesets: tuple[Any, Any],
) -> None:
    live, shadow = rulesets
    table = StrictTable()
    pipeline = Pipeline(live, shadow, table)
    messages = [
        SourceMessage(0, 0, _line("Shell", second=0)),
        SourceMessage(1, 1, _line("Read", second=1)),
    ]
    pipeline.batch(messages)
    shadow_keys = {k for k in table if k.startswith(SHADOW_PREFIX)}
    live_keys = set(table) - shadow_keys
    entry = lambda name: name.encode() + b'\x1f["c1"]'  # noqa: E731
    assert entry("burst") in live_keys
    assert SHADOW_PREFIX + entry("burst") in shadow_keys
    # the live correlator restored from this table sees only its own entries, and so does the
    # shadow one: burst needs 3 events live and 2 in shadow, so one more Read tells them apart
    pipeline.restart()
    live_out, shadow_out = pipeline.batch([SourceMessage(2, 2, _line("Read", second=2))])
    live_out2, shadow_out2 = pipeline.run([])
    live_all = live_out + live_out2
    shadow_all = shadow_out + shadow_out2
    assert [i["correlation"] for i in live_all] == ["burst"]
    assert [i["count"] for i in live_all] == [1]
    assert sorted(i["correlation"] for i in shadow_all) == ["burst"]
    assert {i["ruleset"] for i in shadow_all} == {shadow.digest}
    assert {i["ruleset"] for i in live_all} == {live.digest}


def test_a_shadow_reload_keeps_the_shadow_state_of_correlations_that_stay(
    rulesets: tuple[Any, Any], tmp_path: Path
) -> None:
    live, shadow = rulesets
    lines = _stream(5)
    table = StrictTable()
    pipeline = Pipeline(live, shadow, table)
    half = len(lines) // 2
    messages = _messages(lines)
    got_live: list[dict[str, Any]] = []
    got_shadow: list[dict[str, Any]] = []
    for at in range(0, half, 15):
        live_out, shadow_out = pipeline.batch(messages[at : at + 15])
        got_live += live_out
        got_shadow += shadow_out
    # the same shadow rules from another file: another digest, so the correlator matches the
    # records of the old digest again; state of correlations that stay is kept
    (tmp_path / "again.yaml").write_text(SHADOW_RULES)
    again = load_rules([tmp_path / "again.yaml"])
    assert again.digest != shadow.digest
    assert pipeline.shadow is not None
    pipeline.shadow.reload(again)  # the ingest stage still matches with the old digest, a while
    live_out, shadow_out = pipeline.batch(messages[half : half + 15])
    got_live += live_out
    got_shadow += shadow_out
    pipeline.ingestor.reload_shadow(again)
    rest = pipeline.run(lines[half + 15 :], start=half + 15)
    got_live += rest[0]
    got_shadow += rest[1]
    assert _ids(got_live) == _ids(_replay(live, lines))
    same = lambda incidents: sorted((i["id"], i["status"], i["count"]) for i in incidents)  # noqa: E731
    assert same(got_shadow) == same(_replay(shadow, lines))
    assert {i["ruleset"] for i in rest[1]} <= {again.digest}


def test_a_worker_without_shadow_rules_deletes_the_shadow_state_it_finds(
    rulesets: tuple[Any, Any],
) -> None:
    """After a promotion (or the removal of the shadow rules) nothing would ever delete the
    shadow set's entries: the live correlator of a worker without shadow rules does, when it
    restores a partition, and nothing else."""
    live, shadow = rulesets
    lines = _stream(9)
    table = StrictTable()
    pipeline = Pipeline(live, shadow, table)
    half = 150
    messages = _messages(lines)
    got_live: list[dict[str, Any]] = []
    for at in range(0, half, 15):
        got_live += pipeline.batch(messages[at : at + 15])[0]
    assert any(k.startswith(SHADOW_PREFIX) for k in table)
    live_state = {k: v for k, v in table.items() if not k.startswith(SHADOW_PREFIX)}
    # restarted without shadow rules
    pipeline.shadow = None
    pipeline.ingestor = Ingestor(live, PARTITIONS)
    pipeline.live = PartitionCorrelator(
        live,
        table,
        lateness_ns=LATENESS,
        max_pending=1000,
        wall_clock=lambda: 0,
        discard_shadow_state=True,
    )
    for partition in range(PARTITIONS):
        pipeline.live._partition(partition)  # restored, outside of any record: nothing written
    assert any(k.startswith(SHADOW_PREFIX) for k in table)
    with table.writing():  # the next write of each partition deletes its shadow state
        for partition in range(PARTITIONS):
            pipeline.live.persist(partition)
    assert not any(k.startswith(SHADOW_PREFIX) for k in table)
    entries = lambda state: {k: v for k, v in state.items() if b"meta:" not in k}  # noqa: E731
    assert entries(table) == entries(live_state)  # live entries untouched
    pipeline.shadow_rules = None
    rest = pipeline.run(lines[half:], start=half)
    assert _ids(got_live + rest[0]) == _ids(_replay(live, lines))
    assert rest[1] == []


def test_shadow_rules_that_do_not_load_stop_the_start_before_kafka_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from streams.cli.main import main

    good = tmp_path / "live.yaml"
    good.write_text(LIVE_RULES)
    bad = tmp_path / "shadow.yaml"
    bad.write_text(SHADOW_RULES.replace("type: count", "type: counter"))
    # a broker address nothing listens on: the start must fail on the rules, before Kafka
    config = _write(tmp_path, "kafka:\n  bootstrap_servers: 127.0.0.1:1\n")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = main(
            ["worker", "--config", config, "--rules", str(good), "--shadow-rules", str(bad)]
        )
    finally:
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"shadow rules: {bad}:" in err
    assert "error(s) in app.shadow_rules; the worker does not start" in err
    assert "cannot reach Kafka" not in err


def test_a_failing_shadow_correlator_loses_only_its_own_work(
    rulesets: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """What the worker runs for the shadow rules (ShadowCorrelator): an exception in the shadow
    correlator is counted, logged once per shadow ruleset, and never raised to the caller; the
    live correlator on the same records and table gives replay's incidents regardless."""
    live, shadow = rulesets
    lines = _stream(4)
    pipeline = Pipeline(live, shadow, StrictTable())
    assert pipeline.shadow is not None
    counted: list[int] = []
    guarded = ShadowCorrelator(pipeline.shadow, on_error=lambda: counted.append(1))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a defect in the shadow correlator")

    pipeline.shadow.on_batch = broken  # type: ignore[method-assign]
    pipeline.shadow.persist = broken  # type: ignore[method-assign]
    pipeline.guarded = guarded
    got_live, got_shadow = pipeline.run(lines)
    assert got_shadow == []
    assert _ids(got_live) == _ids(_replay(live, lines))
    records = sum(pipeline.offsets)
    assert records > 10
    assert guarded.errors == len(counted) == 2 * records  # each record: correlate and persist
    failures = lambda: [r for r in caplog.records if "shadow rules failed" in r.getMessage()]  # noqa: E731
    assert len(failures()) == 1
    guarded.reload(shadow)  # a new shadow ruleset is logged again, once
    guarded.persist(0)
    guarded.persist(1)
    assert len(failures()) == 2


def test_a_working_shadow_correlator_gives_what_the_bare_one_gives(
    rulesets: tuple[Any, Any],
) -> None:
    live, shadow = rulesets
    lines = _stream(6)
    bare = Pipeline(live, shadow, StrictTable()).run(lines)
    pipeline = Pipeline(live, shadow, StrictTable())
    assert pipeline.shadow is not None
    pipeline.guarded = ShadowCorrelator(pipeline.shadow)
    guarded = pipeline.run(lines)
    assert _full(guarded[0]) == _full(bare[0])
    assert _full(guarded[1]) == _full(bare[1])
    assert pipeline.guarded.errors == 0


def test_doctor_checks_the_shadow_rules_apart_from_the_live_ones(tmp_path: Path) -> None:
    import dataclasses
    import io

    from streams.runtime.doctor import Doctor, check_rules

    good = tmp_path / "live.yaml"
    good.write_text(LIVE_RULES)
    bad = tmp_path / "shadow.yaml"
    bad.write_text(SHADOW_RULES.replace("type: count", "type: counter"))
    base = WorkerConfig()
    config = dataclasses.replace(
        base, app=dataclasses.replace(base.app, rules=(str(good),), shadow_rules=(str(bad),))
    )
    doctor = Doctor(out=io.StringIO())
    check_rules(doctor, config)
    assert [(c.status.name, c.area) for c in doctor.checks] == [
        ("OK", "rules"),
        ("FAIL", "shadow rules"),
    ]
    assert str(bad) in doctor.checks[1].message
    without = dataclasses.replace(config, app=dataclasses.replace(config.app, shadow_rules=None))
    doctor = Doctor(out=io.StringIO())
    check_rules(doctor, without)
    assert [c.area for c in doctor.checks] == ["rules"]


def test_state_of_a_correlation_removed_by_a_reload_is_deleted_under_a_record(
    rulesets: tuple[Any, Any], tmp_path: Path
) -> None:
    """Deletions found while reloading (or restoring) wait for the partition's next write, which
    the worker makes under one of the partition's records (a table write needs its partition);
    before, such a deletion outside a record failed the record."""
    live, _ = rulesets
    table = StrictTable()
    pipeline = Pipeline(live, None, table)
    messages = _messages(_stream(8))
    for at in range(0, 150, 15):
        pipeline.batch(messages[at : at + 15])
    assert any(k.startswith(b"burst\x1f") for k in table)
    without_burst = tmp_path / "no-burst.yaml"
    without_burst.write_text(LIVE_RULES.split("- correlation: burst", maxsplit=1)[0])
    smaller = load_rules([without_burst])
    pipeline.live.reload(smaller)
    pipeline.ingestor.reload(smaller)
    pipeline.batch(messages[150:165], ticks=True)  # a record for every partition
    assert not any(k.startswith(b"burst\x1f") for k in table)
