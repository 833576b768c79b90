"""The webhook notifier: pure request building, signatures, templates, TLS, real receivers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streams._config_fields import Fields
from streams.notifiers import (
    Delivered,
    DeliveryFailure,
    NotifierContext,
    NotifierMetrics,
    Secret,
    WebhookConfig,
    build_webhook_request,
    load_notifiers,
)
from streams.notifiers.webhook import WebhookNotifier

from .servers import LocalServer, WebhookReceiver, make_incident
from .tls import Certs, make_certs, server_context

DOCS = Path(__file__).parents[2] / "docs" / "notifiers.md"
FAST = {"backoff_base": "20ms", "backoff_max": "100ms", "timeout": "400ms"}


def context() -> NotifierContext:
    return NotifierContext(metrics=NotifierMetrics(CollectorRegistry()))


def webhook_config(**options: Any) -> WebhookConfig:
    return WebhookNotifier.parse_options(Fields(options, "webhook"))


def entry(name: str, webhook: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "delivery": {**FAST}, "webhook": webhook, **extra}


def test_default_body_is_the_incident_and_headers_carry_the_idempotency_key() -> None:
    incident = make_incident(1, status="update", count=4)
    config = webhook_config(url="http://127.0.0.1:9/x", headers={"X-Team": "sec"})
    body, headers = build_webhook_request(incident, config)
    assert orjson.loads(body) == incident
    assert headers == {
        "Content-Type": "application/json",
        "X-Team": "sec",
        "Idempotency-Key": f"{incident['id']}:update:4",
    }


def test_signature_covers_timestamp_and_body() -> None:
    config = webhook_config(url="http://127.0.0.1:9/x", hmac_secret="s3cret")
    body, headers = build_webhook_request(make_incident(1), config, timestamp=1700000000)
    mac = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Falco-Timestamp"] == "1700000000"
    assert headers["X-Falco-Signature"] == f"sha256={mac}"
    with pytest.raises(ValueError, match="timestamp"):
        build_webhook_request(make_incident(1), config)


def test_docs_verification_snippet_accepts_our_signature_and_rejects_tampering() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    snippets = [b for b in blocks if "def verify_signature" in b]
    assert snippets, "docs/notifiers.md must hold the verify_signature snippet"
    namespace: dict[str, Any] = {}
    exec(snippets[0], namespace)
    verify = namespace["verify_signature"]
    config = webhook_config(url="http://127.0.0.1:9/x", hmac_secret="k")
    body, headers = build_webhook_request(make_incident(1), config, timestamp=1700000000)
    ts, sig = headers["X-Falco-Timestamp"], headers["X-Falco-Signature"]
    assert verify(b"k", ts, body, sig, now=1700000010)
    assert not verify(b"k", ts, body + b" ", sig, now=1700000010)
    assert not verify(b"other", ts, body, sig, now=1700000010)
    assert not verify(b"k", ts, body, sig, now=1700009999)  # replayed too late


def test_body_template_treats_incident_text_as_data() -> None:
    template = (
        '{"text": {{ output|tojson }}, "n": {{ events|length }},'
        ' "ns": {{ context["k8s.ns.name"]|tojson }}}'
    )
    config = webhook_config(url="http://127.0.0.1:9/x", body_template=template)
    incident = make_incident(1, output="{{ 7*7 }} {% for x in range(3) %}x{% endfor %} </script>")
    body, _ = build_webhook_request(incident, config)
    assert orjson.loads(body) == {
        "text": "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} </script>",
        "n": 2,
        "ns": "default",
    }


def test_sandbox_blocks_unsafe_template_and_nothing_is_sent() -> None:
    receiver = WebhookReceiver()
    template = "{{ incident.__class__.__mro__[1].__subclasses__() }}"

    async def main() -> Any:
        async with LocalServer(receiver.app()) as server:
            [notifier] = load_notifiers(
                [entry("tpl", {"url": f"{server.url}/t", "body_template": template})], context()
            )
            result = await notifier.send(make_incident(1))
            await notifier.close()
        return result

    result = asyncio.run(main())
    assert isinstance(result, DeliveryFailure)
    assert result.permanent
    assert result.last_error.startswith("body template:")
    assert receiver.requests == []


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 2000000000 }}",
        "{{ 'x'|center(2000000000) }}",
    ],
)
def test_body_template_is_compiled_without_evaluation_and_its_render_is_bounded(
    template: str,
) -> None:
    started = time.monotonic()
    [notifier] = load_notifiers(
        [entry("tpl", {"url": "http://127.0.0.1:9/t", "body_template": template})], context()
    )
    result = asyncio.run(notifier.send(make_incident(1)))
    asyncio.run(notifier.close())
    assert time.monotonic() - started < 3.0
    assert isinstance(result, DeliveryFailure)
    assert result.permanent
    assert result.last_error.startswith("body template: ")


def test_signed_deliveries_arrive_once_per_key_despite_retries() -> None:
    receiver = WebhookReceiver(secret="hook-secret", faults=["slow", "503", "500"], retry_after="0")
    incidents = [make_incident(i) for i in range(5)]
    incidents.append(make_incident(0, status="update", count=2))

    async def main() -> list[Any]:
        async with LocalServer(receiver.app()) as server:
            hook = {"url": f"{server.url}/in", "method": "PUT", "hmac_secret": "${env:HOOK_SECRET}"}
            [notifier] = load_notifiers(
                [entry("hook", hook)], context(), env={"HOOK_SECRET": "hook-secret"}
            )
            results = await asyncio.gather(*(notifier.send(i) for i in incidents))
            await notifier.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, Delivered) for r in results), results
    assert receiver.bad_signatures == 0
    bodies_by_key: dict[str, set[bytes]] = defaultdict(set)
    for delivery in receiver.accepted:
        bodies_by_key[delivery.key].add(delivery.body)
    assert set(bodies_by_key) == {f"{i['id']}:{i['status']}:{i['count']}" for i in incidents}
    # A duplicate (the slow answer timed out, then was retried) carries the same key and body.
    assert all(len(bodies) == 1 for bodies in bodies_by_key.values())
    assert len(receiver.accepted) == len(incidents) + 1


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


def test_https_with_ca_bundle_and_client_certificate(certs: Certs) -> None:
    receiver = WebhookReceiver()
    tls = {
        "ca_file": str(certs.ca),
        "client_cert": str(certs.client_cert),
        "client_key": str(certs.client_key),
    }

    unverified = {**tls, "verify": False}
    del unverified["ca_file"]

    async def main() -> tuple[Any, Any]:
        async with LocalServer(receiver.app(), server_context(certs, True)) as server:
            notifiers = load_notifiers(
                [
                    entry("mtls", {"url": f"{server.url}/in", "tls": tls}),
                    entry("no-ca", {"url": f"{server.url}/in"}),
                    entry("no-verify", {"url": f"{server.url}/in", "tls": unverified}),
                ],
                context(),
            )
            ok = await notifiers[0].send(make_incident(1))
            bad = await notifiers[1].send(make_incident(2))
            unchecked = await notifiers[2].send(make_incident(3))
            assert isinstance(unchecked, Delivered)
            for notifier in notifiers:
                await notifier.close()
        return ok, bad

    ok, bad = asyncio.run(main())
    assert isinstance(ok, Delivered)
    assert isinstance(bad, DeliveryFailure)
    assert bad.permanent  # a certificate that does not verify is not retried
    assert bad.attempts == 1
    assert "TLS verification failed" in bad.last_error
    ids = [orjson.loads(d.body)["id"] for d in receiver.accepted]
    assert ids == [make_incident(1)["id"], make_incident(3)["id"]]


def test_secrets_in_headers_are_redacted_in_repr() -> None:
    config = webhook_config(
        url="http://127.0.0.1:9/x", headers={"Authorization": "Bearer abc"}, hmac_secret="zzz"
    )
    assert "abc" not in repr(config)
    assert "zzz" not in repr(config)
    assert config.headers == (("Authorization", Secret("Bearer abc")),)
