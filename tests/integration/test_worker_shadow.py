"""Shadow rules (`app.shadow_rules`) in the real worker on the real broker.

A worker runs the live rules and a changed copy of them as shadow rules on the same events, with a
real local webhook receiver as its notifier (worker_harness.ThreadedWebhook). What the shadow
rules emit on `<incidents>-shadow` must be exactly what `falco-correlator replay` gives for the
shadow rules, what reaches the incidents topic exactly what replay gives for the live rules, and
the notifier must receive the live incidents and nothing of the shadow ones.
"""

from __future__ import annotations

import collections
import random
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from worker_harness import (
    EGRESS,
    MIXED_RULES,
    SHELL,
    ThreadedWebhook,
    WorkerEnv,
    WorkerProcess,
    comparable,
    container_event,
    incident_signature,
    produce_mixed_stream,
    replay_incidents,
)

pytestmark = pytest.mark.integration

# The shadow set: the shipped-style correlations of MIXED_RULES with a changed threshold (the
# normal case: the same names as live), a shorter sequence window, and one correlation removed.
_BURST_LIVE = "  threshold: 3\n  within: 2s\n  suppress: 3s\n"
_BURST_SHADOW = "  threshold: 2\n  within: 2s\n  suppress: 3s\n"
_SEQ_LIVE = "  by: [container.id]\n  within: 3s\n  steps:\n"
_SEQ_SHADOW = "  by: [container.id]\n  within: 1s\n  steps:\n"
assert MIXED_RULES.count(_BURST_LIVE) == 1
assert MIXED_RULES.count(_SEQ_LIVE) == 1
SHADOW_RULES = (
    MIXED_RULES.replace(_BURST_LIVE, _BURST_SHADOW)
    .replace(_SEQ_LIVE, _SEQ_SHADOW)
    .split("- correlation: Sensor silent")[0]
)
assert "Sensor silent" not in SHADOW_RULES

_LABELS = re.compile(r'(\w+)="([^"]*)"')


