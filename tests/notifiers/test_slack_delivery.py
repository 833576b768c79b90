"""Slack delivery against the fake Slack server: outages, rate limits, threads in bot mode."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from streams.notifiers import (
    Delivered,
    DeliveryFailure,
    InMemoryThreadStore,
    NotifierContext,
    NotifierMetrics,
    Skipped,
    load_notifiers,
)

from .fake_slack import FakeSlack
from .servers import closed_port_url, make_incident


def context() -> NotifierContext:
    return NotifierContext(metrics=NotifierMetrics(CollectorRegistry()))


def slack_entry(slack: dict[str, Any], **delivery: Any) -> dict[str, Any]:
    policy = {"backoff_base": "20ms", "backoff_max": "100ms", "rate": 50, "timeout": "500ms"}
    policy.update(delivery)
    return {"name": "slack", "type": "slack", "delivery": policy, "slack": slack}


def test_every_incident_is_delivered_after_429s_500s_and_a_timeout() -> None:
    ctx = context()
    incidents = [make_incident(i) for i in range(6)]

    async def main() -> tuple[FakeSlack, list[Any]]:
        async with FakeSlack(
            faults=["429", "429", "500", "500", "slow"], retry_after=1, slow_seconds=3.0
        ) as slack:
            # the client's timeout far from both a normal answer (a few ms; seconds on a loaded
            # machine would have counted a 6th retry) and the slow one
            [notifier] = load_notifiers(
                [slack_entry({"webhook_url": "${env:SLACK_URL}"}, max_attempts=10, timeout="2s")],
                ctx,
                env={"SLACK_URL": slack.webhook_url},
            )
            results = await asyncio.gather(*(notifier.send(i) for i in incidents))
            await notifier.close()
        return slack, results

    slack, results = asyncio.run(main())
    assert slack.problems == []
    assert all(isinstance(r, Delivered) for r in results), results
    keys = Counter(r.headers["Idempotency-Key"] for r in slack.accepted)
    assert set(keys) == {f"{i['id']}:new:1" for i in incidents}
    # The slow answer timed out client-side although Slack took it: one duplicate, same key.
    assert sorted(keys.values()) == [1, 1, 1, 1, 1, 2]
    # Retry-After is honoured by every request of the notifier, not only the one that got it.
    for index, request in enumerate(slack.requests[:-1]):
        if request.outcome == "429":
            assert slack.requests[index + 1].at - request.at >= 1.0
    assert ctx.metrics.value("sent", "slack") == 6
    assert ctx.metrics.value("retried", "slack") == 5
    assert ctx.metrics.value("failed", "slack") == 0


def test_bot_mode_posts_updates_as_thread_replies_of_their_incident(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("xoxb-fake-token\n")
    store = InMemoryThreadStore()
    ctx = context()
    ctx.thread_store = store
    a, b = make_incident(1), make_incident(2)

    async def main() -> tuple[FakeSlack, list[Any]]:
        async with FakeSlack(faults=["429", "500"], retry_after=1) as slack:
            options = {
                "token": f"${{file:{token_file}}}",
                "channel": "#sec",
                "base_url": slack.api_url,
            }
            [notifier] = load_notifiers([slack_entry(options)], ctx)
            results = [
                await notifier.send(a),
                await notifier.send(b),
                await notifier.send({**a, "status": "update", "count": 2}),
                await notifier.send({**b, "status": "update", "count": 2}),
                await notifier.send({**a, "status": "update", "count": 3}),
                await notifier.send(a),  # redelivered after a restart
                await notifier.send(make_incident(3, status="update", count=2)),
            ]
            await notifier.close()
        return slack, results

    slack, results = asyncio.run(main())
    assert slack.problems == []
    assert [type(r) for r in results] == [Delivered] * 5 + [Skipped, Delivered]
    assert results[0].attempts == 3
    posted = [r for r in slack.requests if r.outcome == "ok"]
    ts_a, ts_b = posted[0].ts, posted[1].ts
    assert store.get(a["id"]) == ts_a
    assert store.get(b["id"]) == ts_b
    assert [p.payload.get("thread_ts") for p in posted] == [None, None, ts_a, ts_b, ts_a, None]
    assert all(p.payload["channel"] == "#sec" for p in posted)


def test_bot_mode_api_error_is_a_permanent_failure() -> None:
    async def main() -> Any:
        async with FakeSlack(token="xoxb-other") as slack:
            options = {"token": "xoxb-wrong", "channel": "#sec", "base_url": slack.api_url}
            [notifier] = load_notifiers([slack_entry(options)], context())
            result = await notifier.send(make_incident(1))
            await notifier.close()
        return result

    result = asyncio.run(main())
    assert isinstance(result, DeliveryFailure)
    assert result.permanent
    assert result.attempts == 1
    assert "invalid_auth" in result.last_error


def test_slack_options_skip_low_severity_and_updates() -> None:
    ctx = context()

    async def main() -> list[Any]:
        options = {"webhook_url": closed_port_url(), "min_severity": "error", "send_updates": False}
        [notifier] = load_notifiers([slack_entry(options)], ctx)
        results = [
            await notifier.send(make_incident(1, severity="Warning")),
            await notifier.send(make_incident(1, status="update", count=2)),
        ]
        await notifier.close()
        return results

    low, update = asyncio.run(main())
    assert isinstance(low, Skipped)
    assert low.reason == "below min_severity"
    assert isinstance(update, Skipped)
    assert update.reason == "send_updates is off"
    assert ctx.metrics.value("skipped", "slack") == 2


def test_webhook_url_never_appears_in_a_failure() -> None:
    url = closed_port_url("/services/T1/B1/very-secret-path")

    async def main() -> Any:
        [notifier] = load_notifiers([slack_entry({"webhook_url": url}, max_attempts=2)], context())
        result = await notifier.send(make_incident(1))
        await notifier.close()
        return result

    result = asyncio.run(main())
    assert isinstance(result, DeliveryFailure)
    assert result.attempts == 2
    assert "very-secret-path" not in result.last_error
    assert "very-secret-path" not in repr(result)
