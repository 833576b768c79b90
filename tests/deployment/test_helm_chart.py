"""The Helm chart, checked with the real tools: `helm lint --strict`, `helm template` with the
default values and with ci/full-values.yaml, kubeconform against the Kubernetes API schemas
(oldest and newest version supported) and the prometheus-operator CRDs, and the rendered worker
configuration loaded by the worker's own configuration code."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.core.loader import load_rules
from streams.enrich import load_enrichment
from streams.notifiers import load_notifiers
from streams.runtime.config import load_config

from .tools import REPO, require_path, require_tool

CHART = REPO / "deploy" / "helm" / "falco-correlator"
FULL = CHART / "ci" / "full-values.yaml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
K8S_VERSIONS = os.environ.get("FC_K8S_VERSIONS", "1.27.0,1.37.0").split(",")
README_VALUES = REPO / "docs" / "examples" / "falco-correlator-values.yaml"
VALUES = {"default": [], "full": [FULL], "readme": [README_VALUES]}


def helm(*args: str) -> str:
    result = subprocess.run(
        [require_tool("helm"), *args],
        cwd=CHART,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def render(values: Sequence[Path] = (), *sets: str, release: str = "falco-correlator") -> str:
    args = ["template", release, ".", "--namespace", "security"]
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return helm(*args)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kind(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == name]


def kubeconform(text: str, version: str, tmp_path: Path) -> dict[str, Any]:
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(text, encoding="utf-8")
    schemas, crds = require_path("k8s-schemas"), require_path("crd-schemas")
    result = subprocess.run(
        [
            require_tool("kubeconform"),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-kubernetes-version",
            version,
            "-schema-location",
            f"{schemas}/{{{{ .NormalizedKubernetesVersion }}}}-local-strict/"
            "{{ .ResourceKind }}{{ .KindSuffix }}.json",
            "-schema-location",
            f"{crds}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
            str(manifests),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    report["returncode"] = result.returncode
    return report


@pytest.mark.parametrize("values", sorted(VALUES))
def test_helm_lint_strict_passes(values: str) -> None:
    args = ["lint", "--strict", "."]
    for path in VALUES[values]:
        args += ["-f", str(path)]
    assert "0 chart(s) failed" in helm(*args)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", sorted(VALUES))
def test_rendered_manifests_are_valid_against_the_api_schemas(
    values: str, version: str, tmp_path: Path
) -> None:
    text = render(VALUES[values], "serviceMonitor.enabled=true", "prometheusRule.enabled=true")
    report = kubeconform(text, version, tmp_path)
    summary = report["summary"]
    assert report["returncode"] == 0, report["resources"]
    assert summary["valid"] == len(documents(text)) >= 8
    assert summary["invalid"] == summary["errors"] == summary["skipped"] == 0


@pytest.mark.parametrize(
    ("kind_name", "old", "new"),
    [
        ("StatefulSet", "terminationGracePeriodSeconds:", "terminationGracePeriodSecond:"),
        ("ServiceMonitor", "scrapeTimeout:", "scrapeTimout:"),
        ("PrometheusRule", "  - name: falco-correlator", "  - nam: falco-correlator"),
    ],
)
def test_schema_validation_catches_a_misspelled_field(
    kind_name: str, old: str, new: str, tmp_path: Path
) -> None:
    text = render([FULL])
    docs = text.split("\n---\n")
    [index] = [i for i, doc in enumerate(docs) if f"\nkind: {kind_name}\n" in doc]
    assert old in docs[index]
    docs[index] = docs[index].replace(old, new, 1)
    report = kubeconform("\n---\n".join(docs), K8S_VERSIONS[-1], tmp_path)
    assert report["summary"]["invalid"] == 1
    [bad] = [r for r in report["resources"] if r["status"] == "statusInvalid"]
    assert bad["kind"] == kind_name


def worker_config(text: str) -> str:
    [config_map] = [
        d for d in kind(documents(text), "ConfigMap") if "worker.yaml" in d.get("data", {})
    ]
    return str(config_map["data"]["worker.yaml"])


@pytest.mark.parametrize("values", sorted(VALUES))
def test_the_worker_accepts_the_rendered_configuration(values: str, tmp_path: Path) -> None:
    text = render(VALUES[values])
    config_text = worker_config(text)
    # Where the pod mounts the Kafka CA, the test puts a file.
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    config_text = config_text.replace("/etc/falco-correlator/kafka-tls/ca.crt", str(ca))
    path = tmp_path / "worker.yaml"
    path.write_text(config_text, encoding="utf-8")
    [statefulset] = kind(documents(text), "StatefulSet")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    # The secrets the pod gets from Kubernetes Secrets, as the worker would see them.
    env = {item["name"]: f"value-of-{item['name']}" for item in container.get("env", [])}
    config = load_config(str(path), env)
    assert config.app.data_dir == "/var/lib/falco-correlator"
    assert config.app.web_port == 6066
    notifiers = load_notifiers(config.notifiers, env=env)
    load_enrichment(config.enrichment, env=env)
    if values == "full":
        assert [n.name for n in notifiers] == ["slack-security", "soar", "search"]
        assert config.kafka.sasl_password is not None
        assert config.kafka.sasl_password.source == "env:KAFKA_PASSWORD"


def test_secrets_reach_the_pod_only_from_secret_references() -> None:
    text = render([FULL])
    docs = documents(text)
    assert kind(docs, "Secret") == []
    [statefulset] = kind(docs, "StatefulSet")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs["SLACK_BOT_TOKEN"] == {"name": "falco-correlator-slack", "key": "token"}
    assert set(refs) == set(yaml.safe_load(FULL.read_text(encoding="utf-8"))["secretEnv"])
    config = yaml.safe_load(worker_config(text))
    assert config["kafka"]["sasl_password"] == "${env:KAFKA_PASSWORD}"
    assert config["notifiers"][0]["slack"]["token"] == "${env:SLACK_BOT_TOKEN}"


def test_pods_run_non_root_with_a_read_only_root_and_health_probes() -> None:
    for values in VALUES.values():
        [statefulset] = kind(documents(render(values)), "StatefulSet")
        pod = statefulset["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        [container] = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["limits"]["memory"]
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable == {"/var/lib/falco-correlator", "/tmp"}


def checksum(text: str) -> str:
    [statefulset] = kind(documents(text), "StatefulSet")
    return str(statefulset["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


def test_a_config_change_rolls_the_pods_and_a_rules_change_does_not() -> None:
    base = checksum(render([FULL]))
    assert checksum(render([FULL], "config.app.lateness=20s")) != base
    assert checksum(render([FULL], "rules.overrides=- list: x\n  items: [a]\n")) == base


def test_rules_load_in_order_from_the_image_the_overrides_and_extra_configmaps(
    tmp_path: Path,
) -> None:
    text = render([FULL])
    docs = documents(text)
    config = yaml.safe_load(worker_config(text))
    assert config["app"]["rules"] == [
        "/opt/falco-correlator/rules",
        "/etc/falco-correlator/rules/overrides",
        "/etc/falco-correlator/rules/extra-0",
        "/etc/falco-correlator/rules/extra-1",
    ]
    [statefulset] = kind(docs, "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["rules-extra-1"]["configMap"]["name"] == "team-b-rules"
    # mounted as directories (no subPath), so ConfigMap updates reach the running pod
    assert all("subPath" not in m for m in pod["containers"][0]["volumeMounts"])
    [rules_map] = [d for d in kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-rules")]
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(rules_map["data"]["overrides.yaml"], encoding="utf-8")
    load_rules([REPO / "rules", overrides])  # the example overrides are valid rules


def test_shadow_rules_are_mounted_and_configured_apart_from_the_live_ones(
    tmp_path: Path,
) -> None:
    assert "shadow_rules" not in yaml.safe_load(worker_config(render()))["app"]
    text = render([FULL])
    docs = documents(text)
    config = yaml.safe_load(worker_config(text))
    assert config["app"]["shadow_rules"] == [
        "/opt/falco-correlator/rules",
        "/etc/falco-correlator/shadow-rules/overrides",
        "/etc/falco-correlator/shadow-rules/extra-0",
    ]
    [statefulset] = kind(docs, "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shadow-rules-extra-0"]["configMap"]["name"] == "team-a-shadow-rules"
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/etc/falco-correlator/shadow-rules/overrides"]["readOnly"] is True
    [shadow_map] = [
        d for d in kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-rules-shadow")
    ]
    assert volumes["shadow-rules-overrides"]["configMap"]["name"] == shadow_map["metadata"]["name"]
    overrides = tmp_path / "shadow-overrides.yaml"
    overrides.write_text(shadow_map["data"]["overrides.yaml"], encoding="utf-8")
    load_rules([REPO / "rules", overrides])  # the example shadow set is a valid ruleset
    # changing the shadow files reloads them; adding or removing shadow rules rolls the pods
    base = checksum(text)
    assert checksum(render([FULL], "rules.shadow.overrides=- list: x\n  items: [a]\n")) == base
    assert checksum(render([FULL], "rules.shadow.shipped=false")) != base


def egress_ports(text: str) -> list[set[int]]:
    [policy] = kind(documents(text), "NetworkPolicy")
    return [{p["port"] for p in rule.get("ports", [])} for rule in policy["spec"]["egress"]]


def test_network_policy_allows_dns_kafka_and_the_configured_endpoints_only() -> None:
    assert egress_ports(render()) == [{53}, {9092}]
    assert egress_ports(render([FULL])) == [{53}, {9093}, {443, 8080, 8443, 9200}, {443}]
    [policy] = kind(documents(render([FULL])), "NetworkPolicy")
    kafka_rule = policy["spec"]["egress"][1]
    assert kafka_rule["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}
    ]
    assert kind(documents(render([], "networkPolicy.enabled=false")), "NetworkPolicy") == []


def test_prometheus_rule_is_the_alerts_file_and_its_thresholds_are_values() -> None:
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    [rule] = kind(documents(render([], "prometheusRule.enabled=true")), "PrometheusRule")
    assert rule["spec"] == {"groups": alerts["groups"]}

    tuned = render(
        [],
        "prometheusRule.enabled=true",
        "prometheusRule.thresholds.consumerLag=50000",
        "prometheusRule.thresholds.lateRatio=0.2",
        "prometheusRule.thresholds.invalidRatio=0.5",
        "prometheusRule.thresholds.enrichmentErrorRatio=0.9",
        release="sec",
    )
    [rule] = kind(documents(tuned), "PrometheusRule")
    exprs = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert "> 50000 and" in exprs["FalcoCorrelatorConsumerLagGrowing"]
    assert exprs["FalcoCorrelatorLateEvents"].endswith("> 0.2")
    assert exprs["FalcoCorrelatorInvalidEvents"].endswith("> 0.5")
    assert exprs["FalcoCorrelatorEnrichmentErrors"].endswith("> 0.9")
    assert 'pod=~"sec-falco-correlator-[0-9]+"' in exprs["FalcoCorrelatorNotReady"]
    changed = {a for a, e in exprs.items() if e != _alert_exprs(alerts)[a]}
    assert changed == {
        "FalcoCorrelatorConsumerLagGrowing",
        "FalcoCorrelatorLateEvents",
        "FalcoCorrelatorInvalidEvents",
        "FalcoCorrelatorEnrichmentErrors",
        "FalcoCorrelatorNotReady",
    }


def _alert_exprs(alerts: dict[str, Any]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for r in alerts["groups"][0]["rules"]}


def test_service_monitor_names_the_job_the_alerts_select() -> None:
    [monitor] = kind(documents(render([], "serviceMonitor.enabled=true")), "ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    [service] = kind(documents(render()), "Service")
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "falco-correlator"
    assert 'job="falco-correlator"' in ALERTS.read_text(encoding="utf-8")


def test_image_digest_wins_over_the_tag() -> None:
    [statefulset] = kind(documents(render([FULL])), "StatefulSet")
    image = statefulset["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("registry.example.com/security/falco-correlator@sha256:")
    [statefulset] = kind(documents(render()), "StatefulSet")
    assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "falco-correlator:0.1.0"
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_plain_manifest_is_valid_against_the_api_schemas(version: str, tmp_path: Path) -> None:
    text = (REPO / "deploy" / "kubernetes" / "falco-correlator.yaml").read_text(encoding="utf-8")
    report = kubeconform(text, version, tmp_path)
    assert report["returncode"] == 0, report["resources"]
    assert report["summary"]["valid"] == len(documents(text))
