"""One Kafka security configuration, translated for Faust/aiokafka and for confluent-kafka."""

from __future__ import annotations

import ssl
from typing import Any

from streams.runtime.config import KafkaConfig, SecurityProtocol, WorkerConfig

__all__ = ["aiokafka_options", "confluent_config", "faust_broker_credentials", "ssl_context"]


def ssl_context(kafka: KafkaConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=kafka.ssl_cafile)
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    context.check_hostname = kafka.ssl_check_hostname
    return context


def faust_broker_credentials(kafka: KafkaConfig) -> Any:
    import faust

    protocol = kafka.security_protocol
    if protocol is SecurityProtocol.PLAINTEXT:
        return None
    if protocol is SecurityProtocol.SSL:
        return faust.SSLCredentials(ssl_context(kafka))
    password = kafka.sasl_password.reveal() if kafka.sasl_password else None
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=password,
        mechanism=kafka.sasl_mechanism.value,
        ssl_context=ssl_context(kafka) if protocol is SecurityProtocol.SASL_SSL else None,
    )


def confluent_config(kafka: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings for the admin client, tools and benchmarks."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol.value,
    }
    if kafka.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        config["sasl.mechanism"] = kafka.sasl_mechanism.value
        config["sasl.username"] = kafka.sasl_username or ""
        config["sasl.password"] = kafka.sasl_password.reveal() if kafka.sasl_password else ""
    if kafka.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        if kafka.ssl_cafile:
            config["ssl.ca.location"] = kafka.ssl_cafile
        if kafka.ssl_certfile:
            config["ssl.certificate.location"] = kafka.ssl_certfile
        if kafka.ssl_keyfile:
            config["ssl.key.location"] = kafka.ssl_keyfile
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if kafka.ssl_check_hostname else "none"
        )
    return config


def aiokafka_options(config: WorkerConfig) -> dict[str, Any]:
    """Connection settings for aiokafka clients, from the same `kafka:` section Faust uses."""
    kafka = config.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol.value,
    }
    if kafka.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        options["sasl_mechanism"] = kafka.sasl_mechanism.value
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = (
            kafka.sasl_password.reveal() if kafka.sasl_password else None
        )
    if kafka.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        options["ssl_context"] = ssl_context(kafka)
    return options
