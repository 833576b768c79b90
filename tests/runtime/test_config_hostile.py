"""Hostile and careless configuration (issue 10): secrets never shown, typos reported as
themselves, values cut short, YAML 1.1 surprises and duplicates located, in bounded time."""

from __future__ import annotations

import dataclasses
import logging
import textwrap
import time
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.runtime.config import load_config

SECRETS = {
    "SLACK_HOOK": "https://hooks.slack.com/services/T0/B0/sl4ck-s3cret",
    "SLACK_TOKEN": "xoxb-t0ken-s3cret",
    "HOOK_URL": "https://soar.example/hook?key=h00k-s3cret",
    "HOOK_AUTH": "Bearer h34der-s3cret",
    "HOOK_HMAC": "hm4c-s3cret",
    "HARBOR_USER": "robot$us3r-s3cret",
    "HARBOR_PASSWORD": "h4rbor-s3cret",
    "POSTURE_TOKEN": "p0sture-s3cret",
    "KAFKA_PASSWORD": "k4fka-s3cret",
}

FULL = """\
kafka:
  security_protocol: SASL_PLAINTEXT
  sasl_username: fc
  sasl_password: "${env:KAFKA_PASSWORD}"
notifiers:
  - name: slack-hook
    type: slack
    slack: {webhook_url: "${env:SLACK_HOOK}"}
  - name: slack-bot
    type: slack
    slack: {token: "${env:SLACK_TOKEN}", channel: "#sec"}
  - name: soar
    type: webhook
    webhook:
      url: "${env:HOOK_URL}"
      hmac_secret: "${env:HOOK_HMAC}"
      headers: {Authorization: "${env:HOOK_AUTH}", X-Literal: lit3ral-s3cret}
delivery: {max_in_flight: 8}
enrichment:
  deadline: 2s
  enrichers:
    - type: harbor
      harbor:
        url: https://harbor.example.com
        username: "${env:HARBOR_USER}"
        password: "${env:HARBOR_PASSWORD}"
    - type: posture
      posture: {kube_hunter: [/tmp/none.json], token: "${env:POSTURE_TOKEN}"}
    - type: risk
"""


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "worker.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def _error(path: str, environ: dict[str, str] | None = None, *, seconds: float = 2.0) -> str:
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    assert time.monotonic() - started < seconds
    return str(info.value)


def test_no_rendering_of_the_whole_configuration_shows_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(_write(tmp_path, FULL), SECRETS)
    logging.getLogger("test").warning("config %r / %s", config, config)
    shown = [repr(config), str(config), f"{config}", caplog.text]
    shown += [repr(getattr(config, f.name)) for f in dataclasses.fields(config)]
    for value in [*SECRETS.values(), "lit3ral-s3cret"]:
        assert all(value not in text for text in shown), value
    [hook, bot, soar] = config.notifiers
    assert hook.options.webhook_url.reveal() == SECRETS["SLACK_HOOK"]
    assert bot.options.token.reveal() == SECRETS["SLACK_TOKEN"]
    assert dict(soar.options.headers)["X-Literal"].reveal() == "lit3ral-s3cret"
    assert config.enrichment is not None
    harbor, posture, _risk = config.enrichment.enrichers
    assert harbor.options.password.reveal() == SECRETS["HARBOR_PASSWORD"]
    assert posture.options.token.reveal() == SECRETS["POSTURE_TOKEN"]


def test_a_misspelled_harbor_password_is_an_unknown_key_with_a_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL.replace("        password:", "        passwrd:"))
    message = _error(path, SECRETS)
    assert "enrichment.enrichers[0].harbor.passwrd: unknown key (did you mean password?" in message
    assert "go together" not in message
    assert message.startswith(f"{path}:26:18: ")


def test_a_misspelled_required_key_is_reported_as_itself(tmp_path: Path) -> None:
    text = "notifiers:\n  - name: soar\n    type: webhook\n    webhook: {ulr: 'https://x/'}\n"
    message = _error(_write(tmp_path, text))
    assert message == (
        f"{tmp_path}/worker.yaml:4:20: notifiers[0].webhook.ulr: unknown key (did you mean url?)"
    )


def test_a_misspelled_sasl_password_is_an_unknown_key_with_a_suggestion(tmp_path: Path) -> None:
    text = "kafka:\n  security_protocol: SASL_SSL\n  sasl_username: u\n  passwrd: x\n"
    message = _error(_write(tmp_path, text))
    assert "4:3: unknown key kafka.passwrd (did you mean kafka.sasl_password?)" in message


ALIAS_BOMB = """\
x: &a0 [z, z, z, z, z, z, z, z, z]
"""
for _level in range(1, 12):
    _refs = ", ".join([f"*a{_level - 1}"] * 8)
    ALIAS_BOMB += f"x{_level}: &a{_level} [{_refs}]\n"


