"""Notifiers: route incidents to Slack, webhooks, ... with retries, rate limits and metrics.

Adding a notifier type: its module (a pure payload builder, a config parser and a class with
`parse_options`, `create`, `send`, `close`), one line in `NOTIFIER_TYPES`, and its tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.notifiers._delivery import (
    Delivered,
    DeliveryFailure,
    DeliveryPolicy,
    DeliveryResult,
    Skipped,
    idempotency_key,
)
from streams.notifiers.base import (
    InMemoryThreadStore,
    Notifier,
    NotifierContext,
    NotifierSpec,
    NotifierType,
    ThreadStore,
)
from streams.notifiers.config import parse_notifier_specs
from streams.notifiers.dispatch import Dispatcher
from streams.notifiers.metrics import NotifierMetrics
from streams.notifiers.opensearch import SearchConfig, SearchIndexNotifier
from streams.notifiers.routing import Route
from streams.notifiers.slack import SlackConfig, SlackNotifier, build_slack_payload
from streams.notifiers.webhook import WebhookConfig, WebhookNotifier, build_webhook_request
from streams.secrets import Secret

__all__ = [
    "NOTIFIER_TYPES",
    "Delivered",
    "DeliveryFailure",
    "DeliveryPolicy",
    "DeliveryResult",
    "Dispatcher",
    "InMemoryThreadStore",
    "Notifier",
    "NotifierContext",
    "NotifierMetrics",
    "NotifierSpec",
    "Route",
    "SearchConfig",
    "SearchIndexNotifier",
    "Secret",
    "Skipped",
    "SlackConfig",
    "ThreadStore",
    "WebhookConfig",
    "build_slack_payload",
    "build_webhook_request",
    "idempotency_key",
    "load_notifiers",
]

NOTIFIER_TYPES: dict[str, NotifierType[Any]] = {  # alphabetical: errors list them in this order
    "elasticsearch": SearchIndexNotifier,
    "opensearch": SearchIndexNotifier,
    "slack": SlackNotifier,
    "webhook": WebhookNotifier,
}


def load_notifiers(
    section: object,
    context: NotifierContext | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> list[Notifier]:
    """Notifiers from the `notifiers:` config list, or from specs already parsed (the worker
    config holds them typed); ConfigError names the offending key.

    Secrets (`${env:NAME}`, `${file:/path}`) are resolved when parsing, from `env` (default
    os.environ).
    """
    ctx = context if context is not None else NotifierContext()
    if isinstance(section, list | tuple) and all(isinstance(s, NotifierSpec) for s in section):
        specs = list(section)
    else:
        specs = parse_notifier_specs(section, NOTIFIER_TYPES, env=env)
    return [NOTIFIER_TYPES[spec.type].create(spec, ctx) for spec in specs]
