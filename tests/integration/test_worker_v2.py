"""Rule language v2 on the real broker: correlations of correlations (derived events) and
first-seen terms give replay's records, for one worker and for two workers sharing 3 partitions,
also when one of the two is killed mid-stream (derived events then cross workers, and a restore
sends again what the killed one may not have sent: the outbox).
"""

from __future__ import annotations

import collections
import random
import signal
from typing import Any

import pytest
from worker_harness import (
    MIXED_RULES,
    WorkerEnv,
    comparable,
    incident_signature,
    message_json,
    produce_mixed_stream,
    replay_incidents,
    wait_groups_shared,
)

pytestmark = pytest.mark.integration

CHAINS = """
- correlation: Two chains on a node
  type: distinct
  by: [hostname]
  condition: >
    correlation in ("Shell then egress", "Sensitive read burst", "Write below etc and shell")
  field: correlation
  threshold: 2
  within: 5s
  output: "{{ events|length }} chains on {{ key.hostname }}"

- correlation: Silent after an incident
  type: sequence
  by: [hostname]
  within: 5s
  steps:
    - name: incident
      condition: correlation = "Two chains on a node" and status = new
    - name: silent
      condition: correlation = "Sensor silent"
  output: "silent after {{ steps.incident.rule }}"

- correlation: First file read in a container
  type: new_term
  by: [container.id]
  condition: rule in (sensitive_reads)
  fields: [fd.name]
  within: 1h
  learn: 1s
  suppress: 1s
"""


def test_chains_and_new_terms_equal_replay_for_one_and_two_workers(
    worker_env: WorkerEnv,
) -> None:
    rules = worker_env.rules_file("v2.yaml", MIXED_RULES + CHAINS)
    shared = worker_env.settings([rules], partitions=3, lateness="2s")
    single = worker_env.settings([rules], partitions=3, lateness="2s")
    pair = [worker_env.worker(shared, name="v2-a"), worker_env.worker(shared, name="v2-b")]
    alone = worker_env.worker(single, name="v2-single")
    for w in [*pair, alone]:
        w.start(wait_ready=False)
    for w in [*pair, alone]:
        w.wait_ready()
    wait_groups_shared(worker_env.admin, shared, pair)

    to_pair = worker_env.producer(shared)
    to_single = worker_env.producer(single)

    def send_both(event: dict[str, Any]) -> None:
        to_pair.send(event)
        to_single.send(event)

    sent = produce_mixed_stream(random.Random(1414), send_both, slots=150)
    expected = replay_incidents([rules], sent, worker_env.directory, flush=True)
    fired = {i["correlation"] for i in expected}
    assert fired >= {
        "Two chains on a node",
        "Silent after an incident",
        "First file read in a container",
    }, fired

    readers = {
        "pair": worker_env.reader(shared.topics.incidents),
        "single": worker_env.reader(single.topics.incidents),
    }
    for reader in readers.values():
        reader.wait_count(len(expected), timeout=30)
    for reader in readers.values():
        reader.drain(1.5)
    key = lambda i: (i["id"], i["count"])  # noqa: E731
    want = sorted(map(comparable, expected), key=key)
    for name, reader in readers.items():
        got = sorted(map(comparable, reader.values()), key=key)
        assert got == want, (
            f"{name}: {len(got)} records, replay {len(want)}; only in the worker: "
            f"{sorted({i['id'] for i in reader.values()} - {i['id'] for i in expected})[:5]}, "
            f"only in replay: "
            f"{sorted({i['id'] for i in expected} - {i['id'] for i in reader.values()})[:5]}"
        )
    assert all(w.metric_sum("fc_events_late_total") == 0 for w in [*pair, alone])
    # the chains were correlated across partitions: derived events went to the dependent
    # keys' partitions in chain records, also between the two workers
    for w in [*pair, alone]:
        assert w.metric_sum("fc_derived_events_total") > 0, w.name
        assert w.metric_sum("fc_chain_records_total") > 0, w.name


def test_two_workers_one_sigkilled_mid_stream_with_chains_emit_replays_records(
    worker_env: WorkerEnv,
) -> None:
    """The killed worker's partitions move to the other, which restores them from the
    changelog, reads their records again from the last commit and emits again what the killed
    one may not have sent; every record of replay arrives (some twice: at-least-once)."""
    rules = worker_env.rules_file("v2.yaml", MIXED_RULES + CHAINS)
    shared = worker_env.settings([rules], partitions=3, lateness="2s", session_timeout="10s")
    pair = [worker_env.worker(shared, name="v2k-a"), worker_env.worker(shared, name="v2k-b")]
    for w in pair:
        w.start(wait_ready=False)
    for w in pair:
        w.wait_ready(timeout=90)
    wait_groups_shared(worker_env.admin, shared, pair, timeout=90)
    to_pair = worker_env.producer(shared)
    killed: list[bool] = []
    slots = 150

    def send(event: dict[str, Any]) -> None:
        to_pair.send(event)
        if not killed and to_pair.sent >= slots // 2:
            killed.append(True)
            assert pair[1].kill() == -signal.SIGKILL

    sent = produce_mixed_stream(random.Random(1414), send, slots=slots)
    assert killed
    expected = replay_incidents([rules], sent, worker_env.directory, flush=True)
    assert {i["correlation"] for i in expected} >= {
        "Two chains on a node",
        "Silent after an incident",
        "First file read in a container",
    }
    want = collections.Counter(incident_signature(i) for i in expected)
    reader = worker_env.reader(shared.topics.incidents)
    reader.poll_until(
        lambda msgs: {incident_signature(message_json(m)) for m in msgs} >= set(want),
        timeout=120,
    )
    reader.drain(1.5)
    got = reader.values()
    assert {incident_signature(i) for i in got} == set(want), (
        f"{len(got)} records from the pair, replay {len(expected)}"
    )
    unique = {(i["id"], i["count"]): comparable(i) for i in got}
    key = lambda i: (i["id"], i["count"])  # noqa: E731
    assert sorted(unique.values(), key=key) == sorted(map(comparable, expected), key=key)
    assert pair[0].running(), pair[0].log_tail()
    assert pair[0].metric_sum("fc_events_late_total") == 0
