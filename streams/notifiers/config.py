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

import re
from collections.abc import Mapping
from dataclasses import replace

from streams._config_fields import Fields
from streams._text import short
from streams.errors import ConfigError
from streams.notifiers._delivery import DeliveryPolicy
from streams.notifiers.base import NotifierSpec, NotifierType
from streams.notifiers.routing import parse_route

__all__ = ["parse_delivery_policy", "parse_notifier_specs"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


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
    types: Mapping[str, NotifierType],
    *,
    env: Mapping[str, str] | None = None,
    path: str = "notifiers",
) -> list[NotifierSpec]:
    """Parse the list under `notifiers:`; the first problem raises ConfigError naming its key."""
    if section is None:
        return []
    if not isinstance(section, list):
        raise ConfigError(f"{path}: expected a list of notifiers, got {type(section).__name__}")
    specs: list[NotifierSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(section):
        fields = Fields(item, f"{path}[{index}]", env)
        name = fields.string("name")
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{fields.key('name')}: {short(name)} is not a valid name "
                "(letters, digits, '_', '.', '-'; at most 63 characters)"
            )
        if name in seen:
            raise ConfigError(f"{fields.key('name')}: duplicate notifier name {short(name)}")
        seen.add(name)
        type_name = fields.string("type")
        notifier_type = types.get(type_name)
        if notifier_type is None:
            known = ", ".join(sorted(types))
            raise ConfigError(
                f"{fields.key('type')}: unknown type {short(type_name)} (known: {known})"
            )
        route = parse_route(fields.section("route"))
        policy = parse_delivery_policy(fields.section("delivery"), notifier_type.default_policy)
        options = notifier_type.parse_options(fields.section(type_name))
        fields.finish()
        specs.append(NotifierSpec(name, type_name, route, policy, options))
    return specs
