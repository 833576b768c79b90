"""The `notifiers:` config: parsing, located errors and secrets that never show."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.errors import ConfigError
from streams.notifiers import (
    NOTIFIER_TYPES,
    NotifierContext,
    NotifierMetrics,
    Secret,
    load_notifiers,
)
from streams.notifiers.config import parse_notifier_specs
from streams.notifiers.slack import SlackConfig, SlackNotifier
from streams.notifiers.webhook import WebhookNotifier
from streams.secrets import redact, resolve_secret

ENV = {"SLACK_TOKEN": "xoxb-123-secret", "HOOK_URL": "https://hooks.example.test/abc?key=k3y"}


def specs(section: Any, env: dict[str, str] | None = None) -> list[Any]:
    return parse_notifier_specs(section, NOTIFIER_TYPES, env=ENV if env is None else env)


def test_full_config_parses_into_typed_specs(tmp_path: Path) -> None:
    secret_file = tmp_path / "hmac"
    secret_file.write_text("file-secret\n")
    parsed = specs(
        [
            {
                "name": "slack-sec",
                "type": "slack",
                "route": {"min_severity": "warning", "namespaces": ["prod-*"]},
                "slack": {"token": "${env:SLACK_TOKEN}", "channel": "#sec", "send_updates": False},
            },
            {
                "name": "soar",
                "type": "webhook",
                "delivery": {"timeout": "5s", "max_attempts": 3, "max_age": "2m", "rate": 5},
                "webhook": {
                    "url": "${env:HOOK_URL}",
                    "method": "put",
                    "hmac_secret": f"${{file:{secret_file}}}",
                    "headers": {"Authorization": "${env:SLACK_TOKEN}"},
                },
            },
        ]
    )
    slack, hook = parsed
    assert slack.route.min_severity == "Warning"
    assert slack.policy.rate == 1.0  # Slack's default rate limit
    assert slack.options.token == Secret("xoxb-123-secret")
    assert slack.options.token.source == "env:SLACK_TOKEN"
    assert slack.options.send_updates is False
    assert hook.policy.timeout == 5.0
    assert hook.policy.max_age == 120.0
    assert hook.policy.rate == 5.0
    assert hook.options.method == "PUT"
    assert hook.options.hmac_secret.reveal() == "file-secret"
    assert hook.options.ssl_context is not None
    text = repr(parsed)
    for value in ("xoxb-123-secret", "k3y", "file-secret"):
        assert value not in text


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"name": "x"}, "notifiers: expected a list of notifiers"),
        ([{"type": "slack"}], "notifiers[0].name: required"),
        ([{"name": "a b", "type": "slack"}], "notifiers[0].name: 'a b' is not a valid name"),
        (
            [{"name": "x", "type": "pager"}],
            "notifiers[0].type: unknown type 'pager' "
            "(known: elasticsearch, opensearch, slack, webhook)",
        ),
        ([{"name": "x", "type": "webhook"}], "notifiers[0].webhook.url: required"),
        (
            [
                {"name": "x", "type": "webhook", "webhook": {"url": "u"}},
                {"name": "y", "type": "webhook", "webhook": {"url": "ftp://x"}},
            ],
            "notifiers[0].webhook.url: expected an http(s) URL",
        ),
        (
            [
                {"name": "x", "type": "webhook", "webhook": {"url": "http://h/"}},
                {"name": "x", "type": "webhook", "webhook": {"url": "http://h/"}},
            ],
            "notifiers[1].name: duplicate notifier name 'x'",
        ),
        (
            [{"name": "x", "type": "webhook", "webhook": {"url": "http://h/", "metod": "PUT"}}],
            "notifiers[0].webhook.metod: unknown key",
        ),
        (
            [{"name": "x", "type": "webhook", "webhook": {"url": "http://h/"}, "slack": {}}],
            "notifiers[0].slack: unknown key",
        ),
        (
            [{"name": "x", "type": "webhook", "webhook": {"url": "${env:NOPE}"}}],
            "notifiers[0].webhook.url: secret environment variable NOPE is not set or empty",
        ),
        (
            [{"name": "x", "type": "webhook", "webhook": {"url": "${file:/nonexistent/x}"}}],
            "notifiers[0].webhook.url: cannot read secret file /nonexistent/x",
        ),
        (
            [
                {
                    "name": "x",
                    "type": "webhook",
                    "webhook": {"url": "http://h/", "body_template": "{{ x"},
                }
            ],
            "notifiers[0].webhook.body_template: line 1:",
        ),
        (
            [
                {
                    "name": "x",
                    "type": "webhook",
                    "webhook": {"url": "https://h/", "tls": {"ca_file": "/nonexistent/ca.pem"}},
                }
            ],
            "notifiers[0].webhook.tls.ca_file: cannot load CA bundle",
        ),
        (
            [
                {
                    "name": "x",
                    "type": "webhook",
                    "webhook": {"url": "http://h/", "headers": {"Bad Name": "v"}},
                }
            ],
            "notifiers[0].webhook.headers.Bad Name: invalid header name",
        ),
        (
            [
                {
                    "name": "x",
                    "type": "webhook",
                    "webhook": {"url": "http://h/"},
                    "delivery": {"timeout": "soon"},
                }
            ],
            "notifiers[0].delivery.timeout: invalid duration 'soon'",
        ),
        (
            [
                {
                    "name": "x",
                    "type": "webhook",
                    "webhook": {"url": "http://h/"},
                    "delivery": {"max_attempts": 0},
                }
            ],
            "notifiers[0].delivery.max_attempts: expected an integer >= 1",
        ),
        ([{"name": "s", "type": "slack", "slack": {}}], "notifiers[0].slack: set exactly one of"),
        (
            [{"name": "s", "type": "slack", "slack": {"token": "t"}}],
            "notifiers[0].slack.channel: required with token",
        ),
        (
            [
                {
                    "name": "s",
                    "type": "slack",
                    "slack": {"webhook_url": "http://h/", "send_updates": "no"},
                }
            ],
            "notifiers[0].slack.send_updates: expected true or false",
        ),
    ],
)
def test_config_errors_name_the_key(section: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        specs(section)
    assert str(info.value).startswith(message), str(info.value)


def test_empty_section_means_no_notifiers() -> None:
    assert specs(None) == []
    assert specs([]) == []


def test_secret_repr_str_and_format_are_redacted() -> None:
    secret = resolve_secret("${env:SLACK_TOKEN}", "k", ENV)
    assert secret.reveal() == "xoxb-123-secret"
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert "xoxb" not in shown
    assert repr(secret) == "Secret(*** from env:SLACK_TOKEN)"
    assert redact("url http://x/xoxb-123-secret failed", [secret]) == "url http://x/*** failed"


def test_secret_from_file_drops_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("value\n")
    assert resolve_secret(f"${{file:{path}}}", "k").reveal() == "value"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"k: secret file .* is empty"):
        resolve_secret(f"${{file:{path}}}", "k")


def test_partial_reference_is_a_literal() -> None:
    assert resolve_secret("Bearer ${env:T}", "k", {}).reveal() == "Bearer ${env:T}"


def test_loaded_notifiers_log_and_print_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ctx = NotifierContext(metrics=NotifierMetrics(CollectorRegistry()))
    notifiers = load_notifiers(
        [
            {"name": "s", "type": "slack", "slack": {"webhook_url": "${env:HOOK_URL}"}},
            {"name": "w", "type": "webhook", "webhook": {"url": "${env:HOOK_URL}"}},
        ],
        ctx,
        env=ENV,
    )
    assert isinstance(notifiers[0], SlackNotifier)
    assert isinstance(notifiers[1], WebhookNotifier)
    assert isinstance(notifiers[0].config, SlackConfig)
    shown = repr(notifiers[0].config) + repr(notifiers[1].config) + caplog.text
    assert "k3y" not in shown


def test_metrics_are_shared_per_registry() -> None:
    registry = CollectorRegistry()
    assert NotifierMetrics.shared(registry) is NotifierMetrics.shared(registry)
    assert NotifierMetrics.shared(registry) is not NotifierMetrics.shared(CollectorRegistry())
    # The default context uses the global registry's instance: building it twice is fine.
    assert NotifierContext().metrics is NotifierContext().metrics
