"""Worker configuration: defaults, file, environment, validation and secrets."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from streams.core.durations import parse_duration
from streams.errors import ConfigError
from streams.runtime.config import (
    SETTINGS,
    AppConfig,
    KafkaConfig,
    LogFormat,
    LogLevel,
    SaslMechanism,
    Secret,
    SecurityProtocol,
    Setting,
    StoreKind,
    TopicsConfig,
    WorkerConfig,
    load_config,
)
from streams.secrets import read_secret

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SECRET = "s3cr3t-hunter2"


def write(tmp_path: Path, text: str, name: str = "worker.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def config_error(path: str | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------------


def test_no_file_and_no_environment_gives_the_documented_defaults() -> None:
    config = load_config(None, {})

    assert config == WorkerConfig()
    assert config.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert config.kafka.security_protocol is SecurityProtocol.PLAINTEXT
    assert config.topics == TopicsConfig(
        events="falco",
        incidents="falco-incidents",
        dead_letter="falco-dlq",
        notify_dead_letter="falco-notify-dlq",
        partitions=3,
        replication_factor=1,
    )
    assert config.app.id == "falco-correlator"
    assert config.app.rules == ("rules/",)
    assert config.app.lateness_ns == 10_000_000_000
    assert config.app.store is StoreKind.ROCKSDB
    assert config.app.web_port == 6066
    assert config.app.tick_interval_ns == 1_000_000_000
    assert config.app.max_pending_per_key == 10_000
    assert config.app.max_state_entries == 1_000_000
    assert config.app.max_future_skew_ns == 300_000_000_000
    assert config.app.max_event_bytes == 1_048_576


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_each_documented_default_parses_to_the_dataclass_default(setting: Setting) -> None:
    default = getattr(getattr(WorkerConfig(), setting.section), setting.attr)
    if setting.name == "app.data_dir":  # computed: $XDG_STATE_HOME or ~/.local/state
        assert default.endswith("/falco-correlator")
        assert Path(default).is_absolute()
    elif setting.default == "":
        assert default is None
    else:
        assert setting.parse(setting.default, {}) == default


def test_empty_file_and_empty_sections_give_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), {}) == WorkerConfig()
    assert load_config(write(tmp_path, "kafka:\ntopics: {}\n"), {}) == WorkerConfig()


# --- file and environment -----------------------------------------------------------------------


def test_file_values_are_read_into_every_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kafka:
          bootstrap_servers: kafka-0:9092, kafka-1:9092
        topics:
          events: alerts
          incidents: alerts-incidents
          dead_letter: alerts-dlq
          notify_dead_letter: alerts-notify-dlq
          partitions: 12
          replication_factor: 3
        app:
          id: correlator-prod
          rules: [rules/, extra/ssh.yaml]
          lateness: 30s
          store: memory
          data_dir: /var/lib/fc
          web_port: 8080
          tick_interval: 250ms
          max_pending_per_key: 500
          log_level: debug
          log_format: console
        """,
    )

    config = load_config(path, {})

    assert config.kafka.bootstrap_servers == "kafka-0:9092,kafka-1:9092"
    assert config.topics == TopicsConfig("alerts", "alerts-incidents", "alerts-dlq",
                                         "alerts-notify-dlq", 12, 3)  # fmt: skip
    assert config.app == AppConfig(
        id="correlator-prod",
        rules=("rules/", "extra/ssh.yaml"),
        lateness_ns=parse_duration("30s"),
        store=StoreKind.MEMORY,
        data_dir="/var/lib/fc",
        web_port=8080,
        tick_interval_ns=250_000_000,
        max_pending_per_key=500,
        log_level=LogLevel.DEBUG,
        log_format=LogFormat.CONSOLE,
    )


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "app:\n  lateness: 30s\n  web_port: 8080\ntopics:\n  events: a\n")

    config = load_config(
        path,
        {
            "FC_APP_LATENESS": "2m",
            "FC_TOPICS_EVENTS": "from-env",
            "KAFKA_BOOTSTRAP_SERVERS": "broker:19092",
        },
    )

    assert config.app.lateness_ns == parse_duration("2m")
    assert config.topics.events == "from-env"
    assert config.kafka.bootstrap_servers == "broker:19092"
    assert config.app.web_port == 8080  # from the file: no variable set


