"""The `notifiers:` and `enrichment:` sections are read like every other section: through the one
configuration reader, so every error is `PATH:LINE:COL: key.path: problem` and a key given twice
(a second `webhook:` in one notifier) is an error at the second one, never silently the winner."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streams.enrich.offline import read_enrichment_section
from streams.errors import ConfigError
from streams.notifiers.slack import SlackNotifier
from streams.runtime.config import load_config
from streams.runtime.notify_wiring import load_notify_parts


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "worker.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def config_error(path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            """\
            notifiers:
              - name: soar
                type: webhook
                webhook: {url: "https://a.example/hook"}
                webhook: {url: "https://b.example/hook"}
            """,
            "5:5",
            "duplicate key 'webhook' (first at line 4)",
        ),
        (
            """\
            notifiers:
              - name: chat
                type: slack
                slack:
                  webhook_url: "https://hooks.slack.example/a"
                  webhook_url: "https://hooks.slack.example/b"
            """,
            "6:7",
            "duplicate key 'webhook_url' (first at line 5)",
        ),
        (
            """\
            notifiers:
              - name: soar
                type: webhook
                route: {min_severity: Warning, min_severity: Debug}
                webhook: {url: "https://a.example/hook"}
            """,
            "4:36",
            "duplicate key 'min_severity' (first at line 4)",
        ),
        (
            """\
            enrichment:
              - type: risk
                risk: {exposure_max: 10}
                risk: {exposure_max: 50}
            """,
            "4:5",
            "duplicate key 'risk' (first at line 3)",
        ),
        (
            """\
            enrichment:
              deadline: 3s
              enrichers: []
              deadline: 1s
            """,
            "4:3",
            "duplicate key 'deadline' (first at line 2)",
        ),
    ],
)
def test_a_key_given_twice_in_a_typed_section_is_a_located_error(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    path = write(tmp_path, text)
    assert config_error(path) == f"{path}:{where}: {message}"


def test_the_offline_enrichment_reader_rejects_duplicate_keys_too(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        enrichment:
          - type: risk
            name: score
            name: points
        """,
    )
    with pytest.raises(ConfigError) as info:
        read_enrichment_section(path, {})
    assert str(info.value) == f"{path}:4:5: duplicate key 'name' (first at line 3)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """\
            notifiers:
              - name: soar
                type: webhook
                webhook:
                  url: "https://a.example/hook"
                  metod: PUT
            """,
            "6:14: notifiers[0].webhook.metod: unknown key",
        ),
        (
            """\
            notifiers:
              - name: soar
                type: webhook
                route: {min_severity: urgent}
                webhook: {url: "https://a.example/hook"}
            """,
            "4:27: notifiers[0].route.min_severity: unknown priority 'urgent'",
        ),
        (
            """\
            notifiers:
              - name: soar
                type: pager
            """,
            "3:11: notifiers[0].type: unknown type 'pager'",
        ),
        (
            """\
            enrichment:
              enrichers:
                - type: risk
                  risk:
                    exposure_max: -1
            """,
            "5:23: enrichment.enrichers[0].risk.exposure_max: expected a number >= 0.0",
        ),
        (
            """\
            enrichment:
              - type: risk
              - type: risk
            """,
            "3:5: enrichment[1].name: duplicate enricher name 'risk'",
        ),
    ],
)
def test_errors_in_notifiers_and_enrichment_carry_path_line_and_column(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    assert config_error(path).startswith(f"{path}:{expected}")


def test_the_slack_notifier_knows_each_enrichers_type_by_its_configured_name(
    tmp_path: Path,
) -> None:
    """`name: score` of a `type: risk` enricher: the worker hands the name -> type map to the
    notifiers, so Slack still renders the risk line (tests/notifiers/test_slack_enrichment.py)."""
    path = write(
        tmp_path,
        """\
        enrichment:
          - {type: risk, name: score}
          - {type: trivy, name: scans, trivy: {directory: /nonexistent/reports}}
        notifiers:
          - name: chat
            type: slack
            slack: {webhook_url: "https://hooks.slack.example/a"}
        """,
    )
    config = load_config(path, {})
    [notifier] = load_notify_parts(config, registry=CollectorRegistry())[1]
    assert isinstance(notifier, SlackNotifier)
    assert dict(notifier.enricher_kinds) == {"score": "risk", "scans": "trivy"}
