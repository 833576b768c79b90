"""Liveness and readiness: the stall watchdog and the group-ownership check.

- **Stall watchdog.** A partition this worker owns (a source partition of the ingest consumer, or a
  correlate partition of the Faust agent) with consumer lag > 0 and no progress for
  `app.stall_timeout` is stalled: `/healthz` answers 503 (so Kubernetes restarts the pod) and the
  log says, once per stall, what every task of the process is waiting on. Lag is only judged from
  fresh end offsets: during a broker outage nothing is stalled, it is unreachable.
- **Ownership.** After every assignment (and periodically) the consumer groups are described: every
  partition of the events topic must be owned by a member of the ingest group and every correlate
  partition by a member of the Faust group. While one is not, `/readyz` answers 503 and an error
  is logged; if that lasts `app.stall_timeout`, `/healthz` fails too (a restart rejoins the group).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ownership", "StallWatchdog", "describe_tasks", "unowned_partitions"]

log = logging.getLogger("streams.worker.health")


@dataclass
class Ownership:
    """The last ownership check: partitions nobody owns, and since when (wall ns)."""

    unowned: list[str] = field(default_factory=list)
    since_ns: int = 0
    checked: bool = False


def unowned_partitions(
    topics: Mapping[str, int], members_assignments: Iterable[Iterable[tuple[str, int]]]
) -> list[str]:
    """`topic/partition` names of `topics` (name -> partition count) no member owns."""
    owned: set[tuple[str, int]] = set()
    for assignment in members_assignments:
        owned.update(assignment)
    return [
        f"{topic}/{partition}"
        for topic, count in topics.items()
        for partition in range(count)
        if (topic, partition) not in owned
    ]


async def describe_group_assignments(
    options: Mapping[str, Any], groups: Sequence[str], timeout_s: float = 15.0
) -> dict[str, list[list[tuple[str, int]]]]:
    """Each member's assigned (topic, partition)s per group, from DescribeGroups.

    Through aiokafka (pure Python), with a client per call, not librdkafka's AdminClient: a
    librdkafka group-coordinator admin request (DescribeConsumerGroups,
    ListConsumerGroupOffsets) that times out while the brokers are away aborts or crashes the
    whole process once they are back (librdkafka #4605: `rd_kafka_enq_once_del_source_return:
    Assertion eonce->refcnt > 0 failed`), which a broker restart is enough to cause.
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    admin = AIOKafkaAdminClient(**options, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        out: dict[str, list[list[tuple[str, int]]]] = {}
        for group in groups:
            responses = await asyncio.wait_for(admin.describe_consumer_groups([group]), timeout_s)
            members: list[list[tuple[str, int]]] = []
            for response in responses:
                for described in response.groups:  # (error, group, state, type, protocol, members)
                    if described[0]:
                        raise RuntimeError(f"DescribeGroups {group}: error code {described[0]}")
                    for member in described[5]:  # (..., member_metadata, member_assignment)
                        raw = member[-1]
                        if not raw:
                            members.append([])
                            continue
                        assignment = ConsumerProtocolMemberAssignment.decode(raw)
                        members.append(
                            [(topic, p) for topic, parts in assignment.assignment for p in parts]
                        )
            out[group] = members
        return out
    finally:
        await admin.close()


@dataclass
class StallWatchdog:
    stall_timeout_ns: int
    fresh_within_ns: int
    stalled: list[str] = field(default_factory=list)
    _reported: frozenset[str] = frozenset()

    def check(self, partitions: Mapping[str, Any], now_ns: int, context: Callable[[], str]) -> None:
        """`partitions`: name -> PartitionHealth (lag, position, progressed/checked wall ns)."""
        stalled = [
            name
            for name, health in partitions.items()
            if health.lag > 0
            and now_ns - health.checked_wall_ns <= self.fresh_within_ns
            and now_ns - health.progressed_wall_ns >= self.stall_timeout_ns
        ]
        self.stalled = stalled
        current = frozenset(stalled)
        if current - self._reported:
            log.error(
                "stalled: %s (lag > 0, no progress for %.0f s); /healthz fails. %s",
                ", ".join(sorted(current)),
                self.stall_timeout_ns / 1e9,
                context(),
            )
        elif self._reported and not current:
            log.warning("no partition is stalled any more")
        self._reported = current


@dataclass
class RecoveryWatchdog:
    """A table recovery (or a rebalance) that reads nothing for `stall_timeout` fails /healthz.

    /readyz already answers 503 while the worker recovers; that alone never gets a stuck worker
    restarted. `progress` is anything that changes while recovery reads (the changelog offsets
    it has applied, the group generation), so a long recovery that moves is never mistaken for
    a stuck one. Halfway there, `check` answers True once per episode: the caller restarts the
    recovery (it seeks again and resumes fetching), which costs a re-read at worst.
    """

    stall_timeout_ns: int
    stuck_for_ns: int = 0
    _since_ns: int | None = None
    _progress: Any = None
    _reported: bool = False
    _restarted: bool = False

    @property
    def stuck(self) -> bool:
        return self.stuck_for_ns >= self.stall_timeout_ns

    def check(
        self, recovering: bool, progress: Any, now_ns: int, context: Callable[[], str]
    ) -> bool:
        """True when the caller should restart the recovery (once per stuck episode)."""
        if not recovering:
            if self._reported or self._restarted:
                log.warning("table recovery finished")
            self._since_ns, self._progress = None, None
            self._reported = self._restarted = False
            self.stuck_for_ns = 0
            return False
        if self._since_ns is None or progress != self._progress:
            self._since_ns, self._progress = now_ns, progress
        self.stuck_for_ns = now_ns - self._since_ns
        if self.stuck:
            if not self._reported:
                self._reported = True
                log.error(
                    "table recovery or rebalance has made no progress for %.0f s; /healthz "
                    "fails (a restart recovers from the changelog). %s",
                    self.stuck_for_ns / 1e9,
                    context(),
                )
            return False
        if self.stuck_for_ns * 2 >= self.stall_timeout_ns and not self._restarted:
            self._restarted = True
            log.warning(
                "table recovery has read nothing for %.0f s: restarting it. %s",
                self.stuck_for_ns / 1e9,
                context(),
            )
            return True
        return False


def _awaiting(task: asyncio.Task[Any]) -> str:
    """The innermost frames of a task's chain of awaits (where it really waits), not its outer
    wrapper's."""
    chain: list[str] = []
    coro: Any = task.get_coro()
    for _ in range(64):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        inner = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if inner is None:
            break
        coro = inner
    if not chain:
        return "?"
    return " <- ".join(reversed(chain[-3:]))


def describe_tasks(extra: Mapping[str, str] | None = None) -> str:
    """What every asyncio task and thread of the process is waiting on, for a stall report."""
    lines = [f"{name}: {what}" for name, what in (extra or {}).items()]
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        tasks = set()
    for task in sorted(tasks, key=lambda t: t.get_name()):
        lines.append(f"task {task.get_name()} ({task.get_coro()!r:.80}): {_awaiting(task)}")
    for thread_id, frame in sys._current_frames().items():  # diagnostics only
        summary = traceback.extract_stack(frame, limit=1)
        if summary:
            top = summary[-1]
            lines.append(f"thread {thread_id}: {top.filename}:{top.lineno} in {top.name}")
    return "waiting on:\n  " + "\n  ".join(lines)