def test_fc_kafka_bootstrap_servers_wins_over_kafka_bootstrap_servers() -> None:
    config = load_config(
        None, {"KAFKA_BOOTSTRAP_SERVERS": "a:1", "FC_KAFKA_BOOTSTRAP_SERVERS": "b:2"}
    )
    assert config.kafka.bootstrap_servers == "b:2"


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    path = write(tmp_path, "topics:\n  events: from-file\n")
    assert load_config(path, {"FC_TOPICS_EVENTS": "", "FC_APP_LATENESS": " "}).topics.events == (
        "from-file"
    )


def test_environment_text_is_converted_to_each_type() -> None:
    config = load_config(
        None,
        {
            "FC_TOPICS_PARTITIONS": "6",
            "FC_APP_RULES": "rules/, more/",
            "FC_APP_LOG_LEVEL": "warn",
            "FC_APP_STORE": "MEMORY",
            "FC_KAFKA_SECURITY_PROTOCOL": "ssl",
            "FC_KAFKA_SSL_CHECK_HOSTNAME": "false",
        },
    )
    assert config.topics.partitions == 6
    assert config.app.rules == ("rules/", "more/")
    assert config.app.log_level is LogLevel.WARNING
    assert config.app.store is StoreKind.MEMORY
    assert config.kafka.security_protocol is SecurityProtocol.SSL
    assert config.kafka.ssl_check_hostname is False


def test_a_single_rules_path_in_the_file_is_a_one_element_list(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "app:\n  rules: my-rules/\n"), {}).app.rules == (
        "my-rules/",
    )


# --- validation -------------------------------------------------------------------------------

# One invalid value per setting: as YAML gives it, as variable text (None: no text is invalid),
# and a part of the expected reason.
INVALID: dict[str, tuple[object, str | None, str]] = {
    "kafka.bootstrap_servers": ("no-port", "no-port", "expected host:port"),
    "kafka.security_protocol": ("TLS", "TLS", "must be one of PLAINTEXT|SSL"),
    "kafka.sasl_mechanism": ("GSSAPI", "GSSAPI", "must be one of PLAIN|SCRAM-SHA-256"),
    "kafka.sasl_username": (42, None, "must be a non-empty string"),
    "kafka.sasl_password": ("${env:NOPE_UNSET}", "${env:NOPE_UNSET}", "NOPE_UNSET is not set"),
    "kafka.ssl_cafile": ("/nonexistent/ca.pem", "/nonexistent/ca.pem", "does not exist"),
    "kafka.ssl_certfile": ("/nonexistent/c.pem", "/nonexistent/c.pem", "does not exist"),
    "kafka.ssl_keyfile": ("/nonexistent/k.pem", "/nonexistent/k.pem", "does not exist"),
    "kafka.ssl_check_hostname": ("maybe", "maybe", "must be true or false"),
    "topics.events": ("bad topic", "bad topic", "not a valid topic name"),
    "topics.incidents": ("a/b", "a/b", "not a valid topic name"),
    "topics.dead_letter": ("..", "..", "not a valid topic name"),
    "topics.notify_dead_letter": ("x" * 250, "x" * 250, "not a valid topic name"),
    "topics.partitions": (0, "0", "must be at least 1"),
    "topics.replication_factor": ("three", "three", "must be an integer"),
    "app.id": ("my app", "my app", "not a valid topic name"),
    "app.rules": ([], None, "non-empty list of paths"),
    "app.shadow_rules": ({"a": 1}, None, "non-empty list of paths"),
    "app.lateness": ("10x", "10x", "invalid duration '10x'"),
    "app.store": ("redis", "redis", "must be one of rocksdb|memory"),
    "app.data_dir": ("", None, "must be a non-empty string"),
    "app.web_port": (70000, "70000", "at most 65535"),
    "app.tick_interval": ("0s", "0s", "must be more than 0"),
    "app.max_pending_per_key": (True, "-1", "must be"),
    "app.max_state_entries": (0, "0", "must be at least 1"),
    "app.max_future_skew": ("-5m", "5 minutes", "invalid duration"),
    "app.max_event_bytes": (10, "1e6", "must be"),
    "app.session_timeout": ("500ms", "0s", "must be at least 1s"),
    "app.idle_timeout": ("soon", "soon", "invalid duration 'soon'"),
    "app.stall_timeout": ("10ms", "0s", "must be at least 1s"),
    "app.ingest_batch_size": (0, "0", "must be"),
    "app.max_inflight_records": (1, "1", "must be"),
    "app.log_level": ("LOUD", "LOUD", "must be one of DEBUG|INFO"),
    "app.log_format": ("xml", "xml", "must be one of json|console"),
}