def _series(worker: WorkerProcess, name: str, **labels: str) -> float:
    """Sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in worker.metrics().items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        found = dict(_LABELS.findall(rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def _by_signature(incidents: list[dict[str, Any]]) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter(incident_signature(i) for i in incidents)


def _same(got: list[dict[str, Any]], expected: list[dict[str, Any]], what: str) -> None:
    missing = _by_signature(expected) - _by_signature(got)
    extra = _by_signature(got) - _by_signature(expected)
    assert (missing, extra) == (collections.Counter(), collections.Counter()), (
        f"{what}: {len(got)} incidents from the worker, {len(expected)} from replay\n"
        f"missing: {sorted(missing)}\nextra: {sorted(extra)}"
    )
    key = lambda i: (i["id"], i["status"], i["count"])  # noqa: E731
    assert sorted(map(comparable, got), key=key) == sorted(map(comparable, expected), key=key)


def _webhook(url: str) -> dict[str, Any]:
    return {"notifiers": [{"name": "hook", "type": "webhook", "webhook": {"url": url}}]}


def test_shadow_incidents_equal_replay_of_the_shadow_rules_and_never_reach_notifiers(
    worker_env: WorkerEnv,
) -> None:
    live_rules = worker_env.rules_file("live.yaml", MIXED_RULES)
    shadow_rules = worker_env.rules_file("shadow.yaml", SHADOW_RULES)
    with ThreadedWebhook() as hook:
        settings = worker_env.settings(
            [live_rules],
            partitions=3,
            lateness="2s",
            tick_interval="1s",
            app_extra={"shadow_rules": [str(shadow_rules)]},
            extra=_webhook(hook.url),
        )
        worker = worker_env.worker(settings).start()
        producer = worker_env.producer(settings)
        sent = produce_mixed_stream(random.Random(20241201), producer.send)

        expected_live = replay_incidents(
            [live_rules], sent, worker_env.directory, lateness="2s", flush=True
        )
        expected_shadow = replay_incidents(
            [shadow_rules], sent, worker_env.directory, lateness="2s", flush=True
        )
        # the input exercises what differs: the lower threshold gives other bursts
        live_kinds = collections.Counter(i["correlation"] for i in expected_live)
        shadow_kinds = collections.Counter(i["correlation"] for i in expected_shadow)
        assert live_kinds["Sensitive read burst"] > 0
        assert shadow_kinds["Sensitive read burst"] > 0
        burst = lambda incidents: {  # noqa: E731
            incident_signature(i) for i in incidents if i["correlation"] == "Sensitive read burst"
        }
        assert burst(expected_live) != burst(expected_shadow)
        assert live_kinds["Sensor silent"] >= 1
        assert shadow_kinds["Sensor silent"] == 0
        assert {i["ruleset"] for i in expected_live}.isdisjoint(
            {i["ruleset"] for i in expected_shadow}
        )
        # (an incident of one set may have the id of one of the other: same name, key and first
        # event; what the notifier got is told apart by content and ruleset digest)
        live_digest = {i["ruleset"] for i in expected_live}

        live = worker_env.reader(settings.topics.incidents)
        shadow = worker_env.reader(f"{settings.topics.incidents}-shadow")
        live.wait_count(len(expected_live), timeout=40)
        shadow.wait_count(len(expected_shadow), timeout=40)
        live.drain(2.0)  # nothing more may come
        shadow.drain(2.0)
        _same(live.values(), expected_live, "live rules, incidents topic")
        _same(shadow.values(), expected_shadow, "shadow rules, <incidents>-shadow")

        # The notifier: every live incident, then nothing more. The notify stage reads the
        # incidents topic only; its records counter reaching the live count with every live
        # incident delivered means it is caught up, so anything of the shadow set would be
        # there by now.
        live_keys = {(i["id"], i["status"], i["count"]) for i in expected_live}
        hook.wait_ids({i["id"] for i in expected_live}, timeout=40)
        worker.wait_metric(
            "falco_correlator_notify_records_total",
            lambda v: v >= len(expected_live),
            timeout=30,
            what=f">= {len(expected_live)}",
        )
        delivered = [orjson.loads(d.body) for d in hook.receiver.accepted]
        assert {(d["id"], d["status"], d["count"]) for d in delivered} == live_keys
        assert {d["ruleset"] for d in delivered} == live_digest, "a shadow incident was notified"
        assert worker.metric_sum("falco_correlator_notify_records_total") == len(expected_live)

        # metrics: each set counted under its own label; no shadow failure; nothing late
        assert _series(worker, "fc_incidents_total", shadow="false") == len(expected_live)
        assert _series(worker, "fc_incidents_total", shadow="true") == len(expected_shadow)
        assert _series(worker, "fc_shadow_errors_total") == 0
        assert _series(worker, "fc_events_late_total") == 0
        assert (
            _series(
                worker,
                "fc_ruleset_info",
                shadow="true",
                digest=next(iter({i["ruleset"] for i in expected_shadow})),
            )
            == 1
        )
        assert _series(worker, "fc_rules_reload_success", shadow="true") == 1
        assert _series(worker, "fc_correlate_records_total", shadow="true") > 0
        assert worker.terminate() == 0, worker.log_tail()


def test_a_broken_shadow_reload_keeps_the_previous_shadow_rules_and_the_live_ones_go_on(
    worker_env: WorkerEnv,
) -> None:
    chain = f"""
- correlation: Shell then egress
  type: sequence
  by: [container.id]
  within: 1m
  steps:
    - name: shell
      condition: rule = "{SHELL}"
    - name: egress
      condition: rule = "{EGRESS}"
  output: "shell then egress in {{{{ key['container.id'] }}}}"
