"""Report sources (files or http(s) URLs) and values that refresh in the background.

A `Refreshing` value is loaded on first use (callers wait for it); once older than its
interval, the next use starts a reload in the background and keeps answering with the old
value, so an incident never waits for a periodic refresh. A failed reload keeps the old value
and is counted; only a value that never loaded makes the enricher report an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, TypeVar

import aiohttp

from streams.enrich.pipeline import EnrichmentError

__all__ = ["Refreshing", "SourceReader", "is_url"]

log = logging.getLogger("streams.enrich")

T = TypeVar("T")


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class SourceReader:
    """Reads files (in a worker thread) and http(s) URLs (one shared aiohttp session)."""

    def __init__(self, timeout: float, headers: dict[str, str] | None = None) -> None:
        self._timeout = timeout
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None

    async def read(self, location: str) -> bytes:
        if not is_url(location):
            return await asyncio.to_thread(Path(location).read_bytes)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        async with self._session.get(location, headers=self._headers) as response:
            if response.status != 200:
                raise OSError(f"HTTP {response.status} from {location}")
            return await response.read()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Refreshing(Generic[T]):
    """A value from `load()`, reloaded in the background every `interval` seconds of use."""

    def __init__(
        self,
        what: str,
        load: Callable[[], Awaitable[T]],
        interval: float,
        clock: Callable[[], float],
        on_error: Callable[[], None],
    ) -> None:
        self._what = what
        self._load = load
        self._interval = interval
        self._clock = clock
        self._on_error = on_error
        self._value: T | None = None
        self._loaded_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.last_error = ""

    def prime(self, value: T) -> None:
        """Start from a value loaded elsewhere (e.g. validated at config load)."""
        self._value = value
        self._loaded_at = self._clock()

    async def get(self) -> T:
        if self._value is None:
            failed_recently = self._clock() - self._loaded_at < min(self._interval, 30.0)
            if not (self.last_error and failed_recently):
                await asyncio.shield(self._start())
            if self._value is None:
                raise EnrichmentError(f"cannot load {self._what}: {self.last_error}")
        elif self._clock() - self._loaded_at >= self._interval:
            self._start()
        return self._value

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._reload())
        return self._task

    async def _reload(self) -> None:
        try:
            value = await self._load()
        except (OSError, ValueError, EnrichmentError, aiohttp.ClientError, TimeoutError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            self._on_error()
            log.warning("loading %s failed: %s", self._what, self.last_error)
            # try again after the interval rather than on every incident
            self._loaded_at = self._clock()
            return
        self._value = value
        self._loaded_at = self._clock()
        self.last_error = ""
