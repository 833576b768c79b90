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

- **Broker outages.** While the brokers do not answer, producers buffer, and each appends what
  it held when it reconnects: up to its reconnect backoff after the brokers are back
  (librdkafka: 10 s at most by default), one producer after the other. So from the first failed
  end-offset query until `OUTAGE_GRACE` after the first successful one again, every
  contribution is capped at the highest event time seen when the outage began — the producers
  that reconnect first (or a consumer reading them before the outage is even noticed) must not
  move the watermark past what the slower ones still hold — and the extrapolation does not count
  that wall time. Without this, the first confirmation after a 10 s outage moved the watermark
  over the whole outage and every buffered event became late; and a falcosidekick reconnecting
  8 s after another lost most of its buffer. Incidents come out up to `OUTAGE_GRACE` later
  after an outage.

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
# librdkafka's default message.timeout.ms: producers drop what they buffered longer than that,
# and end offsets failing for longer while events still flow must not freeze the watermark
OUTAGE_CAP_MAX_NS = 300 * 1_000_000_000


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
        self._down_since: int | None = None  # the brokers do not answer since (wall)
        self._cap: int | None = None  # contributions capped at this event time ...
        self._cap_until: int | None = None  # ... until this wall time (None: outage going on)

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

    def brokers_down(self, since_wall_ns: int) -> None:
        """The brokers stopped answering after `since` (the last query that succeeded):
        contributions stay at the highest event time seen by then until `brokers_back`."""
        if self._down_since is None:
            self._down_since = since_wall_ns
            at = bisect_right(self._walls, since_wall_ns) - 1
            high = self._highs[at] if at >= 0 else NEG_INF
            # a cap left from an earlier outage's grace stays if it is lower
            self._cap = high if self._cap is None else min(self._cap, high)
            self._cap_until = None

    def brokers_back(self, wall_ns: int) -> None:
        """The brokers answer again (a query sent at `wall_ns` succeeded): the cap holds for
        `OUTAGE_GRACE_NS` more, and the extrapolation skips the outage and the grace."""
        if self._down_since is None:
            return
        self._frozen.append((self._down_since, wall_ns + OUTAGE_GRACE_NS))
        if self._cap is not None:
            self._cap_until = wall_ns + OUTAGE_GRACE_NS
        self._down_since = None

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
        value = self._max.get(partition, NEG_INF)
        confirmed = self._confirmed_wall.get(partition)
        if confirmed is not None:
            value = max(value, self.extrapolated(confirmed - self.idle_after_ns))
        if self._cap is not None:
            value = min(value, self._cap)
        return value

    def contributions(self) -> dict[int, int]:
        return {p: self.contribution(p) for p in sorted(self._assigned)}

    def high_water_ns(self) -> int:
        """The minimum contribution over the assigned partitions (this consumer's view)."""
        values = [self.contribution(p) for p in self._assigned]
        return min(values) if values else NEG_INF

    def prune(self, now_wall_ns: int) -> None:
        """Forget history no confirmation can ask for any more (keeps one sample before it);
        lift the outage cap once its grace is over."""
        if self._cap_until is not None and now_wall_ns >= self._cap_until:
            self._cap = self._cap_until = None
        if self._down_since is not None and now_wall_ns - self._down_since > OUTAGE_CAP_MAX_NS:
            self._cap = None
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
