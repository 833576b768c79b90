"""The outbox (streams/runtime/partition_outbox.py): a worker killed after a group's state
reached the changelog but before its incidents reached the incidents topic emits them again on
restore; a clean stop (outputs flushed, offsets committed) emits nothing again."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from test_partitions import (
    LATENESS,
    RULES,
    _ids,
    _Recording,
    _records_of,
    _replay,
    _stream,
)

from streams.core.loader import load_rules
from streams.runtime.partition_outbox import outbox_prefix
from streams.runtime.partitions import PartitionCorrelator


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(RULES)
    return load_rules([path])


def _correlator(table: Any, ruleset: Any) -> PartitionCorrelator:
    return PartitionCorrelator(
        ruleset, table, lateness_ns=LATENESS, max_pending=1000, wall_clock=lambda: 0, outbox=True
    )


def _apply(
    correlator: PartitionCorrelator, destination: int, offset: int, record: Any
) -> list[dict[str, Any]]:
    """What the agent does with one record (a group of one): correlate, stage the outputs,
    write them and the state; plus the outputs of a restored outbox."""
    outcome = correlator.on_batch(destination, offset, record, persist=False)
    correlator.stage_outputs(destination, offset, outcome.incidents, [])
    correlator.persist(destination)
    again = correlator.take_recovered_outputs(destination)
    return outcome.incidents + (again.incidents if again is not None else [])


def _delivered(correlator: PartitionCorrelator) -> None:
    """The outputs were produced and a flush acknowledged them (then offsets are committed)."""
    correlator.outputs_produced()
    correlator.acknowledge_outputs(correlator.produced_outputs())


@pytest.mark.parametrize("seed", [4, 9])
def test_a_crash_part_way_through_a_group_that_emitted_incidents_loses_none(
    ruleset: Any, seed: int
) -> None:
    """Whatever prefix of a group's writes the changelog kept, the restarted worker emits
    replay's incidents (the crashed group's possibly twice: at-least-once), none lost."""
    lines = _stream(seed, n=160)
    expected = _replay(ruleset, lines)
    records = _records_of(ruleset, lines)
    crashes = 0
    for cut_record in range(len(records) - 1):
        table = _Recording()
        correlator = _correlator(table, ruleset)
        got: list[dict[str, Any]] = []
        for destination, offset, record in records[:cut_record]:
            got.extend(_apply(correlator, destination, offset, record))
            _delivered(correlator)
        before = len(table.log)
        destination, offset, record = records[cut_record]
        emitted = _apply(correlator, destination, offset, record)
        if not emitted:
            continue  # groups without incidents: test_partitions.py cuts those
        writes = len(table.log) - before
        for cut_writes in range(writes + 1):
            crashes += 1
            restarted = _correlator(table.prefix(before + cut_writes), ruleset)
            after = list(got)  # the crashed group's incidents never reached the brokers
            for again in records[cut_record:]:  # not committed: read again
                after.extend(_apply(restarted, *again))
                _delivered(restarted)
            assert sorted(set(_ids(after))) == _ids(expected), (
                f"crash after {cut_writes} of the {writes} writes of record {cut_record}"
            )
            assert len(after) - len(expected) <= len(emitted)  # only the crashed group's twice
    assert crashes > 10


def test_the_outbox_is_written_before_the_state_and_deleted_once_flushed(ruleset: Any) -> None:
    lines = _stream(4, n=160)
    records = _records_of(ruleset, lines)
    table = _Recording()
    correlator = _correlator(table, ruleset)
    emitted = None
    for destination, offset, record in records:
        before = len(table.log)
        if _apply(correlator, destination, offset, record):
            emitted = (destination, offset, before)
            break
    assert emitted is not None
    destination, offset, before = emitted
    first_key, first_value = table.log[before]
    assert first_key == outbox_prefix(destination) + str(offset).encode()
    assert orjson.loads(first_value or b"")["i"]  # the incidents, before any state write
    # not yet flushed: kept; produced, but the flush still running: kept
    correlator.outputs_produced()
    flushing = correlator.produced_outputs()
    assert flushing == [(destination, first_key)]
    next_of = next(r for r in records if r[0] == destination and r[1] > offset)
    correlator.on_batch(*next_of, persist=False)
    correlator.persist(destination)
    assert first_key in table
    correlator.acknowledge_outputs(flushing)  # the flush succeeded
    correlator.on_batch(destination, next_of[1] + 1, next_of[2], persist=False)
    correlator.persist(destination)
    assert first_key not in table


def test_a_restore_after_a_commit_emits_nothing_again(ruleset: Any) -> None:
    """The first offset read after the assignment is past the outbox entry's records: they
    were committed, so their outputs were flushed; the entry is deleted, nothing emitted."""
    lines = _stream(9, n=160)
    records = _records_of(ruleset, lines)
    table: dict[bytes, bytes] = {}
    correlator = _correlator(table, ruleset)
    for index, (destination, offset, record) in enumerate(records):  # noqa: B007
        if _apply(correlator, destination, offset, record):
            break
    later = [r for r in records[index + 1 :] if r[0] == destination]
    assert later
    keys = [k for k in table if k.startswith(outbox_prefix(destination))]
    assert keys
    restarted = _correlator(dict(table), ruleset)
    committed = later[0]  # the worker stopped cleanly: reading resumes after the group
    incidents = restarted.on_batch(*committed, persist=False).incidents
    assert restarted.take_recovered_outputs(destination) is None
    restarted.persist(destination)
    assert all(k not in restarted.store for k in keys)
    assert isinstance(incidents, list)
