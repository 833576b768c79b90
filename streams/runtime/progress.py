"""Event-time progress: what the ingest stage reports, and how a correlate partition merges it.

The engine's watermark is the stream's high-water mark minus `lateness`. In the worker the stream
is split over the partitions of the events topic, read by any number of workers, each at its own
pace, so the high-water mark is a minimum over source partitions of how far each got:

- **Ingest side (`SourceProgress`)**: for each assigned source partition, its *contribution* is
  the highest event time it delivered. A partition stops holding the mark back only when it is
  known to be caught up with its log end — its consumed position reached the end offset that a
  ListOffsets request sent at wall time T returned — and then it contributes what the stream had
  reached `idle_after` before T, extrapolated with wall time (`V(T - idle_after)`, below). So:
  * a partition with unread data (a backlog, a consumer behind, a broker that does not answer)
    holds the mark at its last event: nothing it still has to deliver becomes late;
  * after a quiet period, a burst whose events land on several partitions is safe as long as each
    partition's share is read within `idle_after` of wall time of the first: a silent partition
    does not let the first partition read move the watermark past the others' events;
  * when every partition is caught up and silent, event time moves on with the wall clock (the
    extrapolation), so held events are released and absences fire on an idle stream.

  `V(w)` is the stream's highest event time as of wall time `w` plus the wall time elapsed since
  it last increased: the event time the stream would have reached at `w` had it stayed live.
  Wall time during which the brokers did not answer (and `OUTAGE_GRACE` after they are back)
  does not count: producers buffered meanwhile and append what they held when they reconnect —
  up to their reconnect backoff after the brokers are back (librdkafka: 10 s at most by
  default) — so a caught-up confirmation right after an outage says nothing about the events
  still on their way. Without this, the first confirmation after a 10 s outage moved the
  watermark over the whole outage and every buffered event became late.

- **Correlate side (`MergedProgress`)**: every batch and tick carries the sender's contributions
  and the number of source partitions. A correlate partition keeps the highest contribution heard
  for each source partition (contributions only grow; reports from several workers, or from a
  partition's previous owner, merge), and its high-water mark is the minimum over *all* source
  partitions — minus infinity until each has reported. It is persisted with the partition's state.

Both sides are pure (wall time is passed in), so they are tested without Kafka.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping

__all__ = ["NEG_INF", "MergedProgress", "SourceProgress"]

NEG_INF = -(2**63)
OUTAGE_GRACE_NS = 10 * 1_000_000_000  # librdkafka's default reconnect.backoff.max.ms


class SourceProgress:
    """Event-time progress of the source partitions one ingest consumer owns."""

    def __init__(self, idle_after_ns: int) -> None:
        self.idle_after_ns = idle_after_ns
        self._max: dict[int, int] = {}
        self._confirmed_wall: dict[int, int] = {}  # wall time of the last caught-up confirmation
        self._assigned: set[int] = set()
        # (wall_ns, highest event time so far) each time the highest event time rose
        self._walls: list[int] = []
        self._highs: list[int] = []
        self.high_ns = NEG_INF
        # wall-time intervals the extrapolation does not count (broker outages plus the grace)
        self._frozen: list[tuple[int, int]] = []

    @property
    def assigned(self) -> frozenset[int]:
        return frozenset(self._assigned)

    def assign(self, partitions: Iterable[int]) -> None:
        self._assigned = set(partitions)
        for gone in set(self._max) - self._assigned:
            self._max.pop(gone, None)
        for gone in set(self._confirmed_wall) - self._assigned:
            self._confirmed_wall.pop(gone, None)

    def observe(self, partition: int, time_ns: int, wall_ns: int) -> None:
        """A valid event of `partition` was forwarded (its record produced)."""
        if time_ns > self._max.get(partition, NEG_INF):
            self._max[partition] = time_ns
        if time_ns > self.high_ns:
            self.high_ns = time_ns
            self._walls.append(wall_ns)
            self._highs.append(time_ns)

    def confirm_caught_up(self, partition: int, query_wall_ns: int) -> None:
        """The consumed position reached the end offset a ListOffsets request sent at
        `query_wall_ns` returned: everything appended before that time has been read."""
        if partition in self._assigned and query_wall_ns > self._confirmed_wall.get(
            partition, NEG_INF
        ):
            self._confirmed_wall[partition] = query_wall_ns

    def brokers_unreachable(self, since_wall_ns: int, until_wall_ns: int) -> None:
        """The brokers did not answer between `since` (the last query that succeeded) and
        `until` (the first that succeeded again): the extrapolation does not count that time
        nor `OUTAGE_GRACE_NS` after it."""
        self._frozen.append((since_wall_ns, until_wall_ns + OUTAGE_GRACE_NS))

    def extrapolated(self, wall_ns: int) -> int:
        """V(wall_ns): the highest event time as of `wall_ns`, moved on with the wall time
        elapsed since, outages excepted."""
        at = bisect_right(self._walls, wall_ns) - 1
        if at < 0:
            return NEG_INF
        start = self._walls[at]
        frozen = 0
        for begin, end in self._frozen:
            frozen += max(0, min(end, wall_ns) - max(begin, start))
        return self._highs[at] + max(0, wall_ns - start - frozen)

    def contribution(self, partition: int) -> int:
        own = self._max.get(partition, NEG_INF)
        confirmed = self._confirmed_wall.get(partition)
        if confirmed is None:
            return own
        return max(own, self.extrapolated(confirmed - self.idle_after_ns))

    def contributions(self) -> dict[int, int]:
        return {p: self.contribution(p) for p in sorted(self._assigned)}

    def high_water_ns(self) -> int:
        """The minimum contribution over the assigned partitions (this consumer's view)."""
        values = [self.contribution(p) for p in self._assigned]
        return min(values) if values else NEG_INF

    def prune(self, now_wall_ns: int) -> None:
        """Forget history no confirmation can ask for any more (keeps one sample before it)."""
        horizon = now_wall_ns - 2 * self.idle_after_ns - 60 * 1_000_000_000
        cut = bisect_right(self._walls, horizon) - 1
        if cut > 0:
            del self._walls[:cut]
            del self._highs[:cut]
        if self._walls:
            oldest = self._walls[0]
            self._frozen = [(b, e) for b, e in self._frozen if e > oldest]


class MergedProgress:
    """A correlate partition's view: the highest contribution heard per source partition."""

    def __init__(self) -> None:
        self.source_partitions = 0
        self.progress: dict[int, int] = {}

    def update(self, source_partitions: int, progress: Mapping[int, int]) -> bool:
        """Merge a report; True when the high-water mark may have moved."""
        changed = False
        if source_partitions > self.source_partitions:
            self.source_partitions = source_partitions
            changed = True
        for partition, time_ns in progress.items():
            if time_ns > self.progress.get(partition, NEG_INF):
                self.progress[partition] = time_ns
                changed = True
        return changed

    def high_water_ns(self) -> int:
        if self.source_partitions <= 0:
            return NEG_INF
        progress = self.progress
        lowest: int | None = None
        for partition in range(self.source_partitions):
            value = progress.get(partition)
            if value is None:
                return NEG_INF
            if lowest is None or value < lowest:
                lowest = value
        return NEG_INF if lowest is None else lowest

    def to_data(self) -> dict[str, object]:
        return {"n": self.source_partitions, "p": [[p, t] for p, t in self.progress.items()]}

    @classmethod
    def from_data(cls, data: Mapping[str, object] | None) -> MergedProgress:
        merged = cls()
        if data:
            n = data.get("n", 0)
            merged.source_partitions = n if isinstance(n, int) else 0
            pairs = data.get("p", [])
            if isinstance(pairs, list):
                for pair in pairs:
                    merged.progress[int(pair[0])] = int(pair[1])
        return merged