def test_every_setting_has_an_invalid_value_case() -> None:
    assert set(INVALID) == {setting.name for setting in SETTINGS}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_an_invalid_file_value_names_its_key_and_line(tmp_path: Path, name: str) -> None:
    section, key = name.split(".")
    value, _, reason = INVALID[name]
    path = write(tmp_path, "")
    Path(path).write_text(f"# comment\n{section}:\n  {key}: {_yaml(value)}\n", encoding="utf-8")

    message = config_error(path)

    assert message.startswith(f"{path}:3:{len(key) + 5}: {name}: ")
    assert reason in message


@pytest.mark.parametrize("name", sorted(n for n, case in INVALID.items() if case[1] is not None))
def test_an_invalid_environment_value_names_its_key_and_variable(name: str) -> None:
    _, text, reason = INVALID[name]
    assert text is not None
    variable = f"FC_{name.replace('.', '_').upper()}"

    message = config_error(None, {variable: text})

    assert message.startswith(f"env {variable}: {name}: ")
    assert reason in message


def test_an_invalid_kafka_bootstrap_servers_names_that_variable() -> None:
    message = config_error(None, {"KAFKA_BOOTSTRAP_SERVERS": "kafka:notaport"})
    assert message.startswith("env KAFKA_BOOTSTRAP_SERVERS: kafka.bootstrap_servers: ")


def test_unknown_keys_and_sections_are_errors_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  bootstrap: x:1\ntopicz:\n  events: a\n")

    message = config_error(path)

    assert f"{path}:2:3: unknown key kafka.bootstrap (did you mean kafka.bootstrap_servers?)" in (
        message
    )
    assert f"{path}:3:1: unknown section topicz (did you mean topics?)" in message


