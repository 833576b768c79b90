"""Shared delivery: timeouts, retries with full-jitter backoff, Retry-After, concurrency, rate.

The clock, the sleep function and the random source are injected so retry timing can be tested
exactly; the HTTP traffic itself is always real.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from streams.errors import NotifyError
from streams.notifiers.metrics import NotifierMetrics
from streams.secrets import Secret, redact

__all__ = [
    "Clock",
    "Delivered",
    "Deliverer",
    "DeliveryFailure",
    "DeliveryPolicy",
    "DeliveryResult",
    "Skipped",
    "Sleep",
    "TokenBucket",
    "error_for_status",
    "idempotency_key",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# 408 Request Timeout, 425 Too Early and 429 are the 4xx a later identical request can fix.
_RETRYABLE_4XX = frozenset({408, 425, 429})
_RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How hard one notifier tries. Times are seconds; `rate` None means no rate limit."""

    timeout: float = 10.0
    max_attempts: int = 8
    max_age: float = 900.0
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    concurrency: int = 4
    rate: float | None = None
    burst: int = 1


@dataclass(frozen=True, slots=True)
class Delivered:
    notifier: str
    incident_id: str
    attempts: int
    elapsed: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """Delivery given up; the caller dead-letters the incident with this record.

    `permanent` is True when the receiver rejected the request (e.g. 400, 404): retrying the
    same request later will not help without a config or receiver change.
    """

    notifier: str
    incident_id: str
    attempts: int
    last_error: str
    reason: str
    permanent: bool
    elapsed: float


@dataclass(frozen=True, slots=True)
class Skipped:
    """Not sent on purpose (filtered by the notifier's own options, or already delivered)."""

    notifier: str
    incident_id: str
    reason: str


DeliveryResult = Delivered | DeliveryFailure | Skipped


def idempotency_key(incident: Mapping[str, Any]) -> str:
    """`<id>:<status>:<count>`: identical for every redelivery of one record, unique across."""
    return f"{incident.get('id', '')}:{incident.get('status', 'new')}:{incident.get('count', 1)}"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None.

    `now` is the current Unix time, needed to turn an HTTP-date into a delay.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def error_for_status(
    status: int, headers: Mapping[str, str], now: float, detail: str = ""
) -> NotifyError:
    """The NotifyError for a non-2xx answer: what is retryable and how long to wait."""
    suffix = f": {detail[:200]}" if detail else ""
    message = f"HTTP {status}{suffix}"
    if status in _RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        return NotifyError(message, retryable=True, retry_after=retry_after)
    if status >= 500 or status in _RETRYABLE_4XX:
        return NotifyError(message, retryable=True)
    return NotifyError(message, retryable=False)


class TokenBucket:
    """At most `rate` requests per second on average, `burst` at once; pausable after a 429."""

    def __init__(self, rate: float | None, burst: int, clock: Clock, sleep: Sleep) -> None:
        self._rate = rate
        self._burst = float(max(1, burst))
        self._tokens = self._burst
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause_until(self, when: float) -> None:
        """Hold every request of this notifier until `when` (the receiver asked us to wait)."""
        self._paused_until = max(self._paused_until, when)

    async def acquire(self) -> None:
        # The lock makes waiters queue in order instead of all waking at once.
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                if self._rate is None:
                    return
                self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await self._sleep((1.0 - self._tokens) / self._rate)


