"""Shared delivery: retry classification, Retry-After, backoff, give-up, rate and concurrency.

Timing is checked with an injected clock and sleep; the HTTP traffic is real (local servers).
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.notifiers import (
    Delivered,
    DeliveryFailure,
    DeliveryPolicy,
    NotifierContext,
    NotifierMetrics,
    load_notifiers,
)
from streams.notifiers._delivery import (
    Deliverer,
    TokenBucket,
    error_for_status,
    parse_retry_after,
)

from .servers import FakeTime, LocalServer, WebhookReceiver, closed_port_url, make_incident


def fake_context(fake: FakeTime) -> NotifierContext:
    return NotifierContext(
        metrics=NotifierMetrics(CollectorRegistry()),
        clock=fake.clock,
        wall_clock=fake.wall,
        sleep=fake.sleep,
        rng=random.Random(7),
    )


def real_context() -> NotifierContext:
    return NotifierContext(metrics=NotifierMetrics(CollectorRegistry()))


def hook(name: str, url: str, **delivery: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "delivery": delivery, "webhook": {"url": url}}


async def send_all(
    receiver: WebhookReceiver,
    ctx: NotifierContext,
    incidents: list[dict[str, Any]],
    **delivery: Any,
) -> list[Any]:
    async with LocalServer(receiver.app()) as server:
        [notifier] = load_notifiers([hook("hook", f"{server.url}/in", **delivery)], ctx)
        results = await asyncio.gather(*(notifier.send(i) for i in incidents))
        await notifier.close()
    return list(results)


def test_parse_retry_after_accepts_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now) == 42.0
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now) == 0.0
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (410, False),
        (301, False),
        (408, True),
        (425, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
    ],
)
def test_only_transient_statuses_are_retryable(status: int, retryable: bool) -> None:
    error = error_for_status(status, {"Retry-After": "5"}, 0.0, "body")
    assert error.retryable is retryable
    assert error.retry_after == (5.0 if status in {429, 503} else None)
    assert str(error) == f"HTTP {status}: body"


def test_backoff_is_full_jitter_below_the_capped_exponential() -> None:
    policy = DeliveryPolicy(backoff_base=0.5, backoff_max=4.0)
    deliverer = Deliverer("d", policy, NotifierMetrics(CollectorRegistry()), rng=random.Random(1))
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        samples = [deliverer.backoff(attempt) for _ in range(300)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > 0.8 * cap
        assert min(samples) < 0.2 * cap


def test_retry_waits_follow_retry_after_date_seconds_then_backoff() -> None:
    fake = FakeTime()
    date = email.utils.formatdate(fake.wall() + 30, usegmt=True)
    receiver = WebhookReceiver(faults=[f"503|{date}", "429|7", "500"])

    [result] = asyncio.run(
        send_all(receiver, fake_context(fake), [make_incident(1)], backoff_base=1, backoff_max=4)
    )
    assert isinstance(result, Delivered)
    assert result.attempts == 4
    assert fake.sleeps[0] == 30.0  # the HTTP-date, 30 s after "now"
    assert fake.sleeps[1] == 7.0  # delta-seconds
    assert 0.0 <= fake.sleeps[2] <= 4.0  # a plain 500: jittered backoff, cap 1 * 2**2
    assert len(fake.sleeps) == 3


def test_client_errors_are_not_retried_but_408_425_429_are() -> None:
    fake = FakeTime()
    rejected = WebhookReceiver(faults=["400"])
    transient = WebhookReceiver(faults=["408", "425", "429"], retry_after="2")
    [failure] = asyncio.run(send_all(rejected, fake_context(fake), [make_incident(1)]))
    [success] = asyncio.run(send_all(transient, fake_context(fake), [make_incident(1)]))
    assert isinstance(failure, DeliveryFailure)
    assert (failure.attempts, failure.permanent, failure.last_error) == (
        1,
        True,
        "HTTP 400: fault 400",
    )
    assert isinstance(success, Delivered)
    assert success.attempts == 4


def test_gives_up_at_max_age() -> None:
    fake = FakeTime()
    ctx = fake_context(fake)
    receiver = WebhookReceiver(faults=["500"] * 100)
    [result] = asyncio.run(
        send_all(
            receiver,
            ctx,
            [make_incident(1)],
            max_attempts=100,
            max_age="10s",
            backoff_base="4s",
            backoff_max="4s",
        )
    )
    assert isinstance(result, DeliveryFailure)
    assert "max age" in result.reason
    assert not result.permanent
    assert sum(fake.sleeps) <= 10.0
    assert result.elapsed <= 10.0
    assert ctx.metrics.value("failed", "hook") == 1


def test_retry_after_beyond_max_age_gives_up_at_once() -> None:
    fake = FakeTime()
    receiver = WebhookReceiver(faults=["429"], retry_after="3600")
    [result] = asyncio.run(send_all(receiver, fake_context(fake), [make_incident(1)], max_age="5m"))
    assert isinstance(result, DeliveryFailure)
    assert result.attempts == 1
    assert "would pass max age" in result.reason
    assert fake.sleeps == []


def test_receiver_down_for_good_gives_up_after_max_attempts() -> None:
    fake = FakeTime()
    ctx = fake_context(fake)

    async def main() -> Any:
        [notifier] = load_notifiers([hook("down-hook", closed_port_url(), max_attempts=3)], ctx)
        result = await notifier.send(make_incident(1))
        await notifier.close()
        return result

    result = asyncio.run(main())
    assert isinstance(result, DeliveryFailure)
    assert result.notifier == "down-hook"
    assert result.incident_id == make_incident(1)["id"]
    assert result.attempts == 3
    assert result.reason == "max attempts (3) reached"
    assert "ClientConnectorError" in result.last_error
    assert not result.permanent
    assert len(fake.sleeps) == 2
    assert ctx.metrics.value("retried", "down-hook") == 2
    assert ctx.metrics.value("failed", "down-hook") == 1
    assert ctx.metrics.value("sent", "down-hook") == 0


def test_slow_receiver_times_out_per_attempt() -> None:
    receiver = WebhookReceiver(faults=["slow", "slow"], slow_seconds=0.5)
    [result] = asyncio.run(
        send_all(
            receiver,
            real_context(),
            [make_incident(1)],
            timeout="100ms",
            max_attempts=2,
            backoff_base="10ms",
        )
    )
    assert isinstance(result, DeliveryFailure)
    assert result.last_error == "timed out after 0.1s"


def test_concurrency_is_bounded() -> None:
    receiver = WebhookReceiver()
    incidents = [make_incident(i) for i in range(8)]
    results = asyncio.run(send_all(receiver, real_context(), incidents, concurrency=2))
    assert all(isinstance(r, Delivered) for r in results)
    assert receiver.max_in_flight == 2


def test_rate_limit_spaces_requests() -> None:
    receiver = WebhookReceiver()
    incidents = [make_incident(i) for i in range(5)]
    results = asyncio.run(send_all(receiver, real_context(), incidents, rate=20, concurrency=5))
    assert all(isinstance(r, Delivered) for r in results)
    arrivals = sorted(d.at for d in receiver.requests)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.04  # 20/s = 0.05 s apart, minus loopback jitter


def test_token_bucket_with_injected_clock() -> None:
    fake = FakeTime()

    async def main(rate: float, burst: int, n: int) -> list[float]:
        fake.sleeps.clear()
        bucket = TokenBucket(rate, burst, fake.clock, fake.sleep)
        for _ in range(n):
            await bucket.acquire()
        return list(fake.sleeps)

    assert asyncio.run(main(2.0, 1, 5)) == pytest.approx([0.5] * 4)
    assert asyncio.run(main(2.0, 3, 5)) == pytest.approx([0.5] * 2)
    assert asyncio.run(main(10.0, 1, 1)) == []

    async def paused() -> list[float]:
        fake.sleeps.clear()
        bucket = TokenBucket(None, 1, fake.clock, fake.sleep)
        bucket.pause_until(fake.now + 3)
        await bucket.acquire()
        await bucket.acquire()
        return list(fake.sleeps)

    assert asyncio.run(paused()) == [3.0]


def test_dead_lettered_is_counted_by_the_caller() -> None:
    metrics = NotifierMetrics(CollectorRegistry())
    metrics.record_dead_lettered("hook")
    assert metrics.value("dead_lettered", "hook") == 1
