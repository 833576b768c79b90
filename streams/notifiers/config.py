"""The `notifiers:` section of the worker config: a list of typed notifier specs.

```yaml
notifiers:
  - name: slack-security
    type: slack
    route: {min_severity: Warning, namespaces: ["prod-*"]}
    delivery: {max_attempts: 8, max_age: 15m}
    slack: {token: "${env:SLACK_BOT_TOKEN}", channel: "#security"}
```

Each type reads only its own section (`slack:`, `webhook:`); secrets are resolved at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from streams._config_fields import Fields, named_items
from streams.notifiers._delivery import DeliveryPolicy
from streams.notifiers.base import NotifierSpec, NotifierType
from streams.notifiers.routing import parse_route

__all__ = ["parse_delivery_policy", "parse_notifier_specs"]


def parse_delivery_policy(fields: Fields, default: DeliveryPolicy) -> DeliveryPolicy:
    rate = fields.number("rate", default.rate)
    policy = replace(
        default,
        timeout=fields.seconds("timeout", default.timeout),
        max_attempts=fields.integer("max_attempts", default.max_attempts),
        max_age=fields.seconds("max_age", default.max_age),
        backoff_base=fields.seconds("backoff_base", default.backoff_base),
        backoff_max=fields.seconds("backoff_max", default.backoff_max),
        concurrency=fields.integer("concurrency", default.concurrency),
        rate=rate,
        burst=fields.integer("burst", default.burst),
    )
    fields.finish()
    return policy


def parse_notifier_specs(
    section: object,
    types: Mapping[str, NotifierType[Any]],
    *,
    env: Mapping[str, str] | None = None,
    path: str = "notifiers",
) -> list[NotifierSpec[Any]]:
    """Parse the list under `notifiers:`; the first problem raises ConfigError naming its key."""
    specs: list[NotifierSpec[Any]] = []
    for item in named_items(section, path, types, what="notifier", env=env):
        fields = item.fields
        route = parse_route(fields.section("route"))
        policy = parse_delivery_policy(fields.section("delivery"), item.kind.default_policy)
        options = item.kind.parse_options(fields.section(item.type))
        fields.finish()
        specs.append(NotifierSpec(item.name, item.type, route, policy, options))
    return specs