def _as_notify_error(exc: BaseException, timeout: float) -> NotifyError | None:
    if isinstance(exc, NotifyError):
        return exc
    if isinstance(exc, TimeoutError):
        return NotifyError(f"timed out after {timeout:g}s", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        # A certificate that does not verify will not verify on the next try either.
        return NotifyError(f"TLS verification failed: {exc}", retryable=False)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return NotifyError(f"{type(exc).__name__}: {exc}", retryable=True)
    return None


class Deliverer:
    """Runs one notifier's attempts under its policy; shared by every notifier type."""

    def __init__(
        self,
        name: str,
        policy: DeliveryPolicy,
        metrics: NotifierMetrics,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        secrets: Iterable[Secret] = (),
    ) -> None:
        self.name = name
        self.policy = policy
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto
        self._secrets = tuple(secrets)
        self._semaphore = asyncio.Semaphore(policy.concurrency)
        self.bucket = TokenBucket(policy.rate, policy.burst, clock, sleep)

    def skip(self, incident_id: str, reason: str) -> Skipped:
        """A deliberate non-delivery, counted (and logged at debug: filters skip a lot)."""
        self.metrics.skipped.labels(notifier=self.name).inc()
        log.debug("notifier %s: skipped incident %s: %s", self.name, incident_id, reason)
        return Skipped(self.name, incident_id, reason)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempt-1))]."""
        cap = min(self.policy.backoff_max, self.policy.backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0.0, cap)

    async def run(
        self, incident_id: str, attempt: Callable[[int], Awaitable[str]]
    ) -> Delivered | DeliveryFailure:
        """Call `attempt(n)` until it returns (a short detail) or the policy gives up."""
        policy = self.policy
        start = self.clock()
        attempts = 0
        while True:
            attempts += 1
            try:
                async with self._semaphore:
                    await self.bucket.acquire()
                    async with asyncio.timeout(policy.timeout):
                        detail = await attempt(attempts)
            except Exception as exc:
                error = _as_notify_error(exc, policy.timeout)
                if error is None:
                    raise
            else:
                elapsed = self.clock() - start
                self.metrics.sent.labels(notifier=self.name).inc()
                self.metrics.latency.labels(notifier=self.name, outcome="delivered").observe(
                    elapsed
                )
                return Delivered(self.name, incident_id, attempts, elapsed, detail)

            message = redact(str(error), self._secrets)
            if error.retry_after is not None:
                self.bucket.pause_until(self.clock() + error.retry_after)
            give_up = self._give_up_reason(error, attempts, start)
            if give_up is not None:
                return self._failure(
                    incident_id,
                    attempts=attempts,
                    message=message,
                    reason=give_up,
                    error=error,
                    start=start,
                )
            delay = max(error.retry_after or 0.0, self.backoff(attempts))
            if self.clock() + delay - start > policy.max_age:
                reason = f"next retry in {delay:.1f}s would pass max age {policy.max_age:g}s"
                return self._failure(
                    incident_id,
                    attempts=attempts,
                    message=message,
                    reason=reason,
                    error=error,
                    start=start,
                )
            self.metrics.retried.labels(notifier=self.name).inc()
            log.warning(
                "notifier %s: attempt %d for incident %s failed (%s); retrying in %.2fs",
                self.name,
                attempts,
                incident_id,
                message,
                delay,
            )
            await self._sleep(delay)

    def _give_up_reason(self, error: NotifyError, attempts: int, start: float) -> str | None:
        if not error.retryable:
            return "permanent error"
        if attempts >= self.policy.max_attempts:
            return f"max attempts ({self.policy.max_attempts}) reached"
        if self.clock() - start >= self.policy.max_age:
            return f"max age ({self.policy.max_age:g}s) reached"
        return None

    def _failure(
        self,
        incident_id: str,
        *,
        attempts: int,
        message: str,
        reason: str,
        error: NotifyError,
        start: float,
    ) -> DeliveryFailure:
        elapsed = self.clock() - start
        self.metrics.failed.labels(notifier=self.name).inc()
        self.metrics.latency.labels(notifier=self.name, outcome="failed").observe(elapsed)
        log.error(
            "notifier %s: giving up incident %s after %d attempt(s): %s (%s)",
            self.name,
            incident_id,
            attempts,
            message,
            reason,
        )
        return DeliveryFailure(
            notifier=self.name,
            incident_id=incident_id,
            attempts=attempts,
            last_error=message,
            reason=reason,
            permanent=not error.retryable,
            elapsed=elapsed,
        )