def test_a_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "app:\n  lateness: 5s\n  lateness: 6s\n")
    assert f"{path}:3:3: duplicate key 'lateness' (first at line 2)" in config_error(path)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "app:\n  lateness: 10x\n  web_port: 0\n")

    lines = config_error(path, {"FC_APP_STORE": "redis"}).splitlines()

    assert [line.split(": ")[1] for line in lines] == ["app.lateness", "app.web_port", "app.store"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "1:1: the configuration must be a mapping of sections"),
        ("app: 3\n", "1:6: app: must be a mapping of keys"),
        ("app:\n  lateness: [\n", "YAML syntax error"),
        ("1: x\n", "1:1: top level: keys must be strings"),
    ],
)
def test_a_malformed_file_is_an_error_with_its_location(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(path)
    assert expected in message


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    assert config_error(path).startswith(f"{path}: cannot read the configuration file")


def test_sasl_protocols_need_a_username_and_a_password(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  security_protocol: SASL_SSL\n")
    message = config_error(path)
    assert f"{path}:2:22: kafka.sasl_username: required with SASL_SSL" in message
    assert f"{path}:2:22: kafka.sasl_password: required with SASL_SSL" in message


def test_sasl_and_tls_settings_are_errors_when_the_protocol_ignores_them(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem", encoding="utf-8")

    message = config_error(None, {"FC_KAFKA_SASL_USERNAME": "u", "FC_KAFKA_SSL_CAFILE": str(ca)})

    assert "env FC_KAFKA_SASL_USERNAME: kafka.sasl_username: not used with" in message
    assert "env FC_KAFKA_SSL_CAFILE: kafka.ssl_cafile: not used with" in message


def test_a_client_key_needs_a_client_certificate(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("pem", encoding="utf-8")
    message = config_error(
        None, {"FC_KAFKA_SECURITY_PROTOCOL": "SSL", "FC_KAFKA_SSL_KEYFILE": str(key)}
    )
    assert "kafka.ssl_keyfile: needs kafka.ssl_certfile" in message


def test_a_complete_sasl_ssl_configuration_loads(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("pem", encoding="utf-8")
    path = write(
        tmp_path,
        f"""
        kafka:
          security_protocol: SASL_SSL
          sasl_mechanism: SCRAM-SHA-512
          sasl_username: correlator
          sasl_password: ${{env:KAFKA_PASSWORD}}
          ssl_cafile: {tmp_path}/ca.pem
          ssl_certfile: {tmp_path}/client.pem
          ssl_keyfile: {tmp_path}/client.key
          ssl_check_hostname: false
        """,
    )

    kafka = load_config(path, {"KAFKA_PASSWORD": SECRET}).kafka

    assert kafka == KafkaConfig(
        security_protocol=SecurityProtocol.SASL_SSL,
        sasl_mechanism=SaslMechanism.SCRAM_SHA_512,
        sasl_username="correlator",
        sasl_password=Secret(SECRET),
        ssl_cafile=f"{tmp_path}/ca.pem",
        ssl_certfile=f"{tmp_path}/client.pem",
        ssl_keyfile=f"{tmp_path}/client.key",
        ssl_check_hostname=False,
    )


# --- secrets ------------------------------------------------------------------------------------


def sasl_env(password: str, **extra: str) -> dict[str, str]:
    return {
        "FC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FC_KAFKA_SASL_USERNAME": "u",
        "FC_KAFKA_SASL_PASSWORD": password,
        **extra,
    }


def test_a_secret_reference_to_an_environment_variable_is_resolved() -> None:
    password = load_config(None, sasl_env("${env:KAFKA_PW}", KAFKA_PW=SECRET)).kafka.sasl_password
    assert password is not None
    assert password.reveal() == SECRET
    assert password.source == "env:KAFKA_PW"


def test_a_secret_reference_to_a_file_is_resolved_without_its_trailing_newline(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    path = write(tmp_path, f"kafka:\n  sasl_password: ${{file:{secret_file}}}\n")

    password = load_config(path, sasl_env("")).kafka.sasl_password

    assert password is not None
    assert password.reveal() == SECRET
    assert password.source == f"file:{secret_file}"


def test_a_literal_secret_is_kept_as_given() -> None:
    password = load_config(None, sasl_env(SECRET)).kafka.sasl_password
    assert password == Secret(SECRET)
    assert password is not None
    assert password.source == "literal"


def test_a_reference_inside_a_longer_value_is_a_literal() -> None:
    password = load_config(None, sasl_env("pre-${env:X}")).kafka.sasl_password
    assert password is not None
    assert password.reveal() == "pre-${env:X}"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("${env:MISSING_PW}", "secret environment variable MISSING_PW is not set or empty"),
        ("${file:/nonexistent/pw}", "cannot read secret file /nonexistent/pw"),
    ],
)
def test_an_unresolvable_secret_names_its_key_and_source(reference: str, expected: str) -> None:
    message = config_error(None, sasl_env(reference))
    assert message.startswith("env FC_KAFKA_SASL_PASSWORD: kafka.sasl_password: ")
    assert expected in message


def test_an_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        read_secret(f"${{file:{empty}}}", {})


def test_repr_str_and_formatting_never_show_a_secret() -> None:
    config = load_config(None, sasl_env(SECRET))
    password = config.kafka.sasl_password
    assert password is not None

    shown = [repr(config), str(config), repr(password), str(password), f"{password}",
             repr(dataclasses.asdict(config))]  # fmt: skip

    assert all(SECRET not in text for text in shown)
    assert "Secret(*** from literal)" in repr(config)


def test_an_error_about_a_secret_never_shows_its_value(tmp_path: Path) -> None:
    path = write(tmp_path, f"kafka:\n  sasl_password: {SECRET}\n")
    message = config_error(path)  # set, but the protocol is PLAINTEXT
    assert "kafka.sasl_password: not used with" in message
    assert SECRET not in message


# --- documentation ------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_the_reference_table_documents_every_key_and_variable(setting: Setting) -> None:
    docs = DOCS.read_text(encoding="utf-8")
    assert f"`{setting.name}`" in docs
    for variable in setting.env:
        assert f"`{variable}`" in docs


def _yaml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"' if value == "" or "${" in value or " " in value else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)
