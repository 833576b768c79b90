#!/usr/bin/env bash
# Installs the tools that check the deployment kit (`make tools`, run by `make test`), each pinned
# and cached outside the repository, so a second run takes a second:
#
#   helm          helm.sh/helm/v3 (go install)                   -> helm lint / helm template
#   kubeconform   github.com/yannh/kubeconform (go install)      -> manifests vs the API schemas
#   k8s schemas   the Kubernetes JSON schemas vendored by the PyPI package kubernetes-validate
#                 (pip download, unzipped; kubeconform reads them from disk: no network)
#   CRD schemas   ServiceMonitor and PrometheusRule from the CRDs in the prometheus-operator Go
#                 module (go mod download), converted by deploy/tools/crd_schemas.py
#   promtool      Debian's `prometheus` package (apt-get, as root) -> check/test rules, PromQL
#
# Prints the environment the tests read (FC_HELM=..., one per line) on stdout; everything else
# goes to stderr. Environment: XDG_CACHE_HOME (cache root), GO (the go binary), PYTHON.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly HELM_VERSION=v3.22.0
readonly KUBECONFORM_VERSION=v0.7.0
readonly K8S_SCHEMAS_PACKAGE=kubernetes-validate==1.37.0
# Bump when the conversion below changes, so that caches are rebuilt.
readonly K8S_SCHEMAS_LAYOUT=2
# The oldest and the newest Kubernetes minor the chart is checked against (Chart.yaml kubeVersion).
readonly K8S_VERSIONS="1.27.0 1.37.0"
readonly PROMETHEUS_OPERATOR_VERSION=v0.85.0
readonly TOOLS="${XDG_CACHE_HOME:-${HOME}/.cache}/falco-correlator/tools"

log() { printf 'tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_go() {
    local candidate
    for candidate in "${GO:-}" go /usr/local/go/bin/go; do
        [[ -n "${candidate}" ]] && command -v "${candidate}" >/dev/null && { command -v "${candidate}"; return 0; }
    done
    return 1
}

go_tool() { # name version package
    local name="$1" version="$2" package="$3" dir="${TOOLS}/$1-$2"
    if [[ ! -x "${dir}/${name}" ]]; then
        local go
        go="$(find_go)" || die "go (1.24 or newer) is needed to build ${name} ${version}; install it or set GO"
        log "building ${name} ${version} with $("${go}" version | cut -d' ' -f3) (once; a few minutes for helm)"
        mkdir -p "${dir}.tmp"
        GOBIN="${dir}.tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 "${go}" install "${package}@${version}" >&2 ||
            die "go install ${package}@${version} failed"
        rm -rf "${dir}" && mv "${dir}.tmp" "${dir}"
    fi
    printf '%s\n' "${dir}/${name}"
}

k8s_schemas() {
    local dir="${TOOLS}/k8s-schemas-${K8S_SCHEMAS_PACKAGE#*==}-${K8S_SCHEMAS_LAYOUT}"
    if [[ ! -f "${dir}/.complete" ]]; then
        local python="${PYTHON:-python3}" scratch
        scratch="$(mktemp -d "${TOOLS}/.k8s-schemas.XXXXXX")"
        log "fetching the Kubernetes JSON schemas (${K8S_SCHEMAS_PACKAGE} from PyPI)"
        "${python}" -m pip download -q --no-deps -d "${scratch}" "${K8S_SCHEMAS_PACKAGE}" >&2 ||
            die "pip could not download ${K8S_SCHEMAS_PACKAGE}"
        # Only the directories of the versions checked: the wheel holds 17,000 files.
        "${python}" - "${scratch}" ${K8S_VERSIONS} <<'PY' >&2 || die "${K8S_SCHEMAS_PACKAGE} lacks a wanted Kubernetes version"
import json
import pathlib
import sys
import zipfile

scratch, versions = pathlib.Path(sys.argv[1]), sys.argv[2:]
[wheel] = scratch.glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    for version in versions:
        prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
        names = [n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".json")]
        if not names:
            sys.exit(f"no schemas for Kubernetes {version} in {wheel.name}")
        for name in names:
            target = scratch / "out" / f"v{version}-local-strict" / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            # The package resolves `$ref: /api/_definitions.json#...` against each schema's
            # `$id` (https://kubernetes.io/api/...) in memory; on disk, for kubeconform, the
            # references point at the file next to it and the `$id` goes.
            schema = json.loads(archive.read(name))
            schema.pop("$id", None)
            text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
            target.write_text(text, encoding="utf-8")
PY
        touch "${scratch}/out/.complete"
        rm -rf "${dir}" && mv "${scratch}/out" "${dir}" && rm -rf "${scratch}"
    fi
    printf '%s\n' "${dir}"
}

crd_schemas() {
    local dir="${TOOLS}/crd-schemas-prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"
    if [[ ! -f "${dir}/.complete" ]]; then
        local go module
        go="$(find_go)" || die "go is needed to fetch the prometheus-operator CRDs"
        log "fetching the prometheus-operator ${PROMETHEUS_OPERATOR_VERSION} CRDs (Go module proxy)"
        module="$(cd "${TOOLS}" && GOFLAGS=-mod=mod "${go}" mod download -json \
            "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" |
            "${PYTHON:-python3}" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')" ||
            die "could not download the prometheus-operator module"
        rm -rf "${dir}.tmp"
        "${PYTHON:-python3}" "${SCRIPT_DIR}/crd_schemas.py" "${dir}.tmp" \
            "${module}/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
            "${module}/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" >&2
        touch "${dir}.tmp/.complete"
        rm -rf "${dir}" && mv "${dir}.tmp" "${dir}"
    fi
    printf '%s\n' "${dir}"
}

promtool_path() {
    if ! command -v promtool >/dev/null; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            log "installing promtool (Debian package prometheus)"
            apt-get update -qq >&2 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2 ||
                die "apt-get install prometheus failed"
        else
            die "promtool is missing: install Debian's 'prometheus' package (or Prometheus' release archive)"
        fi
    fi
    command -v promtool
}

main() {
    mkdir -p "${TOOLS}"
    local helm kubeconform schemas crds promtool
    helm="$(go_tool helm "${HELM_VERSION}" helm.sh/helm/v3/cmd/helm)"
    kubeconform="$(go_tool kubeconform "${KUBECONFORM_VERSION}" github.com/yannh/kubeconform/cmd/kubeconform)"
    schemas="$(k8s_schemas)"
    crds="$(crd_schemas)"
    promtool="$(promtool_path)"
    log "helm $("${helm}" version --short), kubeconform $("${kubeconform}" -v), $("${promtool}" --version 2>&1 | head -n 1)"
    printf 'FC_HELM=%s\nFC_KUBECONFORM=%s\nFC_K8S_SCHEMAS=%s\nFC_K8S_VERSIONS=%s\nFC_CRD_SCHEMAS=%s\nFC_PROMTOOL=%s\n' \
        "${helm}" "${kubeconform}" "${schemas}" "${K8S_VERSIONS// /,}" "${crds}" "${promtool}"
}

main "$@"
