"""Send one incident record to every notifier whose route selects it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streams.core.incident_record import Incident
from streams.notifiers._delivery import DeliveryResult
from streams.notifiers.base import Notifier

__all__ = ["Dispatcher"]


class Dispatcher:
    """Routes and sends; the caller dead-letters each `DeliveryFailure` it gets back."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = tuple(notifiers)

    def select(self, incident: Incident) -> list[Notifier]:
        return [n for n in self.notifiers if n.route.matches(incident)]

    async def dispatch(self, incident: Incident) -> list[DeliveryResult]:
        """One result per selected notifier, in configuration order; sent concurrently."""
        selected = self.select(incident)
        return list(await asyncio.gather(*(n.send(incident) for n in selected)))

    async def close(self) -> None:
        for notifier in self.notifiers:
            await notifier.close()