"""
    live_rules = worker_env.rules_file("live.yaml", chain)
    shadow_rules = worker_env.rules_file("shadow.yaml", chain.replace("within: 1m", "within: 30s"))
    shadow_copy = Path(worker_env.directory / "shadow-first.yaml")
    shadow_copy.write_text(shadow_rules.read_text())
    settings = worker_env.settings(
        [live_rules], lateness="2s", app_extra={"shadow_rules": [str(shadow_rules)]}
    )
    worker = worker_env.worker(settings).start()
    first_digest = worker.wait_log(r"shadow rules: 1 correlations \(ruleset (\w+)\)", 10).group(1)

    # A broken shadow file: the reload fails, is counted and logged; the previous shadow rules
    # and the live rules go on.
    shadow_rules.write_text(chain.replace("type: sequence", "type: no-such-type"))
    worker.wait_metric(
        "fc_rules_reloads_total", lambda v: v >= 1, timeout=20, what=">= 1 (the broken file)"
    )
    worker.wait_log(r"shadow rules reload \(file change\) failed, keeping the previous", 10)
    assert _series(worker, "fc_rules_reload_success", shadow="true") == 0
    assert _series(worker, "fc_rules_reload_success", shadow="false") == 1
    assert _series(worker, "fc_rules_reloads_total", result="error", shadow="true") == 1
    assert _series(worker, "fc_rules_reloads_total", shadow="false") == 0
    assert _series(worker, "fc_ruleset_info", shadow="true", digest=first_digest) == 1

    rng = random.Random(7)
    producer = worker_env.producer(settings)
    events = [
        container_event(rng, SHELL, time.time_ns(), "c0ffee000001"),
        container_event(rng, EGRESS, time.time_ns() + 1_000_000, "c0ffee000001"),
    ]
    producer.send_many(events)
    expected_live = replay_incidents([live_rules], events, worker_env.directory)
    expected_shadow = replay_incidents([shadow_copy], events, worker_env.directory)
    assert len(expected_live) == len(expected_shadow) == 1
    live = worker_env.reader(settings.topics.incidents)
    shadow = worker_env.reader(f"{settings.topics.incidents}-shadow")
    live.wait_count(1, timeout=30)
    shadow.wait_count(1, timeout=30)
    live.drain(1.0)
    shadow.drain(1.0)
    assert [comparable(i) for i in live.values()] == [comparable(i) for i in expected_live]
    # the previous shadow rules (loaded from shadow.yaml, digest of its first content)
    [got] = shadow.values()
    assert got["ruleset"] == first_digest
    assert {k: v for k, v in comparable(got).items() if k != "ruleset"} == {
        k: v for k, v in comparable(expected_shadow[0]).items() if k != "ruleset"
    }
    assert worker.running()

    # Fixed: the next reload takes the new shadow rules; the live ones were never touched.
    shadow_rules.write_text(chain.replace("within: 1m", "within: 20s"))
    deadline = time.monotonic() + 20
    while _series(worker, "fc_rules_reload_success", shadow="true") != 1:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    second = worker.wait_log(
        r"shadow rules reloaded \(file change\): 1 correlations, ruleset (\w+)", 10
    )
    assert second.group(1) != first_digest
    assert _series(worker, "fc_ruleset_info", shadow="true", digest=second.group(1)) == 1
    assert _series(worker, "fc_ruleset_info", shadow="true", digest=first_digest) == 0
    assert _series(worker, "fc_rules_reloads_total", shadow="false") == 0
    status, body = worker.http_get("/readyz")
    assert status == 200, body
    assert orjson.loads(body)["shadow_ruleset"] == second.group(1)
    assert worker.terminate() == 0, worker.log_tail()


def test_shadow_state_survives_a_restart_apart_from_the_live_state_and_promotion_drops_it(
    worker_env: WorkerEnv,
) -> None:
    """The same correlation name in both sets, with different types (a sequence live, `all` in
    shadow): with the memory store a restarted worker rebuilds both from the changelog, and
    each gives what replay gives, which it could not if their entries met. Then the shadow
    rules are promoted (moved to `app.rules`): the worker deletes the shadow entries."""
    sequence = f"""
