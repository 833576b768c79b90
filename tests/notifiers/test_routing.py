"""Routes: the pure filter, its config, and a dispatcher feeding several real receivers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams._config_fields import Fields
from streams.errors import ConfigError
from streams.notifiers import (
    Delivered,
    Dispatcher,
    NotifierContext,
    NotifierMetrics,
    Route,
    load_notifiers,
)
from streams.notifiers.routing import parse_route

from .servers import LocalServer, WebhookReceiver, make_incident


def route(**options: Any) -> Route:
    return parse_route(Fields(options, "route"))


@pytest.mark.parametrize(
    ("options", "changes", "expected"),
    [
        ({}, {}, True),
        ({"min_severity": "error"}, {"severity": "Critical"}, True),
        ({"min_severity": "error"}, {"severity": "Error"}, True),
        ({"min_severity": "ERROR"}, {"severity": "warning"}, False),
        ({"min_severity": "notice"}, {"severity": "info"}, False),
        ({"min_severity": "critical"}, {"severity": "Emergency"}, True),
        ({"min_severity": "critical"}, {"severity": "made-up"}, True),
        ({"correlations": ["Shell*"]}, {}, True),
        ({"correlations": ["shell*"]}, {}, False),
        ({"correlations": ["Crypto*", "*outbound*"]}, {}, True),
        ({"tags": ["mitre_execution", "x"]}, {}, True),
        ({"tags": ["x"]}, {}, False),
        ({"tags": ["x"]}, {"tags": None}, False),
        ({"namespaces": ["prod-*"]}, {"namespace": "prod-eu"}, True),
        ({"namespaces": ["prod-*"]}, {"namespace": "default"}, False),
        ({"namespaces": ["*"]}, {"context": {}}, False),
        ({"statuses": ["new"]}, {"status": "update"}, False),
        ({"statuses": "update"}, {"status": "update"}, True),
        (
            {
                "min_severity": "warning",
                "namespaces": ["default"],
                "tags": ["shell", "mitre_execution"],
            },
            {},
            True,
        ),
    ],
)
def test_route_matches(options: dict[str, Any], changes: dict[str, Any], expected: bool) -> None:
    assert route(**options).matches(make_incident(1, **changes)) is expected


@pytest.mark.parametrize(
    ("options", "changes", "refusal"),
    [
        ({}, {}, None),
        ({"min_severity": "emergency", "statuses": ["new"]}, {"status": "update"}, "min_severity"),
        ({"statuses": ["new"]}, {"status": "update"}, "statuses"),
        ({"correlations": ["nope*"]}, {}, "correlations"),
        ({"tags": ["x"]}, {}, "tags"),
        ({"namespaces": ["prod-*"]}, {"namespace": "default"}, "namespaces"),
        ({"fields": {"enrichment.ownership.team": ["Pay*"]}}, {}, "fields"),
    ],
)
def test_a_refusal_names_the_first_condition_that_fails(
    options: dict[str, Any], changes: dict[str, Any], refusal: str | None
) -> None:
    """Slack's own min_severity/send_updates are a Route too: its skip reason comes from here."""
    incident = make_incident(1, **changes)
    assert route(**options).refusal(incident) == refusal
    assert route(**options).matches(incident) is (refusal is None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_severity": "urgent"}, "route.min_severity: unknown priority 'urgent'"),
        ({"statuses": ["closed"]}, "route.statuses[0]: expected new or update"),
        ({"tags": [1]}, "route.tags[0]: expected a non-empty string"),
        ({"namespace": ["x"]}, "route.namespace: unknown key"),
    ],
)
def test_route_config_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        route(**options)
    assert str(info.value).startswith(message)


def test_each_notifier_receives_exactly_the_incidents_its_route_selects() -> None:
    receiver = WebhookReceiver()
    incidents = {
        "crit-prod": make_incident(1, severity="Critical", namespace="prod-eu"),
        "warn-prod": make_incident(2, severity="Warning", namespace="prod-us"),
        "crit-dev": make_incident(3, severity="Critical", namespace="dev", tags=["crypto"]),
        "update": make_incident(1, status="update", count=2, namespace="prod-eu"),
        "other": make_incident(4, severity="Notice", correlation="Crypto miner", tags=[]),
    }
    routes = {
        "critical": {"min_severity": "critical", "statuses": ["new"]},
        "prod": {"namespaces": ["prod-*"]},
        "crypto": {"tags": ["crypto"]},
        "crypto-name": {"correlations": ["Crypto*"]},
        "updates": {"statuses": ["update"]},
    }
    expected = {
        "critical": {"crit-prod", "crit-dev"},
        "prod": {"crit-prod", "warn-prod", "update"},
        "crypto": {"crit-dev"},
        "crypto-name": {"other"},
        "updates": {"update"},
    }

    async def main() -> list[list[Any]]:
        async with LocalServer(receiver.app()) as server:
            config = [
                {
                    "name": name,
                    "type": "webhook",
                    "route": r,
                    "webhook": {"url": f"{server.url}/{name}"},
                }
                for name, r in routes.items()
            ]
            ctx = NotifierContext(metrics=NotifierMetrics(CollectorRegistry()))
            dispatcher = Dispatcher(load_notifiers(config, ctx))
            results = [await dispatcher.dispatch(i) for i in incidents.values()]
            await dispatcher.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, Delivered) for rs in results for r in rs)
    by_key = {f"{i['id']}:{i['status']}:{i['count']}": label for label, i in incidents.items()}
    got: dict[str, set[str]] = {name: set() for name in routes}
    for delivery in receiver.accepted:
        got[delivery.path.lstrip("/")].add(by_key[delivery.key])
    assert got == expected
    assert len(receiver.accepted) == sum(len(v) for v in expected.values())
