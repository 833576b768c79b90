"""What every notifier is: the Notifier protocol, its type protocol and shared dependencies."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from streams._config_fields import Fields
from streams.core.incident_record import Incident
from streams.notifiers._delivery import Clock, Deliverer, DeliveryPolicy, DeliveryResult, Sleep
from streams.notifiers.metrics import NotifierMetrics
from streams.notifiers.routing import Route
from streams.secrets import Secret

__all__ = [
    "InMemoryThreadStore",
    "Notifier",
    "NotifierContext",
    "NotifierSpec",
    "NotifierType",
    "ThreadStore",
]


class ThreadStore(Protocol):
    """Incident id -> the Slack `ts` of its first message. The worker backs it with a topic
    (streams/runtime/slack_threads.py) when a notifier `needs_thread_store`."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...


class InMemoryThreadStore:
    """A ThreadStore in a dict: for tests and one-shot runs (lost on restart)."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def set(self, key: str, value: str) -> None:
        self._data[key] = value


OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True, slots=True)
class NotifierSpec(Generic[OptionsT]):
    """One parsed entry of the `notifiers:` list; `options` is the type's own config object
    (`NotifierSpec[SlackConfig]`), made by its `parse_options`."""

    name: str
    type: str
    route: Route
    policy: DeliveryPolicy
    options: OptionsT


@dataclass(slots=True)
class NotifierContext:
    """Dependencies shared by the notifiers of one worker; tests inject clocks and registries."""

    metrics: NotifierMetrics = field(default_factory=NotifierMetrics.shared)
    thread_store: ThreadStore = field(default_factory=InMemoryThreadStore)
    clock: Clock = time.monotonic
    wall_clock: Clock = time.time
    sleep: Sleep = asyncio.sleep
    rng: random.Random | None = None
    #: The configured enrichers' names -> their types (`enrichment:`), so that a notifier
    #: renders `incident.enrichment[name]` by what made it; a name not listed is its own type.
    enricher_kinds: Mapping[str, str] = field(default_factory=dict)

    def deliverer(self, spec: NotifierSpec[Any], secrets: Iterable[Secret]) -> Deliverer:
        """The delivery loop of one notifier, with this context's clocks and metrics."""
        return Deliverer(
            spec.name,
            spec.policy,
            self.metrics,
            clock=self.clock,
            wall_clock=self.wall_clock,
            sleep=self.sleep,
            rng=self.rng,
            secrets=secrets,
        )


class Notifier(Protocol):
    """A configured destination. `send` never raises for delivery problems: it returns them."""

    name: str
    route: Route

    @property
    def needs_thread_store(self) -> bool:
        """Whether it keeps state in `NotifierContext.thread_store`: the worker then backs the
        store with a topic and runs it with the notify stage (else no store is started)."""
        ...

    async def send(self, incident: Incident) -> DeliveryResult: ...

    async def close(self) -> None: ...


class NotifierType(Protocol[OptionsT]):
    """A notifier class as the registry sees it (the class object itself conforms): it parses
    its own section into its options and is created from a spec holding them."""

    @property
    def default_policy(self) -> DeliveryPolicy: ...

    def parse_options(self, fields: Fields) -> OptionsT: ...

    def create(self, spec: NotifierSpec[OptionsT], context: NotifierContext) -> Notifier: ...