- correlation: Shell then egress
  type: sequence
  by: [container.id]
  within: 1m
  steps:
    - name: shell
      condition: rule = "{SHELL}"
    - name: egress
      condition: rule = "{EGRESS}"
  output: "shell then egress in {{{{ key['container.id'] }}}}"
"""
    live_rules = worker_env.rules_file("live.yaml", sequence)
    shadow_rules = worker_env.rules_file(
        "shadow.yaml", sequence.replace("type: sequence", "type: all")
    )
    settings = worker_env.settings(
        [live_rules],
        store="memory",
        lateness="2s",
        app_extra={"shadow_rules": [str(shadow_rules)]},
    )
    worker = worker_env.worker(settings).start()
    producer = worker_env.producer(settings)
    rng = random.Random(13)
    now = time.time_ns()
    shells = [
        container_event(rng, SHELL, now, "c0ffee000001"),
        container_event(rng, SHELL, now + 1_000_000, "c0ffee000002"),
    ]
    producer.send_many(shells)
    # both sets hold the shells, each under its own key in the changelog
    changelog = worker_env.reader(f"{settings.app_id}-correlation-state-changelog")
    prefix = b"\x00shadow\x1f"

    def holds(messages: list[Any], shadow: bool) -> bool:
        return all(
            any(
                (m.key() or b"").startswith(prefix) == shadow
                and uuid.encode() in (m.value() or b"")
                for m in messages
            )
            for uuid in (e["uuid"] for e in shells)
        )

    changelog.poll_until(lambda ms: holds(ms, True) and holds(ms, False), timeout=30)
    assert holds(changelog.messages, True)
    assert holds(changelog.messages, False)
    assert worker.terminate() == 0, worker.log_tail()

    worker.start()  # memory store: both sets rebuilt from the changelog
    egress = container_event(rng, EGRESS, time.time_ns(), "c0ffee000001")
    producer.send(egress)
    events = [*shells, egress]
    expected_live = replay_incidents([live_rules], events, worker_env.directory)
    expected_shadow = replay_incidents([shadow_rules], events, worker_env.directory)
    assert [i["type"] for i in expected_live] == ["sequence"]
    assert [i["type"] for i in expected_shadow] == ["all"]
    live = worker_env.reader(settings.topics.incidents)
    shadow = worker_env.reader(f"{settings.topics.incidents}-shadow")
    live.wait_count(1, timeout=30)
    shadow.wait_count(1, timeout=30)
    live.drain(1.0)
    shadow.drain(1.0)
    assert [comparable(i) for i in live.values()] == [comparable(i) for i in expected_live]
    assert [comparable(i) for i in shadow.values()] == [comparable(i) for i in expected_shadow]
    log = worker.log_text().split("===== start #2")[1]
    assert re.search(r"shadow rules, partition \d+: restored", log), log[-3000:]
    assert worker.terminate() == 0, worker.log_tail()

    # Promotion: the shadow paths move to app.rules. The shell of c0ffee000002 is still held by
    # the shadow set; its entry is deleted (a tombstone in the changelog), never restored.
    settings.rules = [shadow_rules]
    settings.app_extra = {}
    worker.start()
    found = worker.wait_log(r"deleting (\d+) state entries of shadow rules", 20)
    assert int(found.group(1)) >= 1

    def tombstoned(messages: list[Any]) -> bool:
        return any((m.key() or b"").startswith(prefix) and m.value() is None for m in messages)

    changelog.poll_until(tombstoned, timeout=30)
    assert tombstoned(changelog.messages)
    status, body = worker.http_get("/readyz")
    assert status == 200, body
    assert "shadow_ruleset" not in orjson.loads(body)
    assert worker.terminate() == 0, worker.log_tail()