@pytest.mark.parametrize(
    "use",
    [
        "app:\n  lateness: *a11\n",
        "topics:\n  partitions: *a11\n",
        "notifiers:\n  - name: *a11\n    type: slack\n",
        "notifiers: *a11\n",
        "delivery:\n  max_in_flight: *a11\n",
        "enrichment:\n  - type: *a11\n",
    ],
)
def test_a_wrong_type_that_is_an_alias_bomb_fails_fast_with_a_short_message(
    tmp_path: Path, use: str
) -> None:
    # 8**11 (8.6 billion) leaves: constructing or printing it would take hours and terabytes.
    text = "bomb:\n" + textwrap.indent(ALIAS_BOMB, "  ") + use
    message = _error(_write(tmp_path, text))
    assert len(message) < 600, message


def test_a_non_utf8_secret_file_never_shows_a_byte_of_it(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xffs3cr\xe9t\xfe")
    text = (
        "kafka:\n  security_protocol: SASL_SSL\n  sasl_username: u\n"
        f"  sasl_password: '${{file:{secret}}}'\n"
    )
    message = _error(_write(tmp_path, text))
    assert message.endswith(f"kafka.sasl_password: secret file {secret} is not UTF-8 text")
    for fragment in ("\\xff", "0xff", "s3cr", "\\xe9", "position"):
        assert fragment not in message


def test_an_endless_secret_file_is_refused(tmp_path: Path) -> None:
    text = (
        "notifiers:\n  - {name: n, type: slack, slack: {token: '${file:/dev/zero}', channel: c}}\n"
    )
    message = _error(_write(tmp_path, text))
    assert "notifiers[0].slack.token: secret file /dev/zero is larger than 65536 bytes" in message


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("topics:\n  partitions: 1:30\n", "2:15", "'1:30' is a base-60 number (90) in YAML 1.1"),
        ("kafka:\n  ssl_check_hostname: no\n", "2:23", "'no' is a YAML 1.1 boolean (false)"),
        ("app:\n  web_port: 0777\n", "2:13", "'0777' is an octal number (511) in YAML 1.1"),
        ("notifiers:\n  - name: n\n    type: slack\n    slack: {channel: 2024-01-01}\n",
         "4:22", "'2024-01-01' is a YAML 1.1 date/time"),
        ("delivery:\n  max_in_flight: 4\n  max_in_flight: 5\n", "3:3",
         "duplicate key 'max_in_flight' (first at line 2)"),
        ("notifiers:\n  - {name: a, name: b}\n", "2:15", "duplicate key 'name' (first at line 2)"),
        ("app: " + "[" * 100 + "]" * 100 + "\n", "1:69", "nesting deeper than 64 levels"),
    ],
)  # fmt: skip
def test_yaml_problems_anywhere_in_the_file_are_located(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = _write(tmp_path, text)
    assert _error(path).startswith(f"{path}:{where}: {problem}")


def test_keys_holding_colons_or_collections_are_located(tmp_path: Path) -> None:
    # Found by fuzzing: a key with ": " in it hid its location, a mapping as a key raised.
    path = _write(tmp_path, "delivery:\n  '1:30 kafka: x': 1\napp: {? {a: 1} : 2}\n")
    assert _error(path).splitlines() == [
        f"{path}:3:9: a mapping key must be a plain value, not a list or a mapping"
    ]
    path = _write(tmp_path, "delivery:\n  '1:30 kafka: x': 1\n")
    assert _error(path).startswith(f"{path}:2:20: delivery.1:30 kafka: x: unknown key")


def test_errors_of_every_section_are_reported_at_once_each_located(tmp_path: Path) -> None:
    text = """\
    app:
      lateness: 10x
    notifiers:
      - name: soar
        type: webhook
        webhook: {url: 'ftp://x/'}
    delivery:
      max_in_flight: 0
    enrichment:
      - type: harbor
        harbor: {url: https://h.example, username: u}
    """
    path = _write(tmp_path, text)
    assert _error(path).splitlines() == [
        f"{path}:2:13: app.lateness: invalid duration '10x': expected an integer and a unit "
        "ms|s|m|h|d",
        f"{path}:6:20: notifiers[0].webhook.url: expected an http(s) URL",
        f"{path}:8:18: delivery.max_in_flight: expected an integer >= 1, got 0",
        f"{path}:11:13: enrichment[0].harbor.password: username and password go together",
    ]


def test_a_huge_value_of_the_wrong_type_is_quoted_by_a_short_prefix(tmp_path: Path) -> None:
    text = f"delivery:\n  max_in_flight: '{'9' * 1_000_000}'\n"
    message = _error(_write(tmp_path, text))
    assert len(message) < 300
    assert "999..." in message


def test_control_characters_in_keys_cannot_forge_error_lines(tmp_path: Path) -> None:
    # Found by fuzzing: a form feed in a key split the message into two "lines".
    path = _write(tmp_path, 'kafka:\n  "\\f\\nFAKE: ok": 1\n')
    assert _error(path).splitlines() == [f"{path}:2:3: unknown key kafka.\\x0c\\nFAKE: ok"]


def test_a_line_break_in_a_key_of_a_typed_section_keeps_its_location(tmp_path: Path) -> None:
    # Found by the long fuzz run (bench/fuzz_inputs.py).
    path = _write(tmp_path, 'delivery:\n  "\\n": 1\n')
    assert _error(path) == (
        f"{path}:2:9: delivery.\\n: unknown key (known: commit_interval, max_in_flight, "
        "shutdown_grace, thread_retention)"
    )
