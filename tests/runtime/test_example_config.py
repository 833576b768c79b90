"""The example configuration shipped in deploy/ loads: worker settings, notifiers, enrichers."""

from __future__ import annotations

from pathlib import Path

import yaml
from notifiers.tls import make_certs
from prometheus_client import CollectorRegistry

from streams.enrich import EnrichmentMetrics, load_enrichment
from streams.notifiers import NotifierContext, NotifierMetrics, load_notifiers
from streams.runtime.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "worker.example.yaml"
MANIFEST = ROOT / "deploy" / "kubernetes" / "falco-correlator.yaml"
ENV = {
    "KAFKA_PASSWORD": "s3cr3t-kafka-pw",
    "SLACK_BOT_TOKEN": "xoxb-1",
    "SOAR_WEBHOOK_URL": "https://soar.example.com/hook",
    "SOAR_HMAC_SECRET": "h",
    "HARBOR_ROBOT_NAME": "robot$x",
    "HARBOR_ROBOT_SECRET": "s",
    "OPENSEARCH_PASSWORD": "o",
}


def test_the_example_worker_configuration_loads_with_its_secrets_from_the_environment(
    tmp_path: Path,
) -> None:
    certs = make_certs(tmp_path)  # the OpenSearch CA bundle must be a real certificate
    text = EXAMPLE.read_text(encoding="utf-8")
    # the CA bundle and the owners table are files of the deployment: stand-ins here
    ca = tmp_path / "ca.crt"
    ca.write_text("stand-in")
    owners = tmp_path / "owners.yaml"
    owners.write_text("namespaces:\n  payments: {team: Payments, criticality: critical}\n")
    text = text.replace("/etc/kafka-ca/ca.crt", str(ca))
    text = text.replace("/etc/falco-correlator/owners.yaml", str(owners))
    text = text.replace("/etc/opensearch-ca/ca.crt", str(certs.ca))
    path = tmp_path / "worker.yaml"
    path.write_text(text)
    config = load_config(str(path), ENV)
    assert config.topics.partitions == 6
    assert "s3cr3t-kafka-pw" not in repr(config.kafka)
    assert config.kafka.sasl_password is not None
    assert config.kafka.sasl_password.reveal() == "s3cr3t-kafka-pw"
    notifiers = load_notifiers(
        config.notifiers, NotifierContext(metrics=NotifierMetrics(CollectorRegistry())), env=ENV
    )
    assert [n.name for n in notifiers] == ["slack-security", "soar", "search"]
    pipeline = load_enrichment(
        config.enrichment, env=ENV, metrics=EnrichmentMetrics(CollectorRegistry())
    )
    assert [slot.enricher.name for slot in pipeline.slots] == ["harbor", "ownership", "risk"]


def test_the_kubernetes_manifest_is_valid_yaml_naming_the_probes_and_the_config() -> None:
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]
    kinds = {d["kind"] for d in documents}
    assert {"ConfigMap", "StatefulSet", "Service"} <= kinds
    [workload] = [d for d in documents if d["kind"] == "StatefulSet"]
    container = workload["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][:2] == ["worker", "--config"]
