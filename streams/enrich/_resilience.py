"""A TTL cache and a circuit breaker, both on an injectable monotonic clock."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["CircuitBreaker", "TTLCache"]

V = TypeVar("V")


class TTLCache(Generic[V]):
    """At most `max_entries` values, each kept `ttl` seconds (or its own); least recently
    used goes first when full."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if self._clock() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V, ttl: float | None = None) -> None:
        self._items[key] = (self._clock() + (self.ttl if ttl is None else ttl), value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown` seconds one trial call
    goes through (half-open): success closes the circuit, failure opens it again.

    `on_change(state)` is told every transition (`closed`, `open`, `half-open`), for metrics.
    """

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self.failures = 0
        self.state = "closed"
        self._opened_at = 0.0
        self._trial_running = False
        if on_change is not None:
            on_change("closed")

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open, only one trial at a time)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() - self._opened_at < self.cooldown:
                return False
            self._set("half-open")
        if self._trial_running:
            return False
        self._trial_running = True
        return True

    def record_success(self) -> None:
        self.failures = 0
        self._trial_running = False
        if self.state != "closed":
            self._set("closed")

    def record_failure(self) -> None:
        self.failures += 1
        self._trial_running = False
        if self.state == "half-open" or self.failures >= self.threshold:
            self._opened_at = self._clock()
            if self.state != "open":
                self._set("open")

    def release(self) -> None:
        """The trial call ended without telling whether the service works (e.g. cancelled)."""
        self._trial_running = False

    def _set(self, state: str) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)
